"""Train MiniVoice: the loop, its config and the ``python -m amhelpers train`` command.

Flags follow IndexTTS2's community trainer where it has them (``--learning-rate``,
``--text-loss-weight``, ``--mel-loss-weight``, ``--warmup-steps``, ``--weight-decay``,
``--batch-size``, ``--grad-clip``, ``--max-steps``, ``--output-dir``, ``--resume``, ``--seed``,
``--train-manifest``, ``--val-manifest``, ``--tokenizer``). Defaults are ours, for the
miniature model on a laptop CPU: learning rate 1e-3 (the trainer's 2e-5 is for the 1280-wide
release model and barely moves a small one), warmup 100, loss = 0.1 text + 1.0 mel
(:func:`weighted_loss`).

What a run does:

- AdamW (weight decay on every parameter, as the IndexTTS2 trainer does), linear warmup then
  cosine decay to zero at ``max_steps``, gradient clipping; the base rows' freeze, new-row
  rate, decay policy, staged schedule, frozen blocks and LoRA adapters (:mod:`amhelpers.lora`,
  merged on save) are settings of :class:`TrainConfig` too;
- length-bucketed batches (:class:`amhelpers.data.LengthBucketBatches`, sorted by
  ``n_text + n_codes``: the model packs text and codes into one sequence), seeded; with
  ``--replay-manifest`` a set share of every batch is base-language rows
  (:class:`amhelpers.data.ReplayBatches`);
- on ``--device`` (``auto``: CUDA when there is a GPU, else the CPU; the forward runs under
  :func:`on_device`), optionally under bf16 autocast (``--amp bf16``); the training state in a
  checkpoint is on the CPU and files are read with ``map_location="cpu"``, so a run resumes on
  another device;
- validation every ``val_every`` steps (token-weighted mean losses over the val manifest);
- checkpoints ``ckpt_00001000.pt`` written atomically, the last ``keep_last`` kept, and
  ``latest.json`` pointing at the newest; each holds the model, optimizer, scheduler, RNG
  states and data position, so ``--resume`` continues bit-exactly where the run stopped;
- ``metrics.jsonl`` (one row per log, ``split`` = ``train`` or ``val``), TensorBoard scalars
  under ``tb/``, and a tqdm progress bar.

The run folder's rules (one run at a time, never replacing another run's files unless
``--overwrite``) live in :mod:`amhelpers.rundir`. :func:`train` reads as two parts:
:func:`_prepare` (inputs, the checkpoint to start from, model, optimizer, resume state) and
:func:`_loop`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from amhelpers.ckptio import read_checkpoint
from amhelpers.data import (
    LengthBucketBatches,
    ReplayBatches,
    collate,
    read_manifest,
    row_lengths,
    training_batches,
)
from amhelpers.freeze import FreezeHandle
from amhelpers.io import atomic_write, check_output_dir, same_file, sha256_file
from amhelpers.lora import add_lora, lora_state, merged_state_dict
from amhelpers.model import CheckpointMismatchError, MiniVoice, save_checkpoint
from amhelpers.optim import training_optimizer, warmup_cosine
from amhelpers.rundir import (
    MetricsWindow,
    RunFolderBusyError,
    RunLog,
    checkpoint_name,
    checkpoints,
    folder_conflict,
    latest_checkpoint,
    lock_output_dir,
    prune,
    remove_stale_temp_files,
    write_latest,
)
from amhelpers.settings import home
from amhelpers.trainconfig import (
    TrainConfig,
    add_arguments,
    check_resume_settings,
    check_rows,
    config_from_args,
    model_config,
    resolve_device,
    tokenizer_size,
)

__all__ = ["TrainConfig", "train", "validation_loss", "weighted_loss", "resolve_device", "on_device",
           "warmup_cosine", "latest_checkpoint", "checkpoints", "RunFolderBusyError",
           "add_arguments", "config_from_args", "run"]

StepHook = Callable[[MiniVoice, torch.optim.Optimizer, int], None]


def weighted_loss(parts: Mapping[str, Any], text_loss_weight: float = 0.1,
                  mel_loss_weight: float = 1.0, guided_attention_weight: float = 0.0) -> Any:
    """The training objective, written once: ``text_loss_weight * text_loss + mel_loss_weight
    * mel_loss`` (``+ guided_attention_weight * guide_loss`` when that weight is > 0).

    ``parts`` is the model's output (tensors: the loss to backpropagate) or averaged floats
    (:func:`validation_loss`); the defaults are the trainer's.
    """
    loss = text_loss_weight * parts["text_loss"] + mel_loss_weight * parts["mel_loss"]
    if guided_attention_weight > 0:
        loss = loss + guided_attention_weight * parts["guide_loss"]
    return loss


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def validation_loss(model: MiniVoice, rows: list[dict[str, Any]], batch_size: int = 32,
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
    device = next(model.parameters()).device
    try:
        sampler = LengthBucketBatches(row_lengths(rows), batch_size, shuffle=False)
        for indices in sampler:
            with on_device(device):
                out = model(**_model_inputs(collate([rows[i] for i in indices]), device))
            for part in ("text", "mel"):
                n = int(out[f"{part}_tokens"])
                sums[part] += float(out[f"{part}_loss"]) * n
                counts[part] += n
    finally:
        model.train(was_training)
    text = sums["text"] / max(1, counts["text"])
    mel = sums["mel"] / max(1, counts["mel"])
    return {"text_loss": text, "mel_loss": mel,
            "loss": weighted_loss({"text_loss": text, "mel_loss": mel}, text_loss_weight,
                                  mel_loss_weight)}


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Tensors made without ``device=`` inside (the model's positions and padding) go to
    ``device``: a ``torch.device`` context off the CPU, nothing on it (no cost, same bits)."""
    return contextlib.nullcontext() if device.type == "cpu" else device


