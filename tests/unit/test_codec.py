"""Codec: log-mel shapes, codebook fit/encode/decode, save/load, MCD-DTW and its baselines.

Synthetic "speech" (harmonic tones with moving pitch and loudness, plus noise bursts) keeps these
tests independent of espeak-ng and fast.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from amhelpers.codec import (
    Codebook,
    MelConfig,
    baselines,
    check_compatible,
    log_mel,
    mcd_dtw,
    mel_to_wav,
)

SR = 16000


def _utterance(seed: int, seconds: float) -> np.ndarray:
    """A voiced/unvoiced-looking signal: gliding harmonics with an envelope, then a noise burst."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(100, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(h * phase) / h * rng.uniform(0.3, 1) for h in range(1, 12))
    envelope = np.clip(np.sin(np.pi * t / seconds) * 1.5, 0, 1) ** 2
    noise = rng.normal(size=t.size) * (np.abs(np.sin(2 * np.pi * 1.5 * t)) > 0.9)
    return (0.1 * voiced * envelope + 0.03 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def mels() -> list[np.ndarray]:
    return [log_mel(_utterance(seed, 1.0 + 0.25 * seed)) for seed in range(6)]


@pytest.fixture(scope="module")
def book(mels) -> Codebook:
    return Codebook.fit(mels, k=32, stack=4, seed=0)


def test_log_mel_shape_floor_and_librosa_equivalence():
    import librosa

    wav = _utterance(0, 1.0)
    mel = log_mel(wav)
    assert mel.shape == (101, 80) and mel.dtype == np.float32 and np.isfinite(mel).all()
    reference = librosa.feature.melspectrogram(y=wav, sr=SR, n_fft=1024, hop_length=160,
                                               win_length=640, n_mels=80, fmin=0, fmax=8000,
                                               power=1.0)
    assert np.allclose(mel, np.log(np.maximum(reference, 1e-5)).T, atol=1e-4)
    silent = log_mel(np.zeros(SR, np.float32))
    assert np.allclose(silent, np.log(1e-5))
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 100), np.float32))


def test_mel_config_defaults_and_validation():
    cfg = MelConfig()
    assert (cfg.sr, cfg.n_fft, cfg.win_length, cfg.hop, cfg.n_mels, cfg.fmin, cfg.fmax) == (
        16000, 1024, 640, 160, 80, 0.0, 8000.0)
    assert cfg.frames_per_second == 100
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(fmax=9000)
    with pytest.raises(ValueError, match="win_length"):
        MelConfig(win_length=2048)


def test_codebook_shapes_and_rate(book, mels):
    assert (book.k, book.stack, book.codes_per_second) == (32, 4, 25.0)
    assert book.centroids.shape == (32, 320)
    mel = mels[2]  # 1.5 s -> 151 frames -> 38 codes
    codes = book.encode(mel)
    assert codes.dtype == np.int64 and codes.shape == (38,)
    assert codes.min() >= 0 and codes.max() < 32
    assert abs(len(codes) / 1.5 - 25) < 1
    assert book.decode_mel(codes).shape == (152, 80)
    wav = book.decode(codes)
    assert wav.dtype == np.float32 and abs(len(wav) / SR - 1.5) < 0.05
    assert np.array_equal(wav, book.decode(codes)), "decode must be reproducible"


def test_encode_is_nearest_centroid_with_repeat_padding(book, mels):
    mel = mels[0][:5]  # 5 frames -> 2 codes; the second group is frame 4 repeated
    codes = book.encode(mel)
    groups = np.stack([mel[:4].ravel(), np.repeat(mel[4:5], 4, axis=0).ravel()])
    dist = ((groups[:, None, :] - book.centroids[None]) ** 2).sum(-1)
    assert codes.tolist() == dist.argmin(1).tolist()


def test_fit_is_deterministic_and_validates(mels, book):
    again = Codebook.fit(mels, k=32, stack=4, seed=0)
    assert np.array_equal(again.centroids, book.centroids)
    assert again.config_hash() == book.config_hash()
    with pytest.raises(ValueError, match="smaller k"):
        Codebook.fit(mels[:1], k=512)
    with pytest.raises(ValueError, match="80"):
        Codebook.fit([np.zeros((10, 40), np.float32)], k=2)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        book.decode_mel(np.array([0, 32]))


