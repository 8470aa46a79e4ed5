"""Diagnose an extended checkpoint: are the new text rows trained, and if not, why?

What it measures (chapter 3), on the three text tables (``text_embedding.weight``,
``text_head.weight``, ``text_head.bias``) of a MiniVoice checkpoint or a real IndexTTS2
``gpt.pth``:

- per-row norms (bias: absolute value), base rows ``[0, base_rows)`` against new rows
  ``[base_rows, rows - 1)``; the last row is the "+1" row no tokenizer id produces;
- Magikarp-style under-trained indicators (:func:`magikarp`, rule below);
- drift of each new row from its init (:func:`drift`), from an init snapshot or rebuilt from
  the extension record and its seed;
- per-row gradient norms for one batch (:func:`gradient_probe`);
- loss plateau in ``metrics.jsonl`` or TensorBoard event files (:func:`detect_plateau`);
- ``<unk>`` rate of the target text under the tokenizer (:func:`unk_rate`);
- a ranked checklist of likely causes (:func:`rank_causes`), and plots (:func:`plot_norms`).

**Flagging rule** (:func:`magikarp`). The pretrained base rows are the reference distribution
(the "+1" row and other known-unused rows left out); robust z-scores use the base rows' median
and MAD (x 1.4826). A row is flagged as under-trained when any of these holds:

1. *known unused*: it is the "+1" row (or another row passed as unused);
2. *small embedding norm*: robust z of log ||e_i|| below ``-z_threshold`` (3.5);
3. *no structure* (embedding and head separately): trained tables are anisotropic, so base
   rows keep most of their energy in a few principal directions (the k fewest holding 90% of
   the base rows' energy); a freshly drawn isotropic row (N(0, 0.02), N(0, 1), uniform) keeps
   about k/d there (Beta(k/2, (d-k)/2)). Flagged when the share is within 4 sigma of k/d and
   nearer to k/d than to the base rows' median share. Switched off (and reported) when
   k > d/2 or more than 1% of base rows pass: the table is then too isotropic to tell;
4. *near the constructor init*: the row's norm lies within 4 sigma (in log, sigma =
   1/sqrt(2d)) + 5% of a fresh row's norm (embedding N(0, 0.02): 0.02 sqrt(d); N(0, 1):
   sqrt(d); head uniform ±1/sqrt(d): 1/sqrt(3)) and nearer to it than to the base median. An
   init is only used when at most 1% of base rows pass (else it cannot tell them apart and is
   reported as disabled);
5. *head direction* (Magikarp's unembedding indicator): the cosine distance of the centred
   head row to the centred mean of the known-unused rows has robust z below ``-z_threshold``.

A fixed percentile (Magikarp's 2%) would flag 2% of any table and miss most of 12,000
untrained rows; scores against the trained rows flag all of them and few base rows.

**Drift** (:func:`drift`) is measured so that weight decay cannot fake it: decay only shrinks
a row along itself, so a row counts as moved by its change beyond the best decay-only
prediction ``alpha * w0`` (``beyond_decay``); biases use an absolute scale (the RMS of the
base biases), not their near-zero init.

Inputs are checked before any work: ``--plot`` (not an input, a folder, under a file,
unwritable, or a non-PNG file), ``--evidence`` (known keys, each of its type, no NaN),
``--window`` / ``--threshold``, ``--base-rows``; malformed ``--log`` lines are counted and
reported; NaN/inf rows are named.

Size: about 1,200 lines, over the usual 500: the statistics, log reading, checklist, plots and
CLI of one diagnosis report live together so the report's JSON contract is in one place.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import numbers
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import (
    TEXT_KEYS,
    base_rows_sha256,
    check_finite_tables,
    check_text_tables,
    expected_init_norm,
    initial_state_from_record,
    load_state_dict,
    read_extension_record,
    record_path,
)
from .io import check_output_file, read_text_strict, same_file, write_bytes_atomic

Z_THRESHOLD = 3.5
MAX_BASE_SHARE_NEAR_INIT = 0.01
STRUCTURE_ENERGY = 0.9
RULE = ("flag a row if: it is known unused (the +1 row); or the robust z-score (median/MAD of "
        "the base rows) of its log embedding norm is < -{z}; or the share of its energy in the "
        "base rows' principal directions (those holding {energy:.0%} of their energy) is within "
        "4 sigma of an isotropic random row's (k/d) and nearer to it than to the base median, "
        "for the embedding or the head; or its embedding/head norm lies within 4 sigma of a "
        "constructor init's norm and nearer to it than to the base median; or the robust "
        "z-score of its centred head row's cosine distance to the unused rows' mean is < -{z}. "
        "The structure and init tests are used only when <= {share:.0%} of base rows pass.")
MOVED_THRESHOLD = 0.01
PLATEAU_THRESHOLD = 0.02

CAUSE_UNK = "tokenizer <unk> on the target text"
CAUSE_NOT_MOVING = "new rows not moving / learning rate too low"
CAUSE_NORM = "norm mismatch between new and base rows"
CAUSE_PLATEAU = "loss plateau"
CAUSE_TF_GEN = "teacher-forced loss fine while generation fails"


# ----------------------------------------------------------------------------- statistics
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def row_norms(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """L2 norm of each row of the text tables (``text_head.bias``: absolute value)."""
    check_text_tables(state_dict)
    out = {}
    for key in TEXT_KEYS:
        x = _np(state_dict[key])
        out[key] = np.abs(x) if x.ndim == 1 else np.linalg.norm(x, axis=1)
    return out


def split_rows(rows: int, base_rows: int | None) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Base ids, new token ids and the "+1" row id for a table of ``rows`` rows.

    Without ``base_rows`` every row but the last is "base". With ``base_rows == rows`` there is
    no separate "+1" row.

    Raises:
        ValueError: ``base_rows`` larger than the table or negative.
    """
    if base_rows is None:
        return np.arange(rows - 1), np.arange(0), rows - 1
    if base_rows > rows or base_rows < 0:
        raise ValueError(f"--base-rows {base_rows} is larger than the text tables ({rows} rows)"
                         if base_rows > rows else f"--base-rows {base_rows} must be >= 0")
    if base_rows == rows:
        return np.arange(rows), np.arange(0), None
    return np.arange(base_rows), np.arange(base_rows, rows - 1), rows - 1


def _stats(values: np.ndarray) -> dict[str, Any]:
    if len(values) == 0:
        return {"rows": 0, "norm_mean": None, "norm_std": None, "norm_median": None,
                "norm_min": None, "norm_max": None}
    return {"rows": len(values), "norm_mean": float(values.mean()),
            "norm_std": float(values.std()), "norm_median": float(np.median(values)),
            "norm_min": float(values.min()), "norm_max": float(values.max())}


