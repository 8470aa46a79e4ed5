"""Building manifests: corpus phrases -> normalised text -> ids -> espeak-ng -> codes."""

import json

import pytest

from amhelpers import tokenizer as tk
from amhelpers.codec import Codebook, log_mel
from amhelpers.data import build_manifest, check_manifest, meta_path, read_manifest
from amhelpers.speech import load_wav, synthesize

TEXTS = ["The minister said on Monday", "a new law banning them", "on grounds of blasphemy.",
         "Egyptian archaeologists discover the tomb"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    tok = tk.train_base(TEXTS * 20 + ["quick brown fox jumps over the lazy dog"] * 5, "eng", 60,
                        root / "tok.model", model="bpe")
    mels = [log_mel(load_wav(p)) for p in synthesize(TEXTS, "eng", progress=False,
                                                     cache_dir=root / "audio")]
    return tok, Codebook.fit(mels, k=16, seed=0), root


def test_build_manifest_rows_and_sidecar(parts, tmp_path):
    tok, book, _ = parts
    out = build_manifest(tmp_path / "eng_train.jsonl", TEXTS, "eng", tok, book, progress=False,
                         key="abc")
    rows = read_manifest(out)
    assert [r["text"] for r in rows] == TEXTS
    for row in rows:
        assert row["n_text"] == len(row["text_ids"]) > 0 and row["n_codes"] == len(row["codes"]) > 10
        assert max(row["codes"]) < book.k and row["id"].startswith("eng-train-")
    expected = book.encode(log_mel(load_wav(rows[0]["audio"]))).tolist()
    assert rows[0]["codes"] == expected
    meta = json.loads(meta_path(out).read_text())
    assert meta["key"] == "abc" and meta["k"] == 16
    assert check_manifest(out, book, tok)["rows"] == len(TEXTS)


def test_codebook_or_tokenizer_mismatch_is_named(parts, tmp_path):
    tok, book, root = parts
    out = build_manifest(tmp_path / "m.jsonl", TEXTS[:2], "eng", tok, book, progress=False)
    other = Codebook.fit([log_mel(load_wav(p)) for p in synthesize(
        TEXTS, "eng", progress=False, cache_dir=root / "audio")], k=8, seed=1)
    with pytest.raises(ValueError, match="K=16 codebook, but the codebook has K=8"):
        check_manifest(out, other)
    tok2 = tk.train_base(TEXTS * 20, "eng", 50, tmp_path / "tok2.model", model="bpe")
    with pytest.raises(ValueError, match="tokenizer sha256"):
        check_manifest(out, book, tok2)


def test_manifest_without_sidecar(tmp_path):
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="no x.meta.json"):
        check_manifest(tmp_path / "x.jsonl")


def test_damaged_sidecar_is_named(tmp_path):
    (tmp_path / "x.jsonl").write_text("")
    for content, message in (("{\"k\": 16,", "x.meta.json is damaged"),
                             ("[1, 2]", "x.meta.json is damaged"),
                             ('{"k": 16}', "x.meta.json lacks codec, tokenizer_sha256")):
        meta_path(tmp_path / "x.jsonl").write_text(content)
        with pytest.raises(ValueError, match=message):
            check_manifest(tmp_path / "x.jsonl")


def test_text_without_pieces_leaves_no_file(parts, tmp_path):
    tok, book, _ = parts
    out = tmp_path / "bad.jsonl"
    with pytest.raises(ValueError, match="yields no pieces"):
        build_manifest(out, ["fine text here", "   "], "eng", tok, book, progress=False)
    assert not out.exists() and not meta_path(out).exists()


def test_shipped_manifest_example_is_valid():
    from pathlib import Path

    rows = read_manifest(Path(__file__).resolve().parents[2] / "data_samples" / "manifest_example.jsonl")
    assert [r["lang"] for r in rows] == ["eng", "amh"]
    assert all(r["n_codes"] == len(r["codes"]) and max(r["codes"]) < 512 for r in rows)
