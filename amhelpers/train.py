"""Train MiniVoice: the loop, its config and the ``python -m amhelpers train`` command.

Flags follow IndexTTS2's community trainer where it has them (``--learning-rate``,
``--text-loss-weight``, ``--mel-loss-weight``, ``--warmup-steps``, ``--weight-decay``,
``--batch-size``, ``--grad-clip``, ``--max-steps``, ``--output-dir``, ``--resume``, ``--seed``,
``--train-manifest``, ``--val-manifest``, ``--tokenizer``). Defaults are ours, for the
miniature model on a laptop CPU: learning rate 1e-3 (the trainer's 2e-5 is for the 1280-wide
release model and barely moves a small one), warmup 100, loss = 0.1 text + 1.0 mel.

What a run does:

- AdamW (weight decay on every parameter, as the IndexTTS2 trainer does), linear warmup then
  cosine decay to zero at ``max_steps``, gradient clipping;
- length-bucketed batches (:class:`amhelpers.data.LengthBucketBatches`, sorted by
  ``n_text + n_codes``: the model packs text and codes into one sequence), seeded;
- validation every ``val_every`` steps (token-weighted mean losses over the val manifest);
- checkpoints ``ckpt_00001000.pt`` written atomically, the last ``keep_last`` kept, and
  ``latest.json`` pointing at the newest; each holds the model, optimizer, scheduler, RNG
  states and data position, so ``--resume`` continues bit-exactly where the run stopped;
- ``metrics.jsonl`` (one row per log, ``split`` = ``train`` or ``val``), TensorBoard scalars
  under ``tb/``, and a tqdm progress bar.

Later chapters plug in without rewriting the loop: ``param_groups_fn(model, cfg)`` builds the
optimizer's parameter groups (freezing, per-group learning rates), ``on_start(model,
optimizer, step)`` runs once before the first step (e.g. to attach a freeze handle) and
``on_step(model, optimizer, step)`` after every optimizer step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amhelpers.data import LengthBucketBatches, collate, read_manifest
from amhelpers.freeze import freeze_base_rows
from amhelpers.io import atomic_write, sha256_file
from amhelpers.model import (
    CheckpointMismatchError,
    MiniVoice,
    MiniVoiceConfig,
    read_checkpoint,
    save_checkpoint,
)
from amhelpers.optim import StagedSchedule, param_groups
from amhelpers.settings import home

CHECKPOINT_GLOB = "ckpt_*.pt"

ParamGroupsFn = Callable[[MiniVoice, "TrainConfig"], list[dict[str, Any]]]
StepHook = Callable[[MiniVoice, torch.optim.Optimizer, int], None]


def _opt(help_text: str, **kw: Any) -> Any:
    """A dataclass field default carrying its CLI help text."""
    default = kw.pop("default", None)
    return field(default=default, metadata={"help": help_text, **kw})


@dataclass
class TrainConfig:
    """Everything a training run needs; each field is also a ``--flag`` of the CLI."""

    train_manifest: str | None = _opt("training manifest (JSONL); required", type=str)
    val_manifest: str | None = _opt("validation manifest (JSONL)", type=str)
    tokenizer: str | None = _opt(
        "SentencePiece model: sets number_text_tokens of a fresh model; path and sha256 go "
        "into checkpoint meta", type=str)
    output_dir: str | None = _opt(
        "run folder (checkpoints, metrics.jsonl, tb/); default $AMHELPERS_HOME/runs/minivoice",
        type=str)
    learning_rate: float = _opt("peak learning rate (IndexTTS2 trainer: 2e-5 for the full "
                                "model; 1e-3 suits the miniature one)", default=1e-3, type=float)
    text_loss_weight: float = _opt("weight of the text loss", default=0.1, type=float)
    mel_loss_weight: float = _opt("weight of the mel (code) loss", default=1.0, type=float)
    guided_attention_weight: float = _opt(
        "weight of a guided-attention loss (DC-TTS) on one head per layer after the first; "
        "0 = off, as in the IndexTTS2 trainer. The embedded base model uses it: a small model "
        "on little data learns to read the text in order much sooner", default=0.0, type=float)
    guided_attention_sigma: float = _opt("width of the guided-attention band, as a fraction "
                                         "of the utterance", default=0.2, type=float)
    warmup_steps: int = _opt("linear warmup steps before the cosine decay", default=100, type=int)
    weight_decay: float = _opt("AdamW weight decay (on every parameter, as the IndexTTS2 "
                               "trainer)", default=0.01, type=float)
    batch_size: int = _opt("utterances per batch", default=32, type=int)
    grad_clip: float = _opt("clip the gradient norm to this (0 = off)", default=1.0, type=float)
    max_steps: int = _opt("total optimizer steps; the cosine schedule ends here", default=1000,
                          type=int)
    max_minutes: float | None = _opt("stop (and save) after this many wall-clock minutes of "
                                     "this invocation", type=float)
    val_every: int = _opt("validate every N steps (0 = only at the start and the end)",
                          default=200, type=int)
    log_every: int = _opt("log training metrics every N steps", default=10, type=int)
    save_every: int = _opt("save a checkpoint every N steps (and always at the end)",
                           default=500, type=int)
    keep_last: int = _opt("keep this many newest checkpoints", default=3, type=int)
    resume: str | None = _opt("checkpoint to resume from, or 'auto' (the newest in "
                              "--output-dir, if any)", type=str)
    init_checkpoint: str | None = _opt("start from these weights (and their model config) with "
                                       "a fresh optimizer at step 0; ignored when resuming",
                                       type=str)
    seed: int = _opt("seed of initialisation, batches and dropout", default=0, type=int)
    freeze_base_rows: int | None = _opt(
        "keep rows [0, N) of text_embedding/text_head frozen (chapter 4); default: no freeze",
        type=int)
    freeze_mode: str = _opt("how to freeze: exact (bit-identical under any optimizer), or hook "
                            "(the original fix's gradient hook, which leaks under weight decay)",
                            default="exact", type=str, choices=["exact", "hook"])
    new_row_lr: float | None = _opt("learning rate of the text tables (their new rows); "
                                    "default --learning-rate", type=float)
    decay: str = _opt("weight decay on 'all' parameters (the IndexTTS2 trainer) or on "
                      "'weights' only (no decay on embeddings, biases, norms; XTTS)",
                      default="all", type=str, choices=["all", "weights"])
    new_rows_only_steps: int = _opt("train only the text tables for the first N steps, then "
                                    "everything (a staged schedule)", default=0, type=int)
    bucket_window: int = _opt("batches per length-sorting window", default=50, type=int)
    progress: bool = _opt("show a tqdm progress bar", default=True)
    model: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "MiniVoiceConfig fields to set (a fresh run infers number_text_tokens and "
                "number_mel_codes from the tokenizer and manifests)"})

    def check(self) -> None:
        """Raise ValueError for settings that cannot work."""
        if not self.train_manifest:
            raise ValueError("--train-manifest is required")
        positive = ("batch_size", "max_steps", "log_every", "save_every", "keep_last",
                    "bucket_window")
        bad = [f"{name}={getattr(self, name)}" for name in positive if getattr(self, name) < 1]
        bad += [f"{name}={getattr(self, name)}" for name in
                ("learning_rate", "warmup_steps", "weight_decay", "grad_clip", "val_every",
                 "text_loss_weight", "mel_loss_weight", "guided_attention_weight")
                if getattr(self, name) < 0]
        if self.guided_attention_sigma <= 0:
            bad.append(f"guided_attention_sigma={self.guided_attention_sigma}")
        if bad:
            raise ValueError("train settings out of range: " + ", ".join(bad))
        known = {f.name for f in dataclasses.fields(MiniVoiceConfig)}
        if self.freeze_base_rows is not None and self.freeze_base_rows <= 0:
            raise ValueError(f"--freeze-base-rows must be positive, got {self.freeze_base_rows}")
        if self.new_rows_only_steps < 0:
            raise ValueError(f"--new-rows-only-steps must be >= 0, got {self.new_rows_only_steps}")
        if set(self.model) - known:
            raise ValueError(f"unknown model field(s) {sorted(set(self.model) - known)}")


# --------------------------------------------------------------------------- the schedule
def warmup_cosine(step: int, warmup_steps: int, max_steps: int) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine decay to 0 at ``max_steps``.

    Args:
        step: optimizer steps already taken (0 for the first step).
        warmup_steps: steps of linear warmup.
        max_steps: the step at which the factor reaches 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: MiniVoice, rows: list[dict[str, Any]], batch_size: int = 32,
             text_loss_weight: float = 0.1, mel_loss_weight: float = 1.0) -> dict[str, float]:
    """Teacher-forced losses over ``rows``, averaged per predicted token.

    Args:
        model: the model (put in eval mode for the call, then restored).
        rows: manifest rows.
        batch_size: rows per forward pass.
        text_loss_weight: weight of ``text_loss`` in ``loss``.
        mel_loss_weight: weight of ``mel_loss`` in ``loss``.

    Returns:
        ``text_loss``, ``mel_loss`` and their weighted sum ``loss``.
    """
    was_training = model.training
    model.eval()
    sums = {"text": 0.0, "mel": 0.0}
    counts = {"text": 0, "mel": 0}
    try:
        sampler = LengthBucketBatches([len(r["text_ids"]) + len(r["codes"]) for r in rows],
                                      batch_size, shuffle=False)
        for indices in sampler:
            out = model(**_model_inputs(collate([rows[i] for i in indices])))
            for part in ("text", "mel"):
                n = int(out[f"{part}_tokens"])
                sums[part] += float(out[f"{part}_loss"]) * n
                counts[part] += n
    finally:
        model.train(was_training)
    text = sums["text"] / max(1, counts["text"])
    mel = sums["mel"] / max(1, counts["mel"])
    return {"text_loss": text, "mel_loss": mel,
            "loss": text_loss_weight * text + mel_loss_weight * mel}


def _model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("text_ids", "text_lengths", "codes", "code_lengths")}


# ---------------------------------------------------------------------------- checkpoints
def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Return the newest checkpoint of a run folder (``latest.json``, else the highest step)."""
    output_dir = Path(output_dir)
    try:
        latest = json.loads((output_dir / "latest.json").read_text(encoding="utf-8"))
        path = output_dir / latest["checkpoint"]
        if path.is_file():
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = sorted(output_dir.glob(CHECKPOINT_GLOB))
    return found[-1] if found else None


