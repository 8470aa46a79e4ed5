"""Grow the text tables of a MiniVoice checkpoint or IndexTTS2's ``gpt.pth`` for an extended tokenizer.

Layout of the tables: :mod:`amhelpers.tables`; reading and writing the files (both layouts, safe
loading): :mod:`amhelpers.ckptio`. This module adds rows and records how.

Growing the tables for an extended tokenizer (:func:`grow_text_tables`): rows ``[0, V)`` are
copied bit for bit; the added pieces get ids ``[V, V')``; **the base's "+1" row moves to the new
end** (index ``V'``), so the table is again "tokenizer ids, then one extra row". Id ``V``, which
the base never produced and is now the first added piece, gets a fresh init like every other
added piece (it does not inherit the untrained "+1" row). The extension record says so.

Init strategies for added rows:

- ``indextts``: what UnifiedVoice's constructor (and so the original trainer) gives: embedding
  N(0, 0.02), head weight and bias uniform ±1/sqrt(d) (``nn.Linear`` default).
- ``torch-default``: ``nn.Embedding`` default N(0, 1) for the embedding; head as ``nn.Linear``.
- ``mean``: the mean of the trained base rows (embedding, head weight and bias each).
- ``hewitt``: that mean plus Gaussian noise with covariance ``HEWITT_COV_SCALE`` (0.01) times the
  covariance of the trained base rows: noise 10% of the base rows' spread along every principal
  direction, so added rows stay distinct (pairwise cosine < 1) while sitting near the mean.
  transformers' ``mean_resizing`` uses 1e-9 (identical rows in effect); 1.0 would make added
  rows look like arbitrary trained tokens. Hewitt (2021, "Initializing New Word Embeddings for
  Pretrained Language Models") samples from N(mean, 1e-5 x covariance): the course's 0.01 is
  its own choice, a Hewitt-style init with 1,000 times the variance (about 32 times the noise),
  so that a few hundred small rows are told apart after a short fine-tune (docs/background.md).
- ``romanized`` (FVT with a romanisation step): each added piece's text goes through
  :func:`amhelpers.text.romanize`, is encoded by the base tokenizer (upper-cased when the base
  only knows upper-case Latin, as IndexTTS2's), and the base rows of those ids are averaged;
  the mean is used when that gives only ``<unk>``, nothing, or untrained rows.

Statistics (mean, covariance) use only *trained* base rows: rows that
:func:`amhelpers.undertrained.undertrained_rows` flags (control rows, unused pieces) are left
out, or the rows given in ``exclude_rows``. The "+1" row is never part of them.

Safety: ``extend`` refuses an ``--out`` that is one of its inputs, a folder, under a file or in
an unwritable folder, and replaces an existing ``--out`` (or its ``<out>.extension.json``
record) only with ``--overwrite``; loading (:func:`amhelpers.ckptio.load_state_dict`) names what
a refused pickle holds and what ``--trust-pickle`` would do; NaN/inf rows are named by table and
row.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .ckptio import load_state_dict, save_state_dict
from .io import check_output_file, sha256_file, write_text_atomic
from .tables import (
    EMBEDDING_INIT_STD,
    TEXT_KEYS,
    base_rows_sha256,
    check_finite_tables,
    check_text_tables,
    non_finite_rows,
)
from .text import romanize
from .tokenizer import UNKNOWN, base_text_case, load_proto, processor
from .undertrained import undertrained_rows

STRATEGIES = ("indextts", "torch-default", "mean", "hewitt", "romanized")
HEWITT_COV_SCALE = 0.01
RECORD_FORMAT = "amhelpers.extension/1"
RECORD_SUFFIX = ".extension.json"


# ----------------------------------------------------------------------------- growing
def record_path(checkpoint: str | Path) -> Path:
    """Where the extension record of ``checkpoint`` lives: ``<checkpoint>.extension.json``."""
    return Path(str(checkpoint) + RECORD_SUFFIX)


def _pieces(path: str | Path, what: str) -> list:
    return list(load_proto(path, what).pieces)


def _generator(seed: int, key: str) -> torch.Generator:
    offset = TEXT_KEYS.index(key)
    return torch.Generator().manual_seed(int(seed) * 1000 + offset)


def _romanized_sources(tokenizer: str | Path, base_tokenizer: str | Path, base_vocab: int,
                       new_vocab: int, usable: set[int]) -> tuple[list[list[int]], list[dict]]:
    """Base ids to average for each added piece (empty list: fall back to the mean)."""
    base_proto = load_proto(base_tokenizer, "--base-tokenizer")
    sp = processor(base_proto)
    upper = base_text_case(base_proto) == "upper"
    pieces = _pieces(tokenizer, "--tokenizer")
    unk = sp.unk_id()
    sources, fallbacks = [], []
    for i in range(base_vocab, new_vocab):
        piece = pieces[i]
        text = romanize(piece.piece.replace("\u2581", " ")).strip()
        if upper:
            text = text.upper()
        ids = sp.encode(text) if text and piece.type != UNKNOWN else []
        kept = [j for j in ids
                if j != unk and j in usable and base_proto.pieces[j].piece.strip("\u2581")]
        sources.append(kept)
        if not kept:
            fallbacks.append({"id": i, "piece": piece.piece, "romanized": text,
                              "why": "empty" if not ids else ("<unk>" if unk in ids else "untrained rows")})
    return sources, fallbacks


def grow_text_tables(state_dict: Mapping[str, torch.Tensor], base_vocab: int, new_vocab: int,
                     strategy: str = "indextts", seed: int = 0,
                     tokenizer: str | Path | None = None, base_tokenizer: str | Path | None = None,
                     exclude_rows: Iterable[int] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Grow the three text tables from ``base_vocab + 1`` to ``new_vocab + 1`` rows.

    Args:
        state_dict: a state dict with UnifiedVoice's text table names (other keys pass through).
        base_vocab: pieces of the base tokenizer (tables must have ``base_vocab + 1`` rows).
        new_vocab: pieces of the extended tokenizer (> ``base_vocab``).
        strategy: one of :data:`STRATEGIES`.
        seed: seed of every random draw (each table has its own generator).
        tokenizer: the extended ``.model`` (needed by ``romanized``; checked and hashed if given).
        base_tokenizer: the base ``.model`` (needed by ``romanized``; checked and hashed if given).
        exclude_rows: base rows to leave out of the statistics; default: the rows that
            :func:`amhelpers.undertrained.undertrained_rows` flags.

    Returns:
        ``(new_state_dict, record)``; the record holds base/added rows, strategy, seed,
        tokenizer sha256s, the "+1" row move, the rows left out of the statistics and init
        details (see :func:`write_extension_record`).

    Raises:
        ValueError: unknown strategy, ``new_vocab <= base_vocab``, row counts that do not match
            ``base_vocab + 1`` (naming the tokenizer), tokenizer sizes that disagree, or
            ``romanized`` without tokenizers.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--init {strategy!r} is not a strategy; choose from {', '.join(STRATEGIES)}")
    try:
        ok = not isinstance(seed, bool) and abs(operator.index(seed)) < 2 ** 53
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"--seed {seed!r} must be an integer between -2**53 and 2**53")
    base_vocab, new_vocab = int(base_vocab), int(new_vocab)
    base_name = f"base tokenizer {base_tokenizer}" if base_tokenizer else f"base_vocab={base_vocab}"
    if base_tokenizer is not None:
        n = len(_pieces(base_tokenizer, "--base-tokenizer"))
        if n != base_vocab:
            raise ValueError(f"--base-tokenizer {base_tokenizer} has {n} pieces, not base_vocab={base_vocab}")
    if tokenizer is not None:
        n = len(_pieces(tokenizer, "--tokenizer"))
        if n != new_vocab:
            raise ValueError(f"--tokenizer {tokenizer} has {n} pieces, not new_vocab={new_vocab}")
    if new_vocab <= base_vocab:
        raise ValueError(f"the extended vocabulary ({new_vocab}) must be larger than the base "
                         f"({base_vocab}); nothing to grow")
    rows, dim = check_text_tables(state_dict)
    check_finite_tables(state_dict, "the text tables to grow")
    if rows != base_vocab + 1:
        hint = (" (the checkpoint already has the extended size)" if rows == new_vocab + 1 else
                " (is this the checkpoint trained with that tokenizer?)")
        raise ValueError(
            f"text tables have {rows} rows but the {base_name} has {base_vocab} pieces, so "
            f"number_text_tokens + 1 = {base_vocab + 1} rows are expected{hint}")
    if strategy == "romanized" and (tokenizer is None or base_tokenizer is None):
        raise ValueError("--init romanized needs --tokenizer (extended) and --base-tokenizer "
                         "(it encodes each added piece's romanisation with the base tokenizer)")

    if exclude_rows is None:
        flagged = undertrained_rows(state_dict, base_vocab, unused_rows=[base_vocab])["flagged_rows"]
        excluded = sorted(int(r) for r in flagged if r < base_vocab)
        exclusion_rule = "undertrained_rows"
    else:
        excluded = sorted({int(r) for r in exclude_rows if 0 <= int(r) < base_vocab})
        exclusion_rule = "given"
    mask = torch.ones(base_vocab, dtype=torch.bool)
    if excluded:
        mask[excluded] = False
    used = torch.nonzero(mask).flatten()
    if len(used) < 2:
        raise ValueError(f"only {len(used)} trained base rows left for the statistics after "
                         f"excluding {len(excluded)} under-trained rows")

    n_new = new_vocab - base_vocab
    details: dict[str, Any] = {}
    sources: list[list[int]] | None = None
    if strategy == "romanized":
        sources, fallbacks = _romanized_sources(tokenizer, base_tokenizer, base_vocab, new_vocab,
                                                set(used.tolist()))
        details["romanized_fallback_to_mean"] = len(fallbacks)
        details["romanized_fallback_examples"] = fallbacks[:20]
    if strategy == "hewitt":
        details["hewitt_cov_scale"] = HEWITT_COV_SCALE

    out = dict(state_dict)
    for key in TEXT_KEYS:
        old = state_dict[key]
        trained = old[:base_vocab][used].detach().to(torch.float64)
        gen = _generator(seed, key)
        shape = (n_new,) + tuple(old.shape[1:])
        bound = 1.0 / math.sqrt(dim)
        if strategy in ("indextts", "torch-default"):
            if key == TEXT_KEYS[0]:
                std = 1.0 if strategy == "torch-default" else EMBEDDING_INIT_STD
                new = torch.randn(shape, generator=gen, dtype=torch.float64) * std
            else:
                new = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        else:
            mean = trained.mean(0)
            if strategy == "mean":
                new = mean.expand(shape).clone()
            elif strategy == "hewitt":
                centred = trained - mean
                if trained.dim() == 1:
                    std = centred.pow(2).sum().div(max(len(trained) - 1, 1)).sqrt()
                    noise = torch.randn(shape, generator=gen, dtype=torch.float64) * std
                else:
                    cov = centred.T @ centred / max(len(trained) - 1, 1)
                    evals, evecs = torch.linalg.eigh(cov)
                    root = evecs * evals.clamp_min(0).sqrt()
                    noise = torch.randn(shape, generator=gen, dtype=torch.float64) @ root.T
                new = mean + math.sqrt(HEWITT_COV_SCALE) * noise
            else:  # romanized
                full = old[:base_vocab].detach().to(torch.float64)
                new = mean.expand(shape).clone()
                for k, ids in enumerate(sources or []):
                    if ids:
                        new[k] = full[ids].mean(0)
        grown = torch.empty((new_vocab + 1,) + tuple(old.shape[1:]), dtype=old.dtype)
        grown[:base_vocab] = old[:base_vocab]
        grown[base_vocab:new_vocab] = new.to(old.dtype)
        grown[new_vocab] = old[base_vocab]
        out[key] = grown

    record = {
        "format": RECORD_FORMAT,
        "base_rows": base_vocab,
        "base_vocab": base_vocab,
        "new_vocab": new_vocab,
        "rows_before": base_vocab + 1,
        "rows_after": new_vocab + 1,
        "added_rows": {"start": base_vocab, "stop": new_vocab, "count": n_new},
        "tables": list(TEXT_KEYS),
        "dim": dim,
        "strategy": strategy,
        "seed": int(seed),
        "plus_one_row": {
            "from": base_vocab, "to": new_vocab,
            "note": (f"the base's extra row {base_vocab} (never produced by the base tokenizer) "
                     f"moved to the new end, row {new_vocab}; id {base_vocab} is now an added "
                     f"piece and got the '{strategy}' init"),
        },
        "stat_rows_used": len(used),
        "stat_rows_excluded": excluded,
        "stat_exclusion": exclusion_rule,
        "init_details": details,
        "base_rows_sha256": base_rows_sha256(state_dict, base_vocab),
        "tokenizer": str(tokenizer) if tokenizer is not None else None,
        "tokenizer_sha256": sha256_file(tokenizer) if tokenizer is not None else None,
        "base_tokenizer": str(base_tokenizer) if base_tokenizer is not None else None,
        "base_tokenizer_sha256": sha256_file(base_tokenizer) if base_tokenizer is not None else None,
    }
    return out, record


def initial_state_from_record(state_dict: Mapping[str, torch.Tensor], record: Mapping[str, Any]
                              ) -> tuple[dict[str, torch.Tensor], bool]:
    """Rebuild the text tables as they were right after the extension, from its record.

    The added rows are drawn again with the record's strategy, seed and excluded rows, from the
    base rows found in ``state_dict``. Exact when those base rows are bit-identical to the ones
    grown (``base_rows_sha256``) -- always so for the ``indextts`` / ``torch-default`` draws,
    which do not read the base rows.

    Returns:
        ``(init_state_dict, exact)``.
    """
    base, new = int(record["base_vocab"]), int(record["new_vocab"])
    rows, _ = check_text_tables(state_dict)
    if rows != new + 1:
        raise ValueError(f"the extension record describes {new + 1} rows but the checkpoint has {rows}")
    shaped = {k: torch.cat([state_dict[k][:base], state_dict[k][new:new + 1]]) for k in TEXT_KEYS}
    tok, base_tok = record.get("tokenizer"), record.get("base_tokenizer")
    needs_tok = record["strategy"] == "romanized"
    if needs_tok and not (tok and Path(tok).is_file() and base_tok and Path(base_tok).is_file()):
        raise FileNotFoundError(f"the extension record's tokenizers ({tok}, {base_tok}) are needed to "
                                "rebuild a 'romanized' init; pass --init-snapshot instead")
    init, _ = grow_text_tables(shaped, base, new, record["strategy"], record.get("seed", 0),
                               tok if needs_tok else None, base_tok if needs_tok else None,
                               exclude_rows=record.get("stat_rows_excluded", []))
    exact = (record["strategy"] in ("indextts", "torch-default")
             or base_rows_sha256(state_dict, base) == record.get("base_rows_sha256"))
    return init, exact


def _is_record_name(path: Path) -> bool:
    return path.name.endswith(RECORD_SUFFIX)


def write_extension_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write an extension record as JSON, atomically.

    ``path`` is the record file itself when its name ends in ``.extension.json``; any other path
    is the checkpoint the record belongs to, and the record goes to ``<path>.extension.json``
    (so a checkpoint named ``grown.json`` is never written over).
    """
    path = Path(path)
    if not _is_record_name(path):
        path = record_path(path)
    write_text_atomic(path, json.dumps(dict(record), indent=2, ensure_ascii=False) + "\n")
    return path


