"""The text tables of UnifiedVoice / MiniVoice: their layout and per-row statistics.

Layout. Three tables, named as in IndexTTS2's ``UnifiedVoice`` (``indextts/gpt/model_v2.py``)
and in :class:`amhelpers.model.MiniVoice`, each with ``number_text_tokens + 1`` rows (``V + 1``):
``text_embedding.weight`` [V+1, d], ``text_head.weight`` [V+1, d], ``text_head.bias`` [V+1].
The last row (index ``V``, the "+1" row) is never produced by the V-piece tokenizer. After the
tables grew for an extended tokenizer (:mod:`amhelpers.checkpoint`), rows ``[0, base_rows)`` are
the pretrained **base** rows, rows ``[base_rows, rows - 1)`` the **new** ones, and the "+1" row
is again the last (:func:`split_rows`).

Statistics, on state dicts (``{name: tensor}``), never on files (:mod:`amhelpers.ckptio` reads
those): checks (:func:`check_text_tables`, :func:`check_finite_tables`), norms per row
(:func:`row_norms`, :func:`table_stats`), the norm a constructor init gives
(:func:`expected_init_norm`), a hash of the base rows (:func:`base_rows_sha256`), how far each
row moved from its init beyond what weight decay explains (:func:`drift_from_init`) and the
gradient norm of each row for one batch (:func:`gradient_probe`). Under-trained rows are
flagged in :mod:`amhelpers.undertrained`.

This is the bottom module of the checkpoint / diagnose side: it imports nothing from
``amhelpers``, and :mod:`~amhelpers.ckptio`, :mod:`~amhelpers.checkpoint`,
:mod:`~amhelpers.undertrained` and :mod:`~amhelpers.diagnose` all import it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

TEXT_KEYS = ("text_embedding.weight", "text_head.weight", "text_head.bias")
EMBEDDING_INIT_STD = 0.02
MOVED_THRESHOLD = 0.01


# ----------------------------------------------------------------------------- layout checks
def as_array(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 numpy array on the CPU (statistics are computed in float64)."""
    return t.detach().cpu().to(torch.float64).numpy()


def check_text_tables(state_dict: Mapping[str, Any], where: str = "state dict") -> tuple[int, int]:
    """Check the three text tables and return ``(rows, dim)``.

    Raises:
        ValueError: a table is missing or the shapes disagree (names the keys expected and a
            few keys found).
    """
    missing = [k for k in TEXT_KEYS if k not in state_dict]
    if missing:
        found = sorted(state_dict)[:6]
        raise ValueError(
            f"{where} has no text tables: expected keys {', '.join(TEXT_KEYS)} (UnifiedVoice / "
            f"MiniVoice names); missing {', '.join(missing)}; found {len(state_dict)} keys such as "
            f"{', '.join(found) or '(none)'}")
    emb, head, bias = (state_dict[k] for k in TEXT_KEYS)
    if emb.dim() != 2 or head.dim() != 2 or bias.dim() != 1:
        raise ValueError(f"{where}: text tables have shapes {tuple(emb.shape)}, {tuple(head.shape)}, "
                         f"{tuple(bias.shape)}; expected [V+1, d], [V+1, d], [V+1]")
    if not (emb.shape[0] == head.shape[0] == bias.shape[0]) or emb.shape[1] != head.shape[1]:
        raise ValueError(f"{where}: text tables disagree: {TEXT_KEYS[0]} {tuple(emb.shape)}, "
                         f"{TEXT_KEYS[1]} {tuple(head.shape)}, {TEXT_KEYS[2]} {tuple(bias.shape)}")
    return int(emb.shape[0]), int(emb.shape[1])


def non_finite_rows(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, list[int]]]:
    """Rows of each text table holding NaN (``"nan"``) or only +-inf (``"inf"``); empty when none."""
    out = {}
    for key in TEXT_KEYS:
        t = state_dict[key].detach()
        if not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        nan = torch.isnan(t).reshape(len(t), -1).any(1)
        inf = torch.isinf(t).reshape(len(t), -1).any(1) & ~nan
        out[key] = {"nan": torch.nonzero(nan).flatten().tolist(),
                    "inf": torch.nonzero(inf).flatten().tolist()}
    return out


def check_finite_tables(state_dict: Mapping[str, torch.Tensor], where: str = "state dict") -> None:
    """Raise a ValueError naming the tables and rows that hold NaN or inf (see :func:`non_finite_rows`)."""
    bad = non_finite_rows(state_dict)
    if not bad:
        return
    parts = []
    for key, kinds in bad.items():
        for kind, ids in kinds.items():
            if ids:
                shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
                parts.append(f"{key}: {len(ids)} row{'s' * (len(ids) != 1)} with {kind} ({shown})")
    raise ValueError(f"{where} holds non-finite values: {'; '.join(parts)}; training diverged or "
                     "the file is damaged: use an earlier checkpoint (and lower the learning rate "
                     "or clip gradients)")


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


def expected_init_norm(name: str, dim: int, strategy: str = "indextts") -> float:
    """Expected row norm (bias: mean absolute value) of a constructor-initialised row.

    Embedding N(0, s) in d dims: s*sqrt(d) (s = 0.02 for ``indextts``, 1 for
    ``torch-default``); head weight uniform ±1/sqrt(d): sqrt(d/3)/sqrt(d) = 1/sqrt(3); head bias
    uniform ±1/sqrt(d): mean |b| = 1/(2 sqrt(d)).
    """
    if name == TEXT_KEYS[0]:
        return (1.0 if strategy == "torch-default" else EMBEDDING_INIT_STD) * math.sqrt(dim)
    if name == TEXT_KEYS[1]:
        return 1.0 / math.sqrt(3.0)
    return 0.5 / math.sqrt(dim)


