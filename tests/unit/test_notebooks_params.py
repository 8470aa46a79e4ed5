"""Papermill hygiene of the course notebooks (static: nothing is executed).

A notebook's cell tagged ``parameters`` holds only what a user may set, as plain literals;
everything derived (profile sizes, paths) is computed below it, so ``papermill -p PROFILE quick``
gives the quick settings everywhere. The profile comes in as the ``PROFILE`` parameter, and the
one registry of profiles is ``amhelpers.settings.PROFILES``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
from pathlib import Path

import pytest

from amhelpers import course, embedded, settings

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))  # chapters and appendices

# What a user may set in a parameters cell, and the literal types each may hold.
ALLOWED: dict[str, tuple[type, ...]] = {
    "PROFILE": (type(None), str),     # None: $AMHELPERS_PROFILE, else full
    "TARGET_LANG": (str,),            # HornMT code of the new language
    "SEED": (int,),
    "OUT_DIR": (type(None), str),
    "ADD_PIECES": (int,),             # chapter 1: pieces added to IndexTTS2's tokenizer
    "N_LISTEN": (int,),               # chapter 2: phrases to listen to
    "LEAK_WARM_STEPS": (int,),        # chapter 4: the direct leak experiment
    "LEAK_STEPS": (int,),
    "LEAK_BATCH": (int,),
    # chapter 5: one run, its settings named as the trainer's flags (None: the recipe's value)
    "RECIPE": (str,),
    "TRAIN_PHRASES": (type(None), int),
    "INIT": (type(None), str),
    "LEARNING_RATE": (type(None), float),
    "NEW_ROW_LR": (type(None), float),
    "TEXT_LOSS_WEIGHT": (type(None), float),
    "MEL_LOSS_WEIGHT": (type(None), float),
    "WARMUP_STEPS": (type(None), int),
    "NEW_ROWS_ONLY_STEPS": (type(None), int),
    "FREEZE_MODE": (type(None), str),
    "DECAY": (type(None), str),
    "WEIGHT_DECAY": (type(None), float),
    "REPLAY_FRACTION": (type(None), float),
    "FREEZE_LAYERS": (type(None), int),
    "LORA_RANK": (type(None), int),
    "MAX_STEPS": (type(None), int),
    "BATCH_SIZE": (type(None), int),
    "SAVE_EVERY": (type(None), int),
    # chapter 8: the next languages
    "LANGUAGES": (list,),             # HornMT codes to add after TARGET_LANG
    # chapter 7: the listening test
    "SYSTEMS": (list,),
    "N_SENTENCES": (type(None), int),
    "LISTENER": (str,),
    "SIMULATED_LISTENERS": (type(None), int),
}
# Every notebook takes these (``course`` passes PROFILE; TARGET_LANG and SEED shape the runs).
REQUIRED = {"PROFILE", "TARGET_LANG", "OUT_DIR"}


def code_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def parameters_cell(path: Path) -> tuple[int, dict]:
    tagged = [(i, c) for i, c in enumerate(code_cells(path))
              if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters, want exactly one"
    return tagged[0]


def literal(node: ast.expr) -> object:
    """The value of a plain literal; raises ValueError for anything computed (calls, names...)."""
    return ast.literal_eval(node)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_right_after_the_install_cell(path):
    index, _ = parameters_cell(path)
    assert index == 1, f"{path.name}: the parameters cell is code cell {index + 1}, want the second"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_are_user_settings_written_as_literals(path):
    _, cell = parameters_cell(path)
    tree = ast.parse(source(cell))
    names = []
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
            and isinstance(stmt.targets[0], ast.Name), \
            f"{path.name}: parameters cell line {stmt.lineno} is not `NAME = literal` " \
            "(imports and computed values go below the parameters cell)"
        name = stmt.targets[0].id
        assert name in ALLOWED, f"{path.name}: {name} is not a user setting (allowed: " \
                                f"{', '.join(ALLOWED)}); derive it below the parameters cell"
        try:
            value = literal(stmt.value)
        except ValueError:
            pytest.fail(f"{path.name}: {name} = {ast.unparse(stmt.value)} is computed; a "
                        "parameter is a plain literal (derive values below the cell)")
        assert isinstance(value, ALLOWED[name]) and not isinstance(value, bool), \
            f"{path.name}: {name} = {value!r}, want {' or '.join(t.__name__ for t in ALLOWED[name])}"
        names.append(name)
    assert len(names) == len(set(names)), f"{path.name}: a parameter is assigned twice"
    assert REQUIRED <= set(names), f"{path.name}: missing {sorted(REQUIRED - set(names))}"
    values = {s.targets[0].id: literal(s.value) for s in tree.body}
    assert values["PROFILE"] is None, f"{path.name}: PROFILE defaults to None ($AMHELPERS_PROFILE)"
    assert values["TARGET_LANG"] == settings.PROFILES["full"].target_lang


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_is_used_below_it(path):
    index, cell = parameters_cell(path)
    assigned = {n.id for n in ast.walk(ast.parse(source(cell)))
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    below = "\n".join(source(c) for c in code_cells(path)[index + 1:])
    used = {n.id for n in ast.walk(ast.parse(below)) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)}
    assert assigned <= used, f"{path.name}: parameters never used: {sorted(assigned - used)}"
    rebound = {n.id for n in ast.walk(ast.parse(below)) if isinstance(n, ast.Name)
               and isinstance(n.ctx, ast.Store)} & assigned
    assert not rebound, f"{path.name}: parameters reassigned below the cell: {sorted(rebound)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_profile_comes_in_as_the_parameter(path):
    """No cell reads the environment for the profile; the run derives from PROFILE."""
    index, _ = parameters_cell(path)
    below = "\n".join(source(c) for c in code_cells(path)[index + 1:])
    assert "AMHELPERS_PROFILE" not in below and "os.environ" not in below, path.name
    assert "embedded.profile(PROFILE)" in below, f"{path.name}: derive the run from PROFILE"
    assert "TARGET_LANG" in below.split("embedded.profile(PROFILE)", 1)[1].split("\n", 1)[0], \
        f"{path.name}: the run's target language is TARGET_LANG"


def test_one_registry_of_profiles():
    assert embedded.PROFILES is settings.PROFILES and embedded.Profile is settings.Profile
    assert list(settings.PROFILES) == ["quick", "full"]
    assert all(name == p.name for name, p in settings.PROFILES.items())
    parser = argparse.ArgumentParser()
    course.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "profile")
    assert list(action.choices) == list(settings.PROFILES)


def test_notebook_settings_differ_by_profile():
    """What chapters 1 and 4 used to compute from PROFILE in their parameters cells."""
    quick, full = settings.PROFILES["quick"], settings.PROFILES["full"]
    assert (quick.examples_shown, quick.init_steps, quick.new_rows_only) == (3, 6, False)
    assert (full.examples_shown, full.init_steps, full.new_rows_only) == (8, 100, True)
    assert set(quick.inits_trained) < set(full.inits_trained)


def test_a_target_or_seed_variant_gets_its_own_work_folder(work_home):
    quick = embedded.profile("quick")
    tir = dataclasses.replace(quick, target_lang="tir")
    seeded = dataclasses.replace(quick, seed=1)
    both = dataclasses.replace(quick, target_lang="tir", seed=2)
    names = [embedded.folder(p).name for p in (quick, tir, seeded, both)]
    assert names == ["quick", "quick-eng-tir", "quick-seed1", "quick-eng-tir-seed2"]
    assert embedded.folder(quick) == work_home / "embedded" / "quick"
    # an unregistered name (seed_margins' quick-seed1-t1) stays as it is
    custom = dataclasses.replace(quick, name="quick-seed1-t1", seed=1)
    assert embedded.folder(custom).name == "quick-seed1-t1"
    # other changes keep the folder: the base model's key retrains in place
    assert embedded.folder(dataclasses.replace(quick, pretrain_steps=10)).name == "quick"