def table_stats(state_dict: Mapping[str, torch.Tensor], base_rows: int | None) -> dict[str, Any]:
    """Per table: ``{"base": stats, "new": stats, "plus_one": {...}, "init_norm": float}``."""
    rows, dim = check_text_tables(state_dict)
    base, new, plus = split_rows(rows, base_rows)
    norms = row_norms(state_dict)
    out = {}
    for key in TEXT_KEYS:
        n = norms[key]
        out[key] = {"base": _stats(n[base]), "new": _stats(n[new]),
                    "plus_one": None if plus is None else {"row": int(plus), "norm": float(n[plus])},
                    "init_norm": expected_init_norm(key, dim)}
    return out


def _robust_z(x: np.ndarray, ref: np.ndarray, floor: float) -> tuple[np.ndarray, float, float]:
    med = float(np.median(x[ref]))
    mad = 1.4826 * float(np.median(np.abs(x[ref] - med)))
    scale = max(mad, floor)
    return (x - med) / scale, med, scale


def _structure(x: np.ndarray, ref: np.ndarray, energy: float = STRUCTURE_ENERGY
               ) -> tuple[np.ndarray | None, int]:
    """Share of each row's energy in the top-k principal directions of the base rows.

    k is the fewest directions (of the uncentred second moment of the base rows) holding
    ``energy`` of their energy. An isotropic random row puts about k/d there; trained rows of an
    anisotropic table far more. Returns ``(None, k)`` when k > d/2 (the table is too isotropic
    for the test to separate anything).
    """
    base = x[ref]
    evals, evecs = np.linalg.eigh(base.T @ base)      # d x d: cheap for d = 1280
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0, None), evecs[:, order]
    share = np.cumsum(evals) / max(float(np.sum(evals)), 1e-300)
    k = int(np.searchsorted(share, energy) + 1)
    if k > x.shape[1] // 2:
        return None, k
    proj = x @ evecs[:, :k]
    total = np.maximum(np.sum(x ** 2, axis=1), 1e-300)
    return np.sum(proj ** 2, axis=1) / total, k


def magikarp(state_dict: Mapping[str, torch.Tensor], base_rows: int | None,
             unused_rows: Sequence[int] | None = None, z_threshold: float = Z_THRESHOLD,
             return_arrays: bool = False) -> dict[str, Any]:
    """Flag under-trained rows with the rule of the module docstring.

    Args:
        state_dict: a state dict with the text tables.
        base_rows: rows ``[0, base_rows)`` are the pretrained reference (None: all but the last).
        unused_rows: rows known never to be produced (default: the last, "+1", row).
        z_threshold: robust z-score threshold.
        return_arrays: add per-row indicator arrays under ``"arrays"`` (not JSON).

    Returns:
        ``flagged_rows`` (sorted ids), ``by_indicator`` (counts), ``disabled`` (tests switched
        off, with why), ``reference_rows``, ``unused_rows``, ``rule``, ``z_threshold``.

    Raises:
        ValueError: fewer than 2 reference rows, or NaN/inf rows (named by table and row).
    """
    rows, dim = check_text_tables(state_dict)
    check_finite_tables(state_dict, "text tables")
    if unused_rows is None:
        unused_rows = [rows - 1]
    unused = sorted({int(r) for r in unused_rows if 0 <= int(r) < rows})
    limit = rows - 1 if base_rows is None else min(int(base_rows), rows)
    keep = np.ones(limit, dtype=bool)
    keep[[r for r in unused if r < limit]] = False
    ref = np.nonzero(keep)[0]
    if len(ref) < 2:
        raise ValueError(f"need at least 2 base rows as a reference, got {len(ref)} "
                         f"(base_rows={base_rows}, {rows} rows)")
    emb, head = _np(state_dict[TEXT_KEYS[0]]), _np(state_dict[TEXT_KEYS[1]])
    en = np.linalg.norm(emb, axis=1)
    hn = np.linalg.norm(head, axis=1)
    tiny = 1e-12
    log_e, log_h = np.log(np.maximum(en, tiny)), np.log(np.maximum(hn, tiny))
    disabled: list[str] = []
    tests: dict[str, np.ndarray] = {}

    known = np.zeros(rows, dtype=bool)
    known[unused] = True
    tests["known_unused"] = known

    z_emb, _, _ = _robust_z(log_e, ref, 0.05)
    tests["embedding_norm_z"] = z_emb < -z_threshold

    structure = {}
    for key, x in ((TEXT_KEYS[0], emb), (TEXT_KEYS[1], head)):
        frac, k = _structure(x, ref)
        name = ("embedding" if key == TEXT_KEYS[0] else "head") + "_structure"
        if frac is None:
            disabled.append(f"{name}: {k} of {dim} directions hold {STRUCTURE_ENERGY:.0%} of the "
                            "base rows' energy (table too isotropic)")
            tests[name] = np.zeros(rows, dtype=bool)
            structure[key] = np.full(rows, np.nan)
            continue
        # an isotropic row's share is Beta(k/2, (d-k)/2): mean k/d, var 2 p (1-p) / (d+2)
        p = k / dim
        sigma = math.sqrt(2 * p * (1 - p) / (dim + 2))
        med = float(np.median(frac[ref]))
        hit = (frac < p + 4 * sigma) & (frac < (p + med) / 2)
        share = float(hit[ref].mean())
        if share <= MAX_BASE_SHARE_NEAR_INIT:
            tests[name] = hit
        else:
            disabled.append(f"{name}: {share:.1%} of base rows look as unstructured as random rows")
            tests[name] = np.zeros(rows, dtype=bool)
        structure[key] = frac

    band = 4.0 / math.sqrt(2.0 * dim) + 0.05
    for key, logs, inits in ((TEXT_KEYS[0], log_e, {"N(0,0.02)": 0.02 * math.sqrt(dim),
                                                    "N(0,1)": math.sqrt(dim)}),
                             (TEXT_KEYS[1], log_h, {"U(+-1/sqrt(d))": 1 / math.sqrt(3)})):
        med = float(np.median(logs[ref]))
        hit = np.zeros(rows, dtype=bool)
        name = ("embedding" if key == TEXT_KEYS[0] else "head") + "_near_init"
        for label, norm in inits.items():
            gap = np.abs(logs - math.log(norm))
            h = (gap < band) & (gap < np.abs(logs - med))
            share = float(h[ref].mean())
            if share <= MAX_BASE_SHARE_NEAR_INIT:
                hit |= h
            else:
                disabled.append(f"{name} {label} (norm {norm:.3g}): {share:.1%} of base rows "
                                "have such norms")
        tests[name] = hit

    centre = head[ref].mean(0)
    direction = head[unused].mean(0) - centre if unused else np.zeros(dim)
    if unused and np.linalg.norm(direction) > tiny:
        hc = head - centre
        cos = hc @ direction / np.maximum(np.linalg.norm(hc, axis=1) * np.linalg.norm(direction), tiny)
        cos_dist = 1.0 - cos
        z_cos, _, _ = _robust_z(cos_dist, ref, 0.02)
        tests["head_direction_z"] = z_cos < -z_threshold
    else:
        cos_dist = np.full(rows, np.nan)
        tests["head_direction_z"] = np.zeros(rows, dtype=bool)
        disabled.append("head_direction_z: no known-unused row distinct from the base mean")

    flagged = np.zeros(rows, dtype=bool)
    for hit in tests.values():
        flagged |= hit
    out: dict[str, Any] = {
        "flagged_rows": [int(i) for i in np.nonzero(flagged)[0]],
        "by_indicator": {name: int(hit.sum()) for name, hit in tests.items()},
        "disabled": disabled,
        "reference_rows": len(ref),
        "unused_rows": unused,
        "z_threshold": z_threshold,
        "rule": RULE.format(z=z_threshold, energy=STRUCTURE_ENERGY, share=MAX_BASE_SHARE_NEAR_INIT),
    }
    if return_arrays:
        out["arrays"] = {"embedding_norm": en, "head_norm": hn, "embedding_norm_z": z_emb,
                         "embedding_structure": structure[TEXT_KEYS[0]],
                         "head_structure": structure[TEXT_KEYS[1]],
                         "head_cosine_distance": cos_dist, "flagged": flagged}
    return out


