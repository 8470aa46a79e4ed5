"""Chapter 2's claims on the quick profile: the English base model learns and speaks.

The full-profile bar (length ratio 0.8-1.25, correlation >= 0.9, MCD <= 60% of random codes)
is printed by notebooks/02_base_model.ipynb; CI checks the quick profile with looser bounds.
"""

import json

from amhelpers import embedded


def test_quick_base_model_learns_and_generates(hornmt_dir, course_home):
    p = embedded.profile("quick")
    checkpoint = embedded.base_model(p, progress=False)
    metrics = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if m.get("split") == "val"]
    assert val[-1]["mel_loss"] < 0.6 * val[0]["mel_loss"]

    result = embedded.evaluate(checkpoint, p, "eng")
    print(json.dumps({k: v for k, v in result.items() if k != "items"}))
    assert result["hit_cap"] == 0
    assert 0.5 <= result["length_ratio"] <= 1.5
    assert result["length_corr"] >= 0.5
    assert 0.3 < result["length_corr_chars"] <= 1.0  # espeak-ng's duration follows the letters
    assert result["mcd_round_trip"] < result["mcd"] < 0.95 * result["mcd_random"]
    assert result["mcd_mean_frame"] > result["mcd_round_trip"]


def test_base_model_is_reused(hornmt_dir, course_home):
    p = embedded.profile("quick")
    first = embedded.base_model(p, progress=False)
    stamp = first.stat().st_mtime_ns
    assert embedded.base_model(p, progress=False) == first and first.stat().st_mtime_ns == stamp
