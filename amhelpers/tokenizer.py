"""Extend a pretrained SentencePiece tokenizer with a new language, and verify the result.

Why this module is long: the recipe, its verification and their input checks belong together
(about 800 lines); a check split off from the step it guards would drift.

The recipe (docs/background.md, "Extending a SentencePiece model"):

1. Train a target-language SentencePiece of the base's type (UNIGRAM or BPE) on text passed
   through :func:`amhelpers.text.normalize`.
2. Append to the base ``ModelProto``; never reorder, rescore or retype a base piece.
3. Add only pieces that hold at least one character the base cannot encode. Such a piece
   can never match text the base could encode, so base-language text segments exactly as
   before (a low score alone does not guarantee that: two base pieces can sum lower).
4. Whole-script fallback: every character of the target script (and every other character
   of the target corpus the base lacks) becomes a piece, so target text never yields ``<unk>``.
5. Scores sit below the base's minimum; fallback characters below every learned piece
   (sentencepiece issue #323). Pieces that can never win a segmentation are dropped.

The naive variant (``naive=True``) does what quick merge scripts do: default character
coverage, single characters skipped, top-ranked pieces only. Chapter 1 measures its ``<unk>``.

Every input is checked before SentencePiece sees it (its ``INTERNAL:`` errors name no flag),
and no output may replace an input.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from . import corpus
from .io import check_output_file, read_text_strict, sha256_file, write_bytes_atomic
from .text import is_ethiopic, normalize

Piece = sp_pb2.ModelProto.SentencePiece
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = (
    Piece.NORMAL, Piece.UNKNOWN, Piece.CONTROL, Piece.USER_DEFINED, Piece.BYTE)
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
SCRIPT_BLOCKS = {"ethiopic": ((0x1200, 0x137F),)}
SCRIPT_OF_LANG = {"amh": "ethiopic", "tir": "ethiopic", "gez": "ethiopic", "tig": "ethiopic"}
WORD = "\u2581"
# SentencePiece's TrainerSpec.max_sentence_length default: training skips longer lines (bytes).
MAX_SENTENCE_BYTES = 4192


# ----------------------------------------------------------------------------- loading
def load_proto(path: str | Path, what: str = "--base") -> sp_pb2.ModelProto:
    """Read and check a SentencePiece model file.

    Args:
        path: the ``.model`` file.
        what: the argument name used in error messages.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is a folder, not a SentencePiece model, or incomplete (see
            :func:`check_complete`).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder; give a SentencePiece .model file")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist (give a SentencePiece .model file)")
    data = path.read_bytes()
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
        ok = len(proto.pieces) > 0
    except Exception:  # protobuf DecodeError (also a file cut inside a field)
        ok = False
    if ok:
        check_complete(proto, path, what)
        try:
            spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        except Exception:  # sentencepiece rejecting the proto
            ok = False
    if not ok:
        raise ValueError(f"{what}: {path} is not a SentencePiece model (.model protobuf), or is "
                         "damaged; pass the tokenizer file, e.g. IndexTTS2's checkpoints/bpe.model")
    return proto


def check_complete(proto: sp_pb2.ModelProto, path: str | Path, what: str = "--base") -> None:
    """Refuse a model cut short: a ``.model`` file stores its pieces first, then its
    ``trainer_spec`` and ``normalizer_spec``, so a copy cut at a field boundary still parses,
    as a smaller model with a default normaliser.

    Raises:
        ValueError: a spec is missing, or fewer pieces than a hard ``vocab_size`` promises.
    """
    missing = [name for name in ("trainer_spec", "normalizer_spec") if not proto.HasField(name)]
    spec = proto.trainer_spec
    if missing:
        found = f"no {' and no '.join(missing)}"
    elif spec.hard_vocab_limit and 0 < len(proto.pieces) < spec.vocab_size:
        found = f"its trainer_spec promises exactly {spec.vocab_size}"
    else:
        return
    raise ValueError(f"{what}: {path} is incomplete: it holds {len(proto.pieces)} pieces and {found} "
                     "(the file was probably cut short while copying or downloading); copy it "
                     "again and compare its size or sha256 with the original")


def processor(proto: sp_pb2.ModelProto) -> spm.SentencePieceProcessor:
    """Return a SentencePieceProcessor for an in-memory ``ModelProto``."""
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def model_type(proto: sp_pb2.ModelProto) -> str:
    """Return ``"unigram"`` or ``"bpe"`` (the types an extension supports)."""
    return MODEL_TYPES.get(proto.trainer_spec.model_type, "unigram")


