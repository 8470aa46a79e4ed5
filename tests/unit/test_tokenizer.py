import json
from pathlib import Path

import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from amhelpers import corpus
from amhelpers import tokenizer as tk
from amhelpers.__main__ import main
from amhelpers.text import normalize


@pytest.fixture(scope="session")
def en_unigram(tmp_path_factory, hornmt_dir) -> Path:
    out = tmp_path_factory.mktemp("tok") / "en_uni.model"
    return tk.train_base(corpus.split_lines("eng", "train"), "eng", 300, out, model="unigram")



def _verify(base, ext):
    return tk.verify(base, ext, corpus.split_lines("amh", "test"), "amh",
                     corpus.split_lines("eng", "test"), "eng")


@pytest.mark.parametrize("base_fixture", ["en_base", "en_unigram"])
def test_extend_keeps_base_and_verifies_ok(request, base_fixture, tmp_path):
    base = request.getfixturevalue(base_fixture)
    out = tmp_path / "ext.model"
    report = tk.extend(base, corpus.split_lines("amh", "train"), "amh", 800, out)
    assert report.n_added <= 800 and report.n_fallback >= 300
    base_proto, ext_proto = tk.load_proto(base), tk.load_proto(out)
    for i, piece in enumerate(base_proto.pieces):
        assert (piece.piece, piece.score, piece.type) == (
            ext_proto.pieces[i].piece, ext_proto.pieces[i].score, ext_proto.pieces[i].type)
    base_min = min(p.score for p in base_proto.pieces if p.type == tk.NORMAL)
    assert all(p.score < base_min for p in ext_proto.pieces[len(base_proto.pieces):])
    added = [p.piece for p in ext_proto.pieces[len(base_proto.pieces):]]
    assert len(added) == len(set(added)) and not set(added) & {p.piece for p in base_proto.pieces}
    assert set(tk.script_characters("ethiopic")) <= {p.piece for p in ext_proto.pieces}
    result = _verify(base, out)
    assert result["ok"], result["problems"]
    assert result["unk_rate"] == 0.0 and result["unk_rate_base"] > 0.3
    assert result["base_ids_stable"] and result["base_text_identical"]
    assert result["unreachable_added"] == [] and result["roundtrip_failures"] == 0
    assert result["new_id_fraction"] > 0.8  # the rest is mostly the base's word marker
    assert result["fertility_extended"] < result["fertility_base"]


def test_extend_is_deterministic(en_base, extended, tmp_path):
    again = tmp_path / "again.model"
    tk.extend(en_base, corpus.split_lines("amh", "train"), "amh", 800, again)
    assert again.read_bytes() == extended.read_bytes()


def test_naive_extension_yields_unk(en_base, tmp_path):
    out = tmp_path / "naive.model"
    report = tk.extend(en_base, corpus.split_lines("amh", "train"), "amh", 400, out, naive=True)
    assert report.n_fallback == 0
    result = _verify(en_base, out)
    assert not result["ok"] and result["unk_rate"] > 0.05
    assert any("<unk> rate" in p for p in result["problems"])


def test_every_ethiopic_word_encodes_without_unk(extended):
    sp = tk.processor(tk.load_proto(extended))
    text = normalize("ጸሐይ ቈ ፀሓይ ሟ ዟ ፙ ፘ ፚ ኧ", "amh")
    assert sp.unk_id() not in sp.encode(text)
    assert sp.decode(sp.encode(text)) == text


def test_verify_detects_reordered_and_rescored_base(en_base, extended, tmp_path):
    proto = tk.load_proto(extended)
    a, b = proto.pieces[10].piece, proto.pieces[11].piece
    proto.pieces[10].piece, proto.pieces[11].piece = b, a
    reordered = tmp_path / "reordered.model"
    reordered.write_bytes(proto.SerializeToString())
    result = _verify(en_base, reordered)
    assert not result["ok"] and not result["base_ids_stable"]
    assert any("piece 10 changed" in p for p in result["problems"])

    proto = tk.load_proto(extended)
    proto.pieces[20].score += 0.5
    rescored = tmp_path / "rescored.model"
    rescored.write_bytes(proto.SerializeToString())
    result = _verify(en_base, rescored)
    assert not result["base_ids_stable"] and any("piece 20 changed" in p for p in result["problems"])


