"""Chapter 7 on the quick profile: the listening set, two simulated listeners through the A/B
and MOS widgets, and the summary pooling them beside the objective table."""

from __future__ import annotations

import json

import pytest

from amhelpers import listen
from amhelpers.course import NOTEBOOKS

pm = pytest.importorskip("papermill")


@pytest.mark.slow
def test_chapter7_pools_simulated_listeners_beside_the_objective_table(hornmt_dir, course_home,
                                                                       tmp_path):
    out = tmp_path / "ch07"
    pm.execute_notebook(str(NOTEBOOKS / "07_listen.ipynb"), str(tmp_path / "07.ipynb"),
                        parameters={"PROFILE": "quick", "OUT_DIR": str(out)},
                        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    summary = json.loads((out / "summary.json").read_text())
    lset = listen.load_set(out / "set")
    systems = ["original", "original_fix", "fix"]
    hand_written = listen.read_sentences(listen.HAND_WRITTEN / "amh_listen.txt")
    assert lset["sentences"][-len(hand_written):] == hand_written  # numbers, punctuation
    assert summary["sentences"] == len(lset["sentences"]) == 3 + len(hand_written)
    assert lset["conditions"] == [*systems, "reference", "round_trip", "anchor"]
    assert all(len(lset["wavs"][c]) == summary["sentences"] for c in lset["conditions"])

    # two simulated listeners answered every trial once: 3 pairs x sentences each
    n = summary["sentences"]
    assert summary["ab_answers"] == 2 * 3 * n
    pooled = [r for r in summary["ab"] if r["listener"] == "all"]
    assert len(pooled) == 3 and all(r["trials"] == 2 * n for r in pooled)
    assert {r["listener"] for r in summary["ab"]} == {"all", "simulated-1", "simulated-2"}
    # they rate the hidden reference 5 and the anchor 1, so nobody is flagged
    mos = {(r["listener"], r["system"]): r for r in summary["mos"]["table"]}
    assert mos[("all", "reference")]["mos"] == 5 and mos[("all", "anchor")]["mos"] == 1
    assert mos[("all", "fix")]["n"] == 2 * n and summary["mos"]["flagged"] == []
    assert set(summary["objective"]) == set(systems)
    assert all(0 < g["mcd_vs_random"] < 1.5 for g in summary["objective"].values())
    # PER's floor and ceiling: the recogniser hears espeak-ng's speech through the codec well and
    # random codes not at all (quick, 30 test phrases: 0.04 and 0.95)
    g = summary["objective"]["fix"]
    assert g["per_round_trip"] < 0.25 and g["per_random"] > 0.75
    assert all(0 <= o["per"] <= 2 for o in summary["objective"].values())
