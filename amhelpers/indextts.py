"""The real IndexTTS2 code, loaded without its inference stack: the GPT class
(``UnifiedVoice``) and the text front end (``TextTokenizer``).

``indextts/__init__.py`` of the PyPI package ``indextts2-inference`` imports torchaudio and the
whole inference pipeline; ``indextts.gpt.model_v2`` itself needs only torch, ``transformers`` and
``einops``. :func:`load_unifiedvoice_class` registers a bare package module for ``indextts``
(so its ``__init__`` never runs) and imports the class from there. The package carries
bilibili's IndexTTS license: it is an optional extra (``pip install -e .[indextts]``), never
vendored here.

    UnifiedVoice = load_unifiedvoice_class()
    model = tiny_unifiedvoice(number_text_tokens=100)   # ~10M parameters, 101 text rows

The front end matters before any training: :func:`upstream_route` says where IndexTTS2's
``TextNormalizer`` sends a line (the Chinese normaliser for any line without a Latin letter),
and :func:`front_end_parity` encodes lines with the real ``TextTokenizer`` and with the
course's ``normalize`` + SentencePiece, and lists every line whose ids differ.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

INSTALL_HINT = "python -m amhelpers.setup --extras dev,indextts"
_PACKAGE = "indextts"


def _missing(reason: str) -> ImportError:
    return ImportError(
        "the real IndexTTS2 code (UnifiedVoice, the text front end) needs the optional packages "
        f"indextts2-inference, transformers and einops ({reason}); install them with `{INSTALL_HINT}` (or "
        "`pip install --no-deps indextts2-inference transformers einops`)")


def _import_bare(module_name: str) -> types.ModuleType:
    """Import ``indextts.<module_name>`` under a bare ``indextts`` package (its ``__init__``
    never runs); on failure leave no half-imported package behind.

    Raises:
        ImportError: the package or a dependency is missing (the message names the install).
    """
    full = f"{_PACKAGE}.{module_name}"
    if full in sys.modules:
        return sys.modules[full]
    added = False
    if _PACKAGE not in sys.modules:
        try:
            spec = importlib.util.find_spec(_PACKAGE)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise _missing("package indextts not found")
        pkg = types.ModuleType(_PACKAGE)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        pkg.__spec__ = spec
        sys.modules[_PACKAGE] = pkg
        added = True
    before = set(sys.modules)
    try:
        return importlib.import_module(full)
    except ImportError as err:
        for name in set(sys.modules) - before:
            if name == _PACKAGE or name.startswith(_PACKAGE + "."):
                del sys.modules[name]
        if added:
            sys.modules.pop(_PACKAGE, None)
        raise _missing(f"{type(err).__name__}: {err}") from err


def load_unifiedvoice_class() -> type:
    """Return ``indextts.gpt.model_v2.UnifiedVoice`` without running ``indextts/__init__.py``.

    Raises:
        ImportError: the package (or transformers/einops) is not installed; the message names
            ``python -m amhelpers.setup --extras dev,indextts``.
    """
    return _import_bare("gpt.model_v2").UnifiedVoice


def load_front_end() -> type:
    """Return IndexTTS2's text front end, ``indextts.utils.front.TextTokenizer``.

    Built with a ``.model`` path and no normaliser (its ``TextNormalizer`` needs NeMo text
    processing), it applies the upstream pre-tokenizer (``tokenize_by_CJK_char``) before
    SentencePiece, as IndexTTS2 does at training and inference.

    Raises:
        ImportError: the ``indextts`` extra is not installed.
    """
    return _import_bare("utils.front").TextTokenizer


LATIN = re.compile(r"[a-zA-Z]")
CJK = re.compile(r"[\u4e00-\u9fff]")
EMAIL = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")


def upstream_route(text: str) -> str:
    """``"zh"`` or ``"en"``: where IndexTTS2's ``TextNormalizer.use_chinese`` sends ``text``
    (CJK, no Latin letter, or an e-mail go to the Chinese normaliser; pinyin is not checked)."""
    return "zh" if CJK.search(text) or not LATIN.search(text) or EMAIL.match(text) else "en"


def front_end_parity(tokenizer: Path, texts: Sequence[str], lang: str) -> dict[str, Any] | None:
    """The real ``indextts.utils.front.TextTokenizer`` against amhelpers' encoding, per line.

    Returns None when the ``indextts`` extra is not installed; else ``{"lines", "differ",
    "examples": [{"text", "upstream", "ours"}]}``. Ours is ``normalize(text, lang)`` encoded by
    the same model; theirs is the upstream tokenizer without its normaliser (which needs
    NeMo's text processing).
    """
    import sentencepiece as spm

    from .text import normalize

    try:
        TextTokenizer = load_front_end()
    except ImportError:
        return None
    theirs = TextTokenizer(str(tokenizer))
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    differ, examples = 0, []
    for text in texts:
        up, ours = list(theirs.encode(text)), sp.encode(normalize(text, lang))
        if up != ours:
            differ += 1
            if len(examples) < 5:
                examples.append({"text": text, "upstream": up, "ours": ours})
    return {"lines": len(texts), "differ": differ, "examples": examples}


def tiny_config(number_text_tokens: int = 100, model_dim: int = 64, layers: int = 2,
                heads: int = 2) -> dict[str, Any]:
    """Keyword arguments of a tiny ``UnifiedVoice`` (the release model's layout, small sizes).

    ``condition_type="conformer_perceiver"`` as in the release config, with a one-block
    conformer (output 64, 2 heads, ``conv2d2`` input layer) for speaker and emotion.
    """
    conformer = {"output_size": 64, "linear_units": 64, "attention_heads": 2, "num_blocks": 1,
                 "input_layer": "conv2d2", "perceiver_mult": 1}
    return {"layers": layers, "model_dim": model_dim, "heads": heads, "max_text_tokens": 50,
            "max_mel_tokens": 60, "number_text_tokens": number_text_tokens,
            "number_mel_codes": 130, "start_mel_token": 128, "stop_mel_token": 129,
            "condition_type": "conformer_perceiver", "condition_module": dict(conformer),
            "emo_condition_module": dict(conformer), "checkpointing": False}


def tiny_unifiedvoice(number_text_tokens: int = 100, *, seed: int | None = 0,
                      **overrides: Any) -> Any:
    """Build a tiny real ``UnifiedVoice`` (text tables ``number_text_tokens + 1`` rows).

    Args:
        number_text_tokens: tokenizer size; the text tables get one more row, as upstream.
        seed: ``torch.manual_seed`` before construction (``None`` leaves the RNG alone).
        overrides: other constructor arguments (see :func:`tiny_config`).

    Raises:
        ImportError: as :func:`load_unifiedvoice_class`.
    """
    import torch

    cls = load_unifiedvoice_class()
    kwargs = {**tiny_config(number_text_tokens), **overrides}
    if seed is not None:
        torch.manual_seed(seed)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # GPT-2's default bos/eos ids warning: harmless here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def text_logits(model: Any, text_ids: Any) -> Any:
    """Text logits ``(B, N, rows)`` of a UnifiedVoice through its real GPT-2 stack.

    Runs ``text_embedding`` + ``text_pos_embedding`` through ``model.get_logits`` with an
    all-zero single conditioning vector (no speaker input needed), then ``text_head``: enough
    for a text loss that trains the text tables and the transformer.
    """
    import torch

    emb = model.text_embedding(text_ids) + model.text_pos_embedding(text_ids)
    cond = torch.zeros(emb.shape[0], 1, emb.shape[2], dtype=emb.dtype, device=emb.device)
    logits = model.get_logits(cond, emb, model.text_head)  # (B, rows, N)
    return logits.permute(0, 2, 1)
