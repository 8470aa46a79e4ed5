"""The quality bar and steps to reach it: how many training steps a recipe needs.

Loss falls for runs that never learn to speak (chapter 3), so sample efficiency is measured on
generation: a run *reaches the bar* at the first evaluated step where its length correlation and
its MCD / random codes are both at least ``fraction`` of the way from "knows nothing" (length
correlation 0, MCD / random 1) to what a long reference run of the course's fix reaches.

    >>> bar = quality_bar({"length_corr": 0.9, "mcd_vs_random": 0.7}, fraction=0.9)
    >>> (round(bar.length_corr, 2), round(bar.mcd_vs_random, 2))
    (0.81, 0.73)
    >>> steps_to_bar([{"step": 100, "length_corr": 0.5, "mcd_vs_random": 0.9},
    ...               {"step": 200, "length_corr": 0.85, "mcd_vs_random": 0.72}], bar)
    200

Pure functions over metric dicts (``embedded.quality_curve`` makes the curves), so they are
tested without training anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BAR_FRACTION = 0.9
"""How far from "knows nothing" to the reference run a run must get to reach the bar."""

# What a model that knows nothing scores: lengths uncorrelated, spectra as far as random codes.
_FLOOR = {"length_corr": 0.0, "mcd_vs_random": 1.0}


@dataclass(frozen=True)
class QualityBar:
    """Reach it: ``length_corr >= length_corr`` and ``mcd_vs_random <= mcd_vs_random``."""

    length_corr: float
    mcd_vs_random: float
    fraction: float
    reference: dict[str, float]

    def reached(self, metrics: Mapping[str, Any]) -> bool:
        """Whether one evaluation (generation metrics of one checkpoint) reaches the bar."""
        corr, mcd = metrics.get("length_corr"), metrics.get("mcd_vs_random")
        return (corr is not None and mcd is not None
                and corr >= self.length_corr and mcd <= self.mcd_vs_random)

    def describe(self) -> str:
        """One sentence for a notebook: the bar and where it comes from."""
        ref = self.reference
        return (f"length correlation >= {self.length_corr:.3f} and MCD / random <= "
                f"{self.mcd_vs_random:.3f} ({self.fraction:.0%} of the way from no skill "
                f"(0 and 1) to the reference run's {ref['length_corr']:.3f} and "
                f"{ref['mcd_vs_random']:.3f})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_bar(reference: Mapping[str, Any], fraction: float = BAR_FRACTION) -> QualityBar:
    """The bar set by a reference run's generation metrics (``length_corr``, ``mcd_vs_random``).

    Raises:
        ValueError: ``fraction`` outside (0, 1], or a reference no better than no skill (the
            bar would be reached by a model that knows nothing).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: give a number in (0, 1], e.g. {BAR_FRACTION}")
    missing = [k for k in _FLOOR if reference.get(k) is None]
    if missing:
        raise ValueError(f"reference metrics lack {missing}: pass embedded.generation(...) "
                         "of the reference run")
    ref = {k: float(reference[k]) for k in _FLOOR}
    if ref["length_corr"] <= 0 or ref["mcd_vs_random"] >= 1:
        raise ValueError(f"the reference run is no better than no skill ({ref}): train it "
                         "longer before using it as a bar")
    bar = {k: _FLOOR[k] + fraction * (ref[k] - _FLOOR[k]) for k in _FLOOR}
    return QualityBar(bar["length_corr"], bar["mcd_vs_random"], fraction, ref)


def steps_to_bar(curve: Iterable[Mapping[str, Any]], bar: QualityBar) -> int | None:
    """The first step of ``curve`` (dicts with ``step`` and the metrics) that reaches ``bar``.

    Returns None when no evaluated step reaches it. The answer is only as fine as the curve:
    a run evaluated every 100 steps that reaches the bar at 100 may have reached it at 40.
    """
    for point in sorted(curve, key=lambda m: m["step"]):
        if bar.reached(point):
            return int(point["step"])
    return None


def efficiency(ours: int | None, theirs: int | None, theirs_max: int) -> dict[str, Any]:
    """Compare steps to the bar: ``ratio`` = theirs / ours.

    Where the other recipe never reached the bar within ``theirs_max`` steps, ``ratio`` is a
    lower bound (``theirs_max / ours``) and ``reached`` says so.
    """
    if ours is None:
        return {"ratio": None, "lower_bound": False, "reached": theirs is not None}
    if theirs is None:
        return {"ratio": theirs_max / ours, "lower_bound": True, "reached": False}
    return {"ratio": theirs / ours, "lower_bound": False, "reached": True}


CURVE_FILE = "quality_curve.json"
"""Where :func:`quality_curve` caches its evaluations, in the run's folder."""


def quality_curve(p: Any, run_dir: str | Path, lang: str | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Generation metrics (with PER) of every checkpoint a fine-tune kept, oldest first (cached).

    ``run_dir`` is a folder of ``embedded.finetune`` (its ``result.json`` names the tokenizer).
    The grown model before training is not evaluated: its new rows are random, it cannot speak
    the language, and greedy decoding that never stops costs the most. Each checkpoint is
    evaluated once
    on the profile's held-out phrases; later calls read ``quality_curve.json`` and evaluate only
    checkpoints added since. Which steps exist depends on how the run saved: ``finetune`` keeps
    the last three checkpoints, or all of them where ``save_every`` was given.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``result.json`` (not a finished fine-tune).
    """
    from . import embedded
    from .io import write_text_atomic
    from .rundir import checkpoints

    run_dir = Path(run_dir)
    done = run_dir / "result.json"
    if not done.is_file():
        raise FileNotFoundError(f"{done} is missing: {run_dir} is not a finished run of "
                                "embedded.finetune (run it to the end first)")
    result = json.loads(done.read_text())
    lang = lang or p.target_lang
    tok = (Path(result["tokenizer"]) if lang == p.target_lang
           else embedded.base_tokenizer(p))
    cache_file = run_dir / CURVE_FILE
    setting = {"lang": lang, "n": p.eval_phrases, "tokenizer": str(tok), "per": True}
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if cache.get("setting") != setting:
        cache = {"setting": setting, "points": {}}
    steps = checkpoints(run_dir / "train")
    todo = [(s, path) for s, path in steps if str(s) not in cache["points"]]
    if todo:
        from tqdm.auto import tqdm

        for step, path in tqdm(todo, desc=f"evaluate {run_dir.name}", disable=not progress):
            metrics = embedded.generation_metrics(path, p, lang, tokenizer=tok, per=True)
            cache["points"][str(step)] = {k: v for k, v in metrics.items() if k != "items"}
        write_text_atomic(cache_file, json.dumps(cache))
    kept = {str(s) for s, _ in steps}
    return [{"step": int(s), **m} for s, m in sorted(cache["points"].items(), key=lambda kv: int(kv[0]))
            if s in kept]
