"""Chapter 8 on the quick profile: Tigrinya and Oromo through the same pipeline by parameters
alone, and the numbers its prose rests on."""

from __future__ import annotations

import json

import pytest

from amhelpers.course import NOTEBOOKS

pm = pytest.importorskip("papermill")


@pytest.mark.slow
def test_chapter8_runs_two_more_languages_by_parameters(hornmt_dir, course_home, tmp_path,
        printed_warnings):
    out = tmp_path / "ch08"
    pm.execute_notebook(str(NOTEBOOKS / "08_new_language.ipynb"), str(tmp_path / "08.ipynb"),
                        parameters={"PROFILE": "quick", "OUT_DIR": str(out)},
                        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    assert printed_warnings(tmp_path / "08.ipynb") == []  # its grid kernels print none
    s = json.loads((out / "summary.json").read_text())
    assert s["failed"] == [] and set(s["runs"]) == {"amh", "tir", "orm"}

    # Tigrinya: the Amharic extension covers its script, and most of its tokens are on rows
    # the Amharic fine-tune trained; extending again adds (almost) nothing
    covered = s["coverage"]["tir"]
    assert covered["unk_base"] > 0.3 and covered["unk_extended"] < 0.001
    assert covered["trained_share"] > 0.8
    tir = s["decisions"]["tir from base + amh"]
    assert tir["unk_base"] < 0.001 and tir["n_added"] <= 5
    fresh = s["decisions"]["tir from base"]
    assert fresh["extend"] and fresh["unk_base"] > 0.3 and fresh["unk_extended"] == 0
    assert fresh["fertility_extended"] < covered["fertility_extended"]  # the price of sharing
    assert s["coverage"]["orm"]["trained_share"] < 0.01
    # Oromo: the English base already has its letters; the numbers say keep the tokenizer
    orm = s["decisions"]["orm from base"]
    assert not orm["extend"] and orm["unk_base"] < 0.001 and orm["n_added"] <= 5

    # every result of Tigrinya is labelled as the Amharic voice's stand-in; the others are not
    assert s["runs"]["tir"]["stand_in"] == "amh"
    assert s["runs"]["orm"]["stand_in"] is None and s["runs"]["amh"]["stand_in"] is None
    # the course's recipe passes the pre-flight check in every language
    assert s["doctor_ok"] == {"amh": True, "tir": True, "orm": True}
