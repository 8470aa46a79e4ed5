"""Cost of freezing base rows on the real IndexTTS2 GPT at its real size, on CPU; JSON lines.

The real ``UnifiedVoice`` class (``amhelpers.indextts``, the optional ``indextts`` extra) is
built from IndexTTS2's ``config.yaml`` (model_dim 1280, 24 layers, 20 heads) with its text
tables sized for a 12,000-piece tokenizer extended to 24,000 (24,001 rows), random weights. It
trains with AdamW (weight decay 0.01, grad clip 1.0) on synthetic batches (half base, half new
text ids; uniform mel codes) through its own GPT-2 stack, text and mel losses 0.2 / 0.8, with
a fixed random speaker latent in the 32 conditioning positions (the conditioning encoders do
not run; in a real run they add the same cost to every mode, so the ratios here are upper
bounds).

Four copies of a 0.6B-parameter model with Adam state do not fit a 24 GB machine, so the modes
take turns on one model: each (round, mode) builds the freeze and a fresh optimizer, takes one
untimed step (Adam allocates its state), then times ``--steps`` steps; each round shuffles the
order of the modes. Lines:

- ``{"bench": "unifiedvoice_freeze_step_time", "mode", "median_step_s", "ratio_vs_none",
  "ratio_min", "ratio_max", ...}``: ``ratio_vs_none`` is the median over rounds of the
  per-round ratio to no freezing; the goal is at most 1.03 for ``exact`` and ``exact-sparse``.
- ``{"bench": "unifiedvoice_freeze_optimizer_state", "mode", "table_state_bytes",
  "total_state_bytes", "base_rows_bit_identical", ...}``.

When ``peft`` is installed, a fifth mode, ``peft-trainable-tokens``, wraps ``text_embedding``
and ``text_head`` in PEFT's TrainableTokens for the new rows (``inject_adapter_in_model``; the
rest of the model trains as in the other modes) and its state line adds what a trainer must
know before choosing it: ``state_dict_keys_unchanged`` (False: the tables' keys gain
``base_layer`` and the adapter's own keys), ``head_bias_in_forward`` (whether the wrapped
head's output still adds ``text_head.bias``) and ``head_bias_trained``. The wrapping is taken
off after each of its turns.

    python benchmarks/bench_unifiedvoice.py [--config config.yaml] [--rounds 3] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from gpu_freeze import _state_bytes, synthetic_batches
from torch import nn

from amhelpers.freeze import DEFAULT_NAMES, freeze_base_rows
from amhelpers.lora import inject_adapters

MODES = ("none", "hook", "exact", "exact-sparse")
PEFT_MODE = "peft-trainable-tokens"
GOAL = 1.03
TABLES = ("text_embedding", "text_head")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit pattern of a float32 tensor (NaN-safe equality)."""
    return t.contiguous().view(torch.int32)


def build(config: Path, text_tokens: int, seed: int = 0) -> nn.Module:
    """The real UnifiedVoice from ``config``'s ``gpt`` section, ``text_tokens + 1`` text rows."""
    import warnings

    import yaml
    from transformers.utils import logging as hf_logging

    from amhelpers.indextts import load_unifiedvoice_class

    gpt = dict(yaml.safe_load(config.read_text(encoding="utf-8"))["gpt"])
    gpt["number_text_tokens"] = text_tokens
    cls = load_unifiedvoice_class()
    torch.manual_seed(seed)
    hf_logging.set_verbosity_error()  # GPT-2's default bos/eos ids warning: harmless here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**gpt).train()


