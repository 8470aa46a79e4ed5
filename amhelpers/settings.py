"""Settings read from the environment, in one place.

- ``AMHELPERS_HOME``: the work folder for generated data (default ``~/.cache/amhelpers``).
- ``AMHELPERS_CORPUS_DIR``: a local copy of HornMT (``amh.txt``, ``eng.txt``, ...).
- ``AMHELPERS_INDEXTTS2_DIR``: a folder with the real IndexTTS2 ``bpe.model`` and ``config.yaml``.
- ``AMHELPERS_PROFILE``: ``quick`` (smoke run, CI) or ``full`` (the course as taught); also the
  default of ``python -m amhelpers course --profile``.

Read by the notebooks' first cell only (before the package can be imported):
``AMHELPERS_REPO`` (the course checkout), ``AMHELPERS_REPO_URL`` (what Colab clones),
``AMHELPERS_SETUP_ARGS`` (arguments for ``python -m amhelpers.setup``, e.g. ``--no-system``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("quick", "full")


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


def profile(default: str = "full") -> str:
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