def read_texts(source: str | Path, split: str, what: str) -> tuple[list[str], str | None]:
    """Read lines from a UTF-8 file, or a HornMT split when ``source`` is a language code.

    Returns:
        The non-empty lines and the HornMT language code (None for a file).
    """
    source_str = str(source)
    if source_str in corpus.LANGS and not Path(source_str).exists():
        return corpus.split_lines(source_str, split), source_str
    if Path(source_str).is_dir():
        raise ValueError(f"{what}: {source_str} is a folder; give a UTF-8 text file or a HornMT "
                         f"language code ({', '.join(corpus.LANGS)})")
    if not Path(source_str).exists():
        raise FileNotFoundError(f"{what}: {source_str} is neither a file nor a HornMT language code; "
                                f"give a UTF-8 text file or one of {', '.join(corpus.LANGS)}")
    text = read_text_strict(source, what)
    return [line.strip() for line in text.splitlines() if line.strip()], None


# ----------------------------------------------------------------------------- alphabet
def base_alphabet(proto: sp_pb2.ModelProto) -> set[str]:
    """Return the characters the base can encode: single-character NORMAL/USER_DEFINED pieces."""
    chars = {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED) and len(p.piece) == 1}
    chars.discard(WORD)
    return chars


def script_characters(script: str) -> list[str]:
    """Return every assigned character of a script's main block (``ethiopic``: U+1200-U+137F)."""
    out = []
    for lo, hi in SCRIPT_BLOCKS.get(script, ()):
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch) != "Cn" and unicodedata.category(ch) != "Mn":
                out.append(ch)
    return out


def target_script(lang: str, texts: Iterable[str]) -> str:
    """Return the target language's script: from a table, else the majority letter script."""
    if lang in SCRIPT_OF_LANG:
        return SCRIPT_OF_LANG[lang]
    counts: dict[str, int] = {}
    for line in texts:
        for ch in line:
            if ch.isalpha():
                name = "ethiopic" if is_ethiopic(ch) else unicodedata.name(ch, "OTHER ").split()[0].lower()
                counts[name] = counts.get(name, 0) + 1
    return max(counts, key=counts.get) if counts else "unknown"


def in_script(ch: str, script: str) -> bool:
    """Return True when ``ch`` belongs to ``script``."""
    if script == "ethiopic":
        return is_ethiopic(ch)
    return ch.isalpha() and unicodedata.name(ch, "").split(" ")[0].lower() == script


# ----------------------------------------------------------------------------- training
def check_lang(lang: object, what: str = "--lang") -> str:
    """Return ``lang`` when it is an ISO 639-3 code (three lower-case letters).

    Raises:
        ValueError: naming ``what`` and an example.
    """
    if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{3}", lang):
        raise ValueError(f"{what}: {lang!r} is not an ISO 639-3 code; give three lower-case "
                         f"letters, e.g. amh (Amharic), tir (Tigrinya), eng (English)")
    return lang


