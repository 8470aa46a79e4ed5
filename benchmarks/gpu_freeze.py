"""Cost of freezing base rows on an IndexTTS2-sized model; one JSON line per measurement.

A synthetic model shaped like IndexTTS2's GPT ("UnifiedVoice": model_dim 1280, 24 layers,
20 heads, text tables of 24001 rows = a 12k tokenizer extended to 24k, 8194 mel codes),
trained with AdamW (weight decay 0.01, grad clip 1.0) under bf16 autocast, side by side in
four copies:

- ``none``: no freezing (the reference);
- ``hook``: the original gradient-hook fix (``amhelpers.freeze``, mode ``"hook"``);
- ``exact``: snapshot restore after every step (mode ``"exact"``);
- ``exact-sparse``: optimizer state only for the new rows (mode ``"exact-sparse"``).

Rounds interleave the modes in a shuffled order (so drifting clocks and neighbours hit all of
them alike); each mode's step time is the median over rounds and ``ratio_vs_none`` the median
of per-round ratios. Lines:

- ``{"bench": "freeze_step_time", "mode", "median_step_ms", "ratio_vs_none", ...}``
- ``{"bench": "freeze_optimizer_state", "mode", "table_state_bytes", "total_state_bytes",
  "table_state_ratio_vs_none", "base_rows_bit_identical", "base_max_abs_drift",
  "new_rows_moved", ...}``

    python benchmarks/gpu_freeze.py            # on a GPU (about 36 GB for the four copies)
    python benchmarks/gpu_freeze.py --tiny     # CPU smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from amhelpers.freeze import DEFAULT_NAMES, freeze_base_rows

MODES = ("none", "hook", "exact", "exact-sparse")


# ----------------------------------------------------------------------------- the model
class Block(nn.Module):
    """Pre-LayerNorm GPT-2 block (UnifiedVoice uses HF GPT-2: same shapes and cost)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


class SyntheticVoice(nn.Module):
    """UnifiedVoice's text/mel tables and heads around a GPT-2-shaped stack."""

    def __init__(self, text_rows: int, mel_codes: int, dim: int, layers: int, heads: int,
                 max_len: int = 1024) -> None:
        super().__init__()
        self.text_embedding = nn.Embedding(text_rows, dim)
        self.mel_embedding = nn.Embedding(mel_codes, dim)
        self.text_pos = nn.Embedding(max_len, dim)
        self.mel_pos = nn.Embedding(max_len, dim)
        self.gpt = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)
        self.text_head = nn.Linear(dim, text_rows)
        self.mel_head = nn.Linear(dim, mel_codes)
        for emb in (self.text_embedding, self.mel_embedding, self.text_pos, self.mel_pos):
            nn.init.normal_(emb.weight, 0.0, 0.02)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        text, codes = batch["text_ids"], batch["codes"]
        n, m = text.shape[1], codes.shape[1]
        pos_t = torch.arange(n, device=text.device)
        pos_m = torch.arange(m, device=text.device)
        x = torch.cat([self.text_embedding(text) + self.text_pos(pos_t),
                       self.mel_embedding(codes) + self.mel_pos(pos_m)], dim=1)
        for block in self.gpt:
            x = block(x)
        h = self.final_norm(x)
        text_logits = self.text_head(h[:, : n - 1]).float()
        mel_logits = self.mel_head(h[:, n:-1]).float()
        text_loss = F.cross_entropy(text_logits.flatten(0, 1), text[:, 1:].flatten())
        mel_loss = F.cross_entropy(mel_logits.flatten(0, 1), codes[:, 1:].flatten())
        return 0.2 * text_loss + 0.8 * mel_loss