def _model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device, non_blocking=True)
            for k in ("text_ids", "text_lengths", "codes", "code_lengths")}


def _rng_state(device: torch.device) -> dict[str, Any]:
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(gauss)]}
    if device.type == "cuda":  # dropout on the GPU draws from the device's generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    if device.type == "cuda" and "cuda" in state:  # a run resumed from a CPU one: seeded only
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor on the CPU (a checkpoint then loads on any machine)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


# ------------------------------------------------------------------------------- train()
def train(cfg: TrainConfig, *, on_step: StepHook | None = None) -> dict[str, Any]:
    """Train (or resume training) MiniVoice.

    Args:
        cfg: the run's settings, the freeze and the optimizer's groups included.
        on_step: called as ``(model, optimizer, step)`` after every optimizer step, to watch
            the run (the tests stop one there); it must not change the training.

    Returns:
        ``step``, ``stopped`` (``"max_steps"`` or ``"max_minutes"``), last ``train`` and
        ``val`` metrics, ``checkpoint`` (the final file), ``output_dir``, ``wall_s``,
        ``device`` and ``removed_temp_files``.

    Raises:
        FileNotFoundError: a manifest, tokenizer or checkpoint is missing.
        ValueError: bad settings, a device this machine lacks, empty manifests, ids outside
            the model's tables, an output folder that is a file or holds another run
            (without ``cfg.overwrite``).
        PermissionError: the output folder cannot be written.
        RunFolderBusyError: another run is writing to the output folder.
        CheckpointMismatchError: the checkpoint does not fit the requested model.
    """
    cfg.check()
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # deterministic cuBLAS (set before its first use in the process)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    output_dir = Path(cfg.output_dir) if cfg.output_dir else home() / "runs" / "minivoice"
    check_output_dir(output_dir, "--output-dir")
    train_rows = read_manifest(cfg.train_manifest)
    val_rows = read_manifest(cfg.val_manifest) if cfg.val_manifest else []
    replay_rows = read_manifest(cfg.replay_manifest) if cfg.replay_manifest else []
    n_pieces = tokenizer_size(cfg.tokenizer) if cfg.tokenizer else None
    output_dir.mkdir(parents=True, exist_ok=True)
    with lock_output_dir(output_dir):
        removed = remove_stale_temp_files(output_dir)
        run = _prepare(cfg, output_dir, device, train_rows, val_rows, n_pieces, replay_rows)
        result = _loop(run, on_step)
    return {**result, "device": str(device), "removed_temp_files": removed}


