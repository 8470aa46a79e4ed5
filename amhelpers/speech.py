"""Speech synthesis with espeak-ng: cached, parallel, 16 kHz mono, silence trimmed.

espeak-ng stands in for a real speaker so that the course can build thousands of utterances on a
laptop. Every phrase becomes one PCM16 wav under the work folder::

    home()/audio/<voice>/<sha[:2]>/<sha>.wav      sha = sha256(voice + "\\0" + text)

A cached wav is checked (sample rate, channels, header against file size) before it is reused;
a bad one is logged and synthesised again. Writes are atomic, so an interrupted run leaves no
partial wav behind.

Voices: ``eng`` -> ``en-us``, ``amh`` -> ``am``, ``orm`` -> ``om``. espeak-ng has no Tigrinya
voice; ``tir`` uses the Amharic voice (same Ge'ez script, a close phonology), so Tigrinya audio
is Amharic-accented and shares the Amharic cache.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from amhelpers.io import read_text_strict, write_bytes_atomic
from amhelpers.settings import home

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Sample rate of every wav this module writes or loads."""
MARGIN_S = 0.05
"""Silence kept at each end after trimming, in seconds."""
TRIM_TOP_DB = 40.0
"""Anything quieter than the peak by this many dB counts as silence at the ends."""

VOICES: dict[str, str] = {"eng": "en-us", "amh": "am", "orm": "om", "tir": "am"}
"""espeak-ng voice per ISO 639-3 code (``tir`` borrows ``am``: espeak-ng has no Tigrinya)."""
STAND_INS: dict[str, str] = {"tir": "amh"}
"""Languages spoken with another language's voice, and whose: every result that rests on their
audio (losses, generation, PER) is a stand-in's and must say so."""

INSTALL_HINT = (
    "install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu, Colab) or "
    "`conda install -c conda-forge espeak-ng`"
)


def voice_for(lang: str) -> str:
    """Return the espeak-ng voice for a language.

    Args:
        lang: ISO 639-3 code (``eng``, ``amh``, ``orm``, ``tir``).

    Raises:
        ValueError: for a language without a voice; the message lists the supported codes.
    """
    if lang not in VOICES:
        raise ValueError(f"no espeak-ng voice for lang={lang!r}; supported: {', '.join(VOICES)}")
    return VOICES[lang]


def espeak_binary() -> str:
    """Return the path of the espeak-ng executable.

    Raises:
        RuntimeError: when espeak-ng is not on PATH; the message names the install command.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(f"espeak-ng was not found on PATH; {INSTALL_HINT}")
    return exe


@functools.lru_cache(maxsize=8)
def _installed_voices(exe: str) -> frozenset[str]:
    """Language codes that ``espeak-ng --voices`` lists (column two)."""
    out = subprocess.run([exe, "--voices"], capture_output=True, check=True, text=True).stdout
    return frozenset(line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1)


def check_voice(voice: str) -> str:
    """Check that espeak-ng is installed and has ``voice``.

    Args:
        voice: an espeak-ng voice such as ``am``.

    Returns:
        The path of the espeak-ng executable.

    Raises:
        RuntimeError: espeak-ng or the voice is missing.
    """
    exe = espeak_binary()
    if voice not in _installed_voices(exe):
        raise RuntimeError(
            f"espeak-ng at {exe} has no voice {voice!r} (see `espeak-ng --voices`); "
            f"{INSTALL_HINT} (the voices come with espeak-ng-data)"
        )
    return exe


def _clean(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"cannot synthesise an empty text: {text!r}")
    return text.strip()


def cache_path(text: str, lang: str, cache_dir: Path | None = None) -> Path:
    """Return where the wav for ``text`` in ``lang`` is (or will be) cached.

    Args:
        text: the phrase; surrounding whitespace is ignored.
        lang: ISO 639-3 code.
        cache_dir: root of the cache (default ``home()/"audio"``).

    Returns:
        ``cache_dir/<voice>/<sha[:2]>/<sha>.wav``.
    """
    voice = voice_for(lang)
    sha = hashlib.sha256(f"{voice}\0{_clean(text)}".encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else home() / "audio"
    return root / voice / sha[:2] / f"{sha}.wav"


def _check_riff_complete(path: Path) -> None:
    """Raise ValueError when a RIFF/WAVE header promises more data than the file holds.

    libsndfile quietly reads what is there, so a truncated wav would otherwise pass.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not RIFF: leave it to libsndfile
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                raise ValueError(f"{path}: truncated wav (no data chunk)")
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                if csize != 0xFFFFFFFF and fh.tell() + csize > size:
                    raise ValueError(
                        f"{path}: truncated wav ({size - fh.tell()} of {csize} data bytes)"
                    )
                return
            fh.seek(csize + (csize & 1), os.SEEK_CUR)


