"""The notebooks' first code cell: one piece of code in every notebook that, in a fresh kernel
(Colab, a kernel started outside the course), finds or clones the course, installs it and makes
``import amhelpers`` work without a restart; setup failures are shown and stop the notebook."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))  # chapters and appendices


def first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    source = next(c["source"] for c in cells if c["cell_type"] == "code")
    return "".join(source) if isinstance(source, list) else source


CELL = first_code_cell(NOTEBOOKS[0])


def test_first_code_cells_are_one_piece_of_python():
    assert len(NOTEBOOKS) >= 4
    for nb in NOTEBOOKS:
        assert first_code_cell(nb) == CELL, f"{nb.name}: first code cell differs from {NOTEBOOKS[0].name}"
    assert not CELL.lstrip().startswith("%"), "a Python cell: %%bash cannot change sys.path"
    compile(CELL, "first cell", "exec")


def _run_cell(tmp_path: Path, env: dict[str, str], after: str = "", colab: bool = False):
    """Run the cell in `python -S` (no site-packages: amhelpers is not importable) from tmp_path."""
    prelude = "import sys, types\n"
    if colab:
        prelude += "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
    script = tmp_path / "cell_script.py"
    script.write_text(prelude + CELL + "\n" + after, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("AMHELPERS_REPO") and k not in ("PYTHONPATH", "AMHELPERS_SETUP_ARGS")}
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-S", str(script)], cwd=work, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def _fake_course(folder: Path, setup_code: str) -> Path:
    """A checkout whose setup only prints (and exits with) what the test says."""
    (folder / "amhelpers").mkdir(parents=True)
    (folder / "amhelpers" / "__init__.py").write_text("KIND = 'fake'\n")
    (folder / "amhelpers" / "setup.py").write_text(textwrap.dedent(setup_code))
    (folder / "pyproject.toml").write_text("[project]\nname = 'amhelpers'\n")
    return folder


def test_colab_without_url_says_exactly_what_to_do(tmp_path):
    target = tmp_path / "content" / "amhelpers"
    proc = _run_cell(tmp_path, {"AMHELPERS_REPO": str(target)}, colab=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"the course is not in {target}: run `!git clone <URL of the amhelpers repository> " \
           f"{target}`" in last and "AMHELPERS_REPO_URL" in last


def test_colab_clones_installs_and_imports_without_restart(tmp_path):
    source = _fake_course(tmp_path / "origin", """\
        import sys
        print("fake setup ran", sys.argv[1:])
        """)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", str(source)], check=True)
    subprocess.run([*git, "-C", str(source), "add", "."], check=True)
    subprocess.run([*git, "-C", str(source), "commit", "-qm", "fake"], check=True)
    target = tmp_path / "content" / "amhelpers"
    proc = _run_cell(tmp_path, {"AMHELPERS_REPO": str(target),
                                "AMHELPERS_REPO_URL": source.as_uri(),
                                "AMHELPERS_SETUP_ARGS": "--no-system"},
                     after="import amhelpers\nprint('imported', amhelpers.__file__, amhelpers.KIND)\n",
                     colab=True)
    assert proc.returncode == 0, proc.stderr
    assert "fake setup ran ['--no-system']" in proc.stdout
    assert f"imported {target / 'amhelpers' / '__init__.py'} fake" in proc.stdout


def test_setup_failure_is_shown_and_stops(tmp_path):
    course = _fake_course(tmp_path / "course", """\
        import sys
        print("setup: error: `pip install` failed: check the network")
        sys.exit(2)
        """)
    proc = _run_cell(tmp_path, {"AMHELPERS_REPO": str(course)},
                     after="print('went on')\n")
    assert proc.returncode != 0 and "went on" not in proc.stdout
    assert "setup: error: `pip install` failed: check the network" in proc.stdout
    assert "RuntimeError: setup failed (exit 2)" in proc.stderr


def test_missing_system_tools_stop_once_then_rerun_goes_on(tmp_path):
    """Setup exit 1 (package installed, apt tools missing): said and stopped; a rerun goes on."""
    course = _fake_course(tmp_path / "course", """\
        import sys
        print("setup: still missing system packages: espeak-ng")
        sys.exit(1)
        """)
    rerun = ("try:\n" + "".join(f"    {line}\n" for line in CELL.splitlines()) +
             "except RuntimeError as err:\n    print('stopped:', err)\n"
             "print('-- rerun --')\n" + CELL + "\nimport amhelpers\nprint('kind', amhelpers.KIND)\n")
    script = tmp_path / "twice.py"
    script.write_text("import sys\n" + rerun)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMHELPERS_SETUP_ARGS")}
    proc = subprocess.run([sys.executable, "-S", str(script)], cwd=work, capture_output=True,
                          text=True, timeout=120, env={**env, "AMHELPERS_REPO": str(course)})
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.split("-- rerun --")
    assert "still missing system packages: espeak-ng" in before
    assert "stopped: amhelpers is installed, but setup could not install the system tools" in before
    assert after.strip() == "kind fake"


def test_no_course_found_says_what_to_do(tmp_path):
    proc = _run_cell(tmp_path, {})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "amhelpers is not installed and no course checkout is in" in last
    assert "set AMHELPERS_REPO=<checkout>" in last


def _fresh_venv(tmp_path: Path) -> Path:
    """A new virtual environment (with pip) that sees this one's packages but not amhelpers.

    A .pth line adds this environment's site-packages to sys.path; .pth files *in* that folder
    are not processed then, so the editable finder of amhelpers is not installed there.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    inner = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(inner, "_outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    return python


def test_first_cell_in_a_fresh_kernel_from_another_folder(tmp_path, monkeypatch):
    """The real cell, the real setup, in a new kernel of a new environment (about 30-60 s)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    python = _fresh_venv(tmp_path)
    kernels = tmp_path / "jupyter" / "kernels" / "amfresh"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh", "language": "python",
        "env": {"AMHELPERS_REPO": str(ROOT), "AMHELPERS_SETUP_ARGS": "--no-system"}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    for name in ("AMHELPERS_REPO_URL", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import importlib.util\n"
                                  "print('before:', importlib.util.find_spec('amhelpers'))"),
        nbformat.v4.new_code_cell(CELL),
        nbformat.v4.new_code_cell("import amhelpers\nprint('after:', amhelpers.__file__)"),
        nbformat.v4.new_code_cell(CELL),  # rerun: does nothing
    ]
    client = nbclient.NotebookClient(nb, kernel_name="amfresh", timeout=600,
                                     resources={"metadata": {"path": str(elsewhere)}})
    client.execute()

    def text(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    assert text(nb.cells[0]).strip() == "before: None", "amhelpers importable before the cell"
    assert f"amhelpers ready: {ROOT}" in text(nb.cells[1])
    assert text(nb.cells[2]).strip() == f"after: {ROOT / 'amhelpers' / '__init__.py'}"
    assert nb.cells[3].outputs == []
