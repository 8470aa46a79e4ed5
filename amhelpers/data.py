"""Manifests: one JSONL line per utterance, read, written, batched.

A manifest line, in the IndexTTS2 trainer's spirit::

    {"id": "eng-train-000123", "lang": "eng", "text": "...", "norm_text": "...",
     "text_ids": [12, 7, ...], "codes": [301, 17, ...], "n_text": 9, "n_codes": 38,
     "audio": "speech/eng/000123.wav"}

``text_ids`` and ``codes`` carry no start/stop tokens (the model adds them).

Reading and batching live in the first part of this module; building manifests from a corpus,
a tokenizer and the codec lives in the second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from amhelpers.io import atomic_write, sha256_file, write_text_atomic

REQUIRED_KEYS = ("id", "lang", "text", "text_ids", "codes", "n_text", "n_codes")
"""Keys every manifest row must have (``norm_text`` and ``audio`` are optional)."""


# ------------------------------------------------------------------------ reading, writing
class Manifest(list):
    """The rows of a manifest (a plain list of dicts) with where each came from.

    Attributes:
        path: the manifest file.
        lines: the 1-based line number of each row (blank lines are skipped), so later checks
            can say ``file line N``.
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = (), path: str | os.PathLike = "",
                 lines: Sequence[int] = ()) -> None:
        super().__init__(rows)
        self.path = Path(path)
        self.lines = list(lines)

    def where(self, index: int) -> str:
        """Return ``manifest <path> line <n>`` for row ``index``."""
        line = self.lines[index] if index < len(self.lines) else "?"
        return f"manifest {self.path} line {line}"


