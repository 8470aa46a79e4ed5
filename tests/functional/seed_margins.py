"""Measure the margins of the functional tests' generation-metric assertions over seeds.

Not collected by pytest (no ``test_`` prefix): run it by hand, in its own work folder,

    AMHELPERS_HOME=/tmp/margins python tests/functional/seed_margins.py --seeds 0 1 2

It trains the quick profile's English base model once per seed (and the seed-0 model again
with one thread), evaluates greedy generation on the quick profile's 30 held-out phrases, and
prints one JSON line per run plus the minimum over runs of each asserted statistic, which the
thresholds in ``test_base_model.py`` sit below.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from amhelpers import embedded


def measure(seed: int, threads: int) -> dict:
    """Pretrain the quick base model with ``seed`` on ``threads`` threads and evaluate it."""
    torch.set_num_threads(threads)
    p = dataclasses.replace(embedded.profile("quick"), name=f"quick-seed{seed}-t{threads}", seed=seed)
    checkpoint = embedded.base_model(p, progress=False)
    val = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in val if m.get("split") == "val"]
    result = embedded.generation_metrics(checkpoint, p, "eng", n=embedded.held_out_count(p))
    return {"seed": seed, "threads": threads, "n": result["n"],
            "val_loss_ratio": val[-1]["mel_loss"] / val[0]["mel_loss"],
            **{k: result[k] for k in ("length_ratio", "length_corr", "length_corr_chars",
                                      "mcd_vs_random", "hit_cap")},
            "mcd_over_round_trip": result["mcd"] / result["mcd_round_trip"],
            "mean_frame_over_round_trip": result["mcd_mean_frame"] / result["mcd_round_trip"],
            "stopped_share": 1 - result["hit_cap"] / result["n"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        for seed in args.seeds:
            rows.append(measure(seed, threads))
            print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "threads", "n")]
    print(json.dumps({"min": {k: min(r[k] for r in rows) for k in keys},
                      "max": {k: max(r[k] for r in rows) for k in keys}}))


if __name__ == "__main__":
    main()
