"""Bad inputs to ``tokenizer extend / verify / train``: each a clear one-line error, no input lost."""

import json
import os
import shutil
from pathlib import Path

import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from amhelpers import corpus
from amhelpers import tokenizer as tk
from amhelpers.__main__ import main

LONG_LINE = "ሰላም " * 1500  # 6000 UTF-8 bytes: over SentencePiece's max_sentence_length


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit 2 and one line ``error: ...`` on stderr; return that line."""
    code = main(["tokenizer", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert "INTERNAL" not in err, err
    return err


def extend_args(base, out, corpus_arg="amh", vocab="800", *extra) -> list[str]:
    return ["extend", "--base", str(base), "--corpus", str(corpus_arg), "--vocab-size", vocab,
            "--out", str(out), *extra]


# ---------------------------------------------------------------------------- item 4: --out
@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "overwrite"])
def test_extend_out_equal_to_base_is_refused(en_base, tmp_path, capsys, how):
    base = tmp_path / "base.model"
    shutil.copyfile(en_base, base)
    before = base.read_bytes()
    out, extra = {"same": (base, ()), "dotdot": (tmp_path / "x" / ".." / "base.model", ()),
                  "symlink": (tmp_path / "link.model", ()), "overwrite": (base, ("--overwrite",))}[how]
    (tmp_path / "x").mkdir()
    if how == "symlink":
        out.symlink_to(base)
    err = cli_error(extend_args(base, out, "amh", "800", *extra), capsys)
    assert "is the same file as --base" in err and "choose another --out" in err
    assert base.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_extend_library_refuses_out_equal_to_base(en_base, tmp_path):
    base = tmp_path / "base.model"
    shutil.copyfile(en_base, base)
    with pytest.raises(ValueError, match="same file as --base"):
        tk.extend(base, corpus.split_lines("amh", "train"), "amh", 800, base)
    assert base.read_bytes() == en_base.read_bytes()


def test_extend_out_equal_to_corpus_file_is_refused(en_base, tmp_path, capsys):
    text = tmp_path / "amh.txt"
    text.write_text("\n".join(corpus.split_lines("amh", "train")), encoding="utf-8")
    before = text.read_bytes()
    err = cli_error(extend_args(en_base, text, text, "800", "--overwrite"), capsys)
    assert "same file as --corpus" in err and text.read_bytes() == before


def test_extend_existing_out_needs_overwrite(en_base, tmp_path, capsys):
    out = tmp_path / "mine.model"
    out.write_bytes(b"the user's own file")
    err = cli_error(extend_args(en_base, out), capsys)
    assert "already exists; pass --overwrite" in err and out.read_bytes() == b"the user's own file"
    assert main(["tokenizer", *extend_args(en_base, out, "amh", "800", "--overwrite")]) == 0
    assert len(tk.load_proto(out, "--out").pieces) > 300


@pytest.mark.parametrize("kind, message", [
    ("directory", "is a directory; give a file path"),
    ("under_file", "is a file, not a folder"),
])
def test_extend_out_path_problems(en_base, tmp_path, capsys, kind, message):
    (tmp_path / "plain.txt").write_text("x")
    out = {"directory": tmp_path, "under_file": tmp_path / "plain.txt" / "x.model"}[kind]
    assert message in cli_error(extend_args(en_base, out), capsys)


def test_extend_out_in_unwritable_folder(en_base, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root writes anywhere: let the folder look read-only
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and
                            os.fspath(p) != os.fspath(folder))
    try:
        assert "is not writable" in cli_error(extend_args(en_base, folder / "x.model"), capsys)
    finally:
        folder.chmod(0o700)


def test_extend_write_failure_names_out(en_base, tmp_path, capsys, monkeypatch):
    def disk_full(path, data):
        raise OSError(28, "No space left on device", str(path) + ".tmp")
    monkeypatch.setattr(tk, "write_bytes_atomic", disk_full)
    err = cli_error(extend_args(en_base, tmp_path / "x.model"), capsys)
    assert "--out" in err and "x.model: cannot write it (No space left on device)" in err


# ---------------------------------------------------------------------------- item 6: cut models
def _field_ends(data: bytes) -> list[tuple[int, int]]:
    """(field number, end offset) of each top-level length-delimited protobuf field."""
    def varint(i):
        value = shift = 0
        while True:
            byte = data[i]
            value, i, shift = value | (byte & 0x7F) << shift, i + 1, shift + 7
            if not byte & 0x80:
                return value, i
    ends, i = [], 0
    while i < len(data):
        key, i = varint(i)
        assert key & 7 == 2  # ModelProto's top-level fields are all messages
        size, i = varint(i)
        i += size
        ends.append((key >> 3, i))
    return ends


def _cuts(path: Path, tmp_path: Path) -> dict[str, Path]:
    data = path.read_bytes()
    ends = _field_ends(data)
    n_pieces = sum(field == 1 for field, _ in ends)
    cuts = {"half the pieces": ends[n_pieces // 2 - 1][1], "all pieces": ends[n_pieces - 1][1],
            "pieces + trainer_spec": ends[n_pieces][1]}
    out = {}
    for name, end in cuts.items():
        out[name] = tmp_path / f"cut_{end}.model"
        out[name].write_bytes(data[:end])
    return out


def test_model_cut_at_field_boundary_is_refused(en_base, tmp_path, capsys):
    for cut in _cuts(en_base, tmp_path).values():
        with pytest.raises(ValueError, match=rf"--base: .*{cut.name} is incomplete: it holds \d+ pieces"):
            tk.load_proto(cut)
    cut = _cuts(en_base, tmp_path)["all pieces"]
    err = cli_error(extend_args(cut, tmp_path / "o.model"), capsys)
    assert "no trainer_spec and no normalizer_spec" in err and "copy it again" in err
    err = cli_error(["verify", "--base", str(en_base), "--extended", str(cut), "--text", "amh"], capsys)
    assert "--extended:" in err and "is incomplete" in err


def test_real_indextts2_model_cut_short_is_refused(indextts2_dir, tmp_path):
    real = indextts2_dir / "bpe.model"
    if not real.is_file():
        pytest.skip(f"{real} is missing")
    copy = tmp_path / "bpe.model"  # never touch the original
    shutil.copyfile(real, copy)
    assert len(tk.load_proto(copy).pieces) == 12000
    for cut in _cuts(copy, tmp_path).values():
        with pytest.raises(ValueError, match="is incomplete"):
            tk.load_proto(cut)


def test_model_with_fewer_pieces_than_its_hard_vocab_size_is_refused(en_base, tmp_path):
    proto = tk.load_proto(en_base)
    proto.trainer_spec.hard_vocab_limit = True
    proto.trainer_spec.vocab_size = len(proto.pieces) + 50
    short = tmp_path / "short.model"
    short.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match=r"incomplete: .*promises exactly \d+"):
        tk.load_proto(short)


# ---------------------------------------------------------------------------- item 6: verify
def test_verify_base_against_itself_fails_with_reason(en_base, capsys):
    code = main(["tokenizer", "verify", "--base", str(en_base), "--extended", str(en_base),
                 "--text", "amh", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and not report["ok"] and report["n_added"] == 0
    assert report["problems"][0].startswith("nothing was added")


def test_verify_model_that_does_not_extend_base(en_base, tmp_path, capsys):
    other = tk.train_base(corpus.split_lines("eng", "train"), "eng", 200, tmp_path / "o.model",
                          model="unigram")
    report = tk.verify(en_base, other, ["ሰላም"], "amh")
    assert not report["ok"]
    assert any(p.startswith("--extended does not extend --base") for p in report["problems"])


# ---------------------------------------------------------------------------- item 8: sizes, lines
@pytest.mark.parametrize("command", ["extend", "train"])
@pytest.mark.parametrize("size", ["0", "-3"])
def test_vocab_size_below_one(en_base, tmp_path, capsys, command, size):
    out = tmp_path / "o.model"
    argv = (extend_args(en_base, out, "amh", size) if command == "extend" else
            ["train", "--corpus", "eng", "--vocab-size", size, "--out", str(out)])
    assert f"--vocab-size must be >= 1 (a number of pieces), got {size}" in cli_error(argv, capsys)
    assert not out.exists()


def test_train_vocab_below_corpus_characters(tmp_path, capsys, hornmt_dir):
    err = cli_error(["train", "--corpus", "amh", "--vocab-size", "100", "--out",
                     str(tmp_path / "t.model")], capsys)
    assert "--vocab-size 100 is smaller than the" in err and "use --vocab-size >=" in err


def test_naive_extension_with_vocab_below_characters_does_not_crash(en_base, tmp_path):
    report = tk.extend(en_base, corpus.split_lines("amh", "train"), "amh", 50, tmp_path / "n.model",
                       naive=True)
    assert 0 < report.n_added <= 50
    with pytest.raises(ValueError, match="nothing to add: .*use a larger --vocab-size"):
        tk.extend(en_base, corpus.split_lines("amh", "train"), "amh", 5, tmp_path / "n5.model",
                  naive=True)


def test_over_long_lines_are_skipped_and_counted(en_base, tmp_path, capsys):
    text = tmp_path / "amh.txt"
    text.write_text("\n".join([LONG_LINE, *corpus.split_lines("amh", "train"), LONG_LINE + "ቐ"]),
                    encoding="utf-8")
    out = tmp_path / "o.model"
    assert main(["tokenizer", *extend_args(en_base, out, text), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_skipped_long_lines"] == 2
    assert any("skipped 2 of" in note and "4192 bytes" in note for note in report["notes"])
    assert "ቐ" in {p.piece for p in tk.load_proto(out).pieces}  # its characters still covered


def test_corpus_of_over_long_lines_only(en_base, tmp_path, capsys):
    text = tmp_path / "long.txt"
    text.write_text(LONG_LINE + "\n", encoding="utf-8")
    err = cli_error(extend_args(en_base, tmp_path / "o.model", text), capsys)
    assert "--corpus: all 1 lines are longer than 4192 bytes" in err and "one sentence per line" in err
    err = cli_error(["train", "--corpus", str(text), "--vocab-size", "300", "--out",
                     str(tmp_path / "t.model")], capsys)
    assert "all 1 lines are longer than 4192 bytes" in err


# ---------------------------------------------------------------------------- item 7 in a run
def test_extend_and_verify_accept_long_numbers(en_base, tmp_path, capsys):
    lines = [*corpus.split_lines("amh", "train"), "ስልኩ 0911234567 ነው", "መለያ 12345678901234567890 ነው"]
    text = tmp_path / "amh.txt"
    text.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "o.model"
    assert main(["tokenizer", *extend_args(en_base, out, text)]) == 0
    held = tmp_path / "held.txt"
    held.write_text("\n".join([*corpus.split_lines("amh", "test"), "ቁጥሩ 2519112345678901 ነው"]),
                    encoding="utf-8")
    capsys.readouterr()
    assert main(["tokenizer", "verify", "--base", str(en_base), "--extended", str(out),
                 "--text", str(held)]) == 0


# ---------------------------------------------------------------------------- other bad inputs
@pytest.mark.parametrize("case, message", [
    ("missing_base", "--base: {tmp}/missing.model does not exist"),
    ("folder_base", "--base: {tmp} is a folder"),
    ("text_base", "is not a SentencePiece model (.model protobuf), or is damaged"),
    ("missing_corpus", "--corpus: {tmp}/missing.txt is neither a file nor a HornMT language code"),
    ("unknown_code", "--corpus: xyz is neither a file nor a HornMT language code"),
    ("folder_corpus", "--corpus: {tmp} is a folder"),
    ("empty_corpus", "--corpus: the corpus is empty"),
    ("latin1_corpus", "latin1.txt is not UTF-8"),
    ("bad_lang", "--lang: 'Amharic' is not an ISO 639-3 code"),
    ("english_corpus", "--corpus: nothing to add: the base already encodes every character"),
])
def test_extend_bad_inputs(en_base, tmp_path, capsys, case, message):
    (tmp_path / "text.model").write_text("hello\n")
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "latin1.txt").write_bytes("ሰላም caf".encode() + b"\xe9\n")
    base, corpus_arg, extra = en_base, "amh", []
    if case == "missing_base":
        base = tmp_path / "missing.model"
    elif case == "folder_base":
        base = tmp_path
    elif case == "text_base":
        base = tmp_path / "text.model"
    elif case == "missing_corpus":
        corpus_arg = tmp_path / "missing.txt"
    elif case == "unknown_code":
        corpus_arg = "xyz"
    elif case == "folder_corpus":
        corpus_arg = tmp_path
    elif case in ("empty_corpus", "latin1_corpus"):
        corpus_arg = tmp_path / f"{case.split('_')[0]}.txt"
    elif case == "bad_lang":
        extra = ["--lang", "Amharic"]
    elif case == "english_corpus":
        corpus_arg = "eng"
    out = tmp_path / "out.model"
    err = cli_error(extend_args(base, out, corpus_arg, "800", *extra), capsys)
    assert message.format(tmp=tmp_path) in err
    assert not out.exists()


def test_extend_unknown_but_wellformed_lang_is_noted(en_base, tmp_path):
    report = tk.extend(en_base, corpus.split_lines("amh", "train"), "xyz", 800, tmp_path / "o.model")
    assert any("--lang 'xyz' is not one this course knows" in n and "ethiopic" in n for n in report.notes)


@pytest.mark.parametrize("flag, value, message", [
    ("--extended", "missing.model", "--extended: {tmp}/missing.model does not exist"),
    ("--extended", "text.model", "--extended: {tmp}/text.model is not a SentencePiece model"),
    ("--text", "missing.txt", "--text: {tmp}/missing.txt is neither a file nor a HornMT"),
    ("--text", "empty.txt", "--text: no non-blank target-language line"),
    ("--text", "latin1.txt", "--text: {tmp}/latin1.txt is not UTF-8"),
    ("--base-text", "missing.txt", "--base-text: {tmp}/missing.txt is neither a file"),
    ("--embedding-rows", "0", "--embedding-rows must be >= 1"),
    ("--lang", "english", "--lang: 'english' is not an ISO 639-3 code"),
    ("--base-lang", "en", "--base-lang: 'en' is not an ISO 639-3 code"),
])
def test_verify_bad_inputs(en_base, extended, tmp_path, capsys, flag, value, message):
    (tmp_path / "text.model").write_text("hello\n")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    args = {"--base": str(en_base), "--extended": str(extended), "--text": "amh"}
    args[flag] = value if flag in ("--embedding-rows", "--lang", "--base-lang") else str(tmp_path / value)
    argv = ["verify", *[x for kv in args.items() for x in kv]]
    assert message.format(tmp=tmp_path) in cli_error(argv, capsys)


def test_train_out_checks(tmp_path, capsys, hornmt_dir):
    text = tmp_path / "eng.txt"
    text.write_text("\n".join(corpus.split_lines("eng", "train")), encoding="utf-8")
    before = text.read_bytes()
    err = cli_error(["train", "--corpus", str(text), "--vocab-size", "300", "--out", str(text)], capsys)
    assert "same file as --corpus" in err and text.read_bytes() == before
    out = tmp_path / "t.model"
    out.write_bytes(b"keep")
    err = cli_error(["train", "--corpus", "eng", "--vocab-size", "300", "--out", str(out)], capsys)
    assert "already exists; pass --overwrite" in err and out.read_bytes() == b"keep"


def test_load_proto_reports_empty_proto(tmp_path):
    empty = tmp_path / "empty.model"
    empty.write_bytes(sp_pb2.ModelProto().SerializeToString())
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        tk.load_proto(empty)
