"""Chapter 2's claims on the quick profile: the English base model learns and speaks.

The full-profile bar (length ratio 0.8-1.25, correlation >= 0.9, MCD <= 60% of random codes)
is printed by notebooks/02_base_model.ipynb and measured in the README. The quick profile is a
smoke run of 150 steps: its generation quality is noise, so this test asserts only statistics
whose margins were measured over three seeds (``tests/functional/seed_margins.py``, quick
profile, 30 held-out phrases):

| statistic | seeds 0 / 1 / 2 | asserted |
| --- | --- | --- |
| val mel loss, last / first | 0.489 / 0.512 / 0.512 | < 0.6 |
| outputs that hit the length cap | 0 / 5 / 1 of 30 | <= 15 of 30 |
| MCD / codec round trip | 3.18 / 3.63 / 3.04 | > 1 (the round trip is the ceiling) |
| length correlation | 0.65 / 0.09 / 0.02 | not asserted: noise at 150 steps |
| MCD / random codes | 0.84 / 0.97 / 0.76 | not asserted: noise at 150 steps |
"""

import json

from amhelpers import embedded


def test_quick_base_model_learns_and_generates(hornmt_dir, course_home):
    p = embedded.profile("quick")
    checkpoint = embedded.base_model(p, progress=False)
    metrics = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if m.get("split") == "val"]
    assert val[-1]["mel_loss"] < 0.6 * val[0]["mel_loss"]

    result = embedded.generation_metrics(checkpoint, p, "eng", n=embedded.held_out_count(p))
    print(json.dumps({k: v for k, v in result.items() if k != "items"}))
    assert result["n"] == embedded.held_out_count(p) == 30
    # Generation runs and mostly stops by itself (an untrained model never stops).
    assert result["hit_cap"] <= result["n"] // 2
    assert all(i["n_gen"] > 0 for i in result["items"])
    assert all(0 <= c < p.codebook_k for i in result["items"] for c in i["codes"])
    # Data and codec facts (no model involved): espeak-ng's duration follows the letters, and
    # the codec round trip is far closer to the reference than the mean frame.
    assert 0.5 < result["length_corr_chars"] <= 1.0
    assert result["mcd_mean_frame"] > 2 * result["mcd_round_trip"]
    assert result["mcd"] > result["mcd_round_trip"]


def test_base_model_is_reused(hornmt_dir, course_home):
    p = embedded.profile("quick")
    first = embedded.base_model(p, progress=False)
    stamp = first.stat().st_mtime_ns
    assert embedded.base_model(p, progress=False) == first and first.stat().st_mtime_ns == stamp