def check_wav(path: str | os.PathLike) -> None:
    """Check a wav's header without reading its samples (cheap enough for every cache hit).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt, truncated, empty, not 16 kHz or not mono (the message
            names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such wav file")
    try:
        _check_riff_complete(path)
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, struct.error) as err:
        raise ValueError(f"{path}: not a readable wav file ({err})") from None
    if info.samplerate != SAMPLE_RATE:
        raise ValueError(f"{path}: sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz")
    if info.channels != 1:
        raise ValueError(f"{path}: {info.channels} channels, expected mono")
    if info.frames == 0:
        raise ValueError(f"{path}: empty wav (0 samples)")


def load_wav(path: str | os.PathLike) -> np.ndarray:
    """Read a 16 kHz mono wav as float32 in [-1, 1].

    Args:
        path: the wav file.

    Returns:
        The samples, shape ``[n]``, float32.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt, truncated, empty, not 16 kHz or not mono (the message
            names the file).
    """
    check_wav(path)
    wav, _ = sf.read(str(path), dtype="float32", always_2d=False)
    return wav


def _trim(wav: np.ndarray, sr: int) -> np.ndarray:
    """Cut leading/trailing silence, keeping exactly ``MARGIN_S`` at each end (zero-padded)."""
    import librosa

    _, (start, end) = librosa.effects.trim(wav, top_db=TRIM_TOP_DB, frame_length=512, hop_length=64)
    margin = round(MARGIN_S * sr)
    lo, hi = max(0, start - margin), min(len(wav), end + margin)
    return np.pad(wav[lo:hi], (margin - (start - lo), margin - (hi - end)))


def _synthesize_one(text: str, voice: str, exe: str, out: Path) -> None:
    """Run espeak-ng on ``text``, resample to 16 kHz, trim and write ``out`` atomically."""
    import librosa

    with tempfile.TemporaryDirectory(prefix="amhelpers-espeak-") as tmp:
        raw = Path(tmp) / "raw.wav"
        # No -q: with -q espeak-ng writes no file at all. Text on stdin avoids argv quoting.
        proc = subprocess.run(
            [exe, "-v", voice, "-w", str(raw), "--stdin"],
            input=text.encode("utf-8"), capture_output=True, check=False,
        )
        if proc.returncode != 0 or not raw.is_file():
            msg = proc.stderr.decode("utf-8", "replace").strip()
            raise RuntimeError(f"espeak-ng -v {voice} failed on {text!r}: {msg or 'no output'}")
        wav, sr = sf.read(str(raw), dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        wav = librosa.resample(wav, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    wav = np.clip(_trim(wav, SAMPLE_RATE), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    write_bytes_atomic(out, buf.getvalue())


def _cached_ok(path: Path) -> bool:
    """True when ``path`` holds a valid cached wav; logs why a present file is rejected."""
    if not path.is_file():
        return False
    try:
        check_wav(path)
    except ValueError as err:
        log.warning("re-synthesising bad cached wav: %s", err)
        return False
    return True


def synthesize(
    texts: list[str],
    lang: str,
    *,
    jobs: int = 2,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> list[Path]:
    """Synthesise each text with espeak-ng (cached) and return one wav path per text.

    Args:
        texts: phrases, already normalised (see ``amhelpers.text.normalize``).
        lang: ISO 639-3 code, one of ``VOICES``.
        jobs: espeak-ng processes run at once.
        progress: show a tqdm bar over the phrases not yet cached.
        cache_dir: root of the cache (default ``home()/"audio"``).

    Returns:
        Paths of 16 kHz mono PCM16 wavs, in the order of ``texts`` (equal texts share a path).

    Raises:
        ValueError: unknown ``lang`` or an empty text.
        RuntimeError: espeak-ng or its voice is missing, or espeak-ng fails.
    """
    voice = voice_for(lang)
    paths = [cache_path(t, lang, cache_dir) for t in texts]
    todo = {p: _clean(t) for t, p in zip(texts, paths) if not _cached_ok(p)}
    if todo:
        exe = check_voice(voice)
        bar = tqdm(total=len(todo), desc=f"espeak-ng {voice}", unit="phrase", disable=not progress)
        with bar, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(_synthesize_one, t, voice, exe, p) for p, t in todo.items()]
            try:
                for fut in as_completed(futures):
                    fut.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return paths


# --- command line: python -m amhelpers speech synth ... -------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``speech`` commands to ``parser``."""
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    synth = sub.add_parser("synth", help="synthesise phrases and print their cached wav paths")
    synth.add_argument("--lang", required=True, choices=sorted(VOICES), help="ISO 639-3 code")
    source = synth.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one phrase")
    source.add_argument("--file", type=Path, help="UTF-8 text file, one phrase per line")
    synth.add_argument("--out", type=Path, help="also copy the wav here (only with --text)")
    synth.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    synth.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run a ``speech`` command. Returns the exit status."""
    if args.command != "synth":  # pragma: no cover - argparse enforces the choice
        raise ValueError(f"unknown speech command {args.command!r}")
    if args.file is not None:
        if args.out is not None:
            raise ValueError("--out needs --text; with --file the cached paths are printed")
        texts = [line.strip() for line in read_text_strict(args.file, "--file").splitlines()]
        texts = [t for t in texts if t]
    else:
        texts = [args.text]
    paths = synthesize(texts, args.lang, jobs=args.jobs, progress=not args.no_progress)
    if args.out is not None:
        write_bytes_atomic(args.out, paths[0].read_bytes())
        paths = [args.out]
    for path in paths:
        print(path, file=sys.stdout)
    return 0