def check_vocab_size(n: int, what: str = "--vocab-size") -> int:
    """Return ``n`` when it is a usable piece count (``>= 1``); else raise ValueError."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be >= 1 (a number of pieces), got {n!r}")
    return n


def trainable_lines(lines: Sequence[str], what: str = "--corpus") -> tuple[list[str], int]:
    """Drop lines longer than SentencePiece trains on, as SentencePiece itself does.

    Returns:
        The lines of at most :data:`MAX_SENTENCE_BYTES` UTF-8 bytes and how many were skipped.

    Raises:
        ValueError: every line is too long (SentencePiece would fail with ``INTERNAL``).
    """
    kept = [t for t in lines if len(t.encode("utf-8")) <= MAX_SENTENCE_BYTES]
    if lines and not kept:
        longest = max(len(t.encode("utf-8")) for t in lines)
        raise ValueError(f"{what}: all {len(lines)} lines are longer than {MAX_SENTENCE_BYTES} bytes "
                         f"(longest {longest}), SentencePiece's max_sentence_length; put one "
                         "sentence per line")
    return kept, len(lines) - len(kept)


_REQUIRED_CHARS = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_sentencepiece(texts: Sequence[str], vocab_size: int, model: str = "unigram", *,
                        character_coverage: float = 1.0, normalization: str = "nmt_nfkc",
                        seed_sentences: int = 1_000_000, grow_to_fit: bool = False,
                        what: str = "--vocab-size") -> sp_pb2.ModelProto:
    """Train a SentencePiece model in memory (deterministic: one thread, fixed input order).

    Args:
        texts: training lines, already normalised (longer lines than
            :data:`MAX_SENTENCE_BYTES` are skipped, as SentencePiece does).
        vocab_size: target size (a soft limit: small corpora give fewer pieces).
        model: ``"unigram"`` or ``"bpe"``.
        character_coverage: share of characters kept as pieces (1.0 keeps all).
        normalization: SentencePiece normaliser name (keep the base's).
        seed_sentences: cap on sentences read.
        grow_to_fit: when ``vocab_size`` is below the characters the corpus needs, train with
            that many more instead of failing (an extension keeps only the pieces it needs).
        what: the flag named in errors.

    Returns:
        The trained ``ModelProto``.

    Raises:
        ValueError: unsupported type, ``vocab_size < 1``, no trainable line, or (without
            ``grow_to_fit``) fewer pieces than the corpus has characters.
    """
    if model not in ("unigram", "bpe"):
        raise ValueError(f"model type {model!r} is not supported; use unigram or bpe")
    check_vocab_size(vocab_size, what)
    texts, _ = trainable_lines(texts)
    if not texts:
        raise ValueError("--corpus: no line to train on")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size,
            model_type=model, character_coverage=character_coverage,
            normalization_rule_name=normalization, hard_vocab_limit=False, num_threads=1,
            input_sentence_size=seed_sentences, shuffle_input_sentence=False, byte_fallback=False,
            max_sentencepiece_length=16, minloglevel=2, unk_id=2, bos_id=0, eos_id=1, pad_id=-1)
    except RuntimeError as err:
        needed = _REQUIRED_CHARS.search(str(err))
        if not needed:
            raise
        if grow_to_fit:
            return train_sentencepiece(texts, int(needed.group(2)) + vocab_size, model,
                                       character_coverage=character_coverage,
                                       normalization=normalization, seed_sentences=seed_sentences)
        raise ValueError(f"{what} {vocab_size} is smaller than the {needed.group(2)} pieces the "
                         f"corpus's characters need; use {what} >= {needed.group(2)}") from None
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto


# ----------------------------------------------------------------------------- extension
@dataclass
class ExtendReport:
    """What :func:`extend` did."""

    base: str
    out: str
    lang: str
    script: str
    model_type: str
    naive: bool
    n_base: int
    n_added: int
    n_fallback: int
    n_learned: int
    n_skipped_in_base: int
    n_skipped_base_alphabet: int
    n_dropped_unreachable: int
    min_base_score: float
    seconds: float
    sha256: str = ""
    n_skipped_long_lines: int = 0
    notes: list[str] = field(default_factory=list)


def _candidates(target: sp_pb2.ModelProto, kind: str) -> list[tuple[str, float]]:
    """Target NORMAL pieces in rank order (unigram: score; BPE: merge order = id)."""
    pieces = [(p.piece, p.score, i) for i, p in enumerate(target.pieces) if p.type == NORMAL]
    if kind == "unigram":
        pieces.sort(key=lambda t: (-t[1], t[2]))
    return [(piece, score) for piece, score, _ in pieces]


def _append(base: sp_pb2.ModelProto, pieces: Sequence[tuple[str, float]]) -> sp_pb2.ModelProto:
    out = sp_pb2.ModelProto()
    out.CopyFrom(base)
    for text, score in pieces:
        new = out.pieces.add()
        new.piece, new.score, new.type = text, score, NORMAL
    out.trainer_spec.vocab_size = len(out.pieces)
    return out


def unreachable_pieces(proto: sp_pb2.ModelProto, start: int) -> list[int]:
    """Return ids ``>= start`` that encoding their own text does not produce.

    For a unigram model this is exact: Viterbi picks the same path inside a span in any
    context, so a piece that loses on its own text never appears. The check runs on a copy
    of the model without the dummy prefix, so word-internal pieces are tested as they occur.
    """
    probe = sp_pb2.ModelProto()
    probe.CopyFrom(proto)
    probe.normalizer_spec.add_dummy_prefix = False
    probe.normalizer_spec.remove_extra_whitespaces = False
    sp = processor(probe)
    bad = []
    for i in range(start, len(proto.pieces)):
        surface = proto.pieces[i].piece.replace(WORD, " ")
        if sp.encode(surface) != [i]:
            bad.append(i)
    return bad


def check_extend_output(out_path: str | Path, base_path: str | Path, *, overwrite: bool = True,
                        inputs: dict[str, str | Path | None] | None = None) -> Path:
    """Check ``--out`` before any work: never the base (or another input), a writable file path,
    and, unless ``overwrite``, not an existing file.

    Raises:
        ValueError: ``--out`` is an input, a folder, under a file, or exists without ``overwrite``.
        PermissionError: its folder is not writable.
    """
    path = check_output_file(out_path, "--out", {"--base": base_path, **(inputs or {})})
    if path.exists() and not overwrite:
        raise ValueError(f"--out {path} already exists; pass --overwrite to replace it, or choose "
                         "another --out path")
    return path


def _write_model(path: Path, data: bytes) -> None:
    """Write a model atomically; an OSError becomes one line that names ``--out``."""
    try:
        write_bytes_atomic(path, data)
    except OSError as err:
        raise OSError(f"--out {path}: cannot write it ({err.strerror or err}); choose a folder "
                      "you can write to, with free space") from None


def extend(base_path: str | Path, texts: Sequence[str], lang: str, n_add: int,
           out_path: str | Path, *, naive: bool = False, corpus_name: str = "--corpus",
           overwrite: bool = True, inputs: dict[str, str | Path | None] | None = None,
           ) -> ExtendReport:
    """Append target-language pieces to a base SentencePiece model.

    Args:
        base_path: the base ``.model`` (UNIGRAM or BPE, e.g. IndexTTS2's ``bpe.model``).
        texts: raw target-language training lines (normalised here).
        lang: ISO 639-3 code of the target language (``amh``).
        n_add: how many pieces to add at most, fallback characters included.
        out_path: where to write the extended ``.model`` (atomically).
        naive: build the naive variant (coverage 0.9995, no single characters, no fallback).
        corpus_name: how to name the corpus in error messages.
        overwrite: replace an existing ``out_path`` (never ``base_path`` or an input).
        inputs: other input files by flag (``{"--corpus": path}``) that ``out_path`` must not be.

    Returns:
        An :class:`ExtendReport`. Lines longer than SentencePiece trains on are left out of
        training (their characters still become fallback pieces) and counted.

    Raises:
        ValueError: ``out_path`` is an input, a folder, or under a file; empty corpus, no
            target-script text, ``n_add`` below 1 or the fallback set, an incomplete base, or
            a base model type other than unigram/BPE.
    """
    start = time.perf_counter()
    check_lang(lang)
    check_vocab_size(n_add)
    out_path = check_extend_output(out_path, base_path, overwrite=overwrite, inputs=inputs)
    base = load_proto(base_path, "--base")
    kind = model_type(base)
    if kind not in ("unigram", "bpe"):
        raise ValueError(f"--base: {base_path} is a {kind} model; only unigram and BPE bases are supported")
    lines = [normalize(t, lang) for t in texts]
    lines = [t for t in lines if t]
    if not lines:
        raise ValueError(f"{corpus_name}: the corpus is empty (no non-blank line after normalisation)")
    script = target_script(lang, lines)
    n_script = sum(in_script(ch, script) for t in lines for ch in t)
    if n_script == 0:
        raise ValueError(f"{corpus_name}: no {script} text in the corpus for lang={lang!r}; "
                         "pass text in the target language (e.g. HornMT amh.txt)")
    train_lines, n_long = trainable_lines(lines, corpus_name)
    notes = []
    if n_long:
        notes.append(f"skipped {n_long} of {len(lines)} lines longer than {MAX_SENTENCE_BYTES} bytes "
                     "in training (SentencePiece's max_sentence_length); their characters are kept "
                     "as fallback pieces")
    if lang not in SCRIPT_OF_LANG and lang not in corpus.LANGS:
        notes.append(f"--lang {lang!r} is not one this course knows; the target script "
                     f"({script}) was taken from the corpus")

    known = base_alphabet(base)
    in_base = {p.piece for p in base.pieces}
    corpus_chars = sorted({ch for t in lines for ch in t.replace(" ", WORD)} - known - {WORD})
    fallback = [] if naive else sorted(set(script_characters(script)) - known | set(corpus_chars))
    if len(fallback) > n_add:
        raise ValueError(f"--vocab-size {n_add} is smaller than the fallback set: {len(fallback)} "
                         f"characters of the {script} script and corpus are missing from the base; "
                         f"use --vocab-size >= {len(fallback)}")

    target = train_sentencepiece(train_lines, vocab_size=max(n_add, 64) if not naive else n_add,
                                 model=kind, character_coverage=0.9995 if naive else 1.0,
                                 normalization=base.normalizer_spec.name or "nmt_nfkc",
                                 grow_to_fit=True)
    skipped_base = skipped_alphabet = 0
    learned: list[tuple[str, float]] = []
    fallback_set = set(fallback)
    for piece, score in _candidates(target, kind):
        if piece in in_base:
            skipped_base += 1
        elif all(ch in known or ch == WORD for ch in piece):
            skipped_alphabet += 1
        elif piece in fallback_set or (naive and len(piece.replace(WORD, "")) <= 1):
            continue
        else:
            learned.append((piece, score))
    learned = learned[: n_add - len(fallback)]

    min_score = min(p.score for p in base.pieces if p.type in (NORMAL, USER_DEFINED))
    if kind == "unigram":
        top = max((s for _, s in learned), default=0.0)
        scored = [(p, min_score - 1.0 + (s - top)) for p, s in learned]
    else:  # BPE: the score is the merge priority; keep the target's merge order after the base's
        scored = [(p, min_score - 1.0 - rank) for rank, (p, _) in enumerate(learned)]
    floor = min((s for _, s in scored), default=min_score - 1.0) - 1.0
    pieces = scored + [(ch, floor) for ch in fallback]
    if not pieces:
        why = (f"the base already encodes every character of {corpus_name}; an extension adds only "
               "pieces holding a character the base lacks" if not corpus_chars else
               f"no piece learned at --vocab-size {n_add} holds a character the base lacks; "
               "use a larger --vocab-size")
        raise ValueError(f"{corpus_name}: nothing to add: {why}")

    extended = _append(base, pieces)
    dropped = unreachable_pieces(extended, len(base.pieces))
    if dropped:
        drop = set(dropped)
        pieces = [pc for i, pc in enumerate(pieces) if len(base.pieces) + i not in drop]
        extended = _append(base, pieces)
        notes.append(f"dropped {len(dropped)} learned pieces that never win a segmentation")
    _write_model(out_path, extended.SerializeToString())
    return ExtendReport(
        base=str(base_path), out=str(out_path), lang=lang, script=script, model_type=kind,
        naive=naive, n_base=len(base.pieces), n_added=len(pieces), n_fallback=len(fallback),
        n_learned=len(pieces) - len(fallback), n_skipped_in_base=skipped_base,
        n_skipped_base_alphabet=skipped_alphabet, n_dropped_unreachable=len(dropped),
        min_base_score=min_score, seconds=round(time.perf_counter() - start, 3),
        sha256=sha256_file(out_path), n_skipped_long_lines=n_long, notes=notes)


# ----------------------------------------------------------------------------- verification
def base_text_case(proto: sp_pb2.ModelProto) -> str:
    """Return ``"upper"`` when the base knows upper-case but no lower-case Latin letters.

    IndexTTS2's front end upper-cases English before tokenising, and its tokenizer has no
    lower-case pieces; base-language text is then compared upper-cased, as the model sees it.
    """
    alphabet = base_alphabet(proto)
    has_upper = any("A" <= ch <= "Z" for ch in alphabet)
    has_lower = any("a" <= ch <= "z" for ch in alphabet)
    return "upper" if has_upper and not has_lower else "keep"


def fertility(sp: spm.SentencePieceProcessor, lines: Sequence[str], spell_unk: bool = False) -> float:
    """Return tokens per whitespace-separated word.

    Args:
        sp: the tokenizer.
        lines: normalised text.
        spell_unk: count an ``<unk>`` piece as one token per character it covers. SentencePiece
            folds a whole run of unknown characters into one ``<unk>``, which looks cheap but
            carries no information; spelled out, it is what writing the text takes at least.
    """
    words = sum(len(line.split()) for line in lines)
    tokens = 0
    for line in lines:
        if spell_unk:
            for piece, i in zip(sp.encode(line, out_type=str), sp.encode(line)):
                tokens += len(piece.replace(WORD, "")) or 1 if i == sp.unk_id() else 1
        else:
            tokens += len(sp.encode(line))
    return tokens / max(words, 1)


def verify(base_path: str | Path, extended_path: str | Path, target_texts: Sequence[str],
           lang: str, base_texts: Sequence[str] = (), base_lang: str = "eng",
           embedding_rows: int | None = None, max_examples: int = 5) -> dict:
    """Check an extended tokenizer against its base.

    Args:
        base_path: the base ``.model``.
        extended_path: the extended ``.model``.
        target_texts: held-out target-language lines (normalised here).
        lang: the target language code.
        base_texts: base-language lines that must encode exactly as before.
        base_lang: language code of ``base_texts``.
        embedding_rows: rows of the model's text embedding, if known (size must fit).
        max_examples: how many failing examples to list per check.

    Returns:
        A JSON-ready dict; ``ok`` is True only when every check passes (an ``--extended``
        that adds nothing, or is not an extension of the base, fails with its reason).

    Raises:
        ValueError: a bad code, ``embedding_rows < 1``, a model that is missing, not a model
            or incomplete, or no target line.
    """
    check_lang(lang)
    check_lang(base_lang, "--base-lang")
    if embedding_rows is not None:
        check_vocab_size(embedding_rows, "--embedding-rows")
    base = load_proto(base_path, "--base")
    ext = load_proto(extended_path, "--extended")
    sp_base, sp_ext = processor(base), processor(ext)
    n_base, n_ext = len(base.pieces), len(ext.pieces)
    problems: list[str] = []

    mismatches = [i for i in range(min(n_base, n_ext))
                  if (base.pieces[i].piece, base.pieces[i].score, base.pieces[i].type)
                  != (ext.pieces[i].piece, ext.pieces[i].score, ext.pieces[i].type)]
    same_normalizer = base.normalizer_spec.SerializeToString() == ext.normalizer_spec.SerializeToString()
    base_ids_stable = n_ext >= n_base and not mismatches and same_normalizer
    if n_ext == n_base and not mismatches and same_normalizer:
        problems.append(f"nothing was added: --extended has the same {n_base} pieces as --base "
                        "(is it the base itself?); pass the model `tokenizer extend --out` wrote")
    if n_ext < n_base:
        problems.append(f"--extended has {n_ext} pieces, fewer than the base's {n_base}")
    if mismatches:
        problems.append(f"--extended does not extend --base: {len(mismatches)} of the first "
                        f"{min(n_base, n_ext)} base pieces differ (first at id {mismatches[0]}); "
                        "extend this base, or pass the base it was extended from")
    for i in mismatches[:max_examples]:
        b, e = base.pieces[i], ext.pieces[i]
        problems.append(f"--extended: piece {i} changed: base ({b.piece!r}, {b.score}, {b.type}) "
                        f"vs ({e.piece!r}, {e.score}, {e.type}); base pieces must keep id, score and type")
    if not same_normalizer:
        problems.append("--extended: normaliser differs from the base's; keep the base normaliser_spec")

    case = base_text_case(base)
    base_lines = [normalize(t, base_lang) for t in base_texts]
    base_lines = [(t.upper() if case == "upper" else t) for t in base_lines if t]
    # Lines on which the base already emits <unk> are left out: there the extension may
    # replace <unk> by real pieces, which is its purpose. Every other line must not change.
    base_unk = sp_base.unk_id()
    base_ids = {t: sp_base.encode(t) for t in base_lines}
    base_lines_unk = [t for t in base_lines if base_unk in base_ids[t]]
    base_lines = [t for t in base_lines if base_unk not in base_ids[t]]
    changed = [t for t in base_lines if base_ids[t] != sp_ext.encode(t)]
    if changed:
        problems.append(f"{len(changed)} base-language lines encode differently, e.g. {changed[0]!r}")

    lines = [t for t in (normalize(x, lang) for x in target_texts) if t]
    if not lines:
        raise ValueError("--text: no non-blank target-language line to verify on")
    unk = sp_ext.unk_id()
    ids_ext = [sp_ext.encode(t) for t in lines]
    ids_base = [sp_base.encode(t) for t in lines]
    n_tok = sum(len(x) for x in ids_ext)
    n_unk = sum(x.count(unk) for x in ids_ext)
    n_unk_base = sum(x.count(sp_base.unk_id()) for x in ids_base)
    unk_chars: dict[str, int] = {}
    for t, ids in zip(lines, ids_ext):
        if unk in ids:
            for piece in sp_ext.encode(t, out_type=str):
                if sp_ext.piece_to_id(piece) == unk:
                    for ch in piece.replace(WORD, ""):
                        unk_chars[ch] = unk_chars.get(ch, 0) + 1
    if n_unk:
        top = sorted(unk_chars.items(), key=lambda kv: -kv[1])[:10]
        problems.append(f"<unk> rate {n_unk / n_tok:.4f} on target text; unknown characters: "
                        + ", ".join(f"{c!r} (U+{ord(c):04X}) x{n}" for c, n in top))
    roundtrip_bad = [t for t, ids in zip(lines, ids_ext) if sp_ext.decode(ids) != t]
    if roundtrip_bad:
        problems.append(f"decode(encode(x)) != normalize(x) on {len(roundtrip_bad)} lines, "
                        f"e.g. {roundtrip_bad[0]!r}")
    unreachable = unreachable_pieces(ext, n_base) if n_ext > n_base else []
    if unreachable:
        problems.append(f"{len(unreachable)} added pieces are unreachable, e.g. "
                        f"{[ext.pieces[i].piece for i in unreachable[:max_examples]]}")
    new_ids = sum(1 for ids in ids_ext for i in ids if i >= n_base)
    if n_ext > n_base and new_ids == 0:
        problems.append("target text uses no added id (>= base size); the extension is not used")
    fits = embedding_rows is None or n_ext <= embedding_rows
    if not fits:
        problems.append(f"tokenizer has {n_ext} pieces but the embedding has {embedding_rows} rows; "
                        "grow the text tables first")

    report = {
        "ok": not problems,
        "base": str(base_path), "extended": str(extended_path), "lang": lang,
        "n_base": n_base, "n_added": n_ext - n_base, "vocab_size": n_ext,
        "vocab_size_matches": n_ext >= n_base,  # size = base + added, with nothing removed
        "base_ids_stable": base_ids_stable,
        "base_text_lines": len(base_lines), "base_text_lines_with_unk": len(base_lines_unk),
        "base_text_case": case,
        "base_text_identical": not changed,
        "target_lines": len(lines), "target_tokens": n_tok,
        "unk_rate": n_unk / max(n_tok, 1),
        "unk_rate_base": n_unk_base / max(sum(len(x) for x in ids_base), 1),
        "unk_chars": dict(sorted(unk_chars.items(), key=lambda kv: -kv[1])[:20]),
        "new_id_fraction": new_ids / max(n_tok, 1),
        "fertility_base": fertility(sp_base, lines, spell_unk=True),
        "fertility_base_raw": fertility(sp_base, lines),
        "fertility_extended": fertility(sp_ext, lines),
        "roundtrip_failures": len(roundtrip_bad),
        "unreachable_added": unreachable,
        "embedding_rows": embedding_rows, "fits_embedding": fits,
        "problems": problems,
    }
    return report


def segment_examples(path: str | Path, texts: Sequence[str], lang: str) -> list[dict]:
    """Return ``{"text", "pieces", "ids"}`` for each line, normalised as in training."""
    sp = processor(load_proto(path, "tokenizer"))
    out = []
    for raw in texts:
        t = normalize(raw, lang)
        out.append({"text": t, "pieces": sp.encode(t, out_type=str), "ids": sp.encode(t)})
    return out


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers tokenizer {extend,verify,train}``."""
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extend", help="append target-language pieces to a base model")
    ext.add_argument("--base", required=True, help="base SentencePiece .model")
    ext.add_argument("--corpus", required=True,
                     help="UTF-8 text file, or a HornMT code (amh, tir, orm, ...) for its train split")
    ext.add_argument("--vocab-size", type=int, required=True,
                     help="pieces to add at most, fallback characters included")
    ext.add_argument("--out", required=True, help="extended .model to write")
    ext.add_argument("--lang", default=None, help="ISO 639-3 code of the corpus (default: --corpus code, else amh)")
    ext.add_argument("--naive", action="store_true", help="build the naive variant on purpose (chapter 1)")
    ext.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out file (never --base or --corpus)")
    ext.add_argument("--json", action="store_true", help="print the report as JSON")

    ver = sub.add_parser("verify", help="check an extended model against its base")
    ver.add_argument("--base", required=True)
    ver.add_argument("--extended", required=True)
    ver.add_argument("--text", required=True,
                     help="held-out target text: a UTF-8 file or a HornMT code (its test split)")
    ver.add_argument("--lang", default=None, help="ISO 639-3 code of --text (default: its code, else amh)")
    ver.add_argument("--base-text", default="eng",
                     help="base-language text that must encode as before: file or HornMT code (test split)")
    ver.add_argument("--base-lang", default=None, help="code of --base-text (default: its code, else eng)")
    ver.add_argument("--embedding-rows", type=int, default=None)
    ver.add_argument("--json", action="store_true", help="print one JSON object")

    tr = sub.add_parser("train", help="train a plain SentencePiece model (e.g. the English base)")
    tr.add_argument("--corpus", required=True)
    tr.add_argument("--vocab-size", type=int, required=True)
    tr.add_argument("--model-type", choices=["unigram", "bpe"], default="bpe")
    tr.add_argument("--lang", default=None)
    tr.add_argument("--out", required=True)
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def train_base(texts: Sequence[str], lang: str, vocab_size: int, out_path: str | Path,
               model: str = "bpe", *, overwrite: bool = True,
               inputs: dict[str, str | Path | None] | None = None) -> Path:
    """Train a plain tokenizer on normalised text and write it atomically (the English base).

    Raises:
        ValueError: ``out_path`` is an input, a folder, under a file, or exists without
            ``overwrite``; bad code or size; an empty corpus or one of over-long lines only.
    """
    check_lang(lang)
    check_vocab_size(vocab_size)
    path = check_output_file(out_path, "--out", inputs)
    if path.exists() and not overwrite:
        raise ValueError(f"--out {path} already exists; pass --overwrite to replace it, or choose "
                         "another --out path")
    lines = [t for t in (normalize(x, lang) for x in texts) if t]
    if not lines:
        raise ValueError("--corpus: the corpus is empty")
    proto = train_sentencepiece(lines, vocab_size, model)
    _write_model(path, proto.SerializeToString())
    return path


def print_verify(report: dict) -> None:
    status = "OK" if report["ok"] else "FAILED"
    print(f"verify {status}: {report['extended']} against {report['base']}")
    print(f"  pieces: {report['n_base']} base + {report['n_added']} added = {report['vocab_size']}")
    print(f"  base pieces identical (piece, score, type): {report['base_ids_stable']}")
    print(f"  base-language text identical: {report['base_text_identical']} "
          f"({report['base_text_lines']} lines, case={report['base_text_case']}; "
          f"{report['base_text_lines_with_unk']} lines the base cannot encode left out)")
    print(f"  <unk> rate on target text: {report['unk_rate']:.4f} (base: {report['unk_rate_base']:.4f})")
    print(f"  share of target tokens with id >= {report['n_base']}: {report['new_id_fraction']:.3f}")
    print(f"  fertility (tokens/word): base {report['fertility_base']:.2f} "
          f"(<unk> runs spelled per character; {report['fertility_base_raw']:.2f} as the base "
          f"emits them) -> extended {report['fertility_extended']:.2f}")
    print(f"  round-trip failures: {report['roundtrip_failures']}; "
          f"unreachable added pieces: {len(report['unreachable_added'])}")
    for problem in report["problems"]:
        print(f"  problem: {problem}")


def _file_input(source: str) -> str | None:
    """``source`` when it names a file (an output must not replace it), None for a HornMT code."""
    return source if Path(source).exists() or source not in corpus.LANGS else None


def run(args: argparse.Namespace) -> int:
    """Run the tokenizer CLI; ``verify`` exits 0 exactly when the report is ok.

    Inputs are checked before any work: codes, sizes and ``--out`` first, then the files.
    """
    if args.command == "extend":
        if args.lang is not None:
            check_lang(args.lang)
        check_vocab_size(args.vocab_size)
        inputs = {"--corpus": _file_input(args.corpus)}
        check_extend_output(args.out, args.base, overwrite=args.overwrite, inputs=inputs)
        load_proto(args.base, "--base")  # before reading a large corpus
        texts, code = read_texts(args.corpus, "train", "--corpus")
        lang = args.lang or code or "amh"
        report = extend(args.base, texts, lang, args.vocab_size, args.out, naive=args.naive,
                        overwrite=args.overwrite, inputs=inputs)
        if args.json:
            print(json.dumps(asdict(report), ensure_ascii=False))
        else:
            print(f"wrote {report.out}: {report.n_base} base + {report.n_added} added pieces "
                  f"({report.n_learned} learned, {report.n_fallback} fallback characters) "
                  f"in {report.seconds:.1f} s")
            for note in report.notes:
                print(f"  note: {note}")
        return 0
    if args.command == "verify":
        for flag, value in (("--lang", args.lang), ("--base-lang", args.base_lang)):
            if value is not None:
                check_lang(value, flag)
        if args.embedding_rows is not None:
            check_vocab_size(args.embedding_rows, "--embedding-rows")
        load_proto(args.base, "--base")
        load_proto(args.extended, "--extended")
        texts, code = read_texts(args.text, "test", "--text")
        base_texts, base_code = read_texts(args.base_text, "test", "--base-text")
        report = verify(args.base, args.extended, texts, args.lang or code or "amh", base_texts,
                        args.base_lang or base_code or "eng", args.embedding_rows)
        if args.json:
            print(json.dumps(report, ensure_ascii=False))
        else:
            print_verify(report)
        return 0 if report["ok"] else 1
    if args.lang is not None:
        check_lang(args.lang)
    check_vocab_size(args.vocab_size)
    inputs = {"--corpus": _file_input(args.corpus)}
    check_output_file(args.out, "--out", inputs)
    texts, code = read_texts(args.corpus, "train", "--corpus")
    path = train_base(texts, args.lang or code or "eng", args.vocab_size, args.out, args.model_type,
                      overwrite=args.overwrite, inputs=inputs)
    print(path)
    return 0


def embedded_base(vocab_size: int = 500, lang: str = "eng") -> Path:
    """Return the embedded default's English BPE tokenizer, training it once into the work folder.

    Args:
        vocab_size: pieces of the base tokenizer.
        lang: HornMT language of the base.

    Returns:
        ``$AMHELPERS_HOME/tokenizers/{lang}_bpe{vocab_size}.model``.
    """
    from . import settings

    path = settings.home() / "tokenizers" / f"{lang}_bpe{vocab_size}.model"
    if not path.is_file():
        train_base(corpus.split_lines(lang, "train"), lang, vocab_size, path, model="bpe")
    return path