def base_rows_sha256(state_dict: Mapping[str, torch.Tensor], base_rows: int) -> str:
    """sha256 over rows ``[0, base_rows)`` of the three text tables (detects any base change)."""
    digest = hashlib.sha256()
    for key in TEXT_KEYS:
        t = state_dict[key][:base_rows].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- norms
def row_norms(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """L2 norm of each row of the text tables (``text_head.bias``: absolute value)."""
    check_text_tables(state_dict)
    out = {}
    for key in TEXT_KEYS:
        x = as_array(state_dict[key])
        out[key] = np.abs(x) if x.ndim == 1 else np.linalg.norm(x, axis=1)
    return out


def norm_stats(values: np.ndarray) -> dict[str, Any]:
    """``rows``, ``norm_mean``, ``norm_std``, ``norm_median``, ``norm_min``, ``norm_max`` (None when empty)."""
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
        out[key] = {"base": norm_stats(n[base]), "new": norm_stats(n[new]),
                    "plus_one": None if plus is None else {"row": int(plus), "norm": float(n[plus])},
                    "init_norm": expected_init_norm(key, dim)}
    return out


# ----------------------------------------------------------------------------- drift from init
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


def drift_from_init(state_dict: Mapping[str, torch.Tensor], init_state: Mapping[str, torch.Tensor],
                    base_rows: int, moved_threshold: float = MOVED_THRESHOLD,
                    trained_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """How far each row moved from its init, in total and beyond what weight decay explains.

    (The frozen base rows' change since a freeze snapshot is :mod:`amhelpers.freeze`'s measure.)

    Total movement: ``||w - w0|| / ||w0||`` for rows of 2-D tables; for ``text_head.bias`` the
    absolute change ``|b - b0|`` over the RMS of the init's base biases (a near-zero init would
    make a relative drift explode). Weight decay alone (AdamW's ``w *= 1 - lr * wd``, or SGD's
    L2 term) only shrinks a row along itself, so after 1,000 steps at lr 1e-3 and wd 0.01 every
    row has "moved" 1% without any gradient. ``beyond_decay`` measures what decay cannot fake:
    the distance from the best decay-only prediction ``alpha * w0`` (``alpha`` in [0, 1]; per row
    for 2-D tables, which leaves the change orthogonal to ``w0``; one ``alpha`` for the bias).

    ``trained_ids``: the token ids that occur in the training data. A new row whose token never
    occurs gets no gradient and cannot move at any learning rate; with ``trained_ids`` each
    table's ``new`` also holds ``in_training``, the same summary over the new rows whose token
    occurs (``rows`` of them), so a share below 1% there is the learning rate's doing.

    Returns:
        Per table ``{"relative_to", "scale", "new": {"rows", "median", "mean", "max", "min",
        "share_below_1pct", "beyond_decay": {same five}, "decay_factor"[, "in_training":
        {"rows", same five, "beyond_decay"}]}, "base": {"rows",
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
    trained = None if trained_ids is None else np.fromiter(set(trained_ids), dtype=np.int64)
    tables = {}
    for key in TEXT_KEYS:
        w, w0 = state_dict[key].detach().cpu(), init_state[key].detach().cpu()
        if w.shape != w0.shape:
            raise ValueError(f"init snapshot's {key} has shape {tuple(w0.shape)}, "
                             f"the checkpoint's {tuple(w.shape)}")
        total, beyond, alpha, scale, relative_to = _movement(as_array(w), as_array(w0), base, new)
        rb = total[base]
        idx = torch.as_tensor(base, dtype=torch.long)
        changed = (w[idx] != w0[idx]).reshape(len(base), -1).any(1)
        moved_new = {"rows": len(new), **_summary(total[new], moved_threshold),
                     "beyond_decay": _summary(beyond[new], moved_threshold),
                     "decay_factor": float(np.median(alpha[new])) if len(new) else None}
        if trained is not None:
            seen = new[np.isin(new, trained)]
            moved_new["in_training"] = {"rows": len(seen), **_summary(total[seen], moved_threshold),
                                        "beyond_decay": _summary(beyond[seen], moved_threshold)}
        tables[key] = {
            "relative_to": relative_to, "scale": scale,
            "new": moved_new,
            "base": {"rows": len(rb),
                     "median": float(np.median(rb)) if len(rb) else None,
                     "max": float(rb.max()) if len(rb) else None,
                     "changed_rows": int(changed.sum()) if len(rb) else 0},
        }
    return {"tables": tables, "moved_threshold": moved_threshold}


# ----------------------------------------------------------------------------- gradients
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
        ``{"loss", "per_row": {name: np.ndarray}, "tables": {name: {"base": stats, "new":
        stats}}}`` where stats are ``rows``, ``norm_mean``, ... of the gradient norms and
        ``zero_rows``.
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
            g = as_array(torch.zeros_like(p) if p.grad is None else p.grad)
            per_row[key] = np.abs(g) if g.ndim == 1 else np.linalg.norm(g, axis=1)
    finally:
        for n, p in model.named_parameters():
            p.grad = saved[n]
    tables = {}
    for key, g in per_row.items():
        base, new, _ = split_rows(len(g), base_rows)
        tables[key] = {}
        for part, ids in (("base", base), ("new", new)):
            stats = norm_stats(g[ids])
            stats["zero_rows"] = int((g[ids] == 0).sum())
            tables[key][part] = stats
    return {"loss": float(loss.detach()), "per_row": per_row, "tables": tables}