def _prune(output_dir: Path, keep_last: int) -> None:
    for old in sorted(output_dir.glob(CHECKPOINT_GLOB))[:-keep_last]:
        old.unlink(missing_ok=True)


def _rng_state() -> dict[str, Any]:
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(gauss)]}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ------------------------------------------------------------------------- model and data
def _resolve_model_config(cfg: TrainConfig, base: dict[str, Any] | None,
                          rows: list[dict[str, Any]]) -> MiniVoiceConfig:
    """The run's model config: ``base`` (a checkpoint's) or inferred, plus ``cfg.model``."""
    if base is not None:
        return MiniVoiceConfig.from_dict({**base, **cfg.model})
    values = dict(cfg.model)
    if "number_text_tokens" not in values:
        if cfg.tokenizer:
            values["number_text_tokens"] = _tokenizer_size(cfg.tokenizer)
        else:
            values["number_text_tokens"] = max(2, 1 + max(max(r["text_ids"], default=1)
                                                           for r in rows))
            warnings.warn("no --tokenizer: number_text_tokens inferred from the manifests as "
                          f"{values['number_text_tokens']} (give --tokenizer to size the text "
                          "tables by the vocabulary)", stacklevel=3)
    if "number_mel_codes" not in values:
        values["number_mel_codes"] = 3 + max(max(r["codes"], default=0) for r in rows)
    return MiniVoiceConfig.from_dict(values)