@dataclass
class _Run:
    """A run ready to train: what :func:`_prepare` built and :func:`_loop` steps."""

    cfg: TrainConfig
    output_dir: Path
    device: torch.device
    model: MiniVoice
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    freeze: FreezeHandle | None
    sampler: LengthBucketBatches | ReplayBatches
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    meta: dict[str, Any]
    resume_path: Path | None = None
    step: int = 0
    wall_before: float = 0.0
    window: MetricsWindow = field(default_factory=MetricsWindow)


# ---------------------------------------------------------------------------------- setup
def _prepare(cfg: TrainConfig, output_dir: Path, device: torch.device,
             train_rows: list[dict[str, Any]], val_rows: list[dict[str, Any]],
             n_pieces: int | None, replay_rows: list[dict[str, Any]] | None = None) -> _Run:
    """Setup, holding the folder's lock: the checkpoint to start from, the folder's rules,
    the model config and inputs checked against it, model, optimizer and resume state.
    ``replay_rows`` (``--replay-manifest``) follow the training rows in ``_Run.train_rows``."""
    replay_rows = replay_rows or []
    resume_path = (latest_checkpoint(output_dir) if cfg.resume == "auto"
                   else Path(cfg.resume) if cfg.resume else None)
    flag, source = ("--resume", resume_path) if resume_path else (
        "--init-checkpoint", Path(cfg.init_checkpoint) if cfg.init_checkpoint else None)
    payload = _read_source(flag, source) if source else None
    if resume_path and "train_state" not in payload:
        raise ValueError(f"{resume_path} holds weights but no training state, so it cannot be "
                         "resumed; start from it with --init-checkpoint instead")
    resume_step = int(payload["train_state"]["step"]) if resume_path else 0
    why, replaced = folder_conflict(output_dir, resume_path, resume_step, cfg.resume == "auto")
    if why and not cfg.overwrite:
        raise ValueError(why)
    if cfg.resume == "auto" and resume_path is None and (output_dir / "config.json").exists():
        print(f"train: no checkpoint to resume in {output_dir}; starting its run over from "
              "step 0", file=sys.stderr)
    config = model_config(cfg, payload, flag, source, resume_path,
                          train_rows + val_rows + replay_rows, n_pieces)
    train_rows = check_rows(train_rows, config, "--train-manifest")
    if replay_rows:
        replay_rows = check_rows(replay_rows, config, "--replay-manifest")
    if val_rows:
        val_rows = check_rows(val_rows, config, "--val-manifest")
    tokenizer_sha = sha256_file(cfg.tokenizer) if cfg.tokenizer else None
    if resume_path:
        check_resume_settings(cfg, payload["meta"], tokenizer_sha, resume_path)

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
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha,
                 resume=(resume_path, payload["train_state"]) if resume_path else None)
    model.to(device).train()
    optimizer, scheduler, freeze = training_optimizer(model, cfg)
    sampler = training_batches(row_lengths(train_rows), cfg.batch_size, cfg.seed,
                               cfg.bucket_window, row_lengths(replay_rows), cfg.replay_fraction)
    meta = {"tokenizer": cfg.tokenizer, "tokenizer_sha256": tokenizer_sha,
            "train_manifest": cfg.train_manifest, "train_config": dataclasses.asdict(cfg)}
    run = _Run(cfg, output_dir, device, model, optimizer, scheduler, freeze, sampler,
               list(train_rows) + list(replay_rows), val_rows, meta, resume_path)
    if resume_path:
        _restore(run, payload["train_state"])
    if replaced:  # only with --overwrite, now that every input has been checked
        for path in replaced:
            path.unlink(missing_ok=True)
        print(f"train: --overwrite: deleted {len(replaced)} file(s) of the earlier run in "
              f"{output_dir}", file=sys.stderr)
        if resume_path is not None and same_file(resume_path.parent, output_dir):
            write_latest(output_dir, resume_step, resume_path, run.wall_before)
    with atomic_write(output_dir / "config.json", "w") as fh:
        json.dump({"train": dataclasses.asdict(cfg), "model": config.to_dict()}, fh, indent=2)
    return run


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Put a checkpoint's training state into ``run``: optimizer, scheduler, data, RNG, step."""
    def misfit(why: object) -> ValueError:
        return ValueError(f"--resume {run.resume_path}: its optimizer state does not fit this "
                          f"run's parameter groups ({why}); resume with the run's own "
                          "--freeze-base-rows, --freeze-mode, --new-row-lr, --decay and "
                          "--new-rows-only-steps (see its config.json)")

    try:
        run.optimizer.load_state_dict(state["optimizer"])  # moves the state to the device
        run.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError) as err:
        raise misfit(err) from None
    for param, moments in run.optimizer.state.items():  # e.g. exact vs exact-sparse tables
        for key, value in moments.items():
            if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                raise misfit(f"{key} of shape {tuple(value.shape)} for a parameter of shape "
                             f"{tuple(param.shape)}")
    try:
        run.sampler.load_state_dict(state["sampler"])
    except ValueError as err:
        raise ValueError(f"--resume {run.resume_path}: {err}; resume with the run's own "
                         "--train-manifest, --batch-size, --bucket-window and --seed") from None
    _set_rng_state(state["rng"], run.device)
    run.step, run.wall_before = int(state["step"]), float(state["wall_s"])
    run.window = MetricsWindow(**state["window"])


