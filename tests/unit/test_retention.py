"""amhelpers.retention: the front, the goal and the recommendation, on hand-made runs."""

from __future__ import annotations

import pytest

from amhelpers import retention

BASE = {"length_corr": 0.93, "mcd_vs_random": 0.58, "val_mel_loss": 1.5}


def row(run, amh_corr, amh_mcd, eng_corr, eng_mcd):
    return {"run": run, "amh_length_corr": amh_corr, "amh_mcd_vs_random": amh_mcd,
            "eng_length_corr": eng_corr, "eng_mcd_vs_random": eng_mcd, "eng_val_mel_loss": 2.0}


FIX = row("fix", 0.89, 0.72, 0.85, 0.70)
REPLAY = row("replay", 0.90, 0.71, 0.92, 0.60)    # better on both: fix is dominated
NEW_ONLY = row("new_only", 0.40, 0.85, 0.93, 0.58)  # English kept, the target not learnt
WORSE = row("worse", 0.80, 0.80, 0.80, 0.75)


def test_front_keeps_the_runs_nothing_beats_on_both_languages():
    assert retention.front([FIX, REPLAY, NEW_ONLY, WORSE]) == ["replay", "new_only"]
    assert retention.dominates(REPLAY, FIX) and not retention.dominates(FIX, REPLAY)
    assert not retention.dominates(FIX, FIX)  # equal is not better


def test_goal_checks_each_part_against_the_base_and_the_fix():
    assert retention.goal(REPLAY, BASE, FIX)["all"]
    parts = retention.goal(FIX, BASE, FIX)
    assert parts == {"english_length_corr": False, "english_mcd": False,
                     "target_length_corr": True, "target_mcd": True, "all": False}
    slightly_worse = row("r", 0.88, 0.73, 0.95, 0.59)
    assert not retention.goal(slightly_worse, BASE, FIX)["all"]
    assert retention.goal(slightly_worse, BASE, FIX,
                          tolerance={"length_corr": 0.02, "mcd_vs_random": 0.02})["all"]


@pytest.mark.parametrize("rows,expected", [
    ([FIX, REPLAY, NEW_ONLY], ("replay", "it meets the whole goal")),
    ([FIX, NEW_ONLY], ("fix", None)),  # new rows only keeps English but loses the target
])
def test_recommend_takes_the_best_english_among_runs_that_keep_the_target(rows, expected):
    name, why = retention.recommend(rows, BASE, FIX)
    assert name == expected[0]
    assert expected[1] is None or why == expected[1]


def test_points_table_follows_the_columns():
    summary = {"generation": {"length_corr": 0.9, "mcd_vs_random": 0.7, "per": 0.6},
               "english": {"length_corr": 0.8, "mcd_vs_random": 0.6, "val_mel_loss": 2.1}}
    r = retention.point_row("a", summary)
    assert retention.points_table([r]) == [["a", 0.9, 0.7, 0.6, 0.8, 0.6, None, 2.1]]
    assert len(retention.COLUMNS) == 8


def test_seed_tolerance_is_the_range_of_the_recipe_over_seeds(tmp_path):
    from amhelpers import runs

    table = tmp_path / "t.csv"
    table.write_text("point,RECIPE,SEED,TRAIN_PHRASES,generation.length_corr,"
                     "generation.mcd_vs_random\n"
                     "a,fix,,,0.89,0.72\nb,fix,1,,0.84,0.71\nc,fix,,0,0.5,0.5\n"
                     "d,original,,,0.1,0.9\n", encoding="utf-8")
    tol = retention.seed_tolerance(runs.read_results_csv(table))
    assert tol == pytest.approx({"length_corr": 0.05, "mcd_vs_random": 0.01})


def test_label_names_what_a_point_changes_in_the_recipe():
    assert retention.label({"RECIPE": "fix", "PROFILE": "full", "TARGET_LANG": "amh"}) == "fix"
    assert retention.label({"RECIPE": "fix", "REPLAY_FRACTION": 0.25}) == "fix, replay 0.25"
    assert retention.label({"RECIPE": "fix", "LEARNING_RATE": 0.0}) == "fix, new rows only"
    assert retention.label({"RECIPE": "fix", "LEARNING_RATE": 5e-5, "SEED": 1}) == \
        "fix, backbone lr 5e-05, seed 1"
    assert retention.label({"RECIPE": "fix", "LORA_RANK": 8, "LEARNING_RATE": 1e-3}) == \
        "fix, backbone lr 0.001, LoRA rank 8"