def test_verify_flags_unreachable_piece(en_base, extended, tmp_path):
    proto = tk.load_proto(extended)
    dead = proto.pieces.add()  # "ሰላ" + "ም" always beats a piece scored far below both
    dead.piece, dead.score, dead.type = "ሰላምምም", -1e9, tk.NORMAL
    path = tmp_path / "dead.model"
    path.write_bytes(proto.SerializeToString())
    assert len(proto.pieces) - 1 in _verify(en_base, path)["unreachable_added"]


def test_verify_embedding_rows(en_base, extended):
    result = tk.verify(en_base, extended, ["ሰላም"], "amh", embedding_rows=10)
    assert not result["ok"] and not result["fits_embedding"]


# ---------------------------------------------------------------------------- bad inputs
def test_missing_base(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--base: .*missing.model does not exist"):
        tk.extend(tmp_path / "missing.model", ["ሰላም"], "amh", 500, tmp_path / "out.model")
    assert not (tmp_path / "out.model").exists()


def test_base_not_sentencepiece(tmp_path):
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(ValueError, match="bogus.model is not a SentencePiece model"):
        tk.load_proto(bogus)
    empty_proto = tmp_path / "empty.model"
    empty_proto.write_bytes(sp_pb2.ModelProto().SerializeToString())
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        tk.load_proto(empty_proto)


@pytest.mark.parametrize("texts, message", [
    ([], "corpus is empty"),
    (["   ", ""], "corpus is empty"),
    (["only english text here", "and more"], "no ethiopic text"),
])
def test_bad_corpus(en_base, tmp_path, texts, message):
    out = tmp_path / "out.model"
    with pytest.raises(ValueError, match=message):
        tk.extend(en_base, texts, "amh", 800, out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_vocab_size_below_fallback(en_base, tmp_path):
    out = tmp_path / "out.model"
    with pytest.raises(ValueError, match=r"--vocab-size 50 is smaller than the fallback set: \d+"):
        tk.extend(en_base, corpus.split_lines("amh", "train"), "amh", 50, out)
    assert not out.exists()


def test_cli_non_utf8_corpus(en_base, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ሰላም".encode("utf-8").replace(b"caf", b"caf\xe9"))
    out = tmp_path / "out.model"
    code = main(["tokenizer", "extend", "--base", str(en_base), "--corpus", str(bad),
                 "--vocab-size", "800", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "latin1.txt is not UTF-8" in err and "--corpus" in err
    assert not out.exists()


def test_cli_extend_and_verify_json(en_base, tmp_path, capsys):
    out = tmp_path / "cli.model"
    assert main(["tokenizer", "extend", "--base", str(en_base), "--corpus", "amh",
                 "--vocab-size", "800", "--out", str(out)]) == 0
    capsys.readouterr()
    code = main(["tokenizer", "verify", "--base", str(en_base), "--extended", str(out),
                 "--text", "amh", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"]
    for key in ("ok", "n_base", "n_added", "base_ids_stable", "unk_rate", "new_id_fraction",
                "fertility_base", "fertility_extended", "unreachable_added"):
        assert key in report


def test_cli_verify_exit_status_follows_ok(en_base, tmp_path, capsys):
    naive = tmp_path / "naive.model"
    tk.extend(en_base, corpus.split_lines("amh", "train"), "amh", 400, naive, naive=True)
    code = main(["tokenizer", "verify", "--base", str(en_base), "--extended", str(naive), "--text", "amh"])
    out = capsys.readouterr().out
    assert code == 1 and "verify FAILED" in out and "<unk> rate" in out