def _tokenizer_size(path: str) -> int:
    import sentencepiece as spm

    if not Path(path).is_file():
        raise FileNotFoundError(f"--tokenizer {path} does not exist")
    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def _check_rows(rows: list[dict[str, Any]], config: MiniVoiceConfig, manifest: str
                ) -> list[dict[str, Any]]:
    """Raise for ids the model cannot embed; drop (and count) rows longer than its tables."""
    for row in rows:
        if row["text_ids"] and (max(row["text_ids"]) >= config.number_text_tokens
                                or min(row["text_ids"]) < 0):
            raise ValueError(
                f"manifest {manifest}: row {row['id']!r} has text id {max(row['text_ids'])} but "
                f"the model has number_text_tokens={config.number_text_tokens} (was the manifest "
                "built with a larger tokenizer? grow the text tables or pass the matching "
                "--tokenizer)")
        if row["codes"] and (max(row["codes"]) >= config.codebook_size or min(row["codes"]) < 0):
            raise ValueError(
                f"manifest {manifest}: row {row['id']!r} has code {max(row['codes'])} but the "
                f"codebook has K={config.codebook_size} codes (number_mel_codes - 2)")
    kept = [r for r in rows if len(r["text_ids"]) <= config.max_text_tokens
            and len(r["codes"]) <= config.max_mel_tokens]
    if len(kept) < len(rows):
        warnings.warn(f"manifest {manifest}: skipped {len(rows) - len(kept)} of {len(rows)} rows "
                      f"longer than max_text_tokens={config.max_text_tokens} or "
                      f"max_mel_tokens={config.max_mel_tokens}", stacklevel=3)
    if not kept:
        raise ValueError(f"manifest {manifest}: no row fits the model's length limits")
    return kept