def read_manifest(path: str | os.PathLike, required: Sequence[str] = REQUIRED_KEYS,
                  allow_empty: bool = False) -> Manifest:
    """Read a JSONL manifest, checking every row.

    Args:
        path: the manifest file.
        required: keys each row must have.
        allow_empty: return ``[]`` for a manifest without rows instead of raising.

    Returns:
        The rows, in file order (blank lines are skipped), as a :class:`Manifest` (a list
        that also knows each row's line number).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the path is a folder; a line is not UTF-8 or not a JSON object, lacks a
            key, has ``text_ids`` / ``codes`` that are not lists of integers >= 0, or has
            ``n_text`` / ``n_codes`` that disagree with its lists (the message names the file
            and line); or the file has no rows and ``allow_empty`` is false.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"manifest {path} is a folder; give the JSONL file (e.g. "
                         f"{path / 'train.jsonl'})")
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    rows, lines = [], []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"manifest {path} line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{where}: not UTF-8 (byte {err.start + 1} of the line is "
                    f"{raw[err.start:err.start + 1]!r}); convert the file, e.g. "
                    "`iconv -f LATIN1 -t UTF-8 in.jsonl > out.jsonl`") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(  # noqa: TRY004 (bad file content, not a caller's type error)
                    f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
            _check_lists(row, where)
            rows.append(row)
            lines.append(number)
    if not rows and not allow_empty:
        raise ValueError(f"manifest {path} has no rows (is it the right file? was it built?)")
    return Manifest(rows, path, lines)


def _check_lists(row: dict[str, Any], where: str) -> None:
    """Check that ``text_ids`` / ``codes`` are lists of integers >= 0 matching their counts."""
    for key, count in (("text_ids", "n_text"), ("codes", "n_codes")):
        if key not in row:
            continue
        values = row[key]
        if not isinstance(values, list):
            raise ValueError(f"{where}: {key} must be a list of integers, got "
                             f"{type(values).__name__}")
        for i, value in enumerate(values):
            if type(value) is not int:
                raise ValueError(f"{where}: {key}[{i}] = {json.dumps(value)} is not an integer "
                                 f"({key} must be a list of integers)")
            if value < 0:
                what = "code" if key == "codes" else "text id"
                raise ValueError(f"{where}: {what} {value} at {key}[{i}] is negative (ids and "
                                 "codes are table indices, >= 0); rebuild the manifest")
        if count in row and row[count] != len(values):
            raise ValueError(f"{where}: {count}={row[count]} but {key} has {len(values)} items")


def write_manifest(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL (UTF-8, one object per line), atomically.

    Args:
        path: the manifest file.
        rows: JSON-serialisable dicts.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_write(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    return path


# ------------------------------------------------------------------------------- batching
class LengthBucketBatches:
    """Deterministic length-bucketed batches with an exact, resumable position.

    Each epoch shuffles the rows with a generator seeded by ``(seed, epoch)``, cuts them into
    windows of ``window`` batches, sorts each window by length (so a batch holds similar
    lengths and little padding) and shuffles the order of all batches. With
    ``shuffle=False`` the rows are sorted by length once, in order (for validation).

    Iterating yields the batches (lists of row indices) of the current epoch from the
    current position; the next iteration starts the next epoch. :meth:`state_dict` is the
    position after the last batch handed out.

    Args:
        lengths: one length per row (e.g. ``n_text + n_codes``).
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        seed: seed of the shuffles.
        window: batches per sorting window.
        shuffle: shuffle rows and batches; False gives one fixed, sorted order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 50,
                 shuffle: bool = True) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size}, {window}")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0

    def __len__(self) -> int:
        """Number of batches in one epoch."""
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Return all batches of ``epoch`` (a pure function of seed, epoch and lengths)."""
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: (self.lengths[i], i))
            return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        span = self.window * self.batch_size
        batches = []
        for start in range(0, n, span):
            chunk = sorted(order[start:start + span], key=lambda i: (self.lengths[i], i))
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        while self.index < len(batches):
            self.index += 1
            yield batches[self.index - 1]
        self.epoch += 1
        self.index = 0

    def state_dict(self) -> dict[str, int]:
        """Return the position (``epoch``, ``index`` of the next batch) and what defines it."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size, "window": self.window, "rows": len(self.lengths)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises:
            ValueError: the state was saved for other data, batch size, window or seed.
        """
        if "replay" in state:
            raise ValueError("the saved data position was written by a run with replay "
                             f"(fraction {state.get('fraction')})")
        mine = self.state_dict()
        differ = [f"{k}={state[k]} (now {mine[k]})" for k in ("seed", "batch_size", "window", "rows")
                  if k in state and state[k] != mine[k]]
        if differ:
            raise ValueError("the saved data position belongs to other batches: " + ", ".join(differ))
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class ReplayBatches:
    """Batches that mix base-language rows into every target-language batch (replay).

    Each batch holds up to ``batch_size - k`` target rows, drawn by a
    :class:`LengthBucketBatches` that defines the epoch, and exactly ``k = round(fraction *
    batch_size)`` replay rows (at least one when ``fraction > 0``). The replay rows come from
    a stream of their own, one seeded shuffle per pass, cut into ``k`` rows at a time across
    passes. Replay row ``i`` is index ``offset + i`` of the rows the trainer holds (the target
    rows come first). :meth:`state_dict` holds the position of both parts, so a resumed run
    draws the same batches.

    Args:
        target_lengths: one length per target-language row.
        replay_lengths: one length per replay (base-language) row.
        batch_size: rows per batch, both parts together (the compute per step is unchanged).
        fraction: the share of each batch that is replay, in ``(0, 1)``.
        seed: seed of both parts' shuffles.
        window: batches per length-sorting window.

    Raises:
        ValueError: a fraction outside ``(0, 1)``, one that leaves no target row in a batch,
            or no replay rows.
    """

    def __init__(self, target_lengths: Sequence[int], replay_lengths: Sequence[int],
                 batch_size: int, fraction: float, seed: int = 0, window: int = 50) -> None:
        if not 0 < fraction < 1:
            raise ValueError(f"replay fraction {fraction} must be in (0, 1)")
        if not replay_lengths:
            raise ValueError("replay needs at least one replay row")
        k = max(1, round(fraction * batch_size))
        if k >= batch_size:
            raise ValueError(f"replay fraction {fraction} of a batch of {batch_size} leaves no "
                             "target-language row; lower the fraction or raise the batch size")
        self.fraction, self.k, self.offset = fraction, k, len(target_lengths)
        self.target = LengthBucketBatches(target_lengths, batch_size - k, seed, window)
        self.replay = LengthBucketBatches(replay_lengths, k, seed + 7_919, window)
        self.replay_pass, self.replay_pos = 0, 0
        self._order: tuple[int, list[int]] = (-1, [])  # (pass, its row order), computed once

    def __len__(self) -> int:
        """Number of batches in one epoch (of the target rows)."""
        return len(self.target)

    @property
    def epoch(self) -> int:
        """The target rows' epoch."""
        return self.target.epoch

    def _replay_order(self, n: int) -> list[int]:
        if self._order[0] != n:
            self._order = (n, [i for b in self.replay.epoch_batches(n) for i in b])
        return self._order[1]

    def _replay_rows(self) -> list[int]:
        """The next ``k`` replay rows (as indices after the target rows)."""
        taken: list[int] = []
        while len(taken) < self.k:
            order = self._replay_order(self.replay_pass)
            need = self.k - len(taken)
            taken += order[self.replay_pos:self.replay_pos + need]
            self.replay_pos += need
            if self.replay_pos >= len(order):
                self.replay_pass, self.replay_pos = self.replay_pass + 1, 0
        return [self.offset + i for i in taken]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.target:
            yield batch + self._replay_rows()

    def state_dict(self) -> dict[str, Any]:
        """The position of both parts, and the fraction."""
        return {"target": self.target.state_dict(), "fraction": self.fraction,
                "replay": {"pass": self.replay_pass, "pos": self.replay_pos,
                           "rows": len(self.replay.lengths), "k": self.k}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises:
            ValueError: the state was saved without replay, or for other data or settings.
        """
        if "replay" not in state:
            raise ValueError("the saved data position was written by a run without replay")
        if state.get("fraction") != self.fraction:
            raise ValueError(f"the saved data position has replay fraction "
                             f"{state.get('fraction')} (now {self.fraction})")
        replay = state["replay"]
        if (replay.get("rows"), replay.get("k")) != (len(self.replay.lengths), self.k):
            raise ValueError(f"the saved data position replays {replay.get('rows')} rows, "
                             f"{replay.get('k')} per batch (now {len(self.replay.lengths)}, "
                             f"{self.k}): another --replay-manifest or --batch-size")
        self.target.load_state_dict(state["target"])
        self.replay_pass, self.replay_pos = int(replay["pass"]), int(replay["pos"])


def training_batches(target_lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 50,
            replay_lengths: Sequence[int] = (), replay_fraction: float = 0.0
            ) -> LengthBucketBatches | ReplayBatches:
    """The trainer's sampler: :class:`LengthBucketBatches`, or :class:`ReplayBatches` when
    ``replay_fraction > 0`` (its rows follow the target rows)."""
    if replay_fraction > 0:
        return ReplayBatches(target_lengths, replay_lengths, batch_size, replay_fraction, seed,
                             window)
    return LengthBucketBatches(target_lengths, batch_size, seed=seed, window=window)


def row_lengths(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Each row's packed length, ``len(text_ids) + len(codes)`` (what batches are sorted by)."""
    return [len(r["text_ids"]) + len(r["codes"]) for r in rows]


def collate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of manifest rows into batch tensors.

    Args:
        rows: manifest rows with ``text_ids`` and ``codes``.

    Returns:
        ``text_ids`` (B, N) and ``codes`` (B, M) zero-padded LongTensors, ``text_lengths`` and
        ``code_lengths`` (B,), and ``ids`` (the rows' ids).
    """
    text_lengths = torch.tensor([len(r["text_ids"]) for r in rows], dtype=torch.long)
    code_lengths = torch.tensor([len(r["codes"]) for r in rows], dtype=torch.long)
    text_ids = torch.zeros(len(rows), max(text_lengths.tolist(), default=0), dtype=torch.long)
    codes = torch.zeros(len(rows), max(code_lengths.tolist(), default=0), dtype=torch.long)
    for i, row in enumerate(rows):
        text_ids[i, :len(row["text_ids"])] = torch.tensor(row["text_ids"], dtype=torch.long)
        codes[i, :len(row["codes"])] = torch.tensor(row["codes"], dtype=torch.long)
    return {"text_ids": text_ids, "text_lengths": text_lengths, "codes": codes,
            "code_lengths": code_lengths, "ids": [r.get("id") for r in rows]}


# ----------------------------------------------------------------------- building manifests
def build_manifest(out: str | os.PathLike, texts: Sequence[str], lang: str,
                   tokenizer: str | os.PathLike, codebook: Any, split: str = "train",
                   progress: bool = True, key: str | None = None) -> Path:
    """Synthesise, encode and tokenise ``texts`` into a manifest (written atomically).

    Args:
        out: the JSONL file to write.
        texts: raw phrases (normalised here with :func:`amhelpers.text.normalize`).
        lang: ISO 639-3 code (selects the espeak-ng voice and the normaliser).
        tokenizer: SentencePiece model for ``text_ids``.
        codebook: a fitted :class:`amhelpers.codec.Codebook` for ``codes``.
        split: split name used in row ids.
        progress: show espeak-ng's progress bar.
        key: an input hash stored in the sidecar ``<out>.meta.json`` (callers use it to
            rebuild a stale manifest).

    Returns:
        The manifest path. Its sidecar records the codebook hash and K and the tokenizer
        sha256, which :func:`check_manifest` compares.

    Raises:
        ValueError: a text that yields no pieces (after normalisation) or no codes.
    """
    from amhelpers.codec import log_mel
    from amhelpers.speech import load_wav, synthesize
    from amhelpers.text import normalize
    from amhelpers.tokenizer import load_proto, processor

    sp = processor(load_proto(tokenizer, "tokenizer"))
    norm = [normalize(t, lang) for t in texts]
    for raw, t in zip(texts, norm):
        if not t or not sp.encode(t):
            raise ValueError(f"text {raw!r} yields no pieces after normalisation; drop it "
                             "from the phrase list")
    wavs = synthesize(list(texts), lang, progress=progress)
    rows = []
    for i, (raw, t, wav) in enumerate(zip(texts, norm, wavs)):
        ids = sp.encode(t)
        codes = codebook.encode(log_mel(load_wav(wav))).tolist()
        if not codes:
            raise ValueError(f"{wav}: no audio frames for {raw!r}")
        rows.append({"id": f"{lang}-{split}-{i:06d}", "lang": lang, "text": raw, "norm_text": t,
                     "text_ids": ids, "codes": codes, "n_text": len(ids), "n_codes": len(codes),
                     "audio": str(wav)})
    path = write_manifest(out, rows)
    write_text_atomic(meta_path(path), json.dumps({
        "key": key, "k": codebook.k, "codec": codebook.config_hash(),
        "tokenizer_sha256": sha256_file(tokenizer), "rows": len(rows)}))
    return path


def meta_path(manifest: str | os.PathLike) -> Path:
    """Return the sidecar of a manifest: ``name.jsonl`` -> ``name.meta.json``."""
    return Path(manifest).with_suffix(".meta.json")


def check_manifest(manifest: str | os.PathLike, codebook: Any = None,
                   tokenizer: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check that a manifest was built with this codebook and tokenizer.

    Raises:
        FileNotFoundError: the manifest has no sidecar (build it with :func:`build_manifest`).
        ValueError: the sidecar is damaged; or K, codebook hash or tokenizer sha256 differ (the
            message names both values).
    """
    meta_file = meta_path(manifest)
    if not meta_file.is_file():
        raise FileNotFoundError(f"{manifest}: no {meta_file.name} beside it; rebuild the manifest "
                                "with amhelpers.data.build_manifest")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except ValueError as err:  # not UTF-8 or not JSON
        raise ValueError(f"{meta_file} is damaged ({type(err).__name__}); delete it and the "
                         f"manifest {manifest}, then rebuild them") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file} is damaged (a JSON {type(meta).__name__}, not an object); "
                         f"delete it and the manifest {manifest}, then rebuild them")
    missing = [k for k in ("k", "codec", "tokenizer_sha256") if k not in meta]
    if missing:
        raise ValueError(f"{meta_file} lacks {', '.join(missing)}; delete it and the manifest "
                         f"{manifest}, then rebuild them")
    if codebook is not None:
        if meta["k"] != codebook.k:
            raise ValueError(f"{manifest}: built with a K={meta['k']} codebook, but the codebook "
                             f"has K={codebook.k}; rebuild the manifest with this codebook")
        if meta["codec"] != codebook.config_hash():
            raise ValueError(f"{manifest}: built with codebook {meta['codec']}, not "
                             f"{codebook.config_hash()}; rebuild the manifest with this codebook")
    if tokenizer is not None and meta["tokenizer_sha256"] != sha256_file(tokenizer):
        raise ValueError(f"{manifest}: built with tokenizer sha256 {meta['tokenizer_sha256'][:12]}, "
                         f"but {tokenizer} has {sha256_file(tokenizer)[:12]}; rebuild the manifest")
    return meta
