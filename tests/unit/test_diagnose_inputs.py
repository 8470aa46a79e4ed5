"""Diagnose: movement weight decay cannot fake, bias drift on an absolute scale, and bad inputs.

Bad inputs (--plot, --evidence, --log, NaN rows, --base-rows, ...) must give one clear error
before any work, or be counted and reported. Helpers come from test_diagnose.py.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from test_diagnose import BASE, KEYS, NEW, _logs, move_new_rows, pretrained, toks  # noqa: F401

from amhelpers import __main__ as cli_main
from amhelpers import causes, logs, tables, undertrained
from amhelpers import checkpoint as ck
from amhelpers import diagnose as dg

LR, WD, STEPS = 1e-3, 0.1, 300           # AdamW: every parameter *= 1 - lr * wd, each step
DECAY = (1 - LR * WD) ** STEPS           # 0.970: every row "moves" 3% without any gradient


def decayed_run(tmp_path, new_rows_trained: bool) -> tuple:
    """A fine-tuned checkpoint as AdamW leaves it: base rows trained, every row decayed.

    The new rows got no gradient (``init * DECAY`` exactly) unless ``new_rows_trained``.
    Returns ``(checkpoint, init snapshot)``; the extension record sits beside both.
    """
    init, record = ck.grow_text_tables(pretrained(), BASE, NEW, "indextts", seed=1)
    trained = move_new_rows(init, BASE, NEW, torch.full((NEW - BASE,), 0.05)) \
        if new_rows_trained else {k: v.clone() for k, v in init.items()}
    g = torch.Generator().manual_seed(5)
    for key in KEYS:
        w = trained[key]
        w[:BASE] += 0.05 * w[:BASE].std() * torch.randn(w[:BASE].shape, generator=g)
        trained[key] = w * DECAY
    paths = []
    for name, sd in (("init.pth", init), ("step300.pth", trained)):
        torch.save({"model": sd}, tmp_path / name)
        ck.write_extension_record(tmp_path / name, record)
        paths.append(tmp_path / name)
    return paths[1], paths[0]


def cause(report: dict, name: str) -> dict:
    return next(c for c in report["causes"] if c["cause"] == name)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main.main(["diagnose", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture()
def no_loading(monkeypatch):
    """Argument checks must come before the checkpoint is read."""
    def refuse(*_a, **_k):
        raise AssertionError("the checkpoint was loaded before the arguments were checked")
    monkeypatch.setattr(dg, "load_state_dict", refuse)


@pytest.fixture()
def ckpt(tmp_path):
    return decayed_run(tmp_path, new_rows_trained=False)


# ----------------------------------------------------------------------------- weight decay
@pytest.mark.parametrize("snapshot", [True, False])
def test_rows_that_only_decayed_score_not_moving(tmp_path, snapshot):
    path, init = decayed_run(tmp_path, new_rows_trained=False)
    report = dg.diagnose(path, BASE, init_snapshot=init if snapshot else None)
    first = report["causes"][0]
    assert first["cause"] == causes.CAUSE_NOT_MOVING and first["score"] >= 0.9, report["causes"]
    assert "beyond what weight decay explains" in first["evidence"]
    assert f"{DECAY:.4g}" in first["evidence"]
    new = report["drift"]["tables"][KEYS[0]]["new"]
    assert new["share_below_1pct"] == 0.0              # in total, decay moved every row 3%
    assert new["median"] == pytest.approx(1 - DECAY, rel=1e-3)
    assert new["decay_factor"] == pytest.approx(DECAY, rel=1e-5)
    for key in KEYS:
        assert report["drift"]["tables"][key]["new"]["beyond_decay"]["share_below_1pct"] == 1.0


def test_rows_that_trained_and_decayed_score_low(tmp_path):
    path, init = decayed_run(tmp_path, new_rows_trained=True)
    report = dg.diagnose(path, BASE, init_snapshot=init)
    assert cause(report, causes.CAUSE_NOT_MOVING)["score"] < 0.1
    for key in KEYS[:2]:
        moved = report["drift"]["tables"][key]["new"]["beyond_decay"]
        assert moved["share_below_1pct"] == 0.0 and moved["median"] > 0.04


def test_bias_drift_is_absolute_not_relative_to_a_near_zero_init(tmp_path):
    init, _ = ck.grow_text_tables(pretrained(), BASE, NEW, "indextts", seed=1)
    init[KEYS[2]][BASE:BASE + 10] = 1e-7                 # a constructor draw can be ~0
    trained = {k: v.clone() for k, v in init.items()}
    trained[KEYS[2]][BASE:NEW] += 0.003                  # a tiny absolute change
    out = tables.drift_from_init(trained, init, BASE)["tables"][KEYS[2]]
    scale = float(init[KEYS[2]][:BASE].double().pow(2).mean().sqrt())
    assert out["new"]["max"] == pytest.approx(0.003 / scale, rel=1e-3)   # not 0.003 / 1e-7
    assert out["scale"] == pytest.approx(scale)
    assert out["new"]["share_below_1pct"] == 1.0


# ----------------------------------------------------------------------------- --log
def test_malformed_log_lines_are_counted_and_reported(tmp_path, ckpt, capsys):
    path, _ = ckpt
    log = _logs(tmp_path, 4.5 + 0.01 * np.sin(np.arange(60)), "flat")
    with log.open("a", encoding="utf-8") as fh:
        fh.write('{"split": "train", "step": 900, "loss": 4.\n[1, 2]\n'
                 '{"split": "train", "step": 910, "loss": "high"}\n\x00\x01 garbage\n')
    plateau = logs.plateau_from_log(log)
    assert plateau["malformed_lines"] == 4 and plateau["malformed_line_numbers"] == [62, 63, 64, 65]
    assert plateau["points"] == 60
    with pytest.warns(UserWarning, match="skipped 4 malformed lines"):
        logs.read_loss_log(log)
    rc, printed, err = run_cli(["--checkpoint", path, "--log", log, "--json"], capsys)
    report = json.loads(printed)
    assert rc == 0 and report["plateau"]["malformed_lines"] == 4
    assert any("skipped 4 malformed lines" in n for n in report["notes"])
    assert err.startswith("warning: ") and err.count("\n") == 1 and "line 62, 63, 64, 65" in err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"no rows with 'step'.* lines are malformed"):
        logs.plateau_from_log(binary)


# ----------------------------------------------------------------------------- --evidence
BAD_EVIDENCE = [
    ('{"length_corr": [0.1], "val_loss_ratio": 1.0}', r"'length_corr' must be a number in \[-1, 1\].*list"),
    ('{"val_loss_ratio": NaN, "length_corr": 0.1}', r"'val_loss_ratio' must be a number >= 0.*NaN"),
    ('{"unk_rate": "0.1"}', r"'unk_rate' must be a number in \[0, 1\].*str"),
    ('{"unk_rate": true}', r"'unk_rate' must be a number.*bool"),
    ('{"plateau": "yes"}', r"'plateau' must be true or false"),
    ('{"norm_ratio": {"text_embedding.weight": "big"}}', r"'norm_ratio' must be a number >= 0 or"),
    ('{"lenght_corr": 0.2}', r"unknown key 'lenght_corr'; known keys: unk_rate"),
    ("[0.1, 0.2]", r"must be a JSON object .* got list"),
    ('"abc"', r"must be a JSON object .* got str"),
    ("NaN", r"must be a JSON object .* got float"),
    ("nofile.json", r"'nofile.json' is neither JSON nor an existing file"),
]


@pytest.mark.parametrize("raw, words", BAD_EVIDENCE)
def test_bad_evidence_is_a_value_error_naming_the_key(ckpt, raw, words, capsys, no_loading):
    path, _ = ckpt
    parser = argparse.ArgumentParser()
    dg.add_arguments(parser)
    with pytest.raises(ValueError, match=words):
        dg.run(parser.parse_args(["--checkpoint", str(path), "--evidence", raw]))
    rc, _, err = run_cli(["--checkpoint", path, "--evidence", raw], capsys)
    assert rc == 2 and err.startswith("error: --evidence") and err.count("\n") == 1


def test_evidence_checked_in_the_library_too(tmp_path, ckpt, no_loading):
    with pytest.raises(ValueError, match="'length_corr' must be"):
        causes.rank_causes({"val_loss_ratio": 1.0, "length_corr": float("nan")})
    with pytest.raises(ValueError, match="--evidence: 'mcd_ratio'"):
        dg.diagnose(ckpt[0], evidence={"mcd_ratio": [2.0]})
    (tmp_path / "ev.json").write_text('{"val_loss_ratio": 1.05, "mcd_ratio": 2.0}', encoding="utf-8")
    assert causes.parse_evidence(str(tmp_path / "ev.json")) == {"val_loss_ratio": 1.05, "mcd_ratio": 2.0}
    with pytest.raises(ValueError, match="is a folder"):
        causes.parse_evidence(str(tmp_path))


# ----------------------------------------------------------------------------- --plot
def test_bad_plot_paths_are_refused_before_any_work(tmp_path, ckpt, capsys, no_loading, monkeypatch):
    path, _ = ckpt
    (tmp_path / "afile").write_text("notes", encoding="utf-8")
    cases = {tmp_path: "is a directory",
             tmp_path / "afile" / "p.png": "is a file, not a folder",
             path: "same file as --checkpoint",
             tmp_path / "afile": "exists and is not a PNG image"}
    for plot, words in cases.items():
        rc, _, err = run_cli(["--checkpoint", path, "--plot", plot], capsys)
        assert rc == 2 and words in err and err.startswith("error: --plot") and err.count("\n") == 1
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "notes"
    monkeypatch.setattr("amhelpers.io.os.access", lambda *_a, **_k: False)
    rc, _, err = run_cli(["--checkpoint", path, "--plot", tmp_path / "new.png"], capsys)
    assert rc == 2 and "not writable" in err


def test_an_earlier_plot_is_replaced(tmp_path, ckpt):
    path, _ = ckpt
    plot = tmp_path / "norms.png"
    dg.diagnose(path, plot=plot)
    first = plot.stat().st_mtime_ns
    dg.diagnose(path, plot=plot)
    assert plot.read_bytes()[:4] == b"\x89PNG" and plot.stat().st_mtime_ns >= first


# ----------------------------------------------------------------------------- NaN rows
def test_non_finite_rows_named_instead_of_eigh_failure(tmp_path):
    sd, _ = ck.grow_text_tables(pretrained(), BASE, NEW, "indextts", seed=1)
    sd[KEYS[0]][[12, 40]] = float("nan")
    sd[KEYS[1]][NEW - 1, 3] = float("-inf")
    torch.save({"model": sd}, tmp_path / "nan.pth")
    with pytest.raises(ValueError) as err:
        dg.diagnose(tmp_path / "nan.pth", BASE)
    msg = str(err.value)
    assert "text_embedding.weight: 2 rows with nan (12, 40)" in msg
    assert f"text_head.weight: 1 row with inf ({NEW - 1})" in msg and "converge" not in msg
    with pytest.raises(ValueError, match="rows with nan"):
        undertrained.undertrained_rows(sd, BASE)


# ----------------------------------------------------------------------------- other inputs
def test_diagnose_bad_arguments_are_one_line(tmp_path, ckpt, toks, capsys):  # noqa: F811
    path, _ = ckpt
    _, full, _ = toks
    log = _logs(tmp_path, 4.5 + 0.01 * np.sin(np.arange(60)), "flat")
    (tmp_path / "notes.pth").write_text("not a checkpoint\n", encoding="utf-8")
    small = dict(torch.load(path, weights_only=True)["model"])
    small = {k: v[:BASE - 50] for k, v in small.items()}
    torch.save({"model": small}, tmp_path / "small.pth")
    ck.write_extension_record(tmp_path / "small.pth", ck.read_extension_record(path))
    cases = [
        (["--checkpoint", tmp_path / "none.pth"], "none.pth does not exist"),
        (["--checkpoint", tmp_path], "is a folder; give a checkpoint file"),
        (["--checkpoint", tmp_path / "notes.pth"], "cannot be read: it is a text file"),
        (["--checkpoint", path, "--base-rows", "-3"], "--base-rows -3 must be at least 2"),
        (["--checkpoint", path, "--base-rows", "1"], "--base-rows 1 must be at least 2"),
        (["--checkpoint", path, "--base-rows", "5000"], "--base-rows 5000 is larger than"),
        (["--checkpoint", tmp_path / "small.pth"], "is not this checkpoint's record"),
        (["--checkpoint", path, "--init-snapshot", path], "is the --checkpoint itself"),
        (["--checkpoint", path, "--log", log, "--window", "0"], "--window 0 must be"),
        (["--checkpoint", path, "--log", log, "--threshold", "nan"], "--threshold nan must be"),
        (["--checkpoint", path, "--tokenizer", full], "--tokenizer and --text go together"),
        (["--checkpoint", path, "--log", tmp_path / "none.jsonl"], "none.jsonl does not exist"),
        (["--checkpoint", path, "--extension-record", tmp_path / "r.json"], "r.json does not exist"),
        (["--checkpoint", path, "--extension-record", tmp_path / "notes.pth"],
         "notes.pth is not valid JSON"),
    ]
    for argv, words in cases:
        rc, _, err = run_cli(argv, capsys)
        assert rc == 2 and words in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_tokenizer_of_another_size_is_noted(ckpt, toks):  # noqa: F811
    path, _ = ckpt
    _, full, text = toks
    report = dg.diagnose(path, tokenizer=full, text=text, lang="amh")
    assert any("pieces but the checkpoint's text tables have" in n for n in report["notes"])


# ----------------------------------------------------------------------------- metrics.jsonl
def test_read_metrics_is_the_one_parser_of_metrics_jsonl(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "split": "train", "loss": 3.0}\n'
        '{"step": 1, "split": "val", "loss": 3.5}\n'
        '{"step": 2, "split": "tr\n'             # a write cut short
        '[1, 2]\n'
        '\n'
        '{"step": 3, "split": "val", "loss": 2.5}\n', encoding="utf-8")
    with pytest.warns(UserWarning, match=r"skipped 2 malformed lines \(line 3, 4\)"):
        rows = logs.read_metrics(run)
    assert [r["step"] for r in rows] == [1, 1, 3]
    with pytest.warns(UserWarning):
        assert [r["loss"] for r in logs.read_metrics(run / "metrics.jsonl", split="val")] == [3.5, 2.5]
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl does not exist"):
        logs.read_metrics(tmp_path)
