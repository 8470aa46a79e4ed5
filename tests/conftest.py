"""Shared fixtures: an isolated work folder, HornMT and IndexTTS2 locations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# The outer work folder (CI sets one per run): functional tests and the notebooks share it,
# so the quick base model is trained once per test session.
OUTER_HOME = os.environ.get("AMHELPERS_HOME")


@pytest.fixture(autouse=True)
def work_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test writes generated data into its own AMHELPERS_HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("AMHELPERS_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def hornmt_dir() -> Path:
    """The local HornMT copy named by AMHELPERS_CORPUS_DIR (skip when unset)."""
    value = os.environ.get("AMHELPERS_CORPUS_DIR")
    if not value:
        pytest.skip("AMHELPERS_CORPUS_DIR is unset: point it at a HornMT copy (see README)")
    return Path(value)


@pytest.fixture(scope="session")
def indextts2_dir() -> Path:
    """The folder with the real IndexTTS2 bpe.model (skip when AMHELPERS_INDEXTTS2_DIR is unset)."""
    value = os.environ.get("AMHELPERS_INDEXTTS2_DIR")
    if not value:
        pytest.skip("AMHELPERS_INDEXTTS2_DIR is unset: point it at the folder holding IndexTTS2's "
                    "bpe.model and config.yaml to run the real-tokenizer tests")
    return Path(value)


@pytest.fixture
def course_home(tmp_path_factory, monkeypatch) -> Path:
    """The shared work folder of this test session (the outer AMHELPERS_HOME when set)."""
    home = Path(OUTER_HOME) if OUTER_HOME else tmp_path_factory.getbasetemp() / "course_home"
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("AMHELPERS_HOME", str(home))
    return home


@pytest.fixture
def printed_warnings():
    """A function: the printed lines of an executed notebook that mention a warning.

    A notebook that runs a grid shows what each point's kernel writes to stderr, so a warning
    from any library there ends up in the learner's output; the course leaves none unexplained.
    """
    def lines(notebook: Path) -> list[str]:
        nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
        return [line for cell in nb["cells"] for out in cell.get("outputs", [])
                if out.get("output_type") == "stream"
                for line in "".join(out["text"]).splitlines() if "warning" in line.lower()]
    return lines
