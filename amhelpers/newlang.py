"""The next language (chapter 8): what an earlier extension already covers, and whether to extend.

A team adding a language to a model that already learnt one extension (Amharic here) asks:

1. :func:`coverage`: how do the base tokenizer and the earlier extension tokenise the new
   language? ``<unk>`` rate, tokens per word, and the share of its tokens that are ids the
   earlier extension added: rows a fine-tune on that language has already trained.
2. :func:`assess`: what does extending for the new language add (chapter 1's recipe, which only
   adds pieces holding a character the tokenizer cannot encode yet, so base text segments as
   before), and should the team extend at all (:func:`decide`)?

Both run on any SentencePiece pair (the embedded default's or IndexTTS2's ``bpe.model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import tokenizer as tk

FERTILITY_GAIN = 0.25
"""Extend when it shortens the token sequences by at least this fraction (or removes ``<unk>``)."""


def _texts_for(base: Path, texts: list[str]) -> list[str]:
    """Text as the model's front end passes it: upper-cased for an upper-case base (IndexTTS2)."""
    return [t.upper() for t in texts] if tk.base_text_case(tk.load_proto(base)) == "upper" else texts


def coverage(base: str | Path, extended: str | Path, texts: list[str], lang: str) -> dict[str, Any]:
    """How ``base`` and an earlier ``extended`` tokenizer encode ``lang``'s held-out ``texts``.

    Returns:
        ``unk_base`` and ``unk_extended`` (shares of tokens), ``fertility_base`` (tokens per word,
        each character of an ``<unk>`` counted, as a fallback would spell it) and
        ``fertility_extended``, ``trained_share`` (share of the tokens that are ids the extension
        added: rows already trained by a fine-tune on its language), ``unk_chars`` (the
        characters still unknown after the extension, most frequent first), ``n_added`` (pieces
        of the extension) and ``lines``.
    """
    report = tk.verify(base, extended, _texts_for(Path(base), texts), lang)
    return {"lang": lang, "lines": report["target_lines"], "n_added": report["n_added"],
            "unk_base": report["unk_rate_base"], "unk_extended": report["unk_rate"],
            "fertility_base": report["fertility_base"],
            "fertility_extended": report["fertility_extended"],
            "trained_share": report["new_id_fraction"], "unk_chars": report["unk_chars"]}


def decide(unk_before: float, unk_after: float, fertility_before: float,
           fertility_after: float, gain: float = FERTILITY_GAIN) -> tuple[bool, str]:
    """Whether to extend: ``(extend, reason)``.

    Extend when the extension removes ``<unk>`` (words the model could never say), or when it
    shortens the token sequences by at least ``gain``; otherwise the new rows cost training and
    buy nothing measurable.
    """
    if unk_before > 0 and unk_after < unk_before:
        return True, (f"<unk> {unk_before:.2%} -> {unk_after:.2%}: without it the model cannot "
                      "say those words")
    shorter = 1 - fertility_after / fertility_before if fertility_before else 0.0
    if shorter >= gain:
        return True, (f"{fertility_before:.2f} -> {fertility_after:.2f} tokens per word "
                      f"({shorter:.0%} shorter sequences)")
    return False, (f"<unk> {unk_before:.2%} already, and {fertility_before:.2f} -> "
                   f"{fertility_after:.2f} tokens per word ({shorter:.0%} shorter, under "
                   f"{gain:.0%}): keep the tokenizer")


def assess(base: str | Path, train_texts: list[str], eval_texts: list[str], lang: str,
           n_add: int, out: str | Path) -> dict[str, Any]:
    """Extend ``base`` for ``lang`` (written to ``out``), measure it on ``eval_texts``, decide.

    Returns:
        :func:`coverage`'s fields for the new extension, plus ``extend`` and ``reason``
        (:func:`decide`) and ``model`` (the path written).
    """
    base = Path(base)
    tk.extend(base, _texts_for(base, train_texts), lang, n_add, out)
    row = coverage(base, out, eval_texts, lang)
    row["extend"], row["reason"] = decide(row["unk_base"], row["unk_extended"],
                                          row["fertility_base"], row["fertility_extended"])
    row["model"] = str(out)
    return row