def test_max_vectors_subsamples(mels):
    small = Codebook.fit(mels, k=8, max_vectors=40, seed=1)
    assert small.k == 8


def test_save_load_round_trip(book, mels, tmp_path):
    path = tmp_path / "codebook.npz"
    book.save(path)
    loaded = Codebook.load(path)
    assert np.array_equal(loaded.centroids, book.centroids)
    assert (loaded.k, loaded.stack, loaded.cfg) == (book.k, book.stack, book.cfg)
    assert loaded.config_hash() == book.config_hash()
    assert np.array_equal(loaded.encode(mels[0]), book.encode(mels[0]))
    assert not list(tmp_path.glob("*.tmp"))


def test_save_load_keeps_a_custom_mel_config(tmp_path):
    cfg = MelConfig(n_mels=40, fmax=7600.0)
    mel_list = [log_mel(_utterance(s, 1.0), cfg) for s in range(3)]
    book = Codebook.fit(mel_list, k=8, stack=2, cfg=cfg)
    book.save(tmp_path / "c.npz")
    loaded = Codebook.load(tmp_path / "c.npz")
    assert loaded.cfg == cfg and loaded.codes_per_second == 50.0
    assert isinstance(loaded.cfg.hop, int) and isinstance(loaded.cfg.fmax, float)


def test_load_errors_name_the_file(book, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        Codebook.load(tmp_path / "nope.npz")

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="corrupt.npz"):
        Codebook.load(corrupt)

    fields = {f"mel_{k}": v for k, v in dataclasses.asdict(book.cfg).items()}
    partial = tmp_path / "partial.npz"
    np.savez(partial, centroids=book.centroids, k=book.k, config_hash=book.config_hash(), **fields)
    with pytest.raises(ValueError, match=r"partial\.npz.*stack"):
        Codebook.load(partial)

    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, centroids=book.centroids + 1, k=book.k, stack=book.stack,
             config_hash=book.config_hash(), **fields)
    with pytest.raises(ValueError, match=r"tampered\.npz.*hash"):
        Codebook.load(tampered)


def test_check_compatible_names_both_values(book):
    check_compatible(book, 32, book.config_hash())
    check_compatible(book, 32, None)
    with pytest.raises(ValueError, match="k=32.*k=1024"):
        check_compatible(book, 1024)
    with pytest.raises(ValueError, match=f"{book.config_hash()}.*0123456789abcdef"):
        check_compatible(book, 32, "0123456789abcdef")


def test_mcd_dtw_properties(mels):
    a, b = mels[0], mels[1]
    assert mcd_dtw(a, a) == 0.0
    assert mcd_dtw(a, b) > 1.0
    assert mcd_dtw(a, b) == pytest.approx(mcd_dtw(b, a), rel=0.05)
    stretched = np.repeat(a, 2, axis=0)  # same content, twice as slow: DTW absorbs it
    assert mcd_dtw(a, stretched) < 0.1 * mcd_dtw(a, b)
    with pytest.raises(ValueError, match="n_mels"):
        mcd_dtw(a, a[:, :40])


def test_mel_to_wav_matches_librosa_mel_to_stft(mels):
    import librosa

    cfg = MelConfig()
    mel = mels[0][:60]
    exact = librosa.feature.inverse.mel_to_stft(np.exp(mel).T, sr=cfg.sr, n_fft=cfg.n_fft,
                                                power=1.0, fmin=cfg.fmin, fmax=cfg.fmax)
    ours = librosa.griffinlim(exact, n_iter=8, hop_length=cfg.hop, win_length=cfg.win_length,
                              n_fft=cfg.n_fft, random_state=0)
    assert np.allclose(mel_to_wav(mel, cfg, n_iter=8), ours, atol=1e-4)


def test_baselines_order(book, mels):
    fast = baselines(book, mels[:3], via_audio=False)
    assert fast["n"] == 3 and "griffinlim" not in fast
    assert fast["round_trip"] < fast["random_codes"]
    assert fast["round_trip"] < fast["mean_frame"]

    slow = baselines(book, mels[:2], n_iter=16)
    assert slow["griffinlim"] < slow["round_trip"] < slow["random_codes"]
    assert slow == baselines(book, mels[:2], n_iter=16), "baselines must be reproducible"
