"""The course's speech codec: log-mel features, a frame-stacked k-means codebook, MCD-DTW.

IndexTTS2 predicts discrete speech codes; here a miniature stands in for its codec:

- features: 80-bin log-mel at 100 frames/s (:func:`log_mel`);
- codes: ``stack`` consecutive mel frames concatenated into one vector and assigned to the
  nearest of ``k`` k-means centroids (4 frames -> 25 codes/s) (:class:`Codebook`);
- decode: centroid -> mel frames -> linear magnitude (mel filterbank pseudo-inverse, as in
  ``librosa.feature.inverse.mel_to_stft``) -> Griffin-Lim;
- distance: mel-cepstral distance after DTW alignment (:func:`mcd_dtw`), reported against the
  reference points of :func:`baselines`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amhelpers.io import write_bytes_atomic

LOG_FLOOR = 1e-5
"""Mel magnitudes are clipped to this before the log."""
MCD_SCALE = 10.0 / np.log(10.0) * np.sqrt(2.0)
"""The usual MCD factor for natural-log cepstra: dB and the factor 2 of the definition."""
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MelConfig:
    """Log-mel analysis settings (defaults: 16 kHz, 100 frames/s, 80 bins up to 8 kHz)."""

    sr: int = 16000
    n_fft: int = 1024
    win_length: int = 640
    hop: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0

    def __post_init__(self) -> None:
        if not 0 < self.win_length <= self.n_fft or self.hop <= 0 or self.n_mels <= 0:
            raise ValueError(f"invalid MelConfig: need 0 < win_length <= n_fft, hop > 0: {self}")
        if not 0 <= self.fmin < self.fmax <= self.sr / 2:
            raise ValueError(f"invalid MelConfig: need 0 <= fmin < fmax <= sr/2: {self}")

    @property
    def frames_per_second(self) -> float:
        """Mel frames per second of audio (``sr / hop``)."""
        return self.sr / self.hop


@functools.lru_cache(maxsize=4)
def _mel_basis(cfg: MelConfig) -> np.ndarray:
    """The mel filterbank ``[n_mels, 1 + n_fft/2]`` (librosa's Slaney mel, cached)."""
    import librosa

    return librosa.filters.mel(sr=cfg.sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                               fmax=cfg.fmax)


@functools.lru_cache(maxsize=4)
def _mel_pinv(cfg: MelConfig) -> np.ndarray:
    """Pseudo-inverse of the mel filterbank, ``[1 + n_fft/2, n_mels]``."""
    return np.linalg.pinv(_mel_basis(cfg)).astype(np.float32)


def log_mel(wav: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Compute the natural-log mel magnitude spectrogram of a waveform.

    Args:
        wav: mono samples at ``cfg.sr``, shape ``[n]``.
        cfg: analysis settings.

    Returns:
        float32 array ``[frames, cfg.n_mels]`` (``frames = 1 + n // hop``).
    """
    import librosa

    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"log_mel needs a non-empty mono waveform, got shape {wav.shape}")
    stft = librosa.stft(wav, n_fft=cfg.n_fft, hop_length=cfg.hop, win_length=cfg.win_length)
    mel = _mel_basis(cfg) @ np.abs(stft)  # = librosa.feature.melspectrogram(power=1.0)
    return np.log(np.maximum(mel, LOG_FLOOR)).T.astype(np.float32)


def mel_to_wav(mel: np.ndarray, cfg: MelConfig = MelConfig(), n_iter: int = 32,
               seed: int = 0) -> np.ndarray:
    """Invert a log-mel spectrogram with Griffin-Lim (reproducible for a given ``seed``).

    The linear magnitude is the clipped pseudo-inverse of the mel filterbank: the starting point
    of ``librosa.feature.inverse.mel_to_stft``, whose NNLS refinement changes it by ~1e-8
    (relative) for these settings but costs ~1 s per phrase.

    Args:
        mel: log-mel ``[frames, cfg.n_mels]``.
        cfg: the settings the mel was computed with.
        n_iter: Griffin-Lim iterations.
        seed: seed of the random initial phase.

    Returns:
        float32 waveform at ``cfg.sr``.
    """
    import librosa

    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[1] != cfg.n_mels or not len(mel):
        raise ValueError(f"expected a log-mel of shape [frames>0, {cfg.n_mels}], got {mel.shape}")
    magnitude = np.maximum(_mel_pinv(cfg) @ np.exp(mel).T, 0.0)
    wav = librosa.griffinlim(
        magnitude, n_iter=n_iter, hop_length=cfg.hop, win_length=cfg.win_length,
        n_fft=cfg.n_fft, random_state=seed,
    )
    return wav.astype(np.float32)


def _stack(mel: np.ndarray, stack: int, n_mels: int) -> np.ndarray:
    """``[frames, n_mels]`` -> ``[ceil(frames / stack), stack * n_mels]``, last frame repeated."""
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[1] != n_mels or mel.shape[0] == 0:
        raise ValueError(f"expected a log-mel of shape [frames>0, {n_mels}], got {mel.shape}")
    pad = -len(mel) % stack
    if pad:
        mel = np.concatenate([mel, np.repeat(mel[-1:], pad, axis=0)])
    return mel.reshape(-1, stack * n_mels)


class Codebook:
    """A frame-stacked k-means codebook: ``stack`` mel frames <-> one code in ``[0, k)``.

    Args:
        centroids: ``[k, stack * cfg.n_mels]`` float32 centroids.
        stack: mel frames per code.
        cfg: the mel settings the centroids live in.
    """

    def __init__(self, centroids: np.ndarray, stack: int, cfg: MelConfig = MelConfig()) -> None:
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if stack <= 0 or centroids.ndim != 2 or centroids.shape[1] != stack * cfg.n_mels:
            raise ValueError(
                f"centroids of shape {centroids.shape} do not match stack={stack} x "
                f"n_mels={cfg.n_mels}"
            )
        self.centroids = centroids
        self.cfg = cfg
        self._stack = int(stack)
        self._sq_norms = np.einsum("kd,kd->k", centroids, centroids)

    @property
    def k(self) -> int:
        """Number of codes."""
        return len(self.centroids)

    @property
    def stack(self) -> int:
        """Mel frames per code."""
        return self._stack

    @property
    def codes_per_second(self) -> float:
        """Codes per second of audio (25 with the defaults)."""
        return self.cfg.frames_per_second / self.stack

    def __repr__(self) -> str:
        return f"Codebook(k={self.k}, stack={self.stack}, hash={self.config_hash()})"

    @classmethod
    def fit(cls, mels: list[np.ndarray], k: int = 512, stack: int = 4, seed: int = 0,
            max_vectors: int = 100_000, cfg: MelConfig = MelConfig()) -> Codebook:
        """Fit the centroids with MiniBatchKMeans on stacked mel frames.

        Args:
            mels: log-mels ``[frames, cfg.n_mels]`` (fit on every language the codes must serve).
            k: number of codes.
            stack: mel frames per code.
            seed: seeds the subsample and k-means, so equal inputs give equal codebooks.
            max_vectors: at most this many stacked vectors (a seeded random subset) are used.
            cfg: the settings the mels were computed with.

        Returns:
            The fitted codebook.
        """
        from sklearn.cluster import MiniBatchKMeans

        if not mels:
            raise ValueError("Codebook.fit needs at least one mel")
        vectors = np.concatenate([_stack(m, stack, cfg.n_mels) for m in mels])
        rng = np.random.default_rng(seed)
        if len(vectors) > max_vectors:
            vectors = vectors[np.sort(rng.choice(len(vectors), max_vectors, replace=False))]
        if len(vectors) < k:
            raise ValueError(f"only {len(vectors)} stacked vectors to fit k={k} codes; "
                             "give more audio or a smaller k")
        kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3,
                                 batch_size=min(4096, len(vectors)))
        kmeans.fit(vectors)
        return cls(kmeans.cluster_centers_, stack, cfg)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """Map a log-mel to codes (the last partial group is padded by repeating its last frame).

        Args:
            mel: ``[frames, n_mels]``.

        Returns:
            int64 codes, ``ceil(frames / stack)`` of them.
        """
        x = _stack(mel, self.stack, self.cfg.n_mels)
        dist = self._sq_norms[None, :] - 2.0 * (x @ self.centroids.T)  # + |x|^2, same per row
        return dist.argmin(axis=1).astype(np.int64)

    def decode_mel(self, codes: np.ndarray) -> np.ndarray:
        """Return the centroid mel frames of ``codes``, shape ``[len(codes) * stack, n_mels]``."""
        codes = np.asarray(codes)
        if codes.ndim != 1 or codes.size == 0 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be a non-empty 1-D integer array, got {codes.shape}")
        if codes.min() < 0 or codes.max() >= self.k:
            raise ValueError(f"codes must lie in [0, {self.k}), got [{codes.min()}, {codes.max()}]")
        return self.centroids[codes].reshape(-1, self.cfg.n_mels)

    def decode(self, codes: np.ndarray, n_iter: int = 32, seed: int = 0) -> np.ndarray:
        """Decode codes to a waveform: centroid mel -> Griffin-Lim (reproducible).

        Args:
            codes: 1-D codes in ``[0, k)``.
            n_iter: Griffin-Lim iterations.
            seed: seed of the initial phase.

        Returns:
            float32 waveform at ``cfg.sr``.
        """
        return mel_to_wav(self.decode_mel(codes), self.cfg, n_iter=n_iter, seed=seed)

    def config_hash(self) -> str:
        """Return 16 hex digits identifying this codebook (settings and centroid values).

        Two codebooks with the same hash map every code to the same mel frames, so a manifest
        can record it and :func:`check_compatible` can refuse codes from another codebook.
        """
        digest = hashlib.sha256()
        settings = {"k": self.k, "stack": self.stack, **dataclasses.asdict(self.cfg)}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        digest.update(self.centroids.astype("<f4").tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write the codebook to ``path`` (``.npz``) atomically, settings and hash included."""
        fields = {f"mel_{name}": np.asarray(value)
                  for name, value in dataclasses.asdict(self.cfg).items()}
        buf = io.BytesIO()
        np.savez(buf, centroids=self.centroids, k=np.asarray(self.k),
                 stack=np.asarray(self.stack), format_version=np.asarray(FORMAT_VERSION),
                 config_hash=np.asarray(self.config_hash()), **fields)
        write_bytes_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Codebook:
        """Read a codebook written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is corrupt, lacks fields, or its content does not match its
                stored hash (the message names the file).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no codebook file (fit one with Codebook.fit().save())")
        names = ["centroids", "k", "stack", "config_hash",
                 *(f"mel_{f.name}" for f in dataclasses.fields(MelConfig))]
        try:
            with np.load(path, allow_pickle=False) as data:
                values = {name: data[name] for name in names if name in data.files}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable codebook .npz ({err})") from None
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"{path}: codebook file lacks {', '.join(missing)}")
        mel_kwargs = {}
        for f in dataclasses.fields(MelConfig):
            value = values[f"mel_{f.name}"].item()
            mel_kwargs[f.name] = int(value) if f.type in (int, "int") else float(value)
        book = cls(values["centroids"], int(values["stack"]), MelConfig(**mel_kwargs))
        stored = str(values["config_hash"])
        if book.k != int(values["k"]) or book.config_hash() != stored:
            raise ValueError(f"{path}: codebook content does not match its stored hash "
                             f"{stored} (k={int(values['k'])}); the file is corrupt")
        return book


def check_compatible(codebook: Codebook, expected_k: int, expected_hash: str | None = None) -> None:
    """Check that codes recorded for ``expected_k``/``expected_hash`` belong to ``codebook``.

    Args:
        codebook: the codebook in use.
        expected_k: the codebook size a manifest or model was built with.
        expected_hash: its ``config_hash()``, when recorded.

    Raises:
        ValueError: naming both values, when they differ.
    """
    if codebook.k != expected_k:
        raise ValueError(f"codebook has k={codebook.k} codes but k={expected_k} was expected "
                         "(manifest or model built with another codebook)")
    if expected_hash is not None and codebook.config_hash() != expected_hash:
        raise ValueError(f"codebook hash {codebook.config_hash()} differs from the expected "
                         f"{expected_hash} (manifest or model built with another codebook)")


def mcd_dtw(mel_a: np.ndarray, mel_b: np.ndarray) -> float:
    """Mel-cepstral distance between two log-mels after DTW alignment.

    Cepstra are the orthonormal DCT-II of each log-mel frame; coefficients c1..c13 are kept
    (c0, the loudness, is dropped). The frame distance is ``10/ln(10) * sqrt(2) * ||c_a - c_b||``
    and the result is its mean along the DTW path.

    The cepstra come from this module's log-mel, not from a vocoder's mel-cepstrum, so the
    numbers are comparable only with each other (same features, same settings), not with MCDs
    in papers. Read them against :func:`baselines`: the codec round trip (the best a code
    sequence can do), random codes and a constant mean frame (what knowing nothing scores).

    Args:
        mel_a: log-mel ``[frames_a, n_mels]``.
        mel_b: log-mel ``[frames_b, n_mels]`` with the same ``n_mels``.

    Returns:
        The distance (0 for identical inputs).
    """
    import librosa
    from scipy.fft import dct
    from scipy.spatial.distance import cdist

    a, b = (np.asarray(m, dtype=np.float64) for m in (mel_a, mel_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"mcd_dtw needs two non-empty [frames, n_mels] arrays with equal n_mels, "
                         f"got {a.shape} and {b.shape}")
    ca = dct(a, type=2, norm="ortho", axis=1)[:, 1:14]
    cb = dct(b, type=2, norm="ortho", axis=1)[:, 1:14]
    cost = MCD_SCALE * cdist(ca, cb)
    _, path = librosa.sequence.dtw(C=cost, backtrack=True)
    return float(cost[path[:, 0], path[:, 1]].mean())


def baselines(codebook: Codebook, mels: list[np.ndarray], seed: int = 0, *,
              via_audio: bool = True, n_iter: int = 32) -> dict[str, float]:
    """Reference MCD-DTW values for a codebook, averaged over ``mels``.

    Args:
        codebook: the codec.
        mels: reference log-mels (held-out phrases).
        seed: seeds the random codes and Griffin-Lim's phase.
        via_audio: decode to a waveform and re-extract the log-mel, exactly as generated speech
            is scored (slow: one Griffin-Lim per phrase and entry); False compares mels directly.
        n_iter: Griffin-Lim iterations when ``via_audio``.

    Returns:
        ``round_trip`` (encode -> decode: the codec's ceiling), ``random_codes`` (as many uniform
        random codes), ``mean_frame`` (the mean frame of ``mels`` repeated), ``griffinlim`` (the
        true mel through Griffin-Lim; only when ``via_audio``) and ``n`` (number of mels).
    """
    if not mels:
        raise ValueError("baselines needs at least one mel")
    cfg = codebook.cfg
    rng = np.random.default_rng(seed)
    mean = np.concatenate(mels).mean(axis=0, dtype=np.float64).astype(np.float32)

    def score(mel_hat: np.ndarray, mel: np.ndarray) -> float:
        if via_audio:
            mel_hat = log_mel(mel_to_wav(mel_hat, cfg, n_iter=n_iter, seed=seed), cfg)
        return mcd_dtw(mel_hat, mel)

    totals = {"round_trip": 0.0, "random_codes": 0.0, "mean_frame": 0.0}
    if via_audio:
        totals["griffinlim"] = 0.0
    for mel in mels:
        codes = codebook.encode(mel)
        totals["round_trip"] += score(codebook.decode_mel(codes), mel)
        random_codes = rng.integers(0, codebook.k, size=len(codes))
        totals["random_codes"] += score(codebook.decode_mel(random_codes), mel)
        totals["mean_frame"] += score(np.repeat(mean[None], len(mel), axis=0), mel)
        if via_audio:
            totals["griffinlim"] += score(mel, mel)
    result = {name: value / len(mels) for name, value in totals.items()}
    result["n"] = len(mels)
    return result