# ----------------------------------------------------------------------------- the runner
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_bytes(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> int:
    total = 0
    for p in params:
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.dim() > 0:
                total += value.numel() * value.element_size()
    return total


def run_benchmark(*, model_name: str, factory: Callable[[], nn.Module],
                  batches: list[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                  base_rows: int, device: torch.device, rounds: int, steps: int,
                  autocast_dtype: torch.dtype | None, lr: float = 1e-4, weight_decay: float = 0.01,
                  grad_clip: float = 1.0, seed: int = 0, extra: dict[str, Any] | None = None,
                  emit: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Time one training step per mode, interleaved; measure optimizer state per mode."""
    emit = emit or (lambda row: print(json.dumps(row), flush=True))
    extra = dict(extra or {})
    setups: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        torch.manual_seed(seed)
        model = factory().to(device).train()
        handle = None if mode == "none" else freeze_base_rows(model, base_rows, mode=mode)
        params = handle.parameters(model) if handle else list(model.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        if handle is not None:
            handle.attach(opt)
        tables = {n: model.get_parameter(n).detach().clone() for n in DEFAULT_NAMES}
        setups[mode] = {"model": model, "handle": handle, "opt": opt, "start": tables,
                        "times": [], "i": 0}

    def train_steps(setup: dict[str, Any], n: int) -> float:
        model, opt = setup["model"], setup["opt"]
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            batch = batches[setup["i"] % len(batches)]
            setup["i"] += 1
            opt.zero_grad(set_to_none=True)
            if autocast_dtype is not None:
                with torch.autocast(device.type, dtype=autocast_dtype):
                    loss = loss_fn(model, batch)
            else:
                loss = loss_fn(model, batch)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        _sync(device)
        return (time.perf_counter() - start) / n

    for setup in setups.values():  # warm up (allocator, kernels, optimizer state)
        train_steps(setup, 2)
    order = list(MODES)
    rng = random.Random(seed)
    ratios: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        rng.shuffle(order)
        took = {mode: train_steps(setups[mode], steps) for mode in order}
        for mode in MODES:
            setups[mode]["times"].append(took[mode])
            ratios[mode].append(took[mode] / took["none"])

    common = {"model": model_name, "device": str(device),
              "autocast": str(autocast_dtype).replace("torch.", "") if autocast_dtype else None,
              "base_rows": base_rows, **extra}
    rows = []
    for mode in MODES:
        times = setups[mode]["times"]
        rows.append({"bench": "freeze_step_time", "mode": mode, **common,
                     "median_step_ms": round(statistics.median(times) * 1e3, 3),
                     "ratio_vs_none": round(statistics.median(ratios[mode]), 4),
                     "ratio_min": round(min(ratios[mode]), 4),
                     "ratio_max": round(max(ratios[mode]), 4),
                     "rounds": rounds, "steps_per_round": steps})
    none_table_bytes = None
    for mode in MODES:
        setup = setups[mode]
        model, handle, opt = setup["model"], setup["handle"], setup["opt"]
        table_params = [model.get_parameter(n) for n in DEFAULT_NAMES]
        if handle is not None:
            table_bytes = handle.optimizer_state_bytes(opt)
        else:
            table_bytes = _state_bytes(opt, table_params)
        none_table_bytes = none_table_bytes or table_bytes
        all_params = [p for g in opt.param_groups for p in g["params"]]
        drift = 0.0
        identical = True
        moved = True
        for name, p in zip(DEFAULT_NAMES, table_params):
            start, now = setup["start"][name], p.detach()
            identical &= torch.equal(now[:base_rows], start[:base_rows])
            drift = max(drift, float((now[:base_rows].double() - start[:base_rows].double())
                                     .abs().max()))
            moved &= not torch.equal(now[base_rows:], start[base_rows:])
        rows.append({"bench": "freeze_optimizer_state", "mode": mode, **common,
                     "table_state_bytes": table_bytes,
                     "total_state_bytes": _state_bytes(opt, all_params),
                     "table_state_ratio_vs_none": round(table_bytes / none_table_bytes, 4),
                     "base_rows_bit_identical": bool(identical),
                     "base_max_abs_drift": drift, "new_rows_moved": bool(moved),
                     "steps_taken": setup["i"]})
    for row in rows:
        emit(row)
    return rows


# ----------------------------------------------------------------------------- main
def synthetic_batches(n: int, batch: int, text_len: int, mel_len: int, text_rows: int,
                      base_rows: int, mel_codes: int, device: torch.device,
                      seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches whose text mixes base and new token ids (half each), codes uniform."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        base = torch.randint(0, base_rows, (batch, text_len), generator=gen)
        new = torch.randint(base_rows, text_rows, (batch, text_len), generator=gen)
        pick = torch.rand(batch, text_len, generator=gen) < 0.5
        text = torch.where(pick, new, base)
        codes = torch.randint(0, mel_codes, (batch, mel_len), generator=gen)
        out.append({"text_ids": text.to(device), "codes": codes.to(device)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU smoke test")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per mode per round")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--no-autocast", action="store_true", help="train in float32")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny:
        size = {"dim": 64, "layers": 2, "heads": 2, "base_rows": 121, "text_rows": 241,
                "mel_codes": 130, "batch": 4, "text_len": 16, "mel_len": 48,
                "rounds": 3, "steps": 2}
    else:
        # IndexTTS2 release: 1280 wide, 24 layers, 20 heads; 12000 -> 24000 tokens (+1 row)
        size = {"dim": 1280, "layers": 24, "heads": 20, "base_rows": 12001,
                "text_rows": 24001, "mel_codes": 8194, "batch": 8, "text_len": 64,
                "mel_len": 256, "rounds": 7, "steps": 5}
    rounds = args.rounds or size["rounds"]
    steps = args.steps or size["steps"]
    batch = args.batch or size["batch"]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    batches = synthetic_batches(4, batch, size["text_len"], size["mel_len"], size["text_rows"],
                                size["base_rows"], size["mel_codes"], device)

    def factory() -> nn.Module:
        return SyntheticVoice(size["text_rows"], size["mel_codes"], size["dim"], size["layers"],
                              size["heads"], max_len=max(size["text_len"], size["mel_len"]))

    n_params = sum(p.numel() for p in factory().parameters()) if args.tiny else None
    name = "synthetic-unifiedvoice-tiny" if args.tiny else "synthetic-unifiedvoice-1280x24"
    extra = {"text_rows": size["text_rows"], "model_dim": size["dim"], "layers": size["layers"],
             "batch": batch, "seq": size["text_len"] + size["mel_len"],
             "torch": torch.__version__}
    if n_params is not None:
        extra["params"] = n_params
    if device.type == "cuda":
        extra["gpu"] = torch.cuda.get_device_name(device)
    run_benchmark(model_name=name, factory=factory, batches=batches,
                  loss_fn=lambda model, b: model.loss(b), base_rows=size["base_rows"],
                  device=device, rounds=rounds, steps=steps,
                  autocast_dtype=None if args.no_autocast else torch.bfloat16, extra=extra)
    if device.type == "cuda":
        print(json.dumps({"bench": "freeze_gpu_memory", "model": name,
                          "max_allocated_gib": round(torch.cuda.max_memory_allocated(device)
                                                     / 2**30, 2),
                          "note": "four model copies (one per mode) are alive together"}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
