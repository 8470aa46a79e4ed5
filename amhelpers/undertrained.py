"""Flag under-trained rows of the text tables (the "+1" row, unused pieces, untrained new rows).

After Land & Bartolo (2024), "Fishing for Magikarp: Automatically Detecting Under-trained
Tokens in Large Language Models", EMNLP 2024, pp. 11631-11646
(https://aclanthology.org/2024.emnlp-main.649, arXiv:2405.05417), who find the tokens a model
never learned from their embedding and unembedding rows. :func:`undertrained_rows` adapts their
indicators to one extended tokenizer's tables: the pretrained base rows are the reference.

**Flagging rule.** The base rows (the "+1" row and other known-unused rows left out) are the
reference distribution; robust z-scores use their median and MAD (x 1.4826). A row is flagged as
under-trained when any of these holds:

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
5. *head direction* (the paper's unembedding indicator): the cosine distance of the centred
   head row to the centred mean of the known-unused rows has robust z below ``-z_threshold``.

A fixed percentile (the paper's 2%) would flag 2% of any table and miss most of 12,000
untrained rows; scores against the trained rows flag all of them and few base rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .tables import TEXT_KEYS, as_array, check_finite_tables, check_text_tables

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


def _structure_tests(emb: np.ndarray, head: np.ndarray, ref: np.ndarray, rows: int, dim: int,
                     tests: dict[str, np.ndarray], disabled: list[str]) -> dict[str, np.ndarray]:
    """Indicator 3 for the embedding and the head; returns each row's share per table."""
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
    return structure


def _near_init_tests(log_e: np.ndarray, log_h: np.ndarray, ref: np.ndarray, rows: int, dim: int,
                     tests: dict[str, np.ndarray], disabled: list[str]) -> None:
    """Indicator 4: norms within the band of a constructor init's norm."""
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


def undertrained_rows(state_dict: Mapping[str, torch.Tensor], base_rows: int | None,
                      unused_rows: Sequence[int] | None = None, z_threshold: float = Z_THRESHOLD,
                      return_arrays: bool = False) -> dict[str, Any]:
    """Flag under-trained rows with the rule of the module docstring (Land & Bartolo 2024).

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
    emb, head = as_array(state_dict[TEXT_KEYS[0]]), as_array(state_dict[TEXT_KEYS[1]])
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
    structure = _structure_tests(emb, head, ref, rows, dim, tests, disabled)
    _near_init_tests(log_e, log_h, ref, rows, dim, tests, disabled)

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