# ------------------------------------------------------------------------------ the loop
def _row_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a damaged line (so it is dropped)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class _Run:
    """Logging side of a run: metrics.jsonl, TensorBoard and the progress bar."""

    def __init__(self, cfg: TrainConfig, output_dir: Path, start_step: int, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.metrics = output_dir / "metrics.jsonl"
        # Drop what an earlier attempt logged after the step this run starts from (all of it
        # for a fresh run), in metrics.jsonl and in TensorBoard.
        keep_until = start_step if resumed else -1
        if self.metrics.is_file():
            lines = self.metrics.read_text(encoding="utf-8").splitlines(keepends=True)
            with atomic_write(self.metrics, "w") as fh:
                fh.writelines(ln for ln in lines if _row_step(ln) <= keep_until)
        self.writer = SummaryWriter(str(output_dir / "tb"), purge_step=keep_until + 1)
        self.bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not cfg.progress,
                        desc="train", unit="step", dynamic_ncols=True)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        split = row["split"]
        for key in ("text_loss", "mel_loss", "loss"):
            self.writer.add_scalar(f"{split}/{key}", row[key], row["step"])
        if "guide_loss" in row:
            self.writer.add_scalar(f"{split}/guide_loss", row["guide_loss"], row["step"])
        if split == "train":
            self.writer.add_scalar("lr", row["lr"], row["step"])
            self.bar.set_postfix(text=f"{row['text_loss']:.3f}", mel=f"{row['mel_loss']:.3f}",
                                 lr=f"{row['lr']:.2e}")
        elif not self.bar.disable:
            self.bar.write(f"step {row['step']}: val text {row['text_loss']:.4f} "
                           f"mel {row['mel_loss']:.4f}", file=sys.stderr)

    def close(self) -> None:
        self.writer.close()
        self.bar.close()


