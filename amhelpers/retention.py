"""Keep the base language: retention against acquisition, the front and the goal (chapter 6b).

Freezing the base rows protects those rows, not the backbone: a fine-tune on the target language
alone moves every layer towards it and the base language degrades (chapter 4). The trainer's
retention levers (:class:`amhelpers.trainconfig.TrainConfig`) are English replay
(``replay_fraction``), a lower backbone rate, frozen lower blocks (``freeze_layers``), the staged
schedule and new rows only (backbone rate 0). Chapter 6b runs each through notebook 05 and reads
the runs' ``summary.json`` here:

- :func:`base_english`: the base model on the same English phrases (the reference for retention);
- :func:`label`, :func:`point_row`, :func:`points_table`: one row per run, target-language quality beside English retention;
- :func:`front`: the runs no other run beats on both (lower MCD / random on each language);
- :func:`goal`: issue 15's goal, checked number by number; :func:`recommend` picks from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

GOAL_LENGTH_CORR = 0.9
"""English length correlation a retained model keeps (the goal)."""
GOAL_MCD_MARGIN = 0.03
"""English MCD / random codes may rise this much above the base model's (the goal)."""
COLUMNS = ["run", "target length corr", "target MCD / random", "target PER",
           "English length corr", "English MCD / random", "English PER", "English val mel loss"]
"""The column names of :func:`points_table` rows (for ``markdown.markdown_table``)."""
_KEYS = ("amh_length_corr", "amh_mcd_vs_random", "amh_per", "eng_length_corr",
         "eng_mcd_vs_random", "eng_per", "eng_val_mel_loss")


def base_english(p: Any) -> dict[str, float]:
    """The base model's English on the phrases notebook 05 evaluates: ``length_corr``,
    ``mcd_vs_random``, ``per`` and ``val_mel_loss`` (teacher-forced, the validation split)."""
    from . import embedded
    from .data import read_manifest
    from .model import load_checkpoint
    from .train import validation_loss

    checkpoint = embedded.base_model(p, progress=False)
    tok = embedded.base_tokenizer(p)
    gen = embedded.generation_metrics(checkpoint, p, p.base_lang, tokenizer=tok, per=True)
    rows = read_manifest(embedded.manifest(p, p.base_lang, "val", tok, progress=False))
    val = validation_loss(load_checkpoint(checkpoint)[0], rows)["mel_loss"]
    return {"n": gen["n"], "length_corr": gen["length_corr"],
            "mcd_vs_random": gen["mcd_vs_random"], "per": gen["per"], "val_mel_loss": val}


def label(parameters: Mapping[str, Any]) -> str:
    """A run's name from its notebook-05 parameters: the recipe and what the point changes
    (``fix, replay 0.25``; a backbone rate of 0 is "new rows only")."""
    words = [str(parameters["RECIPE"])]
    for key, value in sorted(parameters.items()):
        if key in ("PROFILE", "TARGET_LANG", "RECIPE") or value is None:
            continue
        words.append({"REPLAY_FRACTION": f"replay {value:g}",
                      "FREEZE_LAYERS": f"{value} blocks frozen",
                      "LORA_RANK": f"LoRA rank {value}",
                      "LEARNING_RATE": ("new rows only" if value == 0
                                        else f"backbone lr {value:g}")
                      }.get(key, f"{key.lower()} {value}"))
    return ", ".join(words)


