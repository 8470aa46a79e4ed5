"""The phoneme error rate and its recogniser (amhelpers.phonemes), without the corpus."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from amhelpers import phonemes

SEED = 0


def test_per_counts_edits_over_reference_phonemes():
    refs = [["s", "@", "l", "a", "m"], ["n", "@", "w"]]
    assert phonemes.phoneme_error_rate(refs, refs) == 0.0
    # one substitution and one deletion over 8 reference phonemes
    assert phonemes.phoneme_error_rate(refs, [["s", "@", "l", "a", "n"], ["n", "@"]]) == 2 / 8
    assert phonemes.phoneme_error_rate(refs, [[], []]) == 1.0
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        phonemes.phoneme_error_rate(refs, [["a"]])
    with pytest.raises(ValueError, match="no phonemes"):
        phonemes.phoneme_error_rate([[]], [["a"]])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="install espeak-ng (apt-get install espeak-ng)")
def test_phonemize_reads_espeak_and_caches(tmp_path):
    first = phonemes.phonemize(["ሰላም ለዓለም", "ሰላም"], "amh", cache=tmp_path)
    assert first[0][:5] == ["s", "@", "l", "a", "m"] and "'" not in "".join(first[0])
    assert first[1] == first[0][:4] or first[1][:4] == ["s", "@", "l", "a"]
    assert (tmp_path / "am.json").is_file()
    assert phonemes.phonemize(["ሰላም ለዓለም"], "amh", cache=tmp_path) == first[:1]


def test_recogniser_learns_a_code_to_phoneme_mapping_and_random_codes_fail():
    """Each phoneme is spoken as 2-4 codes from its own set: CTC must learn the mapping."""
    rng = np.random.default_rng(SEED)
    inventory = [f"p{i}" for i in range(8)]
    book = SimpleNamespace(centroids=rng.normal(size=(32, 12)).astype(np.float32), k=32)

    def utterance(n: int) -> tuple[list[int], list[str]]:
        labels: list[str] = []
        while len(labels) < n:  # no phoneme twice in a row: nothing would mark the boundary
            ph = str(rng.choice(inventory))
            if not labels or ph != labels[-1]:
                labels.append(ph)
        codes = [int(4 * inventory.index(ph) + rng.integers(4)) for ph in labels
                 for _ in range(rng.integers(2, 5))]
        return codes, labels

    train = [utterance(int(rng.integers(3, 8))) for _ in range(200)]
    test = [utterance(6) for _ in range(20)]
    rec = phonemes.train_recognizer(book, [c for c, _ in train], [lab for _, lab in train],
                                    steps=250, batch_size=16, seed=0)
    assert rec["vocab"][0] == phonemes.BLANK and set(rec["vocab"][1:]) == set(inventory)
    assert rec["losses"][-1] < rec["losses"][0] / 3
    heard = phonemes.recognize(rec, book, [c for c, _ in test])
    assert phonemes.phoneme_error_rate([lab for _, lab in test], heard) < 0.15
    noise = phonemes.recognize(rec, book, [list(rng.integers(0, 32, 15)) for _ in test])
    assert phonemes.phoneme_error_rate([lab for _, lab in test], noise) > 0.6
