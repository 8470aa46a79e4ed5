"""A training run's folder: its checkpoints, ``latest.json``, the lock and the logs it writes.

Layout of ``<output-dir>``, as :func:`amhelpers.train.train` writes it::

    config.json            the run's settings (TrainConfig and model config)
    metrics.jsonl          one JSON row per log (``split`` = ``train`` or ``val``)
    tb/                    TensorBoard scalars
    ckpt_00001000.pt       checkpoints, one per save (the trainer keeps the last few, by step)
    latest.json            ``{"step", "checkpoint", "wall_s"}`` of the newest checkpoint
    .lock                  held (``flock``) while a run writes here; holds the holder's PID

The rules that keep one run from damaging another:

- one run at a time holds ``.lock`` (:func:`lock_output_dir`); the OS drops it when the
  holder ends in any way, so it is never stale;
- temporary files of killed atomic writes are removed at start (:func:`remove_stale_temp_files`);
- a run never replaces another run's files (:func:`folder_conflict` says what it would
  replace: the trainer refuses unless ``--overwrite``);
- pruning goes by the step in the name, never by name order, and never removes the
  checkpoint just written (:func:`prune`); other names (``ckpt_best.pt``) are kept.

(This is not :mod:`amhelpers.runs`: that name is kept for chapter 5's grid of notebook runs.)

TensorBoard's ``SummaryWriter`` is imported in :class:`RunLog` only: it costs about 0.3 s on
top of torch (measured), which the readers here (``latest_checkpoint`` for the course's cache)
do not need. ``fcntl`` is imported in :func:`lock_output_dir`: Windows has none.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amhelpers.io import atomic_write, same_file
from amhelpers.logs import METRICS_FILE, read_metrics

CHECKPOINT_GLOB = "ckpt_*.pt"
CHECKPOINT_NAME = re.compile(r"ckpt_(\d+)\.pt")
"""A checkpoint the trainer wrote and may prune: ``ckpt_<step>.pt`` (other names are kept)."""
RUN_FILES = ("config.json", METRICS_FILE, "latest.json")
"""Files of a run besides its checkpoints; a fresh run refuses a folder holding any of them."""
TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
"""The name :func:`amhelpers.io.atomic_write` gives its temporary file: ``.<name>.<random>.tmp``."""


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_name(step: int) -> str:
    """The trainer's file name for the checkpoint of ``step``: ``ckpt_00000400.pt``."""
    return f"ckpt_{step:08d}.pt"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a trainer checkpoint's name (``ckpt_00000400.pt`` -> 400), else None."""
    match = CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The trainer's checkpoints in a run folder as ``(step, path)``, oldest step first."""
    found = [(checkpoint_step(p), p) for p in Path(output_dir).glob(CHECKPOINT_GLOB)]
    return sorted((step, p) for step, p in found if step is not None and p.is_file())


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Return the newest checkpoint of a run folder: the highest step among the checkpoint
    files and the one ``latest.json`` names (which wins a tie).

    A run killed between renaming a checkpoint into place and updating ``latest.json`` leaves a
    complete checkpoint newer than the one ``latest.json`` names; that one is the newest.
    """
    output_dir = Path(output_dir)
    found = checkpoints(output_dir)
    try:
        latest = json.loads((output_dir / "latest.json").read_text(encoding="utf-8"))
        path = output_dir / latest["checkpoint"]
        if path.is_file() and (not found or int(latest["step"]) >= found[-1][0]):
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return found[-1][1] if found else None


def write_latest(output_dir: Path, step: int, checkpoint: Path, wall_s: float) -> None:
    """Point ``latest.json`` at ``checkpoint`` (atomically)."""
    with atomic_write(output_dir / "latest.json", "w") as fh:
        json.dump({"step": step, "checkpoint": checkpoint.name, "wall_s": round(wall_s, 3)}, fh)


def prune(output_dir: Path, keep_last: int, current: Path) -> None:
    """Keep ``current`` and the ``keep_last - 1`` other checkpoints of highest step."""
    others = [p for _, p in checkpoints(output_dir) if p.name != current.name]
    for old in others[:max(0, len(others) - (keep_last - 1))]:
        old.unlink(missing_ok=True)


# ------------------------------------------------------------------------ lock and clean-up
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


# --------------------------------------------------------------------- another run's files
def folder_conflict(output_dir: Path, resume_path: Path | None, resume_step: int,
                    auto: bool) -> tuple[str, list[Path]]:
    """What this run would replace of another run in ``output_dir``.

    Args:
        output_dir: the run folder.
        resume_path: the checkpoint resumed, or None for a fresh run.
        resume_step: its step (0 for a fresh run).
        auto: ``--resume auto`` was given (with no checkpoint found, the folder's run starts
            over: allowed).

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


# ---------------------------------------------------------------------------------- logs
class RunLog:
    """What a run logs into its folder: ``metrics.jsonl`` rows and TensorBoard scalars.

    Opening it drops what an earlier attempt logged after the step this run starts from
    (all of it for a fresh run), in ``metrics.jsonl`` (read with
    :func:`amhelpers.logs.read_metrics`; a damaged line goes too) and in TensorBoard, so a
    resumed run's log reads as one run.
    """

    def __init__(self, output_dir: Path, start_step: int, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter  # 0.3 s: see the module docstring

        self.metrics = output_dir / METRICS_FILE
        keep_until = start_step if resumed else -1
        if self.metrics.is_file():
            kept = [row for row in read_metrics(self.metrics) if _step(row) <= keep_until]
            with atomic_write(self.metrics, "w") as fh:
                fh.writelines(json.dumps(row) + "\n" for row in kept)
        self.writer = SummaryWriter(str(output_dir / "tb"), purge_step=keep_until + 1)

    def log(self, row: dict[str, Any]) -> None:
        """Append ``row`` to ``metrics.jsonl`` and its losses (and lr) to TensorBoard."""
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        split = row["split"]
        for key in ("text_loss", "mel_loss", "loss", "guide_loss"):
            if key in row:
                self.writer.add_scalar(f"{split}/{key}", row[key], row["step"])
        if split == "train":
            self.writer.add_scalar("lr", row["lr"], row["step"])

    def close(self) -> None:
        self.writer.close()


def _step(row: dict[str, Any]) -> float:
    """A metrics row's step; infinity when it has none (such a row is dropped)."""
    step = row.get("step")
    ok = isinstance(step, (int, float)) and not isinstance(step, bool)
    return float(step) if ok and math.isfinite(step) else math.inf


@dataclass
class MetricsWindow:
    """Running sums of the training metrics between two log rows (saved in checkpoints,
    so a resumed run's next row averages the same steps)."""

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