def wrap_trainable_tokens(model: nn.Module, base_rows: int) -> dict[str, object]:
    """PEFT's TrainableTokens on the text tables' rows ``[base_rows, rows)``; every other
    parameter keeps its ``requires_grad`` (PEFT would freeze them). Returns what the wrapping
    changes: the state-dict keys, and whether the head's forward still adds its bias."""
    import peft

    keys = set(model.state_dict())
    rows = model.text_embedding.weight.shape[0]
    x = torch.randn(2, model.text_head.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.text_head(x)
    inject_adapters(model, peft.TrainableTokensConfig(
        target_modules=list(TABLES), token_indices=list(range(base_rows, rows))),
        still=lambda name: ".base_layer." in name)
    with torch.no_grad():
        wrapped = model.text_head(x)
    return {"peft_version": peft.__version__,
            "state_dict_keys_unchanged": set(model.state_dict()) == keys,
            "state_dict_keys_added": sorted(set(model.state_dict()) - keys)[:4],
            "head_bias_in_forward": bool(torch.allclose(plain, wrapped, atol=1e-6)),
            "head_bias_trained": bool(model.text_head.base_layer.bias.requires_grad)}


def unwrap_trainable_tokens(model: nn.Module, trainable: bool = True) -> None:
    """Take the TrainableTokens wrapping off (the base tables were never changed)."""
    for name in TABLES:
        base = getattr(model, name).base_layer
        base.requires_grad_(trainable)
        setattr(model, name, base)


def loss_of(model: nn.Module, batch: dict[str, torch.Tensor], cond_len: int = 32) -> torch.Tensor:
    """Text + mel loss through UnifiedVoice's own embeddings, GPT-2 stack and heads, behind
    ``cond_len`` conditioning positions (a fixed random latent: the encoders do not run)."""
    text, codes = batch["text_ids"], batch["codes"]
    emb_t = model.text_embedding(text) + model.text_pos_embedding(text)
    emb_m = model.mel_embedding(codes) + model.mel_pos_embedding(codes)
    # a fixed random speaker latent: all-zero conditioning positions stay exactly zero through
    # every layer, and each LayerNorm's backward at zero variance multiplies the gradient by
    # 1/sqrt(eps) (about 316): 48 of them overflow to inf, then NaN (seen at 24 layers)
    cond = torch.randn(text.shape[0], cond_len, emb_t.shape[-1],
                       generator=torch.Generator().manual_seed(0))
    text_logits, mel_logits = model.get_logits(cond, emb_t, model.text_head, emb_m, model.mel_head)
    text_loss = F.cross_entropy(text_logits[:, :, :-1], text[:, 1:])
    mel_loss = F.cross_entropy(mel_logits[:, :, :-1], codes[:, 1:])
    return 0.2 * text_loss + 0.8 * mel_loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None,
                        help="IndexTTS2's config.yaml (default: $AMHELPERS_INDEXTTS2_DIR/config.yaml)")
    parser.add_argument("--base-tokens", type=int, default=12000)
    parser.add_argument("--text-tokens", type=int, default=24000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode per round")
    parser.add_argument("--text-len", type=int, default=60)
    parser.add_argument("--mel-len", type=int, default=240)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    config = args.config
    if config is None:
        folder = os.environ.get("AMHELPERS_INDEXTTS2_DIR")
        if not folder:
            parser.error("give --config or set AMHELPERS_INDEXTTS2_DIR to the folder holding "
                         "IndexTTS2's config.yaml")
        config = Path(folder) / "config.yaml"
    if not config.is_file():
        parser.error(f"--config {config} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = build(config, args.text_tokens)
    base_rows = args.base_tokens  # rows [0, 12000) hold the base pieces; the "+1" row moved on
    rows = model.text_embedding.weight.shape[0]
    n_params = sum(p.numel() for p in model.parameters())
    mel_codes = model.mel_embedding.weight.shape[0]
    batches = synthetic_batches(4, 1, args.text_len, args.mel_len, rows, base_rows,
                                mel_codes - 2, torch.device("cpu"))
    step_i = 0

    def steps(opt: torch.optim.Optimizer, n: int) -> float:
        nonlocal step_i
        t0 = time.perf_counter()
        for _ in range(n):
            batch = batches[step_i % len(batches)]
            step_i += 1
            opt.zero_grad(set_to_none=True)
            loss_of(model, batch).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return (time.perf_counter() - t0) / n

    try:
        import peft  # noqa: F401
        modes = (*MODES, PEFT_MODE)
    except ImportError:
        modes = MODES
        print(json.dumps({"bench": "unifiedvoice_freeze_note",
                          "note": f"peft is not installed: {PEFT_MODE} not measured"}))
    times: dict[str, list[float]] = {m: [] for m in modes}
    state: dict[str, dict] = {}
    order = list(modes)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for mode in order:
            before = {n: model.get_parameter(n).detach()[:base_rows].clone() for n in DEFAULT_NAMES}
            handle, extra = None, {}
            if mode == PEFT_MODE:
                extra = wrap_trainable_tokens(model, base_rows)
                params = [p for p in model.parameters() if p.requires_grad]
                tables = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]
            else:
                handle = None if mode == "none" else freeze_base_rows(model, base_rows, mode=mode)
                params = handle.parameters(model) if handle else list(model.parameters())
                tables = [model.get_parameter(n) for n in DEFAULT_NAMES]
            opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
            if handle is not None:
                handle.attach(opt)
            steps(opt, 1)  # untimed: Adam allocates its state
            times[mode].append(steps(opt, args.steps))
            if mode == PEFT_MODE:  # the rows the forward uses: the base table's, merged
                merged = {f"{t}.weight": getattr(model, t).get_merged_weights(["default"])
                          for t in TABLES}
                identical = all(torch.equal(_bits(merged[n].detach()[:base_rows]), _bits(before[n]))
                                for n in ("text_embedding.weight", "text_head.weight"))
                identical = identical and torch.equal(
                    _bits(model.text_head.base_layer.bias.detach()[:base_rows]),
                    _bits(before["text_head.bias"]))
            else:
                identical = all(torch.equal(_bits(model.get_parameter(n).detach()[:base_rows]),
                                            _bits(before[n])) for n in DEFAULT_NAMES)
            finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                         if p.grad is not None)
            state[mode] = {
                "table_state_bytes": (handle.optimizer_state_bytes(opt) if handle
                                      else _state_bytes(opt, tables)),
                "total_state_bytes": _state_bytes(opt, [p for g in opt.param_groups
                                                        for p in g["params"]]),
                "base_rows_bit_identical": bool(identical), "grads_finite": finite, **extra}
            if handle is not None:
                handle.remove()
            if mode == PEFT_MODE:
                unwrap_trainable_tokens(model)
            del opt, handle

    common = {"model": "UnifiedVoice (real class, config.yaml)", "parameters": n_params,
              "text_rows": rows, "base_rows": base_rows, "device": "cpu",
              "threads": torch.get_num_threads(), "batch": 1, "text_len": args.text_len,
              "mel_len": args.mel_len, "rounds": args.rounds, "steps_per_round": args.steps}
    for mode in modes:
        ratios = [t / n for t, n in zip(times[mode], times["none"])]
        print(json.dumps({"bench": "unifiedvoice_freeze_step_time", "mode": mode, **common,
                          "median_step_s": round(statistics.median(times[mode]), 3),
                          "ratio_vs_none": round(statistics.median(ratios), 4),
                          "ratio_min": round(min(ratios), 4), "ratio_max": round(max(ratios), 4),
                          "goal": GOAL if mode in ("exact", "exact-sparse") else None,
                          "goal_met": (statistics.median(ratios) <= GOAL
                                       if mode in ("exact", "exact-sparse") else None)}),
              flush=True)
    none_bytes = state["none"]["table_state_bytes"]
    for mode in modes:
        print(json.dumps({"bench": "unifiedvoice_freeze_optimizer_state", "mode": mode, **common,
                          **state[mode], "table_state_ratio_vs_none":
                          round(state[mode]["table_state_bytes"] / none_bytes, 4),
                          "wall_s": round(time.perf_counter() - start, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
