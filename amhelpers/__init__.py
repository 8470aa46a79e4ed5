"""amhelpers: extend a pretrained TTS model (IndexTTS2) to a new language, and diagnose and fix it.

The package is the single source of truth for the course in ``notebooks/``. Importing it is
cheap: modules that need torch or librosa import them themselves.
"""

__version__ = "0.1.0"
