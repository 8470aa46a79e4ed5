"""The notebooks' code, checked like the library's: pyflakes rules (ruff ``F``) over each
notebook's code cells after the install cell, joined in order. An undefined name, an unused
import or a name used before it is assigned fails here in seconds, not after an hour of
full-profile training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def code(path: Path) -> str:
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "code"]
    # the install cell is one piece shared by every notebook (test_first_cell); IPython puts
    # `display` in every kernel's namespace
    sources = ["".join(c["source"]) for c in cells[1:]]
    return "from IPython.display import display  # noqa: F401\n" + "\n\n\n".join(sources) + "\n"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_passes_pyflakes(path):
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F",
                           "--ignore", "F811", "--stdin-filename", f"{path.stem}.py",
                           "--output-format", "concise", "-"],
                          input=code(path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{path.name}:\n{proc.stdout}{proc.stderr}"