def point_row(name: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row from its notebook-05 ``summary.json``: target quality, English retention
    (the phoneme error rates are None for runs recorded before notebook 05 measured them)."""
    gen, eng = summary["generation"], summary["english"]
    return {"run": name, "amh_length_corr": gen["length_corr"],
            "amh_mcd_vs_random": gen["mcd_vs_random"], "amh_per": gen.get("per"),
            "eng_length_corr": eng["length_corr"], "eng_mcd_vs_random": eng["mcd_vs_random"],
            "eng_per": eng.get("per"), "eng_val_mel_loss": eng["val_mel_loss"]}


def points_table(rows: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    """:func:`point_row` rows as table rows in :data:`COLUMNS` order."""
    return [[r["run"], *(r.get(k) for k in _KEYS)] for r in rows]


def dominates(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether run ``a`` is at least as good as ``b`` on both languages' MCD / random (lower
    is better) and better on one."""
    pairs = [(a[k], b[k]) for k in ("amh_mcd_vs_random", "eng_mcd_vs_random")]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def front(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The runs on the retention-acquisition front: no other run dominates them
    (:func:`dominates`), in order of their target-language MCD / random."""
    rows = list(rows)
    kept = [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
    return [r["run"] for r in sorted(kept, key=lambda r: r["amh_mcd_vs_random"])]


def goal(row: Mapping[str, Any], base: Mapping[str, float], reference: Mapping[str, Any],
         tolerance: Mapping[str, float] | None = None) -> dict[str, bool]:
    """Issue 15's goal for one run, each part separately.

    Args:
        row: the run (:func:`point_row`).
        base: the base model's English (:func:`base_english`).
        reference: the fix without any retention lever, at equal steps (:func:`point_row`).
        tolerance: how much worse than ``reference`` the target language's ``length_corr``
            and ``mcd_vs_random`` may be and still count as "as good" (the seed-to-seed range
            of the reference recipe); None: strictly.

    Returns:
        ``english_length_corr`` (>= :data:`GOAL_LENGTH_CORR`), ``english_mcd`` (within
        :data:`GOAL_MCD_MARGIN` of the base), ``target_length_corr`` and ``target_mcd`` (as good
        as ``reference``), and ``all``.
    """
    tol = {"length_corr": 0.0, "mcd_vs_random": 0.0, **(tolerance or {})}
    parts = {
        "english_length_corr": row["eng_length_corr"] >= GOAL_LENGTH_CORR,
        "english_mcd": row["eng_mcd_vs_random"] <= base["mcd_vs_random"] + GOAL_MCD_MARGIN,
        "target_length_corr": (row["amh_length_corr"]
                               >= reference["amh_length_corr"] - tol["length_corr"]),
        "target_mcd": (row["amh_mcd_vs_random"]
                       <= reference["amh_mcd_vs_random"] + tol["mcd_vs_random"]),
    }
    return {**parts, "all": all(parts.values())}


def recommend(rows: Iterable[Mapping[str, Any]], base: Mapping[str, float],
              reference: Mapping[str, Any], tolerance: Mapping[str, float] | None = None
              ) -> tuple[str, str]:
    """The run to recommend and why: among the front's runs whose target language is as good as
    ``reference`` (within ``tolerance``), the one whose English is closest to the base
    (lowest English MCD / random); ``reference`` itself when no run qualifies."""
    rows = list(rows)
    on_front = set(front(rows))
    def keeps_target(r: Mapping[str, Any]) -> bool:
        parts = goal(r, base, reference, tolerance)
        return parts["target_mcd"] and parts["target_length_corr"]

    fit = [r for r in rows if r["run"] in on_front and keeps_target(r)]
    if not fit:
        return reference["run"], "no retention lever kept the target language as good as the fix"
    best = min(fit, key=lambda r: r["eng_mcd_vs_random"])
    met = goal(best, base, reference, tolerance)["all"]
    return best["run"], ("it meets the whole goal" if met else
                         "closest to the base's English of the runs that keep the target "
                         "language; the goal is not fully met")


def seed_tolerance(report: Mapping[str, Any], recipe: str = "fix") -> dict[str, float]:
    """The seed-to-seed range of ``recipe``'s target-language ``length_corr`` and
    ``mcd_vs_random`` in a grid report (:func:`amhelpers.runs.read_results_csv` of chapter 6's
    committed table), in the low-resource regime: the tolerance of :func:`goal`."""
    from .runs import values_by

    out = {}
    for key in ("length_corr", "mcd_vs_random"):
        values = values_by(report, f"generation.{key}").get((recipe, None), [])
        out[key] = max(values) - min(values) if len(values) > 1 else 0.0
    return out
