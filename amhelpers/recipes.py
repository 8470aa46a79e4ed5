"""The fine-tuning recipes the course compares, written relative to the base model's pretraining.

A learning rate copied as an absolute number from IndexTTS2 onto the miniature model means
nothing: the mini model was pretrained at 1e-3, IndexTTS2 at a rate we could not read in a
public source (docs/background.md, "Learning rates relative to pretraining"). So a
:class:`Recipe` stores its rates as **ratios to the pretraining rate** and its warmup as a
**fraction of the run**, and :meth:`Recipe.train_config` maps them onto a model and a run length:

- IndexTTS2's pretraining rate is taken as :data:`INDEXTTS2_PRETRAIN_LR` = 2e-4 (the value a
  public guide attributes to the IndexTTS2 paper, not verified; kyutai pocket-tts pretrains at
  2e-4). The bracket's other end, 7.5e-5 (F5-TTS), raises every ratio 2.7x: the team's 2e-5 is
  then 0.27, the original fix's 5e-6 is 0.067.
- The team's run: 2e-5, loss weights 0.2 / 0.8, 1,000 warmup steps of the 38k it ran.
- The original fix: 5e-6, loss weights 0.4 / 0.6, 2,000 warmup steps of the 25k it promised.

Every recipe keeps the IndexTTS2 trainer's other settings: AdamW, weight decay 0.01 on every
parameter, warmup then cosine decay, gradient clipping at 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainconfig import TrainConfig

INDEXTTS2_PRETRAIN_LR = 2e-4
"""Assumed pretraining learning rate of IndexTTS2 (unknown; see the module docstring)."""
TEAM_LR, TEAM_WARMUP, TEAM_STEPS = 2e-5, 1_000, 38_000
"""The Amharic team's run: learning rate, warmup steps, steps trained (docs/original_fix.md)."""
ORIGINAL_FIX_LR, ORIGINAL_FIX_WARMUP, ORIGINAL_FIX_STEPS = 5e-6, 2_000, 25_000
"""The original fix: learning rate, warmup steps, and the steps it promised good results by."""


@dataclass(frozen=True)
class Recipe:
    """One way to extend the English base to the target language (chapters 3, 4 and 6).

    The defaults are the team's run: constructor ("indextts") init for new rows, every parameter
    trained at one rate, AdamW weight decay on everything, the team's loss weights and warmup.
    ``lr_ratio`` and ``new_row_lr_ratio`` are learning rates divided by the base model's
    pretraining rate; ``warmup_fraction`` and ``new_rows_only_fraction`` are fractions of the
    run's steps. Every other field but ``name``, ``init``, ``extension`` and ``steps`` is the
    :class:`amhelpers.trainconfig.TrainConfig` setting of the same name (``freeze`` is
    ``freeze_mode`` on the base rows), so a recipe reaches the trainer only through
    :meth:`train_config`.
    """

    name: str
    init: str = "indextts"          # amhelpers.checkpoint.STRATEGIES
    extension: str = "extended"     # the tokenizer: "extended" (chapter 1's) or "naive" (a quick
                                    # merge script's, single characters dropped)
    lr_ratio: float = TEAM_LR / INDEXTTS2_PRETRAIN_LR  # everything that is not a text table
    new_row_lr_ratio: float | None = None  # text tables; None: the same rate as the rest
    freeze: str | None = None       # None, "hook" (the original fix), "exact", "exact-sparse"
    decay: str = "all"              # "all" (original) or "weights" (none on embeddings, norms)
    weight_decay: float = 0.01
    steps: int | None = None        # default: the profile's finetune_steps
    warmup_fraction: float = TEAM_WARMUP / TEAM_STEPS
    new_rows_only_fraction: float = 0.0  # train only the text tables first (a staged schedule)
    text_loss_weight: float = 0.2
    mel_loss_weight: float = 0.8
    pretrained: bool = True         # False: the same model trained from scratch (no English base)
    replay_fraction: float = 0.0    # share of each batch that is base-language (English) replay
    freeze_layers: int = 0          # the first N transformer blocks kept still
    lora_rank: int = 0              # LoRA adapters of this rank train instead of the blocks

    def learning_rates(self, pretrain_lr: float) -> tuple[float, float | None]:
        """``(learning_rate, new_row_lr)`` on a model pretrained at ``pretrain_lr``."""
        new = None if self.new_row_lr_ratio is None else self.new_row_lr_ratio * pretrain_lr
        return self.lr_ratio * pretrain_lr, new

    def schedule_steps(self, steps: int) -> tuple[int, int]:
        """``(warmup_steps, new_rows_only_steps)`` of a run of ``steps`` steps (warmup >= 1)."""
        return (max(1, round(self.warmup_fraction * steps)),
                round(self.new_rows_only_fraction * steps))

    def train_config(self, base_rows: int, pretrain_lr: float, max_steps: int,
                     **run: Any) -> TrainConfig:
        """The trainer's settings for this recipe on a model pretrained at ``pretrain_lr``, for
        a run of ``max_steps``; the base rows ``[0, base_rows)`` are frozen when ``freeze`` is
        set. ``run`` gives the rest (manifests, output folder, batch size...)."""
        from .trainconfig import TrainConfig

        lr, new_lr = self.learning_rates(pretrain_lr)
        warmup, new_only = self.schedule_steps(max_steps)
        return TrainConfig(
            learning_rate=lr, new_row_lr=new_lr, max_steps=max_steps,
            freeze_base_rows=base_rows if self.freeze else None,
            freeze_mode=self.freeze or "exact", decay=self.decay,
            weight_decay=self.weight_decay, warmup_steps=warmup, new_rows_only_steps=new_only,
            text_loss_weight=self.text_loss_weight, mel_loss_weight=self.mel_loss_weight,
            replay_fraction=self.replay_fraction, freeze_layers=self.freeze_layers,
            lora_rank=self.lora_rank, **run)