def read_extension_record(path: str | Path, as_is: bool = False) -> dict[str, Any]:
    """Read an extension record: the record itself, or the checkpoint it sits beside.

    A name ending in ``.extension.json`` is the record; otherwise ``<path>.extension.json`` is
    read when it exists, else ``path`` itself when it is a ``.json`` file (a renamed record).
    ``as_is``: ``path`` is the record whatever its name.

    Raises:
        FileNotFoundError: no record there.
        ValueError: not JSON, or ``base_vocab`` / ``new_vocab`` missing or not integers with
            ``0 < base_vocab < new_vocab``.
    """
    path = Path(path)
    if not as_is and not _is_record_name(path) and (record_path(path).is_file()
                                                     or path.suffix != ".json"):
        path = record_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"extension record {path} does not exist (checkpoint extend writes "
                                f"it beside the grown checkpoint as <checkpoint>{RECORD_SUFFIX})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"extension record {path} is not valid JSON ({err}); give the "
                         f"{RECORD_SUFFIX} file that checkpoint extend wrote") from None
    if not isinstance(record, dict) or "base_vocab" not in record or "new_vocab" not in record:
        raise ValueError(f"extension record {path} lacks base_vocab/new_vocab (is it the "
                         f"{RECORD_SUFFIX} file that checkpoint extend wrote?)")
    base, new = record["base_vocab"], record["new_vocab"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (base, new)) \
            or not 0 < base < new:
        raise ValueError(f"extension record {path}: base_vocab {base!r} and new_vocab {new!r} must "
                         "be integers with 0 < base_vocab < new_vocab")
    return record


