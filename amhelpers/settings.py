"""Settings read from the environment, and the run profiles, in one place.

- ``AMHELPERS_HOME``: the work folder for generated data (default ``~/.cache/amhelpers``).
- ``AMHELPERS_CORPUS_DIR``: a local copy of HornMT (``amh.txt``, ``eng.txt``, ...).
- ``AMHELPERS_INDEXTTS2_DIR``: a folder with the real IndexTTS2 ``bpe.model`` and ``config.yaml``.
- ``AMHELPERS_PROFILE``: ``quick`` (smoke run, CI) or ``full`` (the course as taught); the
  default of ``python -m amhelpers course --profile`` and of a notebook's ``PROFILE = None``.

:data:`PROFILES` is the one registry of run profiles (:class:`Profile`: the sizes of one run
of the course); ``amhelpers.embedded`` builds what they describe. It lives here, at the bottom
of the import graph, so that the CLI can name the profiles without importing numpy or torch.

Read by the notebooks' first cell only (before the package can be imported):
``AMHELPERS_REPO`` (the course checkout), ``AMHELPERS_REPO_URL`` (what Colab clones),
``AMHELPERS_SETUP_ARGS`` (arguments for ``python -m amhelpers.setup``, e.g. ``--no-system``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    """Sizes of one run of the course. ``quick`` is a smoke run for CI, ``full`` the course.

    A notebook derives its run from one with ``dataclasses.replace`` (its ``TARGET_LANG`` and
    ``SEED`` parameters); ``amhelpers.embedded.run_name`` gives such a variant its own folder.
    """

    name: str
    base_lang: str = "eng"
    target_lang: str = "amh"
    base_train_phrases: int | None = None   # None: every phrase of the split
    target_train_phrases: int | None = None
    val_phrases: int = 300
    eval_phrases: int = 20         # per fine-tuned model (chapters 3, 4); the test split holds 5x
    base_eval_phrases: int = 100   # chapter 2's quality bar: 20 phrases are too few (README)
    codebook_k: int = 512
    codebook_vectors: int = 100_000
    base_vocab: int = 500
    add_vocab: int = 1000
    pretrain_steps: int = 2000   # 15.5 minutes on a 2-core CPU (README, "Measured so far")
    pretrain_batch_size: int = 16  # at equal compute, 2,000 x 16 beats 1,000 x 32 (README)
    warmup_steps: int = 200
    learning_rate: float = 1e-3
    # Pretraining only: a guided-attention loss (DC-TTS) teaches the small model to read the
    # text in order; length correlation 0.83 -> 0.91 at the same steps (README). Fine-tunes
    # keep the IndexTTS2 trainer's recipe (no such loss).
    guided_attention_weight: float = 1.0
    batch_size: int = 32           # fine-tunes
    val_every: int = 200
    finetune_phrases: int = 1000   # a low-resource target: transfer from English must show
    finetune_steps: int = 300
    finetune_val_every: int = 100
    seed: int = 0
    # What the notebooks show and study beyond the shared runs (the base model ignores them).
    examples_shown: int = 8        # chapter 1: held-out phrases segmented on screen
    init_steps: int = 100          # chapter 4: steps of the short run per init strategy
    # chapter 4: the init strategies (amhelpers.checkpoint.STRATEGIES) that get a short run
    inits_trained: tuple[str, ...] = ("indextts", "torch-default", "mean", "hewitt", "romanized")
    new_rows_only: bool = True     # chapter 4: one more full-length run, backbone frozen
    recognizer_steps: int = 1000   # chapters 6-7: the CTC phoneme recogniser behind PER


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", base_train_phrases=1200, target_train_phrases=600, val_phrases=100,
                     eval_phrases=6, base_eval_phrases=6, codebook_vectors=30_000,
                     pretrain_steps=150, pretrain_batch_size=32, warmup_steps=20, val_every=50,
                     finetune_phrases=200, finetune_steps=40, finetune_val_every=20,
                     examples_shown=3, init_steps=6, new_rows_only=False,
                     inits_trained=("indextts", "torch-default", "mean"), recognizer_steps=300),
    "full": Profile("full"),
}
"""The run profiles by name, ``quick`` first (the order of error messages and ``--help``)."""


def home() -> Path:
    """Return the work folder, creating it if needed.

    Returns:
        ``$AMHELPERS_HOME`` or ``~/.cache/amhelpers``.
    """
    path = Path(os.environ.get("AMHELPERS_HOME") or Path.home() / ".cache" / "amhelpers")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def corpus_dir() -> Path | None:
    """Return ``$AMHELPERS_CORPUS_DIR`` as a path, or None when unset."""
    value = os.environ.get("AMHELPERS_CORPUS_DIR")
    return Path(value).expanduser() if value else None


def indextts2_dir() -> Path | None:
    """Return ``$AMHELPERS_INDEXTTS2_DIR`` as a path, or None when unset."""
    value = os.environ.get("AMHELPERS_INDEXTTS2_DIR")
    return Path(value).expanduser() if value else None


def profile_name(default: str = "full") -> str:
    """Return the run profile, ``quick`` or ``full`` (``$AMHELPERS_PROFILE``).

    Raises:
        ValueError: when the variable holds anything else.
    """
    value = os.environ.get("AMHELPERS_PROFILE", default).strip().lower()
    if value not in PROFILES:
        raise ValueError(
            f"AMHELPERS_PROFILE={value!r} is not a profile; use one of {', '.join(PROFILES)}"
        )
    return value