def mapping_rows(recipes: list[Recipe], pretrain_lr: float, steps: int) -> list[tuple]:
    """One row per recipe: its rates on IndexTTS2 and on a model pretrained at ``pretrain_lr``.

    Columns: name, ratio, IndexTTS2 rate, mini rate, new-row ratio, mini new-row rate, warmup
    steps of ``steps``, text / mel loss weights (for ``markdown.markdown_table``).
    """
    rows = []
    for r in recipes:
        lr, new_lr = r.learning_rates(pretrain_lr)
        warmup, _ = r.schedule_steps(steps)
        rows.append((r.name, f"{r.lr_ratio:.3g}", f"{r.lr_ratio * INDEXTTS2_PRETRAIN_LR:.2g}",
                     f"{lr:.2g}", "same" if new_lr is None else f"{r.new_row_lr_ratio:.3g}",
                     "same" if new_lr is None else f"{new_lr:.2g}",
                     f"{warmup} ({r.warmup_fraction:.1%})",
                     f"{r.text_loss_weight:g} / {r.mel_loss_weight:g}"))
    return rows


MAPPING_COLUMNS = ["recipe", "lr / pretraining lr", "on IndexTTS2", "on the mini model",
                   "new-row ratio", "new-row lr (mini)", "warmup steps", "text / mel weight"]
"""The column names of :func:`mapping_rows`."""

# The runs the course compares (chapters 3 and 4 share them through the cache).
ORIGINAL = Recipe("original")  # the Amharic team's trainer, as they ran it
# The team's trainer on the extension a quick merge script makes (single characters dropped):
# chapter 3 ranks this run's causes on its own checkpoint, logs and tokenizer.
ORIGINAL_NAIVE = Recipe("original_naive", extension="naive")
ORIGINAL_FIX = Recipe("original_fix", lr_ratio=ORIGINAL_FIX_LR / INDEXTTS2_PRETRAIN_LR,
                      freeze="hook", warmup_fraction=ORIGINAL_FIX_WARMUP / ORIGINAL_FIX_STEPS,
                      text_loss_weight=0.4, mel_loss_weight=0.6)  # docs/original_fix.md
# Chapter 4's fix: the team's backbone rate, loss weights and warmup; new rows start at the mean
# of the base rows, train at the pretraining rate (ratio 1, as kyutai pocket-tts does for a fresh
# text embedding), without weight decay on embeddings and norms; the base rows frozen exactly.
FIX = Recipe("fix", init="mean", new_row_lr_ratio=1.0, freeze="exact", decay="weights")
FIX_NO_FREEZE = Recipe("fix_no_freeze", init="mean", new_row_lr_ratio=1.0, decay="weights")
FIX_ONE_LR = Recipe("fix_one_lr", init="mean", freeze="exact", decay="weights")  # no new-row rate
# New rows only for the first 30% of the run (backbone still), then everything: a staged schedule.
STAGED = Recipe("staged", init="mean", new_row_lr_ratio=1.0, freeze="exact", decay="weights",
                new_rows_only_fraction=0.3)
