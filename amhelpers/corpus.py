"""HornMT, the parallel news corpus the course speaks: access, splits and phrases.

HornMT (Hadgu et al., Lesan AI) has 2030 parallel lines in Afar, Amharic, English, Oromo,
Somali and Tigrinya; line N of every file is the same snippet. License: CC BY 4.0
(https://creativecommons.org/licenses/by/4.0/). Source:
https://github.com/asmelashteka/HornMT at the commit pinned below.

The files are read from ``$AMHELPERS_CORPUS_DIR`` when set, otherwise downloaded once into
``$AMHELPERS_HOME/hornmt`` and checked against the sha256 sums below.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

from . import settings
from .io import sha256_file, write_bytes_atomic

CREDIT = (
    "HornMT (Hadgu, Gebremeskel, Aregawi and the Lesan AI translation teams), "
    "https://github.com/asmelashteka/HornMT, CC BY 4.0"
)
COMMIT = "e67b5bc341e5893ef1f3f167a5022694c6da76d8"
BASE_URL = f"https://raw.githubusercontent.com/asmelashteka/HornMT/{COMMIT}"
LANGS = ("aar", "amh", "eng", "orm", "som", "tir")
N_LINES = 2030
SHA256 = {
    "aar.txt": "fd9d7592bb3bec75b5bd6f65b142317e785672ed10dd869d43ee0aed846b7f1a",
    "amh.txt": "e984a2f9e6cd7d833f092aadf93e0d82574107188f29d829adcb1461b3e63222",
    "eng.txt": "40c4dab6ac6bb0e3a3d49721e116d326ca95c44e640c42f8caca4593e47db584",
    "orm.txt": "70eea29f71e99b50676429af0562c791eabbe11a2c4850f90ca25fb1f770663e",
    "som.txt": "eea86f6fee9020fb6c13d282e37bed5016e09e93a1d2a142d547faac91b48f63",
    "tir.txt": "017a35e3fad1f16c670cbc6b11967280ed5b39fd87d6c6722633a87136dca2c3",
    "metadata.tsv": "5edbd08375762da0bbffce18bd9ca07c55e2d5104a04cacba4d8d011729a1a97",
}
SPLITS = ("train", "val", "test")

# Phrase boundaries: Latin and Ethiopic sentence and clause punctuation.
_BOUNDARY = re.compile(r"(?<=[.!?;:,])\s+|(?<=[።፣፤፥፦፧])\s*|\s[-–—]\s")


def _url(name: str) -> str:
    base = os.environ.get("AMHELPERS_CORPUS_URL", BASE_URL).rstrip("/")
    return f"{base}/{name}" if name == "metadata.tsv" else f"{base}/data/{name}"


def _check(path: Path, name: str) -> None:
    got = sha256_file(path)
    if got != SHA256[name]:
        raise ValueError(
            f"{path}: sha256 {got} does not match HornMT commit {COMMIT[:10]} ({SHA256[name]}); "
            "the file is corrupt or another version: delete it to download again, or point "
            "AMHELPERS_CORPUS_DIR at a byte-for-byte copy"
        )


def path(name: str) -> Path:
    """Return a verified local path of one HornMT file, downloading it when needed.

    Args:
        name: ``"amh.txt"``, ``"eng.txt"``, ... or ``"metadata.tsv"``.

    Returns:
        The file in ``$AMHELPERS_CORPUS_DIR`` or in ``$AMHELPERS_HOME/hornmt``.

    Raises:
        FileNotFoundError: no local copy and the download failed (offline).
        ValueError: unknown name, or the sha256 does not match.
    """
    if name not in SHA256:
        raise ValueError(f"unknown HornMT file {name!r}; choose from {', '.join(SHA256)}")
    local = settings.corpus_dir()
    if local is not None:
        candidate = local / name
        if not candidate.is_file():
            raise FileNotFoundError(
                f"AMHELPERS_CORPUS_DIR={local} has no {name}; put the HornMT files there "
                f"(data/*.txt and metadata.tsv at commit {COMMIT[:10]}) or unset the variable"
            )
        _check(candidate, name)
        return candidate
    target = settings.home() / "hornmt" / name
    if not target.is_file():
        try:
            with urllib.request.urlopen(_url(name), timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise FileNotFoundError(
                f"cannot download HornMT {name} from {_url(name)} ({err}). Offline? Copy the "
                f"HornMT files (data/*.txt and metadata.tsv at commit {COMMIT[:10]}) into a "
                f"folder and set AMHELPERS_CORPUS_DIR to it, or place them in {target.parent}"
            ) from None
        tmp = target.with_name(target.name + ".download")
        write_bytes_atomic(tmp, data)
        try:
            _check(tmp, name)
        except ValueError:
            tmp.unlink()
            raise
        os.replace(tmp, target)
    _check(target, name)
    return target


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"unknown HornMT language {lang!r}; choose from {', '.join(LANGS)}")


@lru_cache(maxsize=16)
def _lines_cached(file: str) -> tuple[str, ...]:
    text = Path(file).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.split("\n")[:N_LINES])


def lines(lang: str) -> list[str]:
    """Return the 2030 HornMT lines of one language (index = line number).

    Args:
        lang: ISO 639-3 code: ``aar``, ``amh``, ``eng``, ``orm``, ``som`` or ``tir``.
    """
    _check_lang(lang)
    return list(_lines_cached(str(path(f"{lang}.txt"))))


def split_of(index: int) -> str:
    """Return the split of line ``index``: 80% train, 10% val, 10% test, by index alone.

    Every language uses the same rule, so a line and its translations share a split.
    """
    remainder = index % 10
    return "test" if remainder == 0 else "val" if remainder == 5 else "train"


def split_lines(lang: str, split: str) -> list[str]:
    """Return the lines of ``lang`` in ``split`` (``train``, ``val`` or ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return [line for i, line in enumerate(lines(lang)) if split_of(i) == split and line]


def split_phrases(line: str, min_words: int = 3, max_words: int = 6) -> list[str]:
    """Split a line at punctuation, then into chunks of ``min_words``-``max_words`` words.

    Segments shorter than ``min_words`` join the previous chunk when it has room; longer
    segments are cut into near-equal chunks.

    Args:
        line: one line of text.
        min_words: the shortest chunk made by cutting a long segment.
        max_words: the longest chunk.

    Returns:
        Phrases with their punctuation kept, in order.
    """
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    out: list[list[str]] = []
    for segment in _BOUNDARY.split(line):
        words = segment.split()
        if not words:
            continue
        n_chunks = max(1, -(-len(words) // max_words))
        if len(words) >= min_words * n_chunks or n_chunks == 1:
            size, extra = divmod(len(words), n_chunks)
            start = 0
            for c in range(n_chunks):
                stop = start + size + (1 if c < extra else 0)
                chunk = words[start:stop]
                if len(chunk) < min_words and out and len(out[-1]) + len(chunk) <= max_words:
                    out[-1].extend(chunk)
                else:
                    out.append(chunk)
                start = stop
    return [" ".join(chunk) for chunk in out]


def phrases(lang: str, split: str, min_words: int = 3, max_words: int = 6) -> list[str]:
    """Return the short phrases of ``lang`` in ``split`` (see :func:`split_phrases`)."""
    return [p for line in split_lines(lang, split) for p in split_phrases(line, min_words, max_words)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers corpus {fetch,stats}``."""
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download (or check the local copy of) every HornMT file")
    stats = sub.add_parser("stats", help="lines, phrases and words per language and split")
    stats.add_argument("--lang", nargs="+", default=["amh", "eng"], choices=LANGS)


def run(args: argparse.Namespace) -> int:
    """Run the corpus CLI."""
    if args.command == "fetch":
        for name in SHA256:
            print(path(name))
        print(f"credit: {CREDIT}")
        return 0
    for lang in args.lang:
        for split in SPLITS:
            ph = phrases(lang, split)
            print(json.dumps({"lang": lang, "split": split, "lines": len(split_lines(lang, split)),
                              "phrases": len(ph), "words": sum(len(p.split()) for p in ph)}))
    return 0
