"""Measure the margins of chapter 6b's retention assertions over fine-tune seeds (quick profile).

Not collected by pytest (no ``test_`` prefix): run it by hand, in its own work folder,

    AMHELPERS_HOME=/tmp/margins python tests/functional/replay_margins.py --seeds 0 1 2

On the quick English base model it trains (or reuses) the fix, the fix with English replay (a
quarter and half of every batch) and with its lower two blocks frozen, and with LoRA adapters (rank 8) instead of the blocks, per seed, and prints one
JSON line per run: English validation mel loss above the base model's (``forgot``) and the
Amharic validation mel loss (``test_chapter_6b.py`` asserts on the first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from amhelpers import embedded, recipes
from amhelpers.data import read_manifest
from amhelpers.model import load_checkpoint
from amhelpers.train import validation_loss

RUNS = {"fix": recipes.FIX,
        "fix, replay 0.25": dataclasses.replace(recipes.FIX, replay_fraction=0.25),
        "fix, replay 0.5": dataclasses.replace(recipes.FIX, replay_fraction=0.5),
        "fix, 2 blocks frozen": dataclasses.replace(recipes.FIX, freeze_layers=2),
        "fix, LoRA rank 8": dataclasses.replace(recipes.FIX, lora_rank=8),
        "fix, LoRA rank 8, lr x10": dataclasses.replace(recipes.FIX, lora_rank=8,
                                                        lr_ratio=10 * recipes.FIX.lr_ratio)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args()
    p = embedded.profile("quick")
    english = read_manifest(embedded.manifest(p, p.base_lang, "val", embedded.base_tokenizer(p),
                                              progress=False))
    base = validation_loss(load_checkpoint(embedded.base_model(p, progress=False))[0],
                           english)["mel_loss"]
    for seed in args.seeds:
        for name in args.runs:
            spec = RUNS[name]
            r = embedded.finetune(p, spec, seed=seed)
            eng = validation_loss(load_checkpoint(r["checkpoint"])[0], english)["mel_loss"]
            print(json.dumps({"seed": seed, "run": name, "forgot": round(eng - base, 4),
                              "amh_val_mel": round(r["val"]["mel_loss"], 4)}), flush=True)


if __name__ == "__main__":
    main()