# No pretraining: the same model, randomly initialised, trained on the target language alone at
# the pretraining rate (what the base model itself was trained at).
FROM_SCRATCH = Recipe("from_scratch", init="torch-default", lr_ratio=1.0, decay="weights",
                      pretrained=False)

# Chapter 6b's recommendation and notebook 05's default: the fix with a quarter of every batch
# English replay (the base model's training manifest). On the full profile it kept Amharic within
# the fix's seed range and brought English closest to the base model of the runs that did
# (docs/results/retention_full.json). Same run, same cache key, as `fix` + REPLAY_FRACTION 0.25.
FIX_REPLAY = Recipe("fix_replay", init="mean", new_row_lr_ratio=1.0, freeze="exact",
                    decay="weights", replay_fraction=0.25)

PRESETS: dict[str, Recipe] = {r.name: r for r in (
    ORIGINAL, ORIGINAL_NAIVE, ORIGINAL_FIX, FIX, FIX_NO_FREEZE, FIX_ONE_LR, STAGED, FROM_SCRATCH,
    FIX_REPLAY)}
"""The recipes by name: notebook 05's ``RECIPE`` and chapter 6's grid choose from these."""


def preset(name: str) -> Recipe:
    """The recipe of :data:`PRESETS` called ``name``.

    Raises:
        ValueError: no such recipe (the message lists them).
    """
    if name not in PRESETS:
        raise ValueError(f"RECIPE={name!r} is not a recipe; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def with_settings(preset: Recipe, pretrain_lr: float, steps: int, **settings: Any) -> Recipe:
    """``preset`` with trainer settings given as absolute values (None keeps the preset's).

    Args:
        preset: the recipe the settings start from.
        pretrain_lr: the base model's pretraining rate (ratios are taken to it).
        steps: the run's length (warmup and staged steps become fractions of it).
        settings: any of ``init``, ``learning_rate``, ``new_row_lr``, ``text_loss_weight``,
            ``mel_loss_weight``, ``warmup_steps``, ``new_rows_only_steps``, ``freeze_mode``
            (``"none"``: no freeze), ``decay``, ``weight_decay``, ``replay_fraction``,
            ``freeze_layers``, ``lora_rank``.

    Raises:
        ValueError: an unknown setting, or a value out of range (named with the allowed ones).
    """
    known = {"init", "learning_rate", "new_row_lr", "text_loss_weight", "mel_loss_weight",
             "warmup_steps", "new_rows_only_steps", "freeze_mode", "decay", "weight_decay",
             "replay_fraction", "freeze_layers", "lora_rank"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown recipe setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if pretrain_lr <= 0 or steps <= 0:
        raise ValueError(f"pretrain_lr={pretrain_lr} and steps={steps} must be > 0")
    given = {k: v for k, v in settings.items() if v is not None}
    for name in ("learning_rate", "new_row_lr", "weight_decay", "text_loss_weight", "mel_loss_weight"):
        if name in given and not given[name] >= 0:
            raise ValueError(f"{name}={given[name]!r} must be a number >= 0")
    if "replay_fraction" in given and not 0 <= given["replay_fraction"] < 1:
        raise ValueError(f"replay_fraction={given['replay_fraction']!r} must be in [0, 1): the "
                         "share of each batch that is base-language replay")
    for name in ("freeze_layers", "lora_rank"):
        if name in given and not (isinstance(given[name], int) and given[name] >= 0):
            raise ValueError(f"{name}={given[name]!r} must be a whole number >= 0")
    for name in ("warmup_steps", "new_rows_only_steps"):
        if name in given and not 0 <= given[name] <= steps:
            raise ValueError(f"{name}={given[name]!r} must be between 0 and the run's {steps} steps")
    changes: dict[str, Any] = {}
    if "init" in given:
        changes["init"] = given["init"]
    if "learning_rate" in given:
        changes["lr_ratio"] = given["learning_rate"] / pretrain_lr
    if "new_row_lr" in given:
        changes["new_row_lr_ratio"] = given["new_row_lr"] / pretrain_lr
    if "warmup_steps" in given:
        changes["warmup_fraction"] = given["warmup_steps"] / steps
    if "new_rows_only_steps" in given:
        changes["new_rows_only_fraction"] = given["new_rows_only_steps"] / steps
    if "freeze_mode" in given:
        changes["freeze"] = None if given["freeze_mode"] == "none" else given["freeze_mode"]
    for name in ("decay", "weight_decay", "text_loss_weight", "mel_loss_weight",
                 "replay_fraction", "freeze_layers", "lora_rank"):
        if name in given:
            changes[name] = given[name]
    return dataclasses.replace(preset, steps=steps, **changes)
