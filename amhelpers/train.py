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
- checkpoints ``ckpt_00001000.pt`` written atomically, the last ``keep_last`` kept (by step;
  the one just written never goes), and ``latest.json`` pointing at the newest; each holds the
  model, optimizer, scheduler, RNG states and data position, so ``--resume`` continues
  bit-exactly where the run stopped;
- ``metrics.jsonl`` (one row per log, ``split`` = ``train`` or ``val``), TensorBoard scalars
  under ``tb/``, and a tqdm progress bar.

The run folder is guarded: one run at a time holds ``<output-dir>/.lock`` (an ``flock``, which
the OS releases even when the run is killed), temporary files left by killed atomic writes are
removed at start, and a run never replaces another run's files (a fresh run in a folder holding
``config.json``, ``metrics.jsonl`` or checkpoints, a resume from elsewhere into such a folder,
or a resume from an older checkpoint than the folder's newest) unless ``--overwrite`` is given.

This module is longer than 500 lines because the loop, its config (one field per CLI flag,
checked in one place) and the run-folder rules above are one unit: each rule is a few lines
that only the loop uses.

Later chapters plug in without rewriting the loop: ``param_groups_fn(model, cfg)`` builds the
optimizer's parameter groups (freezing, per-group learning rates), ``on_start(model,
optimizer, step)`` runs once before the first step (e.g. to attach a freeze handle) and
``on_step(model, optimizer, step)`` after every optimizer step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amhelpers.data import LengthBucketBatches, Manifest, collate, read_manifest
from amhelpers.freeze import freeze_base_rows
from amhelpers.io import atomic_write, check_output_dir, same_file, sha256_file
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
CHECKPOINT_NAME = re.compile(r"ckpt_(\d+)\.pt")
"""A checkpoint the trainer wrote and may prune: ``ckpt_<step>.pt`` (other names are kept)."""
RUN_FILES = ("config.json", "metrics.jsonl", "latest.json")
"""Files of a run besides its checkpoints; a fresh run refuses a folder holding any of them."""
TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
"""The name :func:`amhelpers.io.atomic_write` gives its temporary file: ``.<name>.<random>.tmp``."""

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
    overwrite: bool = _opt("replace the run already in --output-dir: a fresh run deletes its "
                           "checkpoints and latest.json and rewrites config.json and "
                           "metrics.jsonl; a resume deletes its checkpoints newer than the one "
                           "resumed. Without it such a run is refused", default=False)
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
        """Raise ValueError naming the flag of every setting that cannot work."""
        if not self.train_manifest:
            raise ValueError("--train-manifest is required")
        bad = []
        for name in ("batch_size", "max_steps", "log_every", "save_every", "keep_last",
                     "bucket_window"):
            if not _is_int(getattr(self, name), minimum=1):
                bad.append(f"{_flag(name)}={getattr(self, name)} (must be a whole number >= 1)")
        for name in ("warmup_steps", "val_every", "new_rows_only_steps"):
            if not _is_int(getattr(self, name), minimum=0):
                bad.append(f"{_flag(name)}={getattr(self, name)} (must be a whole number >= 0)")
        if self.freeze_base_rows is not None and not _is_int(self.freeze_base_rows, minimum=1):
            bad.append(f"--freeze-base-rows={self.freeze_base_rows} (must be positive: the "
                       "number of base rows to keep)")
        if not _is_int(self.seed, minimum=0) or self.seed >= 2 ** 32:
            bad.append(f"--seed={self.seed} (must be a whole number in [0, 2**32))")
        for name in ("learning_rate", "weight_decay", "grad_clip", "text_loss_weight",
                     "mel_loss_weight", "guided_attention_weight", "new_row_lr"):
            value = getattr(self, name)
            if value is not None and not _is_number(value, minimum=0.0):
                bad.append(f"{_flag(name)}={value} (must be a finite number >= 0)")
        if not _is_number(self.guided_attention_sigma, minimum=0.0, strict=True):
            bad.append(f"--guided-attention-sigma={self.guided_attention_sigma} (must be a "
                       "finite number > 0)")
        if self.max_minutes is not None and not _is_number(self.max_minutes, 0.0, strict=True):
            bad.append(f"--max-minutes={self.max_minutes} (must be a finite number > 0; omit "
                       "it for no time limit)")
        for name, allowed in (("freeze_mode", ("exact", "hook")), ("decay", ("all", "weights"))):
            if getattr(self, name) not in allowed:
                bad.append(f"{_flag(name)}={getattr(self, name)!r} (choose one of "
                           f"{', '.join(allowed)})")
        if bad:
            raise ValueError("train settings out of range: " + "; ".join(bad))
        known = {f.name for f in dataclasses.fields(MiniVoiceConfig)}
        if set(self.model) - known:
            raise ValueError(f"unknown model field(s) {sorted(set(self.model) - known)}")