def _summary(values: np.ndarray, threshold: float) -> dict[str, Any]:
    if not len(values):
        return {"median": None, "mean": None, "max": None, "min": None, "share_below_1pct": None}
    return {"median": float(np.median(values)), "mean": float(values.mean()),
            "max": float(values.max()), "min": float(values.min()),
            "share_below_1pct": float((values < threshold).mean())}


def _movement(a: np.ndarray, b: np.ndarray, base: np.ndarray, new: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None, str]:
    """Per-row total and decay-proof movement of ``a`` from its init ``b``.

    Returns ``(total, beyond_decay, decay_factor_per_row, scale, relative_to)``. Rows (2-D): both
    relative to the row's initial norm; the decay-only prediction of row i is ``alpha_i * w0_i``
    with ``alpha_i = <w_i, w0_i> / |w0_i|^2`` clipped to [0, 1]. Biases (1-D): absolute change
    over ``scale``, the RMS of the init's base values (the table's typical size, not a near-zero
    init), and one ``alpha`` fitted over the new rows (decay scales every value alike).
    """
    if a.ndim == 2:
        ref = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
        alpha = np.einsum("ij,ij->i", a, b) / ref ** 2
        kept = np.clip(alpha, 0.0, 1.0)
        total = np.linalg.norm(a - b, axis=1) / ref
        beyond = np.linalg.norm(a - kept[:, None] * b, axis=1) / ref
        return total, beyond, alpha, None, "each row's initial norm"
    pool = b[base] if len(base) else b
    scale = float(np.sqrt(np.mean(pool ** 2))) if len(pool) else 0.0
    if not scale > 0:
        scale = 1.0
    energy = float(np.sum(b[new] ** 2))
    alpha = float(np.dot(a[new], b[new]) / energy) if len(new) and energy > 0 else 1.0
    kept = min(max(alpha, 0.0), 1.0)
    return (np.abs(a - b) / scale, np.abs(a - kept * b) / scale, np.full(len(a), alpha), scale,
            f"RMS of the init's base values ({scale:.4g}): absolute change, not relative to a "
            "near-zero init")


def drift(state_dict: Mapping[str, torch.Tensor], init_state: Mapping[str, torch.Tensor],
          base_rows: int, moved_threshold: float = MOVED_THRESHOLD) -> dict[str, Any]:
    """How far each row moved from its init, in total and beyond what weight decay explains.

    Total movement: ``||w - w0|| / ||w0||`` for rows of 2-D tables; for ``text_head.bias`` the
    absolute change ``|b - b0|`` over the RMS of the init's base biases (a near-zero init would
    make a relative drift explode). Weight decay alone (AdamW's ``w *= 1 - lr * wd``, or SGD's
    L2 term) only shrinks a row along itself, so after 1,000 steps at lr 1e-3 and wd 0.01 every
    row has "moved" 1% without any gradient. ``beyond_decay`` measures what decay cannot fake:
    the distance from the best decay-only prediction ``alpha * w0`` (``alpha`` in [0, 1]; per row
    for 2-D tables, which leaves the change orthogonal to ``w0``; one ``alpha`` for the bias).

    Returns:
        Per table ``{"relative_to", "scale", "new": {"rows", "median", "mean", "max", "min",
        "share_below_1pct", "beyond_decay": {same five}, "decay_factor"}, "base": {"rows",
        "median", "max", "changed_rows"}}`` (``changed_rows``: base rows not bit-identical to
        the snapshot; ``decay_factor``: median ``<w, w0> / |w0|^2`` of the new rows, about
        ``(1 - lr wd)^steps`` when only decay acted), plus ``moved_threshold``.

    Raises:
        ValueError: the snapshot's tables have other shapes or hold NaN/inf.
    """
    rows, _ = check_text_tables(state_dict)
    rows0, _ = check_text_tables(init_state, "init snapshot")
    if rows0 != rows:
        raise ValueError(f"init snapshot has {rows0} text rows but the checkpoint has {rows}; "
                         "pass the snapshot taken right after the extension")
    check_finite_tables(state_dict, "checkpoint")
    check_finite_tables(init_state, "init snapshot")
    base, new, _ = split_rows(rows, base_rows)
    tables = {}
    for key in TEXT_KEYS:
        w, w0 = state_dict[key].detach().cpu(), init_state[key].detach().cpu()
        if w.shape != w0.shape:
            raise ValueError(f"init snapshot's {key} has shape {tuple(w0.shape)}, "
                             f"the checkpoint's {tuple(w.shape)}")
        total, beyond, alpha, scale, relative_to = _movement(_np(w), _np(w0), base, new)
        rb = total[base]
        idx = torch.as_tensor(base, dtype=torch.long)
        changed = (w[idx] != w0[idx]).reshape(len(base), -1).any(1)
        tables[key] = {
            "relative_to": relative_to, "scale": scale,
            "new": {"rows": len(new), **_summary(total[new], moved_threshold),
                    "beyond_decay": _summary(beyond[new], moved_threshold),
                    "decay_factor": float(np.median(alpha[new])) if len(new) else None},
            "base": {"rows": len(rb),
                     "median": float(np.median(rb)) if len(rb) else None,
                     "max": float(rb.max()) if len(rb) else None,
                     "changed_rows": int(changed.sum()) if len(rb) else 0},
        }
    return {"tables": tables, "moved_threshold": moved_threshold}


