"""environment.yml (the conda route) asks for what pyproject.toml asks for, from conda-forge only.

conda's channels can't be reached from CI, so this checks the file itself: the same packages as
pyproject.toml's dependencies plus the dev extra (names mapped where conda-forge's differ), the
same lower bounds, and only names that conda-forge has.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {
    "torch": "pytorch-cpu",     # conda-forge's CPU build ("pytorch" on a CUDA machine)
    "soundfile": "pysoundfile",
}
# Packages of environment.yml that pyproject.toml can't list: the interpreter, pip, and the
# system tools that `python -m amhelpers.setup` installs with apt-get.
CONDA_ONLY = {"python", "pip", "espeak-ng", "sox"}
# Names known to exist on conda-forge (checked by hand on its package index). A new dependency
# is added here once its conda-forge name has been checked.
CONDA_FORGE = {
    "python", "pip", "espeak-ng", "sox", "pytorch", "pytorch-cpu", "numpy", "sentencepiece",
    "protobuf", "librosa", "pysoundfile", "scikit-learn", "matplotlib", "matplotlib-base",
    "tqdm", "tensorboard", "ipywidgets", "pyyaml", "jupyterlab", "pytest", "hypothesis",
    "nbval", "papermill", "ipykernel", "nbformat", "nbclient", "ruff", "transformers", "einops",
    "psutil",  # anaconda.org/conda-forge/psutil (7.2.2)
    "voila",  # conda install -c conda-forge voila (Voila's README)
    "selenium",  # anaconda.org/conda-forge/selenium (noarch 4.41.0)
    "jiwer",  # anaconda.org/conda-forge/jiwer (noarch 4.0.0)
    "peft",  # anaconda.org/conda-forge/peft (noarch 0.19.1)
}
# Packages of other channels that conda-forge does not have.
NOT_CONDA_FORGE = {"cpuonly", "pytorch-cuda", "cudatoolkit"}

_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def _split(spec: str) -> tuple[str, str]:
    """``"numpy>=1.24"`` -> ``("numpy", ">=1.24")`` (name lower-cased, extras dropped)."""
    match = _SPEC.match(spec)
    assert match, f"cannot read the requirement {spec!r}"
    return match.group(1).lower().replace("_", "-"), match.group(3).replace(" ", "")


def problems(environment: str, pyproject: str) -> list[str]:
    """What is wrong with an environment.yml's text against a pyproject.toml's text."""
    import tomllib

    env, project = yaml.safe_load(environment), tomllib.loads(pyproject)["project"]
    found = []
    channels = env.get("channels") or []
    if [c for c in channels if c != "nodefaults"] != ["conda-forge"]:
        found.append(f"channels must be conda-forge only (plus nodefaults), not {channels}")
    conda: dict[str, str] = {}
    pip: list[str] = []
    for item in env.get("dependencies") or []:
        if isinstance(item, dict):
            pip += item.get("pip") or []
            continue
        if "::" in item:
            found.append(f"{item}: a channel prefix; take it from conda-forge")
        name, version = _split(item.split("::")[-1])
        conda[name] = version
    for name in sorted(conda):
        if name in NOT_CONDA_FORGE:
            found.append(f"{name}: not a conda-forge package (conda-forge's CPU torch is pytorch-cpu)")
        elif name not in CONDA_FORGE:
            found.append(f"{name}: not in the list of checked conda-forge names")
    wanted = {}
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, version = _split(spec)
        wanted[CONDA_NAME.get(name, name)] = version
    for name in sorted(set(wanted) - set(conda)):
        found.append(f"{name}: in pyproject.toml, missing from environment.yml")
    for name in sorted(set(conda) - set(wanted) - CONDA_ONLY - NOT_CONDA_FORGE):
        found.append(f"{name}: in environment.yml, not in pyproject.toml")
    for name in sorted(set(conda) & set(wanted)):
        if conda[name] != wanted[name]:
            found.append(f"{name}: environment.yml asks {conda[name] or 'any'}, "
                         f"pyproject.toml {wanted[name] or 'any'}")
    if pip != ["-e .[dev]"]:
        found.append(f"the pip section must install only this package (-e .[dev]), not {pip}")
    return found


def test_environment_yml_matches_pyproject():
    pytest.importorskip("tomllib")
    found = problems((ROOT / "environment.yml").read_text(), (ROOT / "pyproject.toml").read_text())
    assert found == [], "\n".join(found)


def test_checker_catches_the_old_file():
    """The environment.yml before issue 10: pytorch's cpuonly, no jupyterlab, numpy, nbclient."""
    pytest.importorskip("tomllib")
    old = """
channels: [conda-forge]
dependencies:
  - python=3.11
  - pytorch=2.13.*
  - cpuonly
  - pytorch::torchaudio
  - pysoundfile
  - pip
  - pip: ["-e .[dev]"]
"""
    found = "\n".join(problems(old, (ROOT / "pyproject.toml").read_text()))
    assert "cpuonly: not a conda-forge package" in found
    assert "pytorch::torchaudio: a channel prefix" in found
    assert "jupyterlab: in pyproject.toml, missing from environment.yml" in found
    assert "pytorch: in environment.yml, not in pyproject.toml" in found
    assert "pysoundfile: environment.yml asks any, pyproject.toml >=0.12" in found