def _flag(name: str) -> str:
    """The CLI flag of a TrainConfig field: ``max_minutes`` -> ``--max-minutes``."""
    return "--" + name.replace("_", "-")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any, minimum: float, strict: bool = False) -> bool:
    """True for a finite int or float >= ``minimum`` (> with ``strict``); False for NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum


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
def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a trainer checkpoint's name (``ckpt_00000400.pt`` -> 400), else None."""
    match = CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The trainer's checkpoints in a run folder as ``(step, path)``, oldest step first."""
    found = [(checkpoint_step(p), p) for p in Path(output_dir).glob(CHECKPOINT_GLOB)]
    return sorted((step, p) for step, p in found if step is not None and p.is_file())


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
    found = checkpoints(output_dir)
    return found[-1][1] if found else None


def _prune(output_dir: Path, keep_last: int, current: Path) -> None:
    """Keep ``current`` and the ``keep_last - 1`` other checkpoints of highest step."""
    others = [p for _, p in checkpoints(output_dir) if p.name != current.name]
    for old in others[:max(0, len(others) - (keep_last - 1))]:
        old.unlink(missing_ok=True)


# ------------------------------------------------------------------------- the run folder
class RunFolderBusyError(RuntimeError):
    """Another run holds the lock of the output folder."""


@contextlib.contextmanager
def lock_output_dir(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<output_dir>/.lock`` (``fcntl.flock``) for the duration of a run.

    The OS drops the lock when the process ends in any way (even ``kill -9``), so it is never
    stale; the file itself stays and only holds the PID of the last holder. Where ``fcntl`` is
    missing (Windows) or the file system has no locks, the run goes on unlocked.

    Raises:
        RunFolderBusyError: another process holds the lock; the message names the folder and
            that process's PID.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield Path(output_dir) / ".lock"
        return
    path = Path(output_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunFolderBusyError(
                f"--output-dir {output_dir} is in use by another run (PID {holder}, holding "
                f"{path}); wait for it to finish or stop it, or choose another --output-dir"
            ) from None
        except OSError as err:  # e.g. ENOLCK on a network file system
            warnings.warn(f"cannot lock {path} ({err.strerror}); make sure no other run writes "
                          "to this folder", stacklevel=4)
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        yield path
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temp_files(output_dir: str | os.PathLike) -> int:
    """Delete the temporary files that killed atomic writes left in ``output_dir``.

    Only names :func:`amhelpers.io.atomic_write` makes (``.<name>.<random>.tmp``) directly in
    the folder are removed; call it while holding :func:`lock_output_dir`, so no live write of
    a run is among them. Says on stderr how many were removed.

    Returns:
        The number of files removed.
    """
    output_dir = Path(output_dir)
    removed, size = 0, 0
    for path in output_dir.iterdir():
        if TEMP_FILE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            size += path.stat().st_size
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        print(f"train: removed {removed} temporary file(s) ({size / 1e6:.1f} MB) that an "
              f"interrupted run left in {output_dir}", file=sys.stderr)
    return removed


def _folder_conflict(output_dir: Path, resume_path: Path | None, resume_step: int,
                     auto: bool) -> tuple[str, list[Path]]:
    """What this run would replace of another run in ``output_dir``.

    Returns:
        ``(why, files)``: an empty ``why`` when nothing would be replaced; else the reason to
        refuse without ``--overwrite``, and the files ``--overwrite`` deletes.
    """
    found = checkpoints(output_dir)
    if resume_path is not None and same_file(resume_path.parent, output_dir):
        newer = [p for step, p in found if step > resume_step]
        if not newer:
            return "", []
        return (f"--output-dir {output_dir} holds {len(newer)} checkpoint(s) newer than the one "
                f"resumed (step {resume_step}): {', '.join(p.name for p in newer[:4])}; "
                f"continuing from step {resume_step} would replace them and their metrics. Pass "
                "--overwrite to continue from there and delete them, or resume the newest "
                f"(--resume {newer[-1]})"), newer
    present = [name for name in RUN_FILES if (output_dir / name).exists()]
    if found:
        present.append(f"{len(found)} checkpoint(s), newest {found[-1][1].name}")
    if not present or (resume_path is None and auto):  # resume auto without a checkpoint
        return "", []
    files = [p for _, p in found] + [p for p in [output_dir / "latest.json"] if p.exists()]
    if resume_path is None:
        return (f"--output-dir {output_dir} already holds another run ({', '.join(present)}): "
                "pass --resume auto to continue it, --overwrite to replace it (its checkpoints "
                "are deleted), or choose a new --output-dir"), files
    return (f"--output-dir {output_dir} holds another run ({', '.join(present)}), not the run "
            f"of --resume {resume_path}: pass --overwrite to replace that run (its checkpoints "
            "are deleted), or choose a new --output-dir"), files


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
                          rows: list[dict[str, Any]], tokenizer_size: int | None
                          ) -> MiniVoiceConfig:
    """The run's model config: ``base`` (a checkpoint's) or inferred, plus ``cfg.model``.

    Raises:
        ValueError: a model flag out of range, or ``--number-text-tokens`` that differs from
            the ``--tokenizer``'s size.
    """
    values = {**base, **cfg.model} if base is not None else dict(cfg.model)
    if base is None and "number_text_tokens" not in values:
        if tokenizer_size is not None:
            values["number_text_tokens"] = tokenizer_size
        else:
            values["number_text_tokens"] = max(2, 1 + max(max(r["text_ids"], default=1)
                                                           for r in rows))
            warnings.warn("no --tokenizer: number_text_tokens inferred from the manifests as "
                          f"{values['number_text_tokens']} (give --tokenizer to size the text "
                          "tables by the vocabulary)", stacklevel=4)
    elif base is None and tokenizer_size not in (None, values["number_text_tokens"]):
        raise ValueError(f"--number-text-tokens {values['number_text_tokens']} but --tokenizer "
                         f"{cfg.tokenizer} has {tokenizer_size} pieces; drop "
                         "--number-text-tokens (the tokenizer sets it)")
    if base is None and "number_mel_codes" not in values:
        values["number_mel_codes"] = 3 + max(max(r["codes"], default=0) for r in rows)
    try:
        return MiniVoiceConfig.from_dict(values)
    except ValueError as err:
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.model.items())
        raise ValueError(f"{err} (model flags given: {given or 'none'})") from None


