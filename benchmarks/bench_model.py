"""Time MiniVoice at the default size; print one JSON line per benchmark.

- ``minivoice_train``: training throughput (real text + code tokens per second, padding not
  counted) on synthetic length-bucketed batches of 32 phrases shaped like the course's English
  data (~1.5 s, ~38 codes), AdamW step and grad clip included, for about ``--seconds``.
- ``minivoice_train_guided``: the cost of the guided-attention loss (the embedded base model's
  pretraining aid): two copies of the model, one with the loss and one without, take turns
  on the same batches, so both see the same machine load; ``ratio`` = guided / plain time.
- ``minivoice_generate``: real-time factor of the model alone (no Griffin-Lim) for greedy
  generation of a 3-second utterance (75 codes at 25 codes/s), with and without the KV cache:
  RTF = generation seconds / audio seconds; ``rtf_kv_batch8`` is the per-utterance RTF of
  ``generate_batch`` over 8 utterances.

    python benchmarks/bench_model.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from amhelpers.data import LengthBucketBatches, collate
from amhelpers.model import MiniVoice, MiniVoiceConfig, count_parameters

CODES_PER_SECOND = 25
TEXT_TOKENS, CODEBOOK = 500, 512


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Phrases with ~12 text tokens and ~3 codes per token (mean ~1.5 s of audio)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        n_text = rng.randint(4, 20)
        n_codes = max(5, int(n_text * rng.uniform(2.5, 3.8)))
        rows.append({"id": str(i), "text_ids": [rng.randrange(2, TEXT_TOKENS) for _ in range(n_text)],
                     "codes": [rng.randrange(CODEBOOK) for _ in range(n_codes)]})
    return rows


def synthetic_batches(batch_size: int) -> list[dict]:
    """One epoch of length-bucketed, collated batches of :func:`synthetic_rows`."""
    rows = synthetic_rows(3200)
    sampler = LengthBucketBatches([len(r["text_ids"]) + len(r["codes"]) for r in rows],
                                  batch_size, seed=0)
    return [collate([rows[i] for i in b]) for b in sampler.epoch_batches(0)]


def train_step(model: MiniVoice, optimizer: torch.optim.Optimizer, batch: dict,
               guide_sigma: float | None = None) -> None:
    """One optimizer step as the trainer takes it (loss weights 0.1/1, guide weight 1, clip 1)."""
    out = model(batch["text_ids"], batch["text_lengths"], batch["codes"], batch["code_lengths"],
                guide_sigma=guide_sigma)
    loss = 0.1 * out["text_loss"] + out["mel_loss"] + out.get("guide_loss", 0.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def bench_train(model: MiniVoice, seconds: float) -> dict:
    batches = synthetic_batches(32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    tokens = steps = 0
    elapsed = 0.0
    while elapsed < seconds or steps < 3:
        batch = batches[steps % len(batches)]
        tick = time.perf_counter()
        train_step(model, optimizer, batch)
        if steps >= 2:  # the first steps warm up allocators and kernels
            elapsed += time.perf_counter() - tick
            tokens += int((batch["text_lengths"] + batch["code_lengths"] + 3).sum())
        steps += 1
    return {"bench": "minivoice_train", "tokens_per_s": round(tokens / elapsed, 1),
            "steps_per_s": round((steps - 2) / elapsed, 3), "batch_size": 32,
            "parameters": count_parameters(model), "timed_steps": steps - 2,
            "seconds": round(elapsed, 2), "threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def bench_guided(seconds: float) -> dict:
    batches = synthetic_batches(16)
    config = MiniVoiceConfig(number_text_tokens=TEXT_TOKENS, number_mel_codes=CODEBOOK + 2)
    runs = {}
    for name in ("plain", "guided"):
        torch.manual_seed(0)
        model = MiniVoice(config).train()
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01))
    spent = {"plain": 0.0, "guided": 0.0}
    timed = {"plain": 0, "guided": 0}
    steps = 0
    while min(spent.values()) < seconds / 2 or steps < 6:
        batch = batches[(steps // 2) % len(batches)]
        name = ("plain", "guided")[steps % 2]
        model, optimizer = runs[name]
        tick = time.perf_counter()
        train_step(model, optimizer, batch, 0.2 if name == "guided" else None)
        if steps >= 4:  # warm-up
            spent[name] += time.perf_counter() - tick
            timed[name] += 1
        steps += 1
    per_step = {name: spent[name] / timed[name] for name in spent}
    return {"bench": "minivoice_train_guided", "batch_size": 16,
            "plain_s_per_step": round(per_step["plain"], 4),
            "guided_s_per_step": round(per_step["guided"], 4),
            "ratio": round(per_step["guided"] / per_step["plain"], 3),
            "timed_steps": timed, "threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def bench_generate(model: MiniVoice, repeats: int) -> dict:
    model.eval()
    text = list(range(10, 22))
    n_codes = 3 * CODES_PER_SECOND
    times = {}
    for use_cache in (True, False):
        model.generate(text, max_len=5, use_cache=use_cache)  # warm-up
        tick = time.perf_counter()
        for _ in range(repeats):
            codes = model.generate(text, max_len=n_codes, min_len=n_codes, use_cache=use_cache)
        times[use_cache] = (time.perf_counter() - tick) / repeats
        assert len(codes) == n_codes
    batch = [[(t + i) % TEXT_TOKENS for t in text] for i in range(8)]
    tick = time.perf_counter()
    out = model.generate_batch(batch, max_len=n_codes, min_len=n_codes)
    batch_s = (time.perf_counter() - tick) / len(batch)
    assert all(len(codes) == n_codes for codes in out)
    audio_s = n_codes / CODES_PER_SECOND
    # the vocoder step: centroid mel -> Griffin-Lim (32 iterations), as the course decodes
    from amhelpers.codec import Codebook, MelConfig

    rng = np.random.default_rng(0)
    book = Codebook(rng.normal(-4, 1, (CODEBOOK, 4 * MelConfig().n_mels)).astype(np.float32), stack=4)
    book.decode(np.asarray(codes[:5]))  # warm-up
    tick = time.perf_counter()
    for _ in range(repeats):
        book.decode(np.asarray(codes))
    vocoder_s = (time.perf_counter() - tick) / repeats
    return {"bench": "minivoice_generate",
            "rtf_kv_with_griffinlim": round((times[True] + vocoder_s) / audio_s, 4),
            "rtf_griffinlim": round(vocoder_s / audio_s, 4), "rtf_kv": round(times[True] / audio_s, 4),
            "rtf_no_kv": round(times[False] / audio_s, 4),
            "speedup": round(times[False] / times[True], 2),
            "rtf_kv_batch8": round(batch_s / audio_s, 4), "codes": n_codes,
            "audio_s": audio_s, "repeats": repeats, "threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="training time to measure")
    parser.add_argument("--repeats", type=int, default=5, help="generations per variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MiniVoice(MiniVoiceConfig(number_text_tokens=TEXT_TOKENS, number_mel_codes=CODEBOOK + 2))
    print(json.dumps(bench_train(model, args.seconds)), flush=True)
    print(json.dumps(bench_guided(args.seconds)), flush=True)
    print(json.dumps(bench_generate(model, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
