"""Cost of freezing base rows on the course's MiniVoice; one JSON line per measurement.

Four copies of MiniVoice at its default size (model_dim 256, 4 layers; text tables 1501 rows,
of which the first ``--base-rows`` (default 1001) are frozen; 514 mel codes) train side by
side with AdamW (weight decay 0.01, grad clip 1.0) on synthetic batches whose text mixes base
and new token ids: no freezing, the original gradient hook, exact mode and exact-sparse mode
(``amhelpers.freeze``). Rounds interleave the modes in a shuffled order; step time is the
median over rounds, ``ratio_vs_none`` the median of per-round ratios to no freezing. Then the
optimizer-state bytes held for the text tables per mode, and whether the base rows stayed
bit-identical. Lines as in ``benchmarks/gpu_freeze.py``:

- ``{"bench": "freeze_step_time", "mode", "median_step_ms", "ratio_vs_none", ...}``
- ``{"bench": "freeze_optimizer_state", "mode", "table_state_bytes", ...}``

Falls back to an equivalent synthetic model when ``amhelpers.model`` is not importable.

    python benchmarks/bench_freeze.py [--rounds 15] [--steps 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from gpu_freeze import SyntheticVoice, run_benchmark, synthetic_batches

TEXT_TOKENS, MEL_CODES = 1500, 514  # 1501 text rows; 512 codes + start/stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=1, help="steps per mode per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--base-rows", type=int, default=1001)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: steadier ratios on a shared machine; "
                             "0 keeps torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    text_len, mel_len = 14, 40
    batches = synthetic_batches(8, args.batch, text_len, mel_len, TEXT_TOKENS + 1,
                                args.base_rows, MEL_CODES - 2, device)
    # MiniVoice adds start/stop itself and reads text ids in [0, number_text_tokens)
    for b in batches:
        b["text_ids"] = b["text_ids"].clamp(max=TEXT_TOKENS - 1)
    try:
        from amhelpers.model import MiniVoice, MiniVoiceConfig

        config = MiniVoiceConfig(number_text_tokens=TEXT_TOKENS, number_mel_codes=MEL_CODES,
                                 max_text_tokens=64, max_mel_tokens=128)
        lengths = {"text_lengths": torch.full((args.batch,), text_len),
                   "code_lengths": torch.full((args.batch,), mel_len)}

        def factory() -> torch.nn.Module:
            return MiniVoice(config)

        def loss_fn(model: torch.nn.Module, b: dict) -> torch.Tensor:
            out = model(b["text_ids"], lengths["text_lengths"], b["codes"],
                        lengths["code_lengths"])
            return 0.1 * out["text_loss"] + 1.0 * out["mel_loss"]

        factory().train()  # fails early if the module is unusable
        name = "MiniVoice"
    except (ImportError, AttributeError, TypeError, ValueError):
        def factory() -> torch.nn.Module:
            return SyntheticVoice(TEXT_TOKENS + 1, MEL_CODES, 256, 4, 4, max_len=64)

        def loss_fn(model: torch.nn.Module, b: dict) -> torch.Tensor:
            return model.loss(b)

        name = "synthetic-minivoice-256x4"
    params = sum(p.numel() for p in factory().parameters())
    run_benchmark(model_name=name, factory=factory, batches=batches, loss_fn=loss_fn,
                  base_rows=args.base_rows, device=device, rounds=args.rounds,
                  steps=args.steps, autocast_dtype=None, lr=1e-3,
                  extra={"text_rows": TEXT_TOKENS + 1, "params": params, "batch": args.batch,
                         "threads": torch.get_num_threads(), "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
