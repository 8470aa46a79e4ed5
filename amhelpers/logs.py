"""Training logs: read ``metrics.jsonl`` and TensorBoard scalars, and tell a loss plateau.

``metrics.jsonl`` is what :mod:`amhelpers.train` writes: one JSON object per line with ``step``,
``split`` (``train`` or ``val``) and the losses. :func:`read_metrics` returns its rows (the one
parser of that file in the library); :func:`read_loss_log` gives ``(steps, values)`` of one key
from that file, a run folder or TensorBoard event files; :func:`detect_plateau` says whether the
smoothed loss still falls over the last window; :func:`plateau_from_log` does both.

A line that is not a JSON object (a write cut short) is skipped and counted, never fatal: the
readers warn with the line numbers, and :func:`plateau_from_log` reports them.

TensorBoard is imported inside :func:`_read_tensorboard` only: importing its event reader costs
about 0.25 s on top of torch (measured), which a ``metrics.jsonl`` or a diagnosis without
``--log`` does not need.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PLATEAU_THRESHOLD = 0.02
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------- metrics.jsonl
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_metrics(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[int], int]:
    """``([(line number, row)], malformed line numbers, lines)`` of a JSONL file."""
    rows, bad = [], []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if isinstance(row, dict):
            rows.append((number, row))
        else:
            bad.append(number)
    return rows, bad, len(lines)


def _malformed_message(source: str, bad: Sequence[int], what: str = "--log") -> str:
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return (f"{what} {source}: skipped {len(bad)} malformed line{'s' * (len(bad) != 1)} (line "
            f"{shown}): not JSON objects, or a non-number step/loss (a write cut short?)")


def read_metrics(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (or of the one in a run folder), in file order.

    Args:
        path: the file, or a run folder holding ``metrics.jsonl``.
        split: keep only rows whose ``split`` is this (rows without a ``split`` are kept too).

    Lines that are not JSON objects are skipped with a warning that counts them.

    Raises:
        FileNotFoundError: no such file (or no ``metrics.jsonl`` in the folder).
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (train writes {METRICS_FILE} into its "
                                "--output-dir)")
    rows, bad, _ = _parse_metrics(path)
    if bad:
        warnings.warn(_malformed_message(str(path), bad, "metrics log"), stacklevel=2)
    return [row for _, row in rows if split is None or row.get("split", split) == split]


def _read_jsonl(path: Path, key: str, split: str | None
                ) -> tuple[np.ndarray, np.ndarray, str, list[int]]:
    """Rows with ``step`` and ``key``, plus the numbers of malformed lines (not JSON, not an
    object, or a non-number ``step`` / ``key`` in the chosen split)."""
    steps, values, keys_seen, splits_seen = [], [], set(), set()
    rows, bad, n_lines = _parse_metrics(path)
    for number, row in rows:
        keys_seen.update(row)
        if "split" in row:
            splits_seen.add(row["split"])
            if split is not None and row["split"] != split:
                continue
        if "step" in row and key in row:
            if _is_number(row["step"]) and _is_number(row[key]):
                steps.append(float(row["step"]))
                values.append(float(row[key]))
            elif row[key] is not None:
                bad.append(number)
    bad.sort()
    if not steps:
        extra = f" and split {split!r} (splits seen: {sorted(map(str, splits_seen))})" if splits_seen else ""
        broken = f"; {len(bad)} of {n_lines} lines are malformed (line {bad[0]} first)" if bad else ""
        raise ValueError(f"--log {path} has no rows with 'step' and {key!r}{extra}; keys seen: "
                         f"{sorted(keys_seen)[:12]}{broken} (choose a key with --log-key)")
    source = f"{path} ({key}{', ' + split if splits_seen else ''})"
    return np.asarray(steps), np.asarray(values), source, bad


# ----------------------------------------------------------------------------- TensorBoard
def _read_tensorboard(path: Path, key: str, split: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    from tensorboard.backend.event_processing import event_accumulator  # 0.25 s: see the docstring

    if path.is_file():
        sources = [path]
    else:
        sources = sorted({f.parent for f in path.rglob("*tfevents*") if f.is_file()})
        if not sources:
            raise ValueError(f"--log {path} holds no TensorBoard event files (*tfevents*) and no "
                             f"{METRICS_FILE}")
    all_tags: list[str] = []
    wanted = [key] + ([f"{split}/{key}"] if split else [])
    for source in sources:
        acc = event_accumulator.EventAccumulator(str(source), size_guidance={"scalars": 0})
        acc.Reload()
        tags = list(acc.Tags().get("scalars", []))
        all_tags += tags
        tag = next((t for t in wanted if t in tags), None)
        if tag is None:
            tag = next((t for t in tags if t.endswith("/" + key)), None)
        if tag is None:
            continue
        by_step = {}
        for event in acc.Scalars(tag):
            by_step[float(event.step)] = float(event.value)
        steps = np.asarray(sorted(by_step))
        return steps, np.asarray([by_step[s] for s in steps]), f"{source} (tag {tag})"
    if not all_tags:
        raise ValueError(f"TensorBoard log {path} holds no scalars")
    raise ValueError(f"TensorBoard log {path} has no scalar {' or '.join(wanted)} (or */{key}); "
                     f"tags: {sorted(set(all_tags))[:12]} (choose one with --log-key)")


# ----------------------------------------------------------------------------- one loss curve
def _read_log(path: str | Path, key: str, split: str | None
              ) -> tuple[np.ndarray, np.ndarray, str, list[int]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--log {path} does not exist (give {METRICS_FILE} or a TensorBoard folder)")
    if path.is_dir() and (path / METRICS_FILE).is_file():
        return _read_jsonl(path / METRICS_FILE, key, split)
    if path.is_dir() or "tfevents" in path.name:
        return (*_read_tensorboard(path, key, split), [])
    return _read_jsonl(path, key, split)


def read_loss_log(path: str | Path, key: str = "loss", split: str | None = "train"
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """Read ``(steps, values, source)`` from ``metrics.jsonl`` or TensorBoard event files.

    Args:
        path: a JSONL file (rows with ``step`` and ``key``), an event file, or a folder (a run
            folder with ``metrics.jsonl``, or any folder holding event files, searched below).
        key: the loss key (JSONL) or scalar tag (TensorBoard; ``split/key`` and ``*/key`` match).
        split: keep JSONL rows of this ``split`` when rows carry one (None: all).

    Malformed JSONL lines are skipped with a warning that counts them (:func:`plateau_from_log`
    reports them as ``malformed_lines``).

    Raises:
        FileNotFoundError: no such path.
        ValueError: no rows with the key, or a TensorBoard log with no (matching) scalars.
    """
    steps, values, source, bad = _read_log(path, key, split)
    if bad:
        warnings.warn(_malformed_message(source, bad), stacklevel=2)
    return steps, values, source


# ----------------------------------------------------------------------------- plateau
def check_plateau_args(window: int | None, threshold: float) -> None:
    """Refuse a ``--window`` below 2 or not whole, and a ``--threshold`` not finite or negative."""
    if window is not None and (isinstance(window, bool) or int(window) != window or window < 2):
        raise ValueError(f"--window {window} must be a whole number of log points >= 2")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"--threshold {threshold} must be a finite number >= 0 (0.02 = the loss "
                         "must fall 2% over the window)")


def detect_plateau(steps: Sequence[float], values: Sequence[float], window: int | None = None,
                   threshold: float = PLATEAU_THRESHOLD, smoothing: float = 0.8) -> dict[str, Any]:
    """Is the loss still falling? Slope of the smoothed loss over the last window.

    The loss is smoothed with an EMA (``s_t = smoothing * s_{t-1} + (1 - smoothing) * v_t``);
    a least-squares line through the last ``window`` smoothed points gives the slope (loss per
    step). ``relative_change`` = slope * (steps spanned) / mean level: the fraction the loss
    fell (negative) or rose over the window. Plateau when it fell by less than ``threshold``.

    Args:
        steps, values: the log.
        window: points in the window (default: a quarter of the log, at least 4).
        threshold: smallest relative fall over the window that counts as progress (0.02 = 2%).
        smoothing: EMA factor in [0, 1).

    Returns:
        ``window``, ``window_steps``, ``threshold``, ``slope``, ``relative_change``, ``level``,
        ``first``, ``last`` (smoothed), ``points`` and ``plateau``.
    """
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    ok = np.isfinite(v) & np.isfinite(s)
    s, v = s[ok], v[ok]
    check_plateau_args(window, threshold)
    if len(s) < 4:
        raise ValueError(f"the log has {len(s)} usable points; plateau detection needs at least 4")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing={smoothing} must be in [0, 1)")
    smooth = np.empty_like(v)
    smooth[0] = v[0]
    for i in range(1, len(v)):
        smooth[i] = smoothing * smooth[i - 1] + (1 - smoothing) * v[i]
    w = max(4, len(v) // 4) if window is None else int(window)
    w = min(max(w, 2), len(v))
    xs, ys = s[-w:], smooth[-w:]
    span = float(xs[-1] - xs[0])
    slope = float(np.polyfit(xs, ys, 1)[0]) if span > 0 else 0.0
    level = float(np.mean(ys))
    rel = slope * span / max(abs(level), 1e-12)
    return {"window": int(w), "window_steps": span, "threshold": threshold, "smoothing": smoothing,
            "slope": slope, "relative_change": float(rel), "level": level,
            "first": float(smooth[0]), "last": float(smooth[-1]), "points": len(v),
            "non_finite_dropped": int((~ok).sum()), "plateau": bool(rel > -threshold)}


def plateau_from_log(path: str | Path, key: str = "loss", split: str | None = "train",
                     window: int | None = None, threshold: float = PLATEAU_THRESHOLD) -> dict[str, Any]:
    """:func:`read_loss_log` then :func:`detect_plateau`.

    Adds ``source``, ``key``, ``malformed_lines`` (JSONL lines skipped: not JSON objects, or a
    non-number step/loss), ``malformed_line_numbers`` (the first 20) and ``warning`` (a line
    saying so, None when none were skipped).
    """
    steps, values, source, bad = _read_log(path, key, split)
    out = detect_plateau(steps, values, window, threshold)
    out.update(source=source, key=key, malformed_lines=len(bad), malformed_line_numbers=bad[:20],
               warning=_malformed_message(source, bad) if bad else None)
    return out