def _tokenizer_size(path: str) -> int:
    """Number of pieces of the SentencePiece model at ``path`` (errors name ``--tokenizer``)."""
    import sentencepiece as spm

    if Path(path).is_dir():
        raise ValueError(f"--tokenizer {path} is a folder; give the SentencePiece .model file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--tokenizer {path} does not exist")
    try:
        return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    except Exception as err:  # noqa: BLE001 (sentencepiece raises RuntimeError, OSError, ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"--tokenizer {path} is not a SentencePiece model ({first}); give "
                         "the .model file that `python -m amhelpers tokenizer` wrote") from None


def _check_tokenizer(size: int, path: str, config: MiniVoiceConfig, flag: str,
                     source: Path) -> None:
    """Raise when the tokenizer and the checkpoint's text tables differ in size."""
    if size != config.number_text_tokens:
        raise ValueError(
            f"--tokenizer {path} has {size} pieces but {flag} {source} has "
            f"number_text_tokens={config.number_text_tokens}: pass the tokenizer that checkpoint "
            "was trained with, or grow its text tables to this tokenizer first "
            "(`python -m amhelpers checkpoint extend`)")


def _check_rows(rows: list[dict[str, Any]], config: MiniVoiceConfig, flag: str
                ) -> list[dict[str, Any]]:
    """Raise for ids the model cannot embed; drop (and count) rows longer than its tables.

    Errors name the manifest file and line (``rows`` from :func:`read_manifest`), the bad
    value and its position in the row's list.
    """
    limits = (("text_ids", "text id", config.number_text_tokens,
               f"the model has number_text_tokens={config.number_text_tokens} (was the manifest "
               "built with a larger tokenizer? grow the text tables or pass the matching "
               "--tokenizer)"),
              ("codes", "code", config.codebook_size,
               f"the codebook has K={config.codebook_size} codes (number_mel_codes - 2; was the "
               "manifest built with another codebook?)"))
    for index, row in enumerate(rows):
        for key, what, size, hint in limits:
            values = row[key]
            if values and (max(values) >= size or min(values) < 0):
                pos = next(i for i, v in enumerate(values) if not 0 <= v < size)
                where = (rows.where(index) if isinstance(rows, Manifest)
                         else f"{flag} row {index + 1}")
                raise ValueError(f"{where} (row {row.get('id')!r}): {what} {values[pos]} at "
                                 f"{key}[{pos}] is outside [0, {size}): {hint}")
    kept = [r for r in rows if len(r["text_ids"]) <= config.max_text_tokens
            and len(r["codes"]) <= config.max_mel_tokens]
    name = rows.path if isinstance(rows, Manifest) else flag
    if not kept:
        raise ValueError(f"manifest {name}: no row fits the model's length limits "
                         f"(max_text_tokens={config.max_text_tokens}, "
                         f"max_mel_tokens={config.max_mel_tokens}); raise them or shorten the "
                         "rows")
    if len(kept) < len(rows):
        warnings.warn(f"manifest {name}: skipped {len(rows) - len(kept)} of {len(rows)} rows "
                      f"longer than max_text_tokens={config.max_text_tokens} or "
                      f"max_mel_tokens={config.max_mel_tokens}", stacklevel=4)
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
            lines = self.metrics.read_text(encoding="utf-8", errors="replace").splitlines(
                keepends=True)
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
        ValueError: bad settings, empty manifests, ids outside the model's tables, an output
            folder that is a file or holds another run (without ``cfg.overwrite``).
        PermissionError: the output folder cannot be written.
        RunFolderBusyError: another run is writing to the output folder.
        CheckpointMismatchError: the checkpoint does not fit the requested model.
    """
    cfg.check()
    output_dir = Path(cfg.output_dir) if cfg.output_dir else home() / "runs" / "minivoice"
    check_output_dir(output_dir, "--output-dir")
    train_rows = read_manifest(cfg.train_manifest)
    val_rows = read_manifest(cfg.val_manifest) if cfg.val_manifest else []
    tokenizer_size = _tokenizer_size(cfg.tokenizer) if cfg.tokenizer else None
    output_dir.mkdir(parents=True, exist_ok=True)
    with lock_output_dir(output_dir):
        removed = remove_stale_temp_files(output_dir)
        result = _train_locked(cfg, output_dir, train_rows, val_rows, tokenizer_size,
                               (param_groups_fn, on_start, on_step))
    return {**result, "removed_temp_files": removed}


def _read_source(flag: str, path: Path) -> dict[str, Any]:
    """:func:`read_checkpoint`, with the flag that named the file in its errors."""
    try:
        return read_checkpoint(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{flag}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


def _train_locked(cfg: TrainConfig, output_dir: Path, train_rows: list[dict[str, Any]],
                  val_rows: list[dict[str, Any]], tokenizer_size: int | None,
                  hooks: tuple[ParamGroupsFn | None, StepHook | None, StepHook | None]
                  ) -> dict[str, Any]:
    """The body of :func:`train`, run while holding the output folder's lock."""
    param_groups_fn, on_start, on_step = hooks
    resume_path = None
    if cfg.resume == "auto":
        resume_path = latest_checkpoint(output_dir)
    elif cfg.resume:
        resume_path = Path(cfg.resume)
    flag, source = ("--resume", resume_path) if resume_path else (
        "--init-checkpoint", Path(cfg.init_checkpoint) if cfg.init_checkpoint else None)
    payload = _read_source(flag, source) if source else None
    if resume_path and "train_state" not in payload:
        raise ValueError(f"{resume_path} holds weights but no training state, so it cannot be "
                         "resumed; start from it with --init-checkpoint instead")
    resume_step = int(payload["train_state"]["step"]) if resume_path else 0
    why, replaced = _folder_conflict(output_dir, resume_path, resume_step, cfg.resume == "auto")
    if why and not cfg.overwrite:
        raise ValueError(why)
    if cfg.resume == "auto" and resume_path is None and (output_dir / "config.json").exists():
        print(f"train: no checkpoint to resume in {output_dir}; starting its run over from "
              "step 0", file=sys.stderr)

    config = _resolve_model_config(cfg, payload["config"] if payload else None,
                                   train_rows + val_rows, tokenizer_size)
    if resume_path and config.to_dict() != payload["config"]:
        differ = {k: (payload["config"].get(k), v) for k, v in config.to_dict().items()
                  if payload["config"].get(k) != v}
        raise CheckpointMismatchError(
            f"cannot resume from {resume_path}: it was trained with another model config "
            + ", ".join(f"{k}={old} (asked {new})" for k, (old, new) in differ.items())
            + "; drop those flags or use a new --output-dir")
    if cfg.freeze_base_rows is not None and cfg.freeze_base_rows > config.number_text_tokens:
        raise ValueError(f"--freeze-base-rows {cfg.freeze_base_rows} is more than the model's "
                         f"number_text_tokens={config.number_text_tokens}; give the base "
                         "tokenizer's size (the rows to keep)")
    if payload is not None and tokenizer_size is not None:
        _check_tokenizer(tokenizer_size, cfg.tokenizer, config, flag, source)
    train_rows = _check_rows(train_rows, config, "--train-manifest")
    if val_rows:
        val_rows = _check_rows(val_rows, config, "--val-manifest")
    tokenizer_sha = sha256_file(cfg.tokenizer) if cfg.tokenizer else None
    if resume_path and tokenizer_sha and payload["meta"].get("tokenizer_sha256") not in (
            None, tokenizer_sha):
        warnings.warn(f"--tokenizer {cfg.tokenizer} differs from the one {resume_path} was "
                      "trained with", stacklevel=3)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = MiniVoice(config)
    if payload is not None:
        try:
            model.load_state_dict(payload["model"])
        except CheckpointMismatchError as err:  # one line: the CLI prints it as `error: ...`
            detail = "; ".join(x.strip() for x in str(err).splitlines() if x.strip())
            raise CheckpointMismatchError(f"{flag} {source}: {detail}") from None
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
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as err:
            raise ValueError(f"--resume {resume_path}: its optimizer state does not fit this "
                             f"run's parameter groups ({err}); resume with the run's own "
                             "--freeze-base-rows, --new-row-lr, --decay and "
                             "--new-rows-only-steps (see its config.json)") from None
        try:
            sampler.load_state_dict(state["sampler"])
        except ValueError as err:
            raise ValueError(f"--resume {resume_path}: {err}; resume with the run's own "
                             "--train-manifest, --batch-size, --bucket-window and --seed") from None
        _set_rng_state(state["rng"])
        step, wall_before = int(state["step"]), float(state["wall_s"])
        window = _Window(**state["window"])
    if replaced:  # only with --overwrite, now that every input has been checked
        for path in replaced:
            path.unlink(missing_ok=True)
        print(f"train: --overwrite: deleted {len(replaced)} file(s) of the earlier run in "
              f"{output_dir}", file=sys.stderr)
        if resume_path is not None and same_file(resume_path.parent, output_dir):
            with atomic_write(output_dir / "latest.json", "w") as fh:
                json.dump({"step": resume_step, "checkpoint": resume_path.name,
                           "wall_s": round(wall_before, 3)}, fh)
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
        _prune(output_dir, cfg.keep_last, current=path)  # after latest.json names the new one
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
        if f.name == "overwrite":
            parser.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
            continue
        parser.add_argument(flag, dest=f.name, type=f.metadata["type"], default=f.default,
                            choices=f.metadata.get("choices"),
                            help=f.metadata["help"] + (f" (default {f.default})"
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