def check_extend_outputs(checkpoint: str | Path, base_tokenizer: str | Path,
                         tokenizer: str | Path, out: str | Path, overwrite: bool = False
                         ) -> tuple[Path, Path]:
    """Check ``--out`` and its record before any work; return ``(out, record path)``.

    Raises:
        ValueError: ``out`` (or its record ``<out>.extension.json``) is an input, a directory,
            under a file, or already exists without ``overwrite``.
        PermissionError: the folder cannot be written.
    """
    inputs = {"--checkpoint": checkpoint, "--base-tokenizer": base_tokenizer, "--tokenizer": tokenizer}
    out = check_output_file(out, "--out", inputs)
    record = check_output_file(record_path(out), "--out's extension record", inputs)
    for path, what in ((out, "--out"), (record, "the extension record")):
        if path.exists() and not overwrite:
            raise ValueError(f"{what} {path} already exists; pass --overwrite (overwrite=True) to "
                             "replace it, or choose another --out")
    return out, record


def extend_checkpoint(checkpoint: str | Path, base_tokenizer: str | Path, tokenizer: str | Path,
                      out: str | Path, init: str = "mean", seed: int = 0,
                      trust_pickle: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Grow a checkpoint's text tables for an extended tokenizer; write it and its record.

    The output keeps the input's layout. The record goes to ``<out>.extension.json`` and, for a
    MiniVoice checkpoint, also into the checkpoint's ``meta["extension"]``. ``out`` may not be
    an input, and an existing ``out`` or record is replaced only with ``overwrite``
    (:func:`check_extend_outputs`).

    Returns:
        The extension record (with ``checkpoint``, ``base_checkpoint`` and their sha256).
    """
    out, record_file = check_extend_outputs(checkpoint, base_tokenizer, tokenizer, out, overwrite)
    base_pieces = _pieces(base_tokenizer, "--base-tokenizer")
    ext_pieces = _pieces(tokenizer, "--tokenizer")
    if len(ext_pieces) <= len(base_pieces):
        raise ValueError(f"--tokenizer {tokenizer} is not an extension of --base-tokenizer "
                         f"{base_tokenizer}: it has {len(ext_pieces)} pieces, the base {len(base_pieces)}")
    for i, (a, b) in enumerate(zip(base_pieces, ext_pieces)):
        if (a.piece, a.type) != (b.piece, b.type):
            raise ValueError(f"--tokenizer {tokenizer} is not an extension of --base-tokenizer "
                             f"{base_tokenizer}: piece {i} is {b.piece!r}, the base has {a.piece!r}")
    sd, meta = load_state_dict(checkpoint, trust_pickle)
    check_finite_tables(sd, f"checkpoint {checkpoint}")
    new_sd, record = grow_text_tables(sd, len(base_pieces), len(ext_pieces), init, seed,
                                      tokenizer, base_tokenizer)
    record = {"checkpoint": str(out), "base_checkpoint": str(checkpoint),
              "base_checkpoint_sha256": sha256_file(checkpoint), "layout": meta["layout"], **record}
    if meta["layout"] == "indextts2":
        record["note"] = (f"set gpt.number_text_tokens: {len(ext_pieces)} in IndexTTS2's config.yaml "
                          "and point it at the extended tokenizer")
    if meta["left_out"]:
        record["left_out"] = list(meta["left_out"])
    out_meta = dict(meta)
    if meta["layout"] == "minivoice":
        out_meta["meta"] = {**dict(meta.get("meta") or {}), "extension": record,
                            "tokenizer": str(tokenizer), "tokenizer_sha256": record["tokenizer_sha256"]}
    save_state_dict(out, new_sd, out_meta)
    record["checkpoint_sha256"] = sha256_file(out)
    write_extension_record(record_file, record)
    return record


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers checkpoint {extend,info}``."""
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extend", help="grow the text tables for an extended tokenizer")
    ext.add_argument("--checkpoint", required=True, help="MiniVoice .pt or IndexTTS2 gpt.pth")
    ext.add_argument("--base-tokenizer", required=True, help="the tokenizer the checkpoint was trained with")
    ext.add_argument("--tokenizer", required=True, help="the extended tokenizer (base pieces first)")
    ext.add_argument("--init", choices=STRATEGIES, default="mean", help="init of the added rows")
    ext.add_argument("--out", required=True,
                     help=f"grown checkpoint to write (same layout); its record goes to <out>{RECORD_SUFFIX}")
    ext.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out (and its record); never an input file")
    ext.add_argument("--seed", type=int, default=0)
    ext.add_argument("--trust-pickle", action="store_true",
                     help="allow unsafe unpickling of a trusted checkpoint holding Python objects "
                          "(runs the file's code: never for files from an untrusted source)")
    ext.add_argument("--json", action="store_true", help="print the extension record as JSON")
    info = sub.add_parser("info", help="print layout and text table shapes")
    info.add_argument("--checkpoint", required=True)
    info.add_argument("--trust-pickle", action="store_true",
                      help="allow unsafe unpickling of a trusted checkpoint (runs the file's code)")


def run(args: argparse.Namespace) -> int:
    """Run the checkpoint CLI."""
    if args.command == "extend":
        record = extend_checkpoint(args.checkpoint, args.base_tokenizer, args.tokenizer, args.out,
                                   args.init, args.seed, args.trust_pickle, args.overwrite)
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"wrote {args.out} ({record['layout']}): text tables {record['rows_before']} -> "
                  f"{record['rows_after']} rows, {record['added_rows']['count']} added "
                  f"({record['strategy']}, seed {record['seed']}); {record['plus_one_row']['note']}")
            print(f"record: {record_path(args.out)}")
        return 0
    sd, meta = load_state_dict(args.checkpoint, args.trust_pickle)
    print(json.dumps({"path": meta["path"], "layout": meta["layout"], "nested": meta["nested"],
                      "prefix": meta["prefix"], "dropped_keys": len(meta["dropped_keys"]),
                      "rows": meta["rows"], "dim": meta["dim"], "keys": len(sd),
                      "left_out": meta["left_out"], "non_finite_rows": {
                          k: {kind: len(ids) for kind, ids in v.items()}
                          for k, v in non_finite_rows(sd).items()}}))
    return 0
