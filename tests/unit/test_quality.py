"""The quality bar and steps to reach it (amhelpers.quality), on hand-made curves."""

from __future__ import annotations

import json

import pytest

from amhelpers import quality


def point(step: int, corr: float, mcd: float) -> dict:
    return {"step": step, "length_corr": corr, "mcd_vs_random": mcd}


def test_bar_lies_the_fraction_of_the_way_from_no_skill_to_the_reference():
    bar = quality.quality_bar({"length_corr": 0.8, "mcd_vs_random": 0.6}, fraction=0.5)
    assert bar.length_corr == pytest.approx(0.4)
    assert bar.mcd_vs_random == pytest.approx(0.8)
    full = quality.quality_bar({"length_corr": 0.8, "mcd_vs_random": 0.6}, fraction=1.0)
    assert (full.length_corr, full.mcd_vs_random) == pytest.approx((0.8, 0.6))
    assert "0.400" in bar.describe() and "0.800" in bar.describe()
    assert json.loads(json.dumps(bar.as_dict()))["reference"] == {"length_corr": 0.8,
                                                                   "mcd_vs_random": 0.6}


def test_both_measures_must_reach_the_bar():
    bar = quality.quality_bar({"length_corr": 0.9, "mcd_vs_random": 0.7})
    curve = [point(300, 0.95, 0.80),   # lengths right, spectra not yet
             point(100, 0.20, 0.72),   # spectra right, lengths not (given out of order)
             point(200, 0.50, 0.75),
             point(400, 0.82, 0.72)]   # both
    assert quality.steps_to_bar(curve, bar) == 400
    assert quality.steps_to_bar(curve[:3], bar) is None
    assert not bar.reached({"length_corr": None, "mcd_vs_random": 0.1})


def test_the_first_step_that_reaches_the_bar_counts_even_if_a_later_one_falls_back():
    bar = quality.quality_bar({"length_corr": 0.9, "mcd_vs_random": 0.7})
    curve = [point(0, 0.1, 0.99), point(50, 0.85, 0.71), point(100, 0.5, 0.9)]
    assert quality.steps_to_bar(curve, bar) == 50


@pytest.mark.parametrize("reference, fraction, words", [
    ({"length_corr": 0.9, "mcd_vs_random": 0.7}, 0.0, "fraction=0.0"),
    ({"length_corr": 0.9, "mcd_vs_random": 0.7}, 1.5, "fraction=1.5"),
    ({"length_corr": -0.1, "mcd_vs_random": 0.7}, 0.9, "no better than no skill"),
    ({"length_corr": 0.9, "mcd_vs_random": 1.2}, 0.9, "no better than no skill"),
    ({"length_corr": 0.9}, 0.9, "lack ['mcd_vs_random']"),
])
def test_a_bar_that_means_nothing_is_refused(reference, fraction, words):
    with pytest.raises(ValueError) as err:
        quality.quality_bar(reference, fraction)
    assert words in str(err.value)


def test_efficiency_ratio_and_its_lower_bound():
    assert quality.efficiency(100, 600, 1000) == {"ratio": 6.0, "lower_bound": False,
                                                  "reached": True}
    assert quality.efficiency(100, None, 1000) == {"ratio": 10.0, "lower_bound": True,
                                                   "reached": False}
    assert quality.efficiency(None, 300, 1000)["ratio"] is None


def test_quality_curve_names_a_folder_that_is_not_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        quality.quality_curve(object(), tmp_path)
    assert str(tmp_path / "result.json") in str(err.value)


def test_the_module_docstring_example_holds():
    import doctest

    assert doctest.testmod(quality).failed == 0
