"""The checklist of chapter 3: evidence, checked, and the likely causes it points to, ranked.

Evidence is a dict of numbers measured elsewhere (:func:`amhelpers.diagnose.diagnose` gathers
them from a checkpoint, its init and its log; a user adds generation numbers with
``--evidence``). :func:`check_evidence` refuses unknown keys and values of the wrong type or
range; :func:`rank_causes` scores each cause in [0, 1] from the evidence it needs (0 and
``measured`` False when that evidence is missing), best first.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .io import read_text_strict
from .tables import TEXT_KEYS

CAUSE_UNK = "tokenizer <unk> on the target text"
CAUSE_NOT_MOVING = "new rows not moving / learning rate too low"
CAUSE_NORM = "norm mismatch between new and base rows"
CAUSE_PLATEAU = "loss plateau"
CAUSE_TF_GEN = "teacher-forced loss fine while generation fails"


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
    "new_rows_in_training": ("a whole number >= 0", lambda v: _number(v, 0) and float(v).is_integer()),
    "new_rows_not_in_training": ("a whole number >= 0",
                                 lambda v: _number(v, 0) and float(v).is_integer()),
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
      rows that moved < 1% from init beyond what weight decay explains (of the rows whose token
      occurs in the training data when ``new_rows_in_training`` and
      ``new_rows_not_in_training`` say how many there are)
      (:func:`amhelpers.tables.drift_from_init`'s ``beyond_decay``); else ``flagged_new_share`` (share of new rows flagged as under-trained).
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
        seen, unseen = evidence.get("new_rows_in_training"), evidence.get("new_rows_not_in_training")
        text = (f"{float(share):.0%} of new rows moved < 1% from their init beyond what weight "
                "decay explains")
        if seen is not None:
            text = (f"{float(share):.0%} of the {int(seen)} new rows whose token occurs in the "
                    "training data moved < 1% from their init beyond what weight decay explains"
                    + (f"; {int(unseen)} more never occur in it (no learning rate moves those)"
                       if unseen else ""))
        if med is not None:
            text += f" (median drift {float(med):.2%}"
            if factor is not None and abs(1 - float(factor)) > 1e-3:
                text += f"; rows scaled by {float(factor):.4g} along themselves, as decay does"
            text += ")"
        causes.append((CAUSE_NOT_MOVING, 0.9 * _clip(float(share) / 0.5), text, True))
    elif flagged is not None:
        causes.append((CAUSE_NOT_MOVING, 0.6 * _clip(float(flagged)),
                       (f"no init snapshot; {float(flagged):.0%} of new rows look untrained "
                        "(flagged by undertrained_rows)"), True))
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


def parse_evidence(raw: str) -> dict[str, Any]:
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
