"""``python -m amhelpers course`` on a folder of tiny notebooks: bad inputs and what it writes."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import nbformat
import pytest

from amhelpers import course
from amhelpers.__main__ import main


def _notebook(path: Path, code: str, parameters: str = "PROFILE = None") -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A course of two notebooks that print their PROFILE parameter and the environment's."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("01_first.ipynb", "02_second.ipynb"):
        _notebook(folder / name, "import os\n"
                                 "print('profile', PROFILE, 'env', os.environ.get('AMHELPERS_PROFILE'))")
    return folder


def _course(tiny: Path, out: Path, *extra: str) -> int:
    return main(["course", "--notebooks", str(tiny), "--out", str(out), *extra])


def test_only_matching_no_notebook_is_an_error_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert _course(tiny, out, "--profile", "quick", "--only", "99") == 2
    err = capsys.readouterr().err
    assert "error: --only 99 matches no notebook" in err
    assert "01_first.ipynb, 02_second.ipynb" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="--only 7 matches no notebook"):
        course.run_course("quick", out, ["01", "7"], folder=tiny)


@pytest.mark.parametrize("case", ["file", "under-file"])
def test_out_that_is_a_file_or_under_one(tiny, tmp_path, capsys, case):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    out = a_file if case == "file" else a_file / "run"
    assert _course(tiny, out, "--profile", "quick") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "is a file, not a folder" in err
    assert err.count("\n") == 1 and a_file.read_text() == "mine"


def test_out_unwritable(tiny, tmp_path, capsys, monkeypatch):
    import amhelpers.io

    monkeypatch.setattr(amhelpers.io.os, "access", lambda path, mode: False)  # root can write anywhere
    assert _course(tiny, tmp_path / "run", "--profile", "quick") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "not writable" in err and err.count("\n") == 1


def test_out_equal_to_the_notebooks_folder_is_refused(tiny, capsys):
    before = (tiny / "01_first.ipynb").read_bytes()
    assert _course(tiny, tiny, "--profile", "quick", "--overwrite") == 2
    assert "is the notebooks folder" in capsys.readouterr().err
    assert (tiny / "01_first.ipynb").read_bytes() == before


def test_profile_defaults_to_the_environment_and_the_flag_wins(tiny, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(course, "run_course",
                        lambda profile, out, only=None, folder=None, overwrite=False:
                        seen.append(profile) or {"ok": True})
    monkeypatch.setenv("AMHELPERS_PROFILE", "quick")
    assert _course(tiny, tmp_path / "a") == 0
    assert _course(tiny, tmp_path / "b", "--profile", "full") == 0
    monkeypatch.delenv("AMHELPERS_PROFILE")
    assert _course(tiny, tmp_path / "c") == 0
    assert seen == ["quick", "full", "full"]


def test_bad_profile_variable_is_a_clear_error(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AMHELPERS_PROFILE", "medium")
    assert _course(tiny, tmp_path / "run") == 2
    assert "AMHELPERS_PROFILE='medium' is not a profile" in capsys.readouterr().err


def test_runs_then_refuses_to_replace_a_run_unless_overwrite(tiny, tmp_path, monkeypatch, capsys):
    """A real papermill run of the tiny course (a few seconds per notebook)."""
    monkeypatch.setenv("AMHELPERS_PROFILE", "quick")
    out = tmp_path / "run"
    assert _course(tiny, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["profile"] == "quick"
    assert [e["notebook"] for e in report["notebooks"]] == ["01_first.ipynb", "02_second.ipynb"]
    assert "profile quick env quick" in (out / "01_first.ipynb").read_text()
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    # a second run into the same folder would replace the first: refused, nothing touched
    assert _course(tiny, out, "--only", "01") == 2
    err = capsys.readouterr().err
    assert "holds another course run" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first

    # --overwrite replaces the whole run: no executed notebook of the old run is left behind
    assert _course(tiny, out, "--only", "01", "--overwrite", "--profile", "full") == 0
    assert sorted(p.name for p in out.iterdir()) == ["01_first.ipynb", "html", "report.json", "report.md"]
    assert sorted(p.name for p in (out / "html").iterdir()) == ["01_first.html", "index.html"]
    assert json.loads((out / "report.json").read_text())["profile"] == "full"
    # the flag reaches the notebook as its PROFILE parameter; the environment is left alone
    assert "profile full env quick" in (out / "01_first.ipynb").read_text()
    assert os.environ["AMHELPERS_PROFILE"] == "quick"


def test_profile_is_passed_to_papermill_as_a_parameter(tiny, tmp_path, monkeypatch):
    """A fake papermill records what each notebook gets: PROFILE, and nothing in os.environ."""
    calls = []

    def execute_notebook(input_path, output_path, **kwargs):
        calls.append((Path(input_path).name, kwargs.get("parameters"),
                      os.environ.get("AMHELPERS_PROFILE")))
        Path(output_path).write_text("{}")

    monkeypatch.setitem(sys.modules, "papermill",
                        types.SimpleNamespace(execute_notebook=execute_notebook))
    monkeypatch.delenv("AMHELPERS_PROFILE", raising=False)
    assert _course(tiny, tmp_path / "run", "--profile", "quick") == 0
    assert calls == [("01_first.ipynb", {"PROFILE": "quick"}, None),
                     ("02_second.ipynb", {"PROFILE": "quick"}, None)]
    assert "AMHELPERS_PROFILE" not in os.environ
    monkeypatch.setenv("AMHELPERS_PROFILE", "full")  # the variable is the default of --profile
    assert _course(tiny, tmp_path / "run2", "--only", "02") == 0
    assert calls[-1] == ("02_second.ipynb", {"PROFILE": "full"}, "full")


def test_a_users_file_named_like_a_notebook_is_not_replaced(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "02_second.ipynb").write_text("my edited copy")
    assert _course(tiny, out, "--profile", "quick") == 2
    assert "02_second.ipynb" in capsys.readouterr().err
    assert (out / "02_second.ipynb").read_text() == "my edited copy"


def test_help_documents_the_rules(capsys):
    with pytest.raises(SystemExit):
        main(["course", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "AMHELPERS_PROFILE" in text and "--overwrite" in text and "another course run" in text


def test_a_chapter_in_parts_is_found_in_order(tmp_path):
    """04a_leak and 04b_recipe (chapter 4 in two notebooks) sit between 03_ and 05_."""
    for name in ("05_e.ipynb", "04b_d.ipynb", "03_a.ipynb", "04a_c.ipynb", "notes.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in course.notebooks(tmp_path)] == [
        "03_a.ipynb", "04a_c.ipynb", "04b_d.ipynb", "05_e.ipynb"]
    assert [p.name for p in course.select(tmp_path, ["04"])] == ["04a_c.ipynb", "04b_d.ipynb"]


def test_the_course_notebooks_include_both_parts_of_chapter_4():
    names = [p.name for p in course.notebooks()]
    assert names.index("04a_leak.ipynb") + 1 == names.index("04b_recipe.ipynb")
    assert names[:3] == ["01_tokenizer.ipynb", "02_base_model.ipynb", "03_diagnose.ipynb"]