def train(cfg: TrainConfig, *, param_groups_fn: ParamGroupsFn | None = None,
          on_start: StepHook | None = None, on_step: StepHook | None = None) -> dict[str, Any]:
    """Train (or resume training) MiniVoice.

    Args:
        cfg: the run's settings.
        param_groups_fn: ``(model, cfg) -> list of AdamW parameter groups``; default one group
            with every parameter.
        on_start: called once as ``(model, optimizer, step)`` before the first step.
        on_step: called as ``(model, optimizer, step)`` after every optimizer step.

    Returns:
        ``step``, ``stopped`` (``"max_steps"`` or ``"max_minutes"``), last ``train`` and
        ``val`` metrics, ``checkpoint`` (the final file), ``output_dir`` and ``wall_s``.

    Raises:
        FileNotFoundError: a manifest, tokenizer or checkpoint is missing.
        ValueError: bad settings, empty manifests, ids outside the model's tables.
        CheckpointMismatchError: the checkpoint does not fit the requested model.
    """
    cfg.check()
    output_dir = Path(cfg.output_dir) if cfg.output_dir else home() / "runs" / "minivoice"
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_path = None
    if cfg.resume == "auto":
        resume_path = latest_checkpoint(output_dir)
    elif cfg.resume:
        resume_path = Path(cfg.resume)
    elif latest_checkpoint(output_dir) is not None:
        raise ValueError(f"{output_dir} already holds checkpoints (newest "
                         f"{latest_checkpoint(output_dir).name}): pass --resume auto to continue "
                         "that run, or choose a new --output-dir")
    source = resume_path or (Path(cfg.init_checkpoint) if cfg.init_checkpoint else None)
    payload = read_checkpoint(source) if source else None

    train_rows = read_manifest(cfg.train_manifest)
    val_rows = read_manifest(cfg.val_manifest) if cfg.val_manifest else []
    config = _resolve_model_config(cfg, payload["config"] if payload else None,
                                   train_rows + val_rows)
    if resume_path and config.to_dict() != payload["config"]:
        differ = {k: (payload["config"].get(k), v) for k, v in config.to_dict().items()
                  if payload["config"].get(k) != v}
        raise CheckpointMismatchError(
            f"cannot resume from {resume_path}: it was trained with another model config "
            + ", ".join(f"{k}={old} (asked {new})" for k, (old, new) in differ.items())
            + "; drop those flags or use a new --output-dir")
    train_rows = _check_rows(train_rows, config, cfg.train_manifest)
    if val_rows:
        val_rows = _check_rows(val_rows, config, cfg.val_manifest)
    tokenizer_sha = sha256_file(cfg.tokenizer) if cfg.tokenizer else None
    if resume_path and tokenizer_sha and payload["meta"].get("tokenizer_sha256") not in (
            None, tokenizer_sha):
        warnings.warn(f"--tokenizer {cfg.tokenizer} differs from the one {resume_path} was "
                      "trained with", stacklevel=2)

    if resume_path and "train_state" not in payload:
        raise ValueError(f"{resume_path} holds weights but no training state, so it cannot be "
                         "resumed; start from it with --init-checkpoint instead")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = MiniVoice(config)
    if payload is not None:
        try:
            model.load_state_dict(payload["model"])
        except CheckpointMismatchError as err:
            raise CheckpointMismatchError(f"{source}: {err}") from None
    model.train()
    grouped = (cfg.freeze_base_rows is not None or cfg.new_row_lr is not None
               or cfg.decay == "weights" or cfg.new_rows_only_steps > 0)
    if param_groups_fn is not None:
        groups = param_groups_fn(model, cfg)
    elif grouped:
        groups = param_groups(model, cfg.freeze_base_rows, cfg.new_row_lr or cfg.learning_rate,
                              cfg.learning_rate, cfg.weight_decay)
        if cfg.decay == "all":  # keep the trainer's decay on everything, per-group LRs only
            for group in groups:
                group["weight_decay"] = cfg.weight_decay
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = partial(warmup_cosine, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps)
    if cfg.new_rows_only_steps > 0:
        scheduler = StagedSchedule(cfg.new_rows_only_steps).scheduler(optimizer, schedule)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    freeze = (freeze_base_rows(model, cfg.freeze_base_rows, mode=cfg.freeze_mode)
              if cfg.freeze_base_rows is not None else None)
    sampler = LengthBucketBatches([len(r["text_ids"]) + len(r["codes"]) for r in train_rows],
                                  cfg.batch_size, seed=cfg.seed, window=cfg.bucket_window)
    step, wall_before, window = 0, 0.0, _Window()
    if resume_path:
        state = payload["train_state"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"])
        step, wall_before = int(state["step"]), float(state["wall_s"])
        window = _Window(**state["window"])
    with atomic_write(output_dir / "config.json", "w") as fh:
        json.dump({"train": dataclasses.asdict(cfg), "model": config.to_dict()}, fh, indent=2)

    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    run = _Run(cfg, output_dir, step, resumed=resume_path is not None)
    started = time.monotonic()
    meta = {"tokenizer": cfg.tokenizer, "tokenizer_sha256": tokenizer_sha,
            "train_manifest": cfg.train_manifest, "train_config": dataclasses.asdict(cfg)}
    last_train: dict[str, Any] | None = None
    last_val: dict[str, Any] | None = None
    saved_step, checkpoint = -1, resume_path
    stopped = "max_steps"

    def wall() -> float:
        return wall_before + time.monotonic() - started

    def validate() -> dict[str, Any]:
        row = {"split": "val", "step": step, **evaluate(
            model, val_rows, cfg.batch_size, cfg.text_loss_weight, cfg.mel_loss_weight),
            "wall_s": round(wall(), 3)}
        run.log(row)
        return row

    def save() -> Path:
        path = output_dir / f"ckpt_{step:08d}.pt"
        train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "sampler": sampler.state_dict(), "rng": _rng_state(), "step": step,
                       "wall_s": wall(), "window": dataclasses.asdict(window)}
        save_checkpoint(path, model, train_state=train_state, step=step, val=last_val,
                        train=last_train, **meta)
        with atomic_write(output_dir / "latest.json", "w") as fh:
            json.dump({"step": step, "checkpoint": path.name, "wall_s": round(wall(), 3)}, fh)
        _prune(output_dir, cfg.keep_last)
        return path

    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if freeze is not None:
            freeze.attach(optimizer)
        if on_start:
            on_start(model, optimizer, step)
        if val_rows and step == 0:
            last_val = validate()
        batches = _endless(sampler)
        guided = cfg.guided_attention_weight > 0
        while step < cfg.max_steps:
            if cfg.max_minutes is not None and time.monotonic() - started >= 60 * cfg.max_minutes:
                stopped = "max_minutes"
                break
            tick = time.perf_counter()
            batch = collate([train_rows[i] for i in next(batches)])
            out = model(**_model_inputs(batch),
                        guide_sigma=cfg.guided_attention_sigma if guided else None)
            loss = cfg.text_loss_weight * out["text_loss"] + cfg.mel_loss_weight * out["mel_loss"]
            if guided:
                loss = loss + cfg.guided_attention_weight * out["guide_loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                         if cfg.grad_clip > 0 else float("nan"))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step:
                on_step(model, optimizer, step)
            tokens = int((batch["text_lengths"] + batch["code_lengths"] + 3).sum())
            window.add(out["text_loss"].item(), out["mel_loss"].item(), loss.item(), grad_norm,
                       tokens, time.perf_counter() - tick,
                       out["guide_loss"].item() if guided else None)
            run.bar.update(1)
            if step % cfg.log_every == 0:
                last_train = window.row(step, sampler.epoch, lr, wall())
                run.log(last_train)
                window = _Window()
            if val_rows and cfg.val_every and step % cfg.val_every == 0:
                last_val = validate()
            if step % cfg.save_every == 0:
                checkpoint, saved_step = save(), step
        if window.steps:
            last_train = window.row(step, sampler.epoch, optimizer.param_groups[0]["lr"], wall())
            run.log(last_train)
            window = _Window()
        if val_rows and (last_val is None or last_val["step"] != step):
            last_val = validate()
        if saved_step != step:
            checkpoint = save()
    finally:
        run.close()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    return {"step": step, "stopped": stopped, "train": last_train, "val": last_val,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "output_dir": str(output_dir), "wall_s": round(wall(), 3)}


@dataclass
class _Window:
    """Running sums of the training metrics between two log rows."""

    steps: int = 0
    text_loss: float = 0.0
    mel_loss: float = 0.0
    loss: float = 0.0
    grad_norm: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    guide_loss: float | None = None

    def add(self, text_loss: float, mel_loss: float, loss: float, grad_norm: float,
            tokens: int, seconds: float, guide_loss: float | None = None) -> None:
        if guide_loss is not None:
            self.guide_loss = (self.guide_loss or 0.0) + guide_loss
        self.steps += 1
        self.text_loss += text_loss
        self.mel_loss += mel_loss
        self.loss += loss
        self.grad_norm += grad_norm
        self.tokens += tokens
        self.seconds += seconds

    def row(self, step: int, epoch: int, lr: float, wall_s: float) -> dict[str, Any]:
        n = max(1, self.steps)
        row = {"split": "train", "step": step, "epoch": epoch, "lr": lr,
               "text_loss": self.text_loss / n, "mel_loss": self.mel_loss / n,
               "loss": self.loss / n, "grad_norm": self.grad_norm / n,
               "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9), 1),
               "wall_s": round(wall_s, 3)}
        if self.guide_loss is not None:
            row["guide_loss"] = self.guide_loss / n
        return row


def _endless(sampler: LengthBucketBatches):
    while True:
        yield from sampler


# ---------------------------------------------------------------------------------- CLI
_MODEL_TYPES = {f.name: (float if f.name == "dropout" else int)
                for f in dataclasses.fields(MiniVoiceConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` flags (one per :class:`TrainConfig` field) to ``parser``."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "progress":
            parser.add_argument("--no-progress", dest="progress", action="store_false",
                                help="hide the progress bar")
            continue
        parser.add_argument(flag, dest=f.name, type=f.metadata["type"], default=f.default,
                            choices=f.metadata.get("choices"), help=f.metadata["help"] + (f" (default {f.default})"
                                                       if f.default is not None else ""))
    group = parser.add_argument_group("model", TrainConfig.__dataclass_fields__["model"]
                                      .metadata["help"])
    for name, kind in _MODEL_TYPES.items():
        group.add_argument("--" + name.replace("_", "-"), dest=f"model.{name}", type=kind,
                           default=None, metavar=kind.__name__.upper())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build a :class:`TrainConfig` from parsed ``train`` flags."""
    values = vars(args)
    model = {name: values[f"model.{name}"] for name in _MODEL_TYPES
             if values.get(f"model.{name}") is not None}
    fields = {f.name: values[f.name] for f in dataclasses.fields(TrainConfig)
              if f.name != "model" and f.name in values}
    return TrainConfig(**fields, model=model)


def run(args: argparse.Namespace) -> int:
    """Run ``python -m amhelpers train``: train, then print the result as one JSON line."""
    result = train(config_from_args(args))
    print(json.dumps(result))
    return 0