def gradient_probe(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor],
                   base_rows: int | None = None, names: Sequence[str] = TEXT_KEYS) -> dict[str, Any]:
    """Per-row gradient norm of each text table for one batch loss.

    The model's existing ``.grad`` tensors are put back afterwards, so a probe in the middle of
    gradient accumulation changes nothing.

    Args:
        model: the model (parameters named like ``text_embedding.weight``, any prefix).
        loss_fn: ``loss_fn(model) -> scalar tensor`` for one batch.
        base_rows: split the summary into base and new rows.
        names: parameters to probe.

    Returns:
        ``{"per_row": {name: np.ndarray}, "tables": {name: {"base": stats, "new": stats}}}``
        where stats are ``rows``, ``norm_mean``, ... of the gradient norms and ``zero_rows``.
    """
    params = {}
    for pname, p in model.named_parameters():
        for key in names:
            if pname == key or pname.endswith("." + key):
                params[key] = p
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"model has no parameter(s) {', '.join(missing)}")
    saved = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.grad = None
        loss = loss_fn(model)
        if not torch.is_tensor(loss) or loss.dim() != 0:
            raise ValueError("loss_fn(model) must return a scalar tensor")
        loss.backward()
        per_row = {}
        for key, p in params.items():
            g = torch.zeros_like(p) if p.grad is None else p.grad
            g = _np(g)
            per_row[key] = np.abs(g) if g.ndim == 1 else np.linalg.norm(g, axis=1)
    finally:
        for n, p in model.named_parameters():
            p.grad = saved[n]
    tables = {}
    for key, g in per_row.items():
        base, new, _ = split_rows(len(g), base_rows)
        tables[key] = {}
        for part, ids in (("base", base), ("new", new)):
            stats = _stats(g[ids])
            stats["zero_rows"] = int((g[ids] == 0).sum())
            tables[key][part] = stats
    return {"loss": float(loss.detach()), "per_row": per_row, "tables": tables}


# ----------------------------------------------------------------------------- logs
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_jsonl(path: Path, key: str, split: str | None
                ) -> tuple[np.ndarray, np.ndarray, str, list[int]]:
    """Rows with ``step`` and ``key``, plus the numbers of malformed lines (not JSON, not an
    object, or a non-number ``step`` / ``key`` in the chosen split)."""
    steps, values, keys_seen, splits_seen, bad = [], [], set(), set(), []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if not isinstance(row, dict):
            bad.append(number)
            continue
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
    if not steps:
        extra = f" and split {split!r} (splits seen: {sorted(map(str, splits_seen))})" if splits_seen else ""
        broken = f"; {len(bad)} of {len(lines)} lines are malformed (line {bad[0]} first)" if bad else ""
        raise ValueError(f"--log {path} has no rows with 'step' and {key!r}{extra}; keys seen: "
                         f"{sorted(keys_seen)[:12]}{broken} (choose a key with --log-key)")
    source = f"{path} ({key}{', ' + split if splits_seen else ''})"
    return np.asarray(steps), np.asarray(values), source, bad