def _read_source(flag: str, path: Path) -> dict[str, Any]:
    """:func:`read_checkpoint`, with the flag that named the file in its errors."""
    try:
        return read_checkpoint(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{flag}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


# ------------------------------------------------------------------------------- the loop
def _loop(run: _Run, on_step: StepHook | None) -> dict[str, Any]:
    """Step until ``max_steps`` (or ``max_minutes``): log, validate, save; save at the end."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    log = RunLog(run.output_dir, run.step, resumed=run.resume_path is not None)
    # The bar names the run folder ("runs/fix/train" -> "train fix") so a notebook's bars say
    # which run each one is.
    where = run.output_dir.parent.name if run.output_dir.name == "train" else run.output_dir.name
    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not cfg.progress,
               desc=f"train {where}", unit="step", dynamic_ncols=True)
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    started = time.monotonic()
    last_train: dict[str, Any] | None = None
    last_val: dict[str, Any] | None = None
    saved_step, checkpoint, stopped = -1, run.resume_path, "max_steps"
    guided = cfg.guided_attention_weight > 0

    def wall() -> float:
        return run.wall_before + time.monotonic() - started

    def record(row: dict[str, Any]) -> dict[str, Any]:
        log.log(row)
        if row["split"] == "train":
            bar.set_postfix(text=f"{row['text_loss']:.3f}", mel=f"{row['mel_loss']:.3f}",
                            lr=f"{row['lr']:.2e}")
        elif not bar.disable:
            bar.write(f"step {row['step']}: val text {row['text_loss']:.4f} "
                      f"mel {row['mel_loss']:.4f}", file=sys.stderr)
        return row

    def validate() -> dict[str, Any]:
        return record({"split": "val", "step": run.step, **validation_loss(
            model, run.val_rows, cfg.batch_size, cfg.text_loss_weight, cfg.mel_loss_weight),
            "wall_s": round(wall(), 3)})

    def save() -> Path:
        path = run.output_dir / checkpoint_name(run.step)
        train_state = _to_cpu({"optimizer": optimizer.state_dict(),
                               "scheduler": run.scheduler.state_dict(),
                               "sampler": run.sampler.state_dict(),
                               "rng": _rng_state(run.device), "step": run.step,
                               "wall_s": wall(), "window": dataclasses.asdict(run.window)})
        weights = None
        if cfg.lora_rank:  # merge on save; the unmerged layers and adapters go with the state
            weights, train_state["lora"] = (merged_state_dict(model),
                                            lora_state(model, cfg.lora_rank, cfg.lora_alpha))
        save_checkpoint(path, model, weights=weights, train_state=train_state, step=run.step,
                        val=last_val, train=last_train, **run.meta)
        write_latest(run.output_dir, run.step, path, wall())
        prune(run.output_dir, cfg.keep_last, current=path)  # after latest.json names the new one
        return path

    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if run.freeze is not None:
            run.freeze.attach(optimizer)
        if run.val_rows and run.step == 0:
            last_val = validate()
        batches = chain.from_iterable(repeat(run.sampler))  # epoch after epoch
        while run.step < cfg.max_steps:
            if cfg.max_minutes is not None and time.monotonic() - started >= 60 * cfg.max_minutes:
                stopped = "max_minutes"
                break
            tick = time.perf_counter()
            batch = collate([run.train_rows[i] for i in next(batches)])
            out, loss, grad_norm, lr = _step(run, batch)
            if on_step:
                on_step(model, optimizer, run.step)
            tokens = int((batch["text_lengths"] + batch["code_lengths"] + 3).sum())
            run.window.add(out["text_loss"].item(), out["mel_loss"].item(), loss.item(),
                           grad_norm, tokens, time.perf_counter() - tick,
                           out["guide_loss"].item() if guided else None)
            bar.update(1)
            if run.step % cfg.log_every == 0:
                last_train = record(run.window.row(run.step, run.sampler.epoch, lr, wall()))
                run.window = MetricsWindow()
            if run.val_rows and cfg.val_every and run.step % cfg.val_every == 0:
                last_val = validate()
            if run.step % cfg.save_every == 0:
                checkpoint, saved_step = save(), run.step
        if run.window.steps:
            last_train = record(run.window.row(run.step, run.sampler.epoch,
                                               optimizer.param_groups[0]["lr"], wall()))
            run.window = MetricsWindow()
        if run.val_rows and (last_val is None or last_val["step"] != run.step):
            last_val = validate()
        if saved_step != run.step:
            checkpoint = save()
    finally:
        log.close()
        bar.close()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    return {"step": run.step, "stopped": stopped, "train": last_train, "val": last_val,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "output_dir": str(run.output_dir), "wall_s": round(wall(), 3)}


def _step(run: _Run, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                     float, float]:
    """One optimizer step on ``batch``: forward and loss (under ``--amp``), backward, clip,
    step, schedule. Returns the model's output, the loss, the gradient norm and the lr used."""
    cfg = run.cfg
    guided = cfg.guided_attention_weight > 0
    autocast = (torch.autocast(run.device.type, dtype=torch.bfloat16) if cfg.amp == "bf16"
                else contextlib.nullcontext())
    with autocast, on_device(run.device):
        out = run.model(**_model_inputs(batch, run.device),
                        guide_sigma=cfg.guided_attention_sigma if guided else None)
        loss = weighted_loss(out, cfg.text_loss_weight, cfg.mel_loss_weight,
                             cfg.guided_attention_weight)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (float(nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
                 if cfg.grad_clip > 0 else float("nan"))
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return out, loss, grad_norm, lr


# ---------------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> int:
    """Run ``python -m amhelpers train``: train, then print the result as one JSON line."""
    result = train(config_from_args(args))
    print(json.dumps(result))
    return 0
