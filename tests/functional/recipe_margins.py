"""Measure the margins of chapters 3 and 4's recipe assertions over seeds (quick profile).

Not collected by pytest (no ``test_`` prefix): run it by hand, in its own work folder,

    AMHELPERS_HOME=/tmp/margins python tests/functional/recipe_margins.py --seeds 0 1 2

For each seed it trains (or reuses) the quick English base model of ``seed_margins.py`` and the
course's recipes on it, then prints one JSON line per seed with the statistics the functional
tests assert (``test_chapter3.py``, ``test_chapter4.py``) and finally their minimum and maximum.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from amhelpers import diagnose, embedded, recipes
from amhelpers.tables import TEXT_KEYS


def measure(seed: int) -> dict:
    """Train the course's recipes on the quick base model of ``seed``; return the statistics."""
    p = dataclasses.replace(embedded.profile("quick"), name=f"quick-seed{seed}-t2", seed=seed)
    runs = {r.name: embedded.finetune(p, r) for r in
            (recipes.ORIGINAL, recipes.ORIGINAL_FIX, recipes.FIX, recipes.ORIGINAL_NAIVE)}
    out: dict = {"seed": seed}
    for name, r in runs.items():
        new = r["drift"]["tables"]["text_embedding.weight"]["new"]
        out[f"{name}.share_below_1pct"] = new["share_below_1pct"]
        out[f"{name}.frozen_changed_rows"] = sum(r["frozen_changed_rows"].values())
        out[f"{name}.val_mel"] = r["val"]["mel_loss"]
        rep = diagnose.diagnose(r["checkpoint"], r["base_rows"], init_snapshot=r["init"],
                                tokenizer=r["tokenizer"], text=p.target_lang, lang=p.target_lang,
                                log=f"{r['run_dir']}/train", train_manifest=r["train_manifest"])
        out[f"{name}.first_cause"] = rep["causes"][0]["cause"]
        out[f"{name}.share_below_1pct_in_training"] = rep["evidence"]["new_share_below_1pct"]
        out[f"{name}.unk_rate"] = rep["unk"]["unk_rate"]
    per_step = {name: {k: r["drift"]["tables"][k]["new"]["median"] / r["steps"] for k in TEXT_KEYS}
                for name, r in runs.items()}
    for k in TEXT_KEYS:
        out[f"fix_over_original_fix.{k}"] = per_step["fix"][k] / per_step["original_fix"][k]
        out[f"original_over_original_fix.{k}"] = per_step["original"][k] / per_step["original_fix"][k]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        rows.append(measure(seed))
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k != "seed" and isinstance(rows[0][k], (int, float))]
    print(json.dumps({"min": {k: min(r[k] for r in rows) for k in keys},
                      "max": {k: max(r[k] for r in rows) for k in keys}}))


if __name__ == "__main__":
    main()