def _read_tensorboard(path: Path, key: str, split: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    from tensorboard.backend.event_processing import event_accumulator

    if path.is_file():
        sources = [path]
    else:
        sources = sorted({f.parent for f in path.rglob("*tfevents*") if f.is_file()})
        if not sources:
            raise ValueError(f"--log {path} holds no TensorBoard event files (*tfevents*) and no "
                             "metrics.jsonl")
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


def _malformed_message(source: str, bad: Sequence[int]) -> str:
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return (f"--log {source}: skipped {len(bad)} malformed line{'s' * (len(bad) != 1)} (line "
            f"{shown}): not JSON objects, or a non-number step/loss (a write cut short?)")


def _read_log(path: str | Path, key: str, split: str | None
              ) -> tuple[np.ndarray, np.ndarray, str, list[int]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--log {path} does not exist (give metrics.jsonl or a TensorBoard folder)")
    if path.is_dir() and (path / "metrics.jsonl").is_file():
        return _read_jsonl(path / "metrics.jsonl", key, split)
    if path.is_dir() or "tfevents" in path.name:
        return (*_read_tensorboard(path, key, split), [])
    return _read_jsonl(path, key, split)


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
    _check_plateau_args(window, threshold)
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


# ----------------------------------------------------------------------------- tokenizer
def unk_rate(tokenizer: str | Path, texts: Sequence[str], lang: str | None = None) -> dict[str, Any]:
    """Share of ``<unk>`` tokens when ``tokenizer`` encodes ``texts`` (normalised for ``lang``)."""
    from .text import normalize
    from .tokenizer import load_proto, processor

    sp = processor(load_proto(tokenizer, "--tokenizer"))
    unk = sp.unk_id()
    tokens = unks = lines_unk = lines = 0
    for raw in texts:
        text = normalize(raw, lang) if lang else raw
        if not text:
            continue
        ids = sp.encode(text)
        n = sum(1 for i in ids if i == unk)
        lines += 1
        tokens += len(ids)
        unks += n
        lines_unk += n > 0
    if lines == 0:
        raise ValueError("--text: no non-empty line to encode")
    return {"unk_rate": unks / max(tokens, 1), "tokens": tokens, "unk_tokens": unks,
            "lines": lines, "lines_with_unk": lines_unk, "vocab_size": sp.get_piece_size()}


# ----------------------------------------------------------------------------- checklist
def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def _number(value: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """A real number (numpy's too), not a bool, finite and in [lo, hi]."""
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(float(value)) and lo <= float(value) <= hi)


def _flag(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


EVIDENCE_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "unk_rate": ("a number in [0, 1]", lambda v: _number(v, 0, 1)),
    "new_share_below_1pct": ("a number in [0, 1]", lambda v: _number(v, 0, 1)),
    "new_drift_median": ("a number >= 0", lambda v: _number(v, 0)),
    "new_decay_factor": ("a finite number", _number),
    "flagged_new_share": ("a number in [0, 1]", lambda v: _number(v, 0, 1)),
    "norm_ratio": ("a number >= 0 or an object {table: number >= 0}",
                   lambda v: (_number(v, 0) or (isinstance(v, Mapping) and all(
                       isinstance(k, str) and _number(r, 0) for k, r in v.items())))),
    "plateau": ("true or false", _flag),
    "loss_relative_change": ("a finite number", _number),
    "loss_level": ("a finite number", _number),
    "val_loss_ratio": ("a number >= 0", lambda v: _number(v, 0)),
    "length_corr": ("a number in [-1, 1]", lambda v: _number(v, -1, 1)),
    "mcd_ratio": ("a number >= 0", lambda v: _number(v, 0)),
    "teacher_forced_ok": ("true, false or a number in [0, 1]",
                          lambda v: _flag(v) or _number(v, 0, 1)),
    "generation_fails": ("true, false or a number in [0, 1]",
                         lambda v: _flag(v) or _number(v, 0, 1)),
}


def check_evidence(evidence: Any, what: str = "evidence") -> dict[str, Any]:
    """Check checklist evidence: an object of known keys, each of its type (None = not measured).

    Raises:
        ValueError: not an object, an unknown key (a typo would be ignored silently), or a
            value of the wrong type, NaN or out of range (names the key and what it must be).
    """
    if not isinstance(evidence, Mapping):
        raise ValueError(f"{what} must be a JSON object such as {{\"val_loss_ratio\": 1.1, "
                         f"\"length_corr\": 0.2}}, got {type(evidence).__name__} {evidence!r:.60}")
    for key, value in evidence.items():
        if key not in EVIDENCE_KEYS:
            raise ValueError(f"{what}: unknown key {key!r}; known keys: {', '.join(EVIDENCE_KEYS)}")
        expected, ok = EVIDENCE_KEYS[key]
        if value is not None and not ok(value):
            kind = "NaN/inf" if isinstance(value, numbers.Real) and not _flag(value) \
                and not math.isfinite(float(value)) else type(value).__name__
            raise ValueError(f"{what}: {key!r} must be {expected}, got {value!r:.60} ({kind})")
    return dict(evidence)


def rank_causes(evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rank likely causes of "the new language does not train" from measured evidence.

    Evidence keys (all optional; a cause without its evidence scores 0, ``measured`` False):

    - ``unk_rate``: share of ``<unk>`` tokens in the target text.
    - ``new_share_below_1pct`` (and ``new_drift_median``, ``new_decay_factor``): share of new
      rows that moved < 1% from init beyond what weight decay explains (:func:`drift`'s
      ``beyond_decay``); else ``flagged_new_share`` (share of new rows flagged as under-trained).
    - ``norm_ratio``: ``{table: new mean norm / base mean norm}`` (or one float).
    - ``plateau`` (bool) and ``loss_relative_change``, ``loss_level``.
    - ``val_loss_ratio`` (teacher-forced val loss / a healthy reference, e.g. the base language)
      with ``length_corr`` (correlation of generated vs reference length) and/or ``mcd_ratio``
      (MCD of generated speech / MCD of a healthy reference); or booleans
      ``teacher_forced_ok`` and ``generation_fails``.

    Scores in [0, 1], calibrated so the root cause outranks its symptoms: ``<unk>`` >= 5%
    scores 0.92-1.0 (nothing trains through ``<unk>``), rows that do not move at most 0.9
    (0.9 once half the new rows moved < 1%; a plateau is often only the end of a cosine
    schedule), teacher-forced-vs-generation 0.85, norm mismatch 0.8 (for a 10x
    ratio), plateau 0.7 (a symptom of all the above).

    Returns:
        ``[{"cause", "score", "evidence", "measured", "fix"}]`` sorted by score, best first.

    Raises:
        ValueError: evidence that :func:`check_evidence` refuses.
    """
    evidence = check_evidence(evidence)
    causes = []

    u = evidence.get("unk_rate")
    if u is None:
        causes.append((CAUSE_UNK, 0.0, "not measured: give --tokenizer and --text", False))
    else:
        u = float(u)
        score = 0.92 + 0.08 * _clip((u - 0.05) / 0.15) if u >= 0.05 else 0.92 * u / 0.05
        causes.append((CAUSE_UNK, score, f"{u:.1%} of target-text tokens are <unk>", True))

    share = evidence.get("new_share_below_1pct")
    flagged = evidence.get("flagged_new_share")
    if share is not None:
        med, factor = evidence.get("new_drift_median"), evidence.get("new_decay_factor")
        text = (f"{float(share):.0%} of new rows moved < 1% from their init beyond what weight "
                "decay explains")
        if med is not None:
            text += f" (median drift {float(med):.2%}"
            if factor is not None and abs(1 - float(factor)) > 1e-3:
                text += f"; rows scaled by {float(factor):.4g} along themselves, as decay does"
            text += ")"
        causes.append((CAUSE_NOT_MOVING, 0.9 * _clip(float(share) / 0.5), text, True))
    elif flagged is not None:
        causes.append((CAUSE_NOT_MOVING, 0.6 * _clip(float(flagged)),
                       (f"no init snapshot; {float(flagged):.0%} of new rows look untrained "
                        "(Magikarp flags)"), True))
    else:
        causes.append((CAUSE_NOT_MOVING, 0.0,
                       "not measured: give --init-snapshot or an extension record, and --base-rows",
                       False))

    ratio = evidence.get("norm_ratio")
    if ratio is None or (isinstance(ratio, Mapping) and not ratio):
        causes.append((CAUSE_NORM, 0.0, "not measured: give --base-rows", False))
    else:
        ratios = dict(ratio) if isinstance(ratio, Mapping) else {TEXT_KEYS[0]: ratio}
        ratios = {k: float(r) for k, r in ratios.items() if r is not None}
        if ratios:
            worst = max(ratios, key=lambda k: abs(math.log(max(ratios[k], 1e-300))))
            score = 0.8 * _clip(abs(math.log(max(ratios[worst], 1e-300))) / math.log(10))
            text = "; ".join(f"{k}: new/base mean norm {r:.3g}" for k, r in ratios.items())
            causes.append((CAUSE_NORM, score, text, True))
        else:
            causes.append((CAUSE_NORM, 0.0, "no new rows to compare", False))

    plateau = evidence.get("plateau")
    if plateau is None:
        causes.append((CAUSE_PLATEAU, 0.0, "not measured: give --log", False))
    else:
        rel = evidence.get("loss_relative_change")
        level = evidence.get("loss_level")
        text = ("loss flat" if plateau else "loss still falling")
        if rel is not None:
            text += f": {float(rel):+.1%} over the last window"
        if level is not None:
            text += f" at {float(level):.3g}"
        causes.append((CAUSE_PLATEAU, 0.7 if plateau else 0.05, text, True))

    tf_ok, gen_fail, parts = evidence.get("teacher_forced_ok"), evidence.get("generation_fails"), []
    if evidence.get("val_loss_ratio") is not None:
        r = float(evidence["val_loss_ratio"])
        tf_ok = _clip((1.5 - r) / 0.3)
        parts.append(f"val loss {r:.2f}x the reference")
    signals = []
    if evidence.get("length_corr") is not None:
        c = float(evidence["length_corr"])
        signals.append(_clip((0.5 - c) / 0.5))
        parts.append(f"generated/reference length correlation {c:.2f}")
    if evidence.get("mcd_ratio") is not None:
        m = float(evidence["mcd_ratio"])
        signals.append(_clip((m - 1.0) / 0.5))
        parts.append(f"MCD {m:.2f}x the reference")
    if signals:
        gen_fail = max(signals)
    if tf_ok is None or gen_fail is None:
        causes.append((CAUSE_TF_GEN, 0.0, ("not measured: pass val_loss_ratio and length_corr "
                                           "or mcd_ratio (chapter 6/7 numbers)"), False))
    else:
        causes.append((CAUSE_TF_GEN, 0.85 * float(tf_ok) * float(gen_fail),
                       "; ".join(parts) or f"teacher_forced_ok={tf_ok}, generation_fails={gen_fail}",
                       True))

    fixes = {
        CAUSE_UNK: "extend the tokenizer with whole-script fallback pieces (tokenizer extend, "
                   "not --naive) and normalise text the same way in training and inference",
        CAUSE_NOT_MOVING: "raise the learning rate of the new rows (not lower it), check they "
                          "are not frozen, check their gradient with gradient_probe",
        CAUSE_NORM: "initialise new rows from trained rows (--init mean / hewitt / romanized)",
        CAUSE_PLATEAU: "look at the causes above; a plateau is the symptom, not the cause",
        CAUSE_TF_GEN: "check stop-token handling, sampling and targets; compare teacher-forced "
                      "and free-running outputs on the same sentences",
    }
    out = [{"cause": c, "score": round(float(s), 4), "evidence": e, "measured": m, "fix": fixes[c]}
           for c, s, e, m in causes]
    out.sort(key=lambda d: (-d["score"], not d["measured"]))
    return out


# ----------------------------------------------------------------------------- plots
def plot_norms(state_dict: Mapping[str, torch.Tensor], base_rows: int | None,
               flagged: Sequence[int] | None = None, path: str | Path | None = None,
               title: str | None = None):
    """Norm by row id (top) and base/new histograms (bottom) for the three text tables.

    The constructor init's expected norm is marked: 0.02 sqrt(d) for the embedding,
    1/sqrt(3) for head rows, 1/(2 sqrt(d)) mean |bias|. Uses matplotlib's object API (no
    pyplot state; safe under the Agg backend). Returns the Figure; writes a PNG atomically
    when ``path`` is given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, dim = check_text_tables(state_dict)
    base, new, plus = split_rows(rows, base_rows)
    norms = row_norms(state_dict)
    fig = Figure(figsize=(15, 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    flagged_ids = np.asarray(sorted(flagged or []), dtype=int)
    for col, key in enumerate(TEXT_KEYS):
        n = norms[key]
        init = expected_init_norm(key, dim)
        log_scale = key != TEXT_KEYS[2] and bool((n > 0).all())
        ax = axes[0, col]
        ax.scatter(base, n[base], s=3, c="C0", label=f"base ({len(base)})", rasterized=True)
        if len(new):
            ax.scatter(new, n[new], s=3, c="C1", label=f"new ({len(new)})", rasterized=True)
        if plus is not None:
            ax.scatter([plus], [n[plus]], s=30, c="C3", marker="D", label=f"+1 row ({plus})")
        if len(flagged_ids):
            ax.scatter(flagged_ids, n[flagged_ids], s=14, facecolors="none", edgecolors="k",
                       linewidths=0.5, label=f"flagged ({len(flagged_ids)})")
        ax.axhline(init, color="C2", ls="--", lw=1, label=f"constructor init {init:.3g}")
        if base_rows is not None and len(new):
            ax.axvline(base_rows - 0.5, color="gray", lw=0.8)
        if log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("row id")
        ax.set_ylabel("|bias|" if key == TEXT_KEYS[2] else "L2 norm")
        ax.set_title(key)
        ax.legend(fontsize=7, markerscale=2, loc="upper left")

        ax = axes[1, col]
        values = n[np.concatenate([base, new])]
        positive = values[values > 0]
        if log_scale and len(positive):
            lo, hi = min(positive.min(), init) * 0.9, max(positive.max(), init) * 1.1
            bins = np.geomspace(lo, hi, 60)
            ax.set_xscale("log")
        else:
            bins = 60
        ax.hist(n[base], bins=bins, alpha=0.6, color="C0", label="base")
        if len(new):
            ax.hist(n[new], bins=bins, alpha=0.6, color="C1", label="new")
        ax.axvline(init, color="C2", ls="--", lw=1, label="constructor init")
        ax.set_xlabel("|bias|" if key == TEXT_KEYS[2] else "L2 norm")
        ax.set_ylabel("rows")
        ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.07, top=0.92, wspace=0.25, hspace=0.3)
    if title:
        fig.suptitle(title)
    if path is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        write_bytes_atomic(path, buffer.getvalue())
    return fig


# ----------------------------------------------------------------------------- diagnose
def _find_record(checkpoint: Path, meta: Mapping[str, Any], given: str | Path | None
                 ) -> tuple[dict | None, str | None]:
    if given is not None:  # the record itself, or a checkpoint with its record beside it
        beside = record_path(given)
        if beside.is_file():
            return read_extension_record(beside), str(beside)
        return read_extension_record(given, as_is=True), str(given)
    if record_path(checkpoint).is_file():
        return read_extension_record(record_path(checkpoint)), str(record_path(checkpoint))
    inner = meta.get("meta") or {}
    if isinstance(inner, Mapping) and isinstance(inner.get("extension"), Mapping):
        record = dict(inner["extension"])
        if all(isinstance(record.get(k), int) for k in ("base_vocab", "new_vocab")):
            return record, "checkpoint meta"
    return None, None


def _check_plateau_args(window: int | None, threshold: float) -> None:
    if window is not None and (isinstance(window, bool) or int(window) != window or window < 2):
        raise ValueError(f"--window {window} must be a whole number of log points >= 2")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"--threshold {threshold} must be a finite number >= 0 (0.02 = the loss "
                         "must fall 2% over the window)")


def _check_plot(plot: str | Path, inputs: Mapping[str, Any]) -> None:
    """Refuse a --plot path that is an input, a folder, under a file, unwritable, or an
    existing file that is not a PNG (someone's data, not an earlier plot)."""
    path = check_output_file(plot, "--plot", dict(inputs))
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                raise ValueError(f"--plot {path} exists and is not a PNG image; choose another "
                                 "path (an earlier plot would be replaced, other files are not)")


def diagnose(checkpoint: str | Path, base_rows: int | None = None,
             init_snapshot: str | Path | None = None, extension_record: str | Path | None = None,
             tokenizer: str | Path | None = None, text: str | Path | Sequence[str] | None = None,
             lang: str | None = None, log: str | Path | None = None, log_key: str = "loss",
             log_split: str | None = "train", window: int | None = None,
             threshold: float = PLATEAU_THRESHOLD, evidence: Mapping[str, Any] | None = None,
             plot: str | Path | None = None, trust_pickle: bool = False) -> dict[str, Any]:
    """Gather every measurement on one checkpoint into a JSON-ready dict.

    Args:
        checkpoint: MiniVoice ``.pt`` or IndexTTS2 ``gpt.pth``.
        base_rows: pretrained rows; default from the extension record (beside the checkpoint,
            given, or in a MiniVoice checkpoint's meta).
        init_snapshot: a checkpoint/state dict holding the text tables at init (for drift);
            default: rebuilt from the extension record and its seed.
        extension_record: the record's path when it is not beside the checkpoint.
        tokenizer, text, lang: measure the ``<unk>`` rate of ``text`` (a file, a HornMT code
            -- its train split -- or a list of lines) under ``tokenizer``.
        log, log_key, log_split, window, threshold: plateau detection on a metrics.jsonl or a
            TensorBoard folder.
        evidence: extra checklist numbers (``val_loss_ratio``, ``length_corr``, ``mcd_ratio``).
        plot: write the norm figure here (PNG).
        trust_pickle: see :func:`amhelpers.checkpoint.load_state_dict`.

    Returns:
        ``checkpoint``, ``layout``, ``rows``, ``dim``, ``base_rows``, ``base_rows_source``,
        ``tables``, ``magikarp``, ``flagged_rows``, ``flagged``, ``drift``, ``unk``,
        ``plateau``, ``evidence``, ``causes``, ``notes``, ``plot``.
    """
    checkpoint = Path(checkpoint)
    if evidence is not None:  # every argument is checked before the (slow) work
        evidence = check_evidence(evidence, "--evidence")
    if (tokenizer is None) != (text is None):
        raise ValueError("--tokenizer and --text go together (the <unk> rate of --text under "
                         "--tokenizer)")
    if log is not None:
        _check_plateau_args(window, threshold)
    if plot is not None:
        _check_plot(plot, {"--checkpoint": checkpoint, "--init-snapshot": init_snapshot,
                           "--extension-record": extension_record, "--tokenizer": tokenizer,
                           "--text": text if isinstance(text, (str, Path)) else None,
                           "--log": log})
    if init_snapshot is not None and (same_file(init_snapshot, checkpoint)
                                      or Path(init_snapshot).resolve() == checkpoint.resolve()):
        raise ValueError(f"--init-snapshot {init_snapshot} is the --checkpoint itself, so every "
                         "row would show zero drift; give the snapshot taken right after the "
                         "extension (e.g. the run's init.pt), or leave it out to rebuild it from "
                         "the extension record")
    sd, meta = load_state_dict(checkpoint, trust_pickle)
    check_finite_tables(sd, f"checkpoint {checkpoint}")
    rows, dim = meta["rows"], meta["dim"]
    notes: list[str] = []
    record, record_source = _find_record(checkpoint, meta, extension_record)
    source = "argument"
    if base_rows is None and record is not None:
        base_rows, source = int(record["base_vocab"]), f"extension record ({record_source})"
        if base_rows >= rows:
            raise ValueError(f"the extension record ({record_source}) says {base_rows} base rows "
                             f"but {checkpoint} has only {rows} text rows: it is not this "
                             "checkpoint's record; pass --extension-record or --base-rows")
    elif base_rows is None:
        source = "none"
        notes.append("no --base-rows and no extension record: every row but the last counts as "
                     "base; pass --base-rows to split base and new rows")
    if base_rows is not None and not 2 <= base_rows <= rows:
        raise ValueError(f"--base-rows {base_rows} is larger than the text tables of {checkpoint} "
                         f"({rows} rows)" if base_rows > rows else
                         f"--base-rows {base_rows} must be at least 2 (the trained rows that "
                         f"serve as the reference; {checkpoint} has {rows} text rows)")
    if tokenizer is not None:
        from .tokenizer import load_proto

        pieces = len(load_proto(tokenizer, "--tokenizer").pieces)
        if pieces + 1 != rows:
            notes.append(f"--tokenizer {tokenizer} has {pieces} pieces but the checkpoint's text "
                         f"tables have {rows} rows ({pieces + 1} expected): the <unk> rate is that "
                         "of another tokenizer than the one this checkpoint was grown for")

    tables = table_stats(sd, base_rows)
    mk = magikarp(sd, base_rows)
    _, new, _ = split_rows(rows, base_rows)
    flagged = np.asarray(mk["flagged_rows"], dtype=int)
    n_new_flagged = int(np.isin(flagged, new).sum()) if len(new) else 0
    n_base_flagged = int((flagged < (base_rows if base_rows is not None else rows - 1)).sum())
    flagged_summary = {"base": n_base_flagged, "new": n_new_flagged,
                       "new_share": n_new_flagged / len(new) if len(new) else None}

    drift_out = None
    if init_snapshot is not None:
        init_sd, _ = load_state_dict(init_snapshot, trust_pickle)
        drift_out = {"source": f"init snapshot {init_snapshot}", "exact": True,
                     **drift(sd, init_sd, base_rows if base_rows is not None else rows - 1)}
    elif record is not None and base_rows is not None and len(new):
        try:
            init_sd, exact = initial_state_from_record(sd, record)
            drift_out = {"source": f"rebuilt from extension record ({record_source}), "
                                   f"strategy {record['strategy']}, seed {record.get('seed', 0)}",
                         "exact": exact, **drift(sd, init_sd, base_rows)}
            # the rebuilt init reuses today's base rows: compare them by the record's sha256
            same = base_rows_sha256(sd, base_rows) == record.get("base_rows_sha256")
            for table in drift_out["tables"].values():
                table["base"] = {"rows": table["base"]["rows"], "median": None, "max": None,
                                 "changed_rows": None, "unchanged_since_extension": same}
            if not exact:
                notes.append("base rows changed since the extension, so the rebuilt init of "
                             "mean/hewitt/romanized rows is approximate")
        except (FileNotFoundError, ValueError) as err:
            notes.append(f"drift not measured: {err}")

    unk = None
    if tokenizer is not None and text is not None:
        if isinstance(text, (str, Path)):
            from .tokenizer import read_texts

            lines, code = read_texts(text, "train", "--text")
        else:
            lines, code = list(text), None
        unk = unk_rate(tokenizer, lines, lang or code)
        unk["text"] = str(text) if isinstance(text, (str, Path)) else f"{len(lines)} lines"

    plateau = plateau_from_log(log, log_key, log_split, window, threshold) if log is not None else None
    if plateau is not None and plateau["warning"]:
        notes.append(plateau["warning"])

    ev: dict[str, Any] = {}
    if unk is not None:
        ev["unk_rate"] = unk["unk_rate"]
    if drift_out is not None and drift_out["tables"][TEXT_KEYS[0]]["new"]["rows"]:
        moved = drift_out["tables"][TEXT_KEYS[0]]["new"]
        ev["new_share_below_1pct"] = moved["beyond_decay"]["share_below_1pct"]
        ev["new_drift_median"] = moved["median"]
        ev["new_decay_factor"] = moved["decay_factor"]
    if flagged_summary["new_share"] is not None:
        ev["flagged_new_share"] = flagged_summary["new_share"]
    if len(new):
        ev["norm_ratio"] = {k: tables[k]["new"]["norm_mean"] / tables[k]["base"]["norm_mean"]
                            for k in TEXT_KEYS[:2] if tables[k]["base"]["norm_mean"]}
    if plateau is not None:
        ev.update(plateau=plateau["plateau"], loss_relative_change=plateau["relative_change"],
                  loss_level=plateau["level"])
    ev.update(dict(evidence or {}))
    causes = rank_causes(ev)

    if plot is not None:
        plot_norms(sd, base_rows, mk["flagged_rows"], plot, title=str(checkpoint.name))
    return {
        "checkpoint": str(checkpoint), "layout": meta["layout"], "rows": rows, "dim": dim,
        "base_rows": base_rows, "base_rows_source": source, "extension_record": record_source,
        "tables": tables, "magikarp": {k: v for k, v in mk.items() if k != "flagged_rows"},
        "flagged_rows": mk["flagged_rows"], "flagged": flagged_summary, "drift": drift_out,
        "unk": unk, "plateau": plateau, "evidence": ev, "causes": causes, "notes": notes,
        "plot": str(plot) if plot is not None else None,
    }


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def print_report(report: Mapping[str, Any]) -> None:
    """Readable text version of :func:`diagnose`'s result."""
    print(f"diagnose {report['checkpoint']} ({report['layout']}): {report['rows']} text rows x "
          f"{report['dim']}; base rows {report['base_rows']} ({report['base_rows_source']})")
    for key, t in report["tables"].items():
        b, n = t["base"], t["new"]
        print(f"  {key:22s} base {b['rows']:6d} rows norm {_fmt(b['norm_mean'])} ± {_fmt(b['norm_std'])}"
              f" | new {n['rows']:6d} rows norm {_fmt(n['norm_mean'])} ± {_fmt(n['norm_std'])}"
              f" | init {t['init_norm']:.3g}")
    f = report["flagged"]
    print(f"  flagged as under-trained: {len(report['flagged_rows'])} rows ({f['base']} base, "
          f"{f['new']} new)")
    for item in report["magikarp"]["disabled"]:
        print(f"    test disabled: {item}")
    if report["drift"]:
        d = report["drift"]["tables"][TEXT_KEYS[0]]["new"]
        print(f"  drift of new embedding rows from init ({report['drift']['source']}): median "
              f"{_fmt(d['median'])}, max {_fmt(d['max'])}, share moved < 1%: "
              f"{_fmt(d['share_below_1pct'])}; beyond weight decay: median "
              f"{_fmt(d['beyond_decay']['median'])}, share < 1%: "
              f"{_fmt(d['beyond_decay']['share_below_1pct'])} (rows scaled by "
              f"{_fmt(d['decay_factor'])})")
    if report["unk"]:
        print(f"  <unk> rate of {report['unk']['text']}: {report['unk']['unk_rate']:.2%}")
    if report["plateau"]:
        p = report["plateau"]
        print(f"  loss ({p['source']}): {p['relative_change']:+.2%} over the last {p['window']} points "
              f"-> plateau {p['plateau']}")
    print("  likely causes:")
    for c in report["causes"]:
        print(f"    {c['score']:.2f}  {c['cause']}: {c['evidence']}")
        if c["measured"] and c["score"] >= 0.5:
            print(f"          fix: {c['fix']}")
    for note in report["notes"]:
        print(f"  note: {note}")
    if report["plot"]:
        print(f"  plot: {report['plot']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers diagnose --checkpoint C [...] [--json] [--plot P]``."""
    parser.add_argument("--checkpoint", required=True, help="MiniVoice .pt or IndexTTS2 gpt.pth")
    parser.add_argument("--base-rows", type=int, default=None,
                        help="pretrained rows (default: from the extension record)")
    parser.add_argument("--init-snapshot", default=None,
                        help="checkpoint holding the text tables at init (for drift)")
    parser.add_argument("--extension-record", default=None,
                        help="extension record when it is not beside the checkpoint")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for the <unk> rate")
    parser.add_argument("--text", default=None, help="target text: a UTF-8 file or a HornMT code")
    parser.add_argument("--lang", default=None, help="ISO 639-3 code of --text (normalisation)")
    parser.add_argument("--log", default=None, help="metrics.jsonl, a run folder or a TensorBoard folder")
    parser.add_argument("--log-key", default="loss", help="loss key / scalar tag (default loss)")
    parser.add_argument("--log-split", default="train", help="JSONL split to read (default train)")
    parser.add_argument("--window", type=int, default=None, help="plateau window in log points")
    parser.add_argument("--threshold", type=float, default=PLATEAU_THRESHOLD,
                        help="smallest relative loss fall over the window that is progress")
    parser.add_argument("--evidence", default=None,
                        help="extra checklist numbers as JSON (a string or a file), e.g. "
                             '\'{"val_loss_ratio": 1.1, "length_corr": 0.2}\'')
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow unsafe unpickling of a checkpoint holding Python objects")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", default=None, help="write the norm plot (PNG) here")


def _parse_evidence(raw: str) -> dict[str, Any]:
    """``--evidence``: a JSON object, or the path of a file holding one; checked key by key."""
    text = raw
    if not raw.lstrip().startswith(("{", "[", '"')) and Path(raw).exists():
        if Path(raw).is_dir():
            raise ValueError(f"--evidence {raw} is a folder; give a JSON object or a JSON file")
        text = read_text_strict(raw, "--evidence")
    try:
        evidence = json.loads(text)
    except ValueError as err:
        where = f"file {raw}" if text is not raw else repr(raw[:60])
        hint = "neither JSON nor an existing file" if text is raw else "not JSON"
        raise ValueError(f"--evidence {where} is {hint} ({err}); give an object such as "
                         '\'{"val_loss_ratio": 1.1, "length_corr": 0.2}\' or a file holding one'
                         ) from None
    return check_evidence(evidence, "--evidence")


def run(args: argparse.Namespace) -> int:
    """Run the diagnose CLI; exit 0 when the diagnosis ran (whatever it found)."""
    evidence = _parse_evidence(args.evidence) if args.evidence else None
    report = diagnose(args.checkpoint, args.base_rows, args.init_snapshot, args.extension_record,
                      args.tokenizer, args.text, args.lang, args.log, args.log_key,
                      args.log_split or None, args.window, args.threshold, evidence, args.plot,
                      args.trust_pickle)
    if report["plateau"] and report["plateau"]["warning"]:
        print(f"warning: {report['plateau']['warning']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print_report(report)
    return 0
