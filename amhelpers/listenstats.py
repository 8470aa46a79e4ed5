"""Statistics of listening tests: preferences with Wilson intervals and a sign test, MOS with
bootstrap intervals, per listener and pooled, and the listeners who fail the anchors.

Rows are those of ``amhelpers.listen.AnswerLog`` (``AB_COLUMNS`` / ``MOS_COLUMNS``), as dicts of
strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REFERENCE, ANCHOR = "reference", "anchor"
"""The hidden reference (espeak-ng's reading) and the low anchor (random codes) of a MOS test."""


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties left out, as the test does); 1.0 with no data."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bootstrap_mean(values: Sequence[float], seed: int = 0, n_boot: int = 2000,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval: ``(mean, low, high)``; NaNs with no values."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


def ab_summary(rows: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Per pair of systems, pooled (``listener`` "all") and per listener: wins of each, ties,
    the first system's share of the decided trials with its Wilson interval, and the sign
    test's p-value."""
    rows = list(rows)
    out = []
    for who in ["all", *sorted({r["listener"] for r in rows})]:
        mine = [r for r in rows if who == "all" or r["listener"] == who]
        pairs = sorted({tuple(sorted((r["system_a"], r["system_b"]))) for r in mine})
        for a, b in pairs:
            pr = [r for r in mine if {r["system_a"], r["system_b"]} == {a, b}]
            wa = sum(r["preferred"] == a for r in pr)
            wb = sum(r["preferred"] == b for r in pr)
            lo, hi = wilson(wa, wa + wb)
            out.append({"listener": who, "system_1": a, "system_2": b, "trials": len(pr),
                        "wins_1": wa, "wins_2": wb, "ties": len(pr) - wa - wb,
                        "share_1": wa / (wa + wb) if wa + wb else math.nan,
                        "share_1_low": lo, "share_1_high": hi, "sign_test_p": sign_test(wa, wb)})
    return out


def mos_summary(rows: Iterable[Mapping[str, str]], seed: int = 0) -> dict[str, Any]:
    """MOS per system with bootstrap intervals, pooled and per listener, and the listeners
    whose mean score of :data:`REFERENCE` is below their mean of :data:`ANCHOR` (``flagged``).

    Returns:
        ``table``: rows ``listener``, ``system``, ``n``, ``mos``, ``low``, ``high``;
        ``flagged``: listener names.
    """
    rows = list(rows)
    table, flagged = [], []
    for who in ["all", *sorted({r["listener"] for r in rows})]:
        mine = [r for r in rows if who == "all" or r["listener"] == who]
        means = {}
        for system in sorted({r["system"] for r in mine}):
            scores = [float(r["score"]) for r in mine if r["system"] == system]
            mos, lo, hi = bootstrap_mean(scores, seed)
            means[system] = mos
            table.append({"listener": who, "system": system, "n": len(scores), "mos": mos,
                          "low": lo, "high": hi})
        if who != "all" and REFERENCE in means and ANCHOR in means and \
                means[REFERENCE] < means[ANCHOR]:
            flagged.append(who)
    return {"table": table, "flagged": flagged}
