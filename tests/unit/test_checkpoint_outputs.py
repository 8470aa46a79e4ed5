"""`checkpoint extend` never writes over an input or an existing file; bad inputs are one line.

Also: what a refused pickle says about --trust-pickle, and NaN/inf rows named by table and row.
Helpers and the tiny tokenizers come from test_checkpoint.py.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess

import pytest
import torch
from test_checkpoint import indextts_state_dict, pretrained_tables, tokenizers  # noqa: F401

from amhelpers import __main__ as cli_main
from amhelpers import checkpoint as ck
from amhelpers import ckptio, tables


def extend_argv(ckpt, base, ext, out, *extra) -> list[str]:
    return ["checkpoint", "extend", "--checkpoint", str(ckpt), "--base-tokenizer", str(base),
            "--tokenizer", str(ext), "--out", str(out), *map(str, extra)]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture()
def gpt(tmp_path, tokenizers):  # noqa: F811
    _, _, n_base, _ = tokenizers
    path = tmp_path / "gpt.pth"
    torch.save({"model": indextts_state_dict(n_base), "step": 5}, path)
    return path


@pytest.fixture()
def no_loading(monkeypatch):
    """Output checks must come before the checkpoint is read."""
    def refuse(*_a, **_k):
        raise AssertionError("the checkpoint was loaded before --out was checked")
    monkeypatch.setattr(ck, "load_state_dict", refuse)


# ----------------------------------------------------------------------------- --out
@pytest.mark.parametrize("which", ["checkpoint", "base", "ext"])
def test_out_equal_to_an_input_is_refused(tmp_path, tokenizers, gpt, capsys, which):  # noqa: F811
    base, ext, _, _ = tokenizers
    target = {"checkpoint": gpt, "base": base, "ext": ext}[which]
    before = target.read_bytes()
    rc, _, err = run_cli(extend_argv(gpt, base, ext, target), capsys)
    flag = {"checkpoint": "--checkpoint", "base": "--base-tokenizer", "ext": "--tokenizer"}[which]
    assert rc == 2 and err.count("\n") == 1
    assert f"same file as {flag}" in err and str(target) in err
    assert target.read_bytes() == before
    rc, _, err = run_cli(extend_argv(gpt, base, ext, target, "--overwrite"), capsys)
    assert rc == 2 and "same file" in err and target.read_bytes() == before


def test_out_equal_to_checkpoint_through_another_spelling(tmp_path, tokenizers, gpt):  # noqa: F811
    base, ext, _, _ = tokenizers
    (tmp_path / "sub").mkdir()
    os.link(gpt, tmp_path / "hard.pth")
    before = gpt.read_bytes()
    for out in (tmp_path / "sub" / ".." / "gpt.pth", tmp_path / "hard.pth"):
        with pytest.raises(ValueError, match="same file as --checkpoint"):
            ck.extend_checkpoint(gpt, base, ext, out, overwrite=True)
    assert gpt.read_bytes() == before


def test_json_out_gets_its_record_beside_it(tmp_path, tokenizers, gpt):  # noqa: F811
    """--out grown.json used to be taken as the record path: the record replaced the checkpoint."""
    base, ext, n_base, n_ext = tokenizers
    out = tmp_path / "grown.json"
    record = ck.extend_checkpoint(gpt, base, ext, out, init="mean")
    raw = torch.load(out, weights_only=True)                    # still the grown checkpoint
    assert raw["model"]["text_embedding.weight"].shape[0] == n_ext + 1
    assert (tmp_path / "grown.json.extension.json").is_file()
    assert ck.read_extension_record(out) == record              # found beside the checkpoint
    assert ck.read_extension_record(tmp_path / "grown.json.extension.json") == record
    assert ck.write_extension_record(out, record) == tmp_path / "grown.json.extension.json"
    assert torch.load(out, weights_only=True)["model"].keys() == raw["model"].keys()
    assert record["base_vocab"] == n_base


def test_existing_out_or_record_needs_overwrite(tmp_path, tokenizers, gpt, capsys):  # noqa: F811
    base, ext, _, n_ext = tokenizers
    out = tmp_path / "old.pth"
    out.write_bytes(b"an earlier run's checkpoint")
    rc, _, err = run_cli(extend_argv(gpt, base, ext, out), capsys)
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"an earlier run's checkpoint"
    rc, printed, _ = run_cli(extend_argv(gpt, base, ext, out, "--overwrite"), capsys)
    assert rc == 0 and "record:" in printed
    assert torch.load(out, weights_only=True)["model"]["text_head.bias"].shape == (n_ext + 1,)

    fresh = tmp_path / "fresh.pth"
    stale = ck.record_path(fresh)
    stale.write_text('{"note": "another run"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"extension record .*fresh\.pth\.extension\.json already exists"):
        ck.extend_checkpoint(gpt, base, ext, fresh)
    assert not fresh.exists() and stale.read_text(encoding="utf-8") == '{"note": "another run"}'


def test_out_folder_file_parent_and_unwritable(tmp_path, tokenizers, gpt, capsys, no_loading,  # noqa: F811
                                                monkeypatch):
    base, ext, _, _ = tokenizers
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    cases = {tmp_path / "adir": "is a directory",
             tmp_path / "afile" / "out.pth": "is a file, not a folder"}
    for out, words in cases.items():
        rc, _, err = run_cli(extend_argv(gpt, base, ext, out), capsys)
        assert rc == 2 and words in err and err.startswith("error: --out") and err.count("\n") == 1
    monkeypatch.setattr("amhelpers.io.os.access", lambda *_a, **_k: False)
    rc, _, err = run_cli(extend_argv(gpt, base, ext, tmp_path / "new.pth"), capsys)
    assert rc == 2 and "not writable" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- loading
def test_code_in_a_pickle_is_refused_even_when_trusted(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __init__(self, fn):
            self.fn = fn

        def __reduce__(self):
            if self.fn is subprocess.call:
                return (self.fn, (["touch", str(marker)],))
            if self.fn is eval:
                return (self.fn, (f"open({str(marker)!r}, 'w')",))
            return (self.fn, (f"touch {marker}",))

    for fn, name in ((os.system, "system"), (subprocess.call, ".call"), (eval, "eval")):
        path = tmp_path / "evil.pth"
        torch.save({"model": pretrained_tables(5), "x": Evil(fn)}, path)
        for trust in (False, True):
            with pytest.raises(ValueError) as err:
                ckptio.load_state_dict(path, trust_pickle=trust)
            msg = str(err.value)
            assert "asks to call" in msg and name in msg and "also with --trust-pickle" in msg
            assert "\n" not in msg
    assert not marker.exists()


def test_python_objects_message_says_what_trust_pickle_does(tmp_path):
    path = tmp_path / "o.pth"
    torch.save({"model": pretrained_tables(5), "args": argparse.Namespace(lr=2e-5)}, path)
    with pytest.raises(ValueError) as err:
        ckptio.load_state_dict(path)
    msg = str(err.value)
    assert "argparse.Namespace" in msg and "--trust-pickle" in msg
    assert "weights_only=False" in msg and "runs" in msg and "source you trust" in msg
    assert ckptio.load_state_dict(path, trust_pickle=True)[1]["left_out"] == ["args"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_not_a_torch_file_messages(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("step 1000: loss 4.2\nstep 2000: loss 3.9\n", encoding="utf-8")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"text_embedding.weight": [[0.0]]}, protocol=4))
    for path, what in ((text, "it is a text file (starts with 'step 1000: loss 4.2')"),
                       (plain, "it is truncated or damaged, or not written by torch.save")):
        for trust in (False, True):
            with pytest.raises(ValueError) as err:
                ckptio.load_state_dict(path, trust_pickle=trust)
            msg = str(err.value)
            assert f"{path.name} cannot be read: {what}" in msg and "\n" not in msg
            assert "--trust-pickle cannot repair" in msg and "files you trust" in msg
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"run is a folder; give a checkpoint file in it"):
        ckptio.load_state_dict(tmp_path / "run")


def test_a_checkpoint_cut_anywhere_is_named_as_truncated(tmp_path, capsys):
    """torch raises OSError [Errno 22] (no file name) for a zip cut at most lengths; the CLI
    printed only 'error: [Errno 22] Invalid argument'."""
    full = tmp_path / "full.pth"
    torch.save({"model": indextts_state_dict(200)}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    for n in range(64, len(data), len(data) // 30):
        cut.write_bytes(data[:n])
        for trust in (False, True):
            with pytest.raises(ValueError) as err:
                ckptio.load_state_dict(cut, trust_pickle=trust)
            assert "cut.pth cannot be read: it is truncated or damaged" in str(err.value), n
        with pytest.raises(ValueError, match=r"cut\.pth cannot be read: it is truncated or damaged"):
            ckptio.read_checkpoint(cut)
        rc, _, err = run_cli(["checkpoint", "info", "--checkpoint", str(cut)], capsys)
        assert rc == 2 and "cut.pth cannot be read: it is truncated" in err and err.count("\n") == 1


def test_one_reader_one_description_for_both_layouts(tmp_path):
    """The trainer's reader (read_checkpoint) and checkpoint/diagnose's (load_state_dict) say the
    same thing about the same file; only the latter, which has --trust-pickle, mentions it."""
    text, empty, obj, code = (tmp_path / n for n in ("t.pt", "e.pt", "o.pt", "c.pt"))
    text.write_text("step 1: loss 4\n", encoding="utf-8")
    empty.write_bytes(b"")
    torch.save({"model": pretrained_tables(5), "args": argparse.Namespace(lr=1)}, obj)
    torch.save({"model": pretrained_tables(5), "x": os.system}, code)
    cases = {text: f"checkpoint {text} cannot be read: it is a text file (starts with 'step 1: "
                   "loss 4'), not a torch checkpoint",
             empty: f"checkpoint {empty} cannot be read: the file is empty, not a torch checkpoint",
             obj: f"checkpoint {obj} cannot be read: it pickles argparse.Namespace, which a safe "
                  "(weights-only) load refuses",
             code: f"checkpoint {code} asks to call posix.system when loaded: that is code"}
    for path, core in cases.items():
        with pytest.raises(ValueError) as trainer:
            ckptio.read_checkpoint(path)
        with pytest.raises(ValueError) as checkpoint:
            ckptio.load_state_dict(path)
        assert core in str(trainer.value) and core in str(checkpoint.value)
        assert "--trust-pickle" not in str(trainer.value) and "--trust-pickle" in str(checkpoint.value)


# ----------------------------------------------------------------------------- NaN rows
def test_non_finite_rows_are_named(tmp_path, tokenizers, capsys):  # noqa: F811
    base, ext, n_base, _ = tokenizers
    sd = indextts_state_dict(n_base)
    sd["text_embedding.weight"][[7, 11]] = float("nan")
    sd["text_head.bias"][9] = float("inf")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(ValueError) as err:
        ck.extend_checkpoint(tmp_path / "nan.pth", base, ext, tmp_path / "out.pth", init="hewitt")
    msg = str(err.value)
    assert "text_embedding.weight: 2 rows with nan (7, 11)" in msg
    assert "text_head.bias: 1 row with inf (9)" in msg and "earlier checkpoint" in msg
    assert not (tmp_path / "out.pth").exists()
    assert tables.non_finite_rows(sd) == {"text_embedding.weight": {"nan": [7, 11], "inf": []},
                                      "text_head.bias": {"nan": [], "inf": [9]}}
    with pytest.raises(ValueError, match="rows with nan"):
        ck.grow_text_tables(sd, n_base, n_base + 3)
    rc, printed, _ = run_cli(["checkpoint", "info", "--checkpoint", str(tmp_path / "nan.pth")], capsys)
    assert rc == 0 and json.loads(printed)["non_finite_rows"]["text_embedding.weight"]["nan"] == 2


# ----------------------------------------------------------------------------- other bad inputs
def test_extend_bad_inputs_are_one_line(tmp_path, tokenizers, gpt, capsys):  # noqa: F811
    base, ext, n_base, _ = tokenizers
    (tmp_path / "text.pth").write_text("hello\n", encoding="utf-8")
    torch.save({"mel_head.weight": torch.zeros(3, 4)}, tmp_path / "mel.pth")
    torch.save(indextts_state_dict(n_base + 9), tmp_path / "big.pth")
    out = tmp_path / "out.pth"
    cases = [
        (extend_argv(tmp_path / "nope.pth", base, ext, out), "nope.pth does not exist"),
        (extend_argv(tmp_path / "text.pth", base, ext, out), "cannot be read: it is a text file"),
        (extend_argv(tmp_path / "mel.pth", base, ext, out), "has no text tables"),
        (extend_argv(tmp_path / "big.pth", base, ext, out), "is this the checkpoint trained with"),
        (extend_argv(gpt, base, base, out), "is not an extension of --base-tokenizer"),
        (extend_argv(gpt, tmp_path / "text.pth", ext, out), "is not a SentencePiece model"),
        (extend_argv(gpt, base, ext, out, "--seed", 10 ** 20), "--seed"),
        (extend_argv(tmp_path, base, ext, out), "is a folder"),
    ]
    for argv, words in cases:
        rc, _, err = run_cli(argv, capsys)
        assert rc == 2 and words in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_read_extension_record_checks_its_numbers(tmp_path):
    bad = tmp_path / "x.pth.extension.json"
    for text, words in (('{"base_vocab": "abc", "new_vocab": 9}', "must be integers"),
                        ('{"base_vocab": 9, "new_vocab": 9}', "0 < base_vocab < new_vocab"),
                        ("[1, 2]", "lacks base_vocab"), ("{oops", "not valid JSON")):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=words):
            ck.read_extension_record(bad)
    with pytest.raises(FileNotFoundError, match=r"y\.pth\.extension\.json does not exist"):
        ck.read_extension_record(tmp_path / "y.pth")
