"""Unit tests of amhelpers.doctor: the trainer command, the rules, the measured numbers quoted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from amhelpers import doctor
from amhelpers.freeze import analytic_decay
from amhelpers.indextts import upstream_route
from amhelpers.optim import warmup_cosine

ROOT = Path(__file__).resolve().parents[2]


def test_trainer_command_sets_known_flags_and_ignores_the_rest():
    flags, given = doctor.parse_trainer_command(
        ["python", "trainers/train_gpt_v2.py", "--learning-rate", "5e-6", "--warmup-steps=2000",
         "--output-dir", "out", "--text-loss-weight", "0.4", "--amp"])
    assert flags["learning_rate"] == 5e-6 and flags["warmup_steps"] == 2000
    assert flags["text_loss_weight"] == 0.4
    assert given == {"learning_rate", "warmup_steps", "text_loss_weight", "output_dir"}
    # what the command leaves out keeps the community trainer's default
    assert flags["weight_decay"] == 0.01 and flags["mel_loss_weight"] == 0.8


@pytest.mark.parametrize("command, message", [
    (["--learning-rate"], "--learning-rate has no value"),
    (["--learning-rate", "--warmup-steps", "3"], "--learning-rate has no value"),
    (["--warmup-steps", "1e3x"], "--warmup-steps '1e3x' is not a int"),
])
def test_trainer_command_bad_values_are_named(command, message):
    with pytest.raises(ValueError, match=message):
        doctor.parse_trainer_command(command)


@pytest.mark.parametrize("text, route", [
    ("ሰላም ለዓለም።", "zh"),        # no Latin letter: the Chinese normaliser
    ("12 34", "zh"),
    ("你好 hello", "zh"),
    ("hello world", "en"),
    ("ሰላም hello", "en"),          # one Latin letter is enough for the English route
])
def test_upstream_route_follows_use_chinese(text, route):
    assert upstream_route(text) == route


def test_upstream_route_matches_the_real_front_end():
    from amhelpers.indextts import _import_bare

    try:
        front = _import_bare("utils.front")
    except ImportError as err:
        pytest.skip(f"the indextts extra is not installed: {err}")
    normalizer = front.TextNormalizer()
    for text in ["ሰላም ለዓለም።", "12 34", "你好 hello", "hello world", "ሰላም hello",
                 "a@b.com", "HELLO", "ኢትዮጵያ 2010 ዓ.ም."]:
        assert (upstream_route(text) == "zh") == normalizer.use_chinese(text), text


def _setup(**flags) -> doctor.Setup:
    setup = doctor.Setup()
    setup.flags.update(flags)
    setup.given = set(flags)
    return setup


def test_hook_freeze_leak_is_the_analytic_decay_of_the_planned_schedule():
    setup = _setup(freeze_mode="hook", learning_rate=2e-5, warmup_steps=1000, max_steps=38000)
    (finding,) = doctor.check_freeze(setup)
    lrs = [2e-5 * warmup_cosine(s, 1000, 38000) for s in range(38000)]
    expected = analytic_decay(lrs, 0.01)
    assert finding.check == "freeze.leak" and finding.severity == "warn"
    assert f"{100 * expected:.2f}%" in finding.evidence
    assert 0.002 < expected < 0.008  # FACTS: 0.4-0.8% at a constant rate; the cosine halves it


def test_no_leak_without_weight_decay_or_with_an_exact_freeze():
    assert doctor.check_freeze(_setup(freeze_mode="hook", weight_decay=0.0, max_steps=100)) == []
    assert doctor.check_freeze(_setup(freeze_mode="exact", max_steps=100)) == []


@pytest.mark.parametrize("lr, new_lr, severity", [
    (5e-6, None, "block"),     # the original fix: 0.025x
    (2e-5, None, "warn"),      # the team's run: 0.1x
    (2e-5, 2e-4, "info"),      # the course's fix: new rows at 1.0x
])
def test_new_row_rate_against_chapter_6(lr, new_lr, severity):
    findings = doctor.check_rates(_setup(learning_rate=lr, new_row_lr=new_lr, max_steps=25000))
    (rows,) = [f for f in findings if f.check == "lr.new_rows"]
    assert rows.severity == severity


def test_rates_compare_with_the_trainer_defaults_only_when_changed():
    findings = doctor.check_rates(_setup(max_steps=25000))
    checks = {f.check for f in findings}
    assert "loss.weights" not in checks and "lr.lowered" not in checks
    assert "schedule.warmup_changed" not in checks
    findings = doctor.check_rates(_setup(text_loss_weight=0.4, mel_loss_weight=0.6,
                                         warmup_steps=20000, max_steps=25000))
    checks = {f.check: f.severity for f in findings}
    assert checks["loss.weights"] == "warn" and checks["schedule.warmup"] == "warn"


def test_measured_numbers_are_the_committed_chapter_6_table():
    rows = {r["point"]: r for r in csv.DictReader(open(ROOT / "docs/results/ch06_full.csv"))}
    m = doctor.MEASURED

    def val(point: str) -> float:
        return float(rows[point]["val.mel_loss"])

    assert m["original"]["val_mel_loss"] == val("recipe-original_train_phrases-None")
    assert m["original_fix"]["val_mel_loss"] == val("recipe-original_fix_train_phrases-None")
    assert m["fix"]["val_mel_loss"] == val("recipe-fix_train_phrases-None")
    assert m["loss_weights_0.4_0.6"]["val_mel_loss"] == val(
        "mel_loss_weight-0.6_recipe-original_text_loss_weight-0.4")
    assert m["warmup_8pct"]["val_mel_loss"] == val("recipe-original_warmup_steps-24")
    assert m["lr_div4"]["val_mel_loss"] == val("learning_rate-2.5e-05_recipe-original")
    seeds = [(val("recipe-original_fix_train_phrases-None"), val("recipe-original_fix_seed-1")),
             (val("recipe-fix_train_phrases-None"), val("recipe-fix_seed-1"))]
    # the notebook takes the spread of unrounded losses; the table holds them to 3 decimals
    assert abs(m["noise_floor"] - max(abs(a - b) for a, b in seeds)) <= 0.001 + 1e-9


def test_header_checkpoint_and_bad_inputs(tmp_path):
    header = tmp_path / "gpt.json"
    header.write_text(json.dumps({"text_embedding.weight": [12001, 1280]}))
    info = doctor.checkpoint_tables(header)
    assert info["rows"] == 12001 and info["dim"] == 1280 and info["tables"] is None
    header.write_text(json.dumps({"text_head.weight": [12001, 1280]}))
    with pytest.raises(ValueError, match="a header needs \"text_embedding.weight\""):
        doctor.checkpoint_tables(header)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"text": "ሰላም"}\n{"audio": "a.wav"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.jsonl line 2 has no \"text\""):
        doctor.read_manifest_sample(manifest)
    with pytest.raises(FileNotFoundError, match="--manifest .*missing.jsonl does not exist"):
        doctor.read_manifest_sample(tmp_path / "missing.jsonl")
    config = tmp_path / "config.yaml"
    config.write_text("gpt:\n  model_dim: 8\n")
    with pytest.raises(ValueError, match="has no gpt.number_text_tokens"):
        doctor.gpt_config(config)
    with pytest.raises(ValueError, match="no tokenizer"):
        doctor.examine(doctor.Setup())


def test_manifest_ids_tell_a_base_tokenised_manifest_from_an_unused_extension(hornmt_dir, tmp_path):
    from amhelpers import corpus
    from amhelpers import tokenizer as tk
    from amhelpers.text import normalize

    base = tmp_path / "eng.model"
    tk.train_base(corpus.split_lines("eng", "train"), "eng", 300, base)
    ext = tmp_path / "eng+amh.model"
    tk.extend(base, corpus.split_lines("amh", "train"), "amh", 400, ext)
    sp_base = tk.processor(tk.load_proto(base))

    def manifest(lang: str, path):
        lines = corpus.split_lines(lang, "val")[:40]
        path.write_text("".join(json.dumps({"text": t, "text_ids": sp_base.encode(normalize(t, lang))},
                                           ensure_ascii=False) + "\n" for t in lines), encoding="utf-8")
        return path

    def checks(tokenizer, lang, path):
        setup = doctor.Setup(tokenizer=tokenizer, base_tokenizer=base, manifest=path, lang=lang)
        return {f["check"]: f["severity"] for f in doctor.examine(setup)["findings"]}

    amh = checks(ext, "amh", manifest("amh", tmp_path / "amh.jsonl"))
    assert amh["manifest.no_new_ids"] == "block" and amh["manifest.unk"] == "block"
    # an Oromo extension of an English base adds (almost) nothing the text uses
    orm_ext = tmp_path / "eng+orm.model"
    tk.extend(base, corpus.split_lines("orm", "train"), "orm", 400, orm_ext)
    orm = checks(orm_ext, "orm", manifest("orm", tmp_path / "orm.jsonl"))
    assert len(tk.load_proto(orm_ext).pieces) == 301  # one character of the corpus, never in val
    assert orm["manifest.new_ids_unused"] == "warn" and "manifest.no_new_ids" not in orm
    # a lower-case base is not IndexTTS2's: its front-end checks do not apply
    assert not any(c.startswith("front_end.") for c in (*amh, *orm))


def test_a_run_without_base_language_replay_is_warned_and_one_with_it_is_not():
    from amhelpers import doctor as d

    without = d.check_retention(d.Setup())
    assert [(f.check, f.severity) for f in without] == [("retention.no_replay", "warn")]
    assert "--replay-manifest" in without[0].fix
    flags, given = d.parse_trainer_command(["--replay-manifest", "eng.jsonl",
                                            "--replay-fraction", "0.25"])
    with_replay = d.check_retention(d.Setup(flags=flags, given=given))
    assert [(f.check, f.severity) for f in with_replay] == [("retention.replay", "info")]
    assert with_replay[0].evidence == "25% of every batch replays eng.jsonl"
    flags, given = d.parse_trainer_command(["--lora-rank", "8"])
    lora_only = d.check_retention(d.Setup(flags=flags, given=given))
    assert [f.check for f in lora_only] == ["retention.no_replay"]
    assert "--lora-rank 8 does not replace it" in lora_only[0].evidence


def test_resume_auto_takes_the_newest_checkpoint_of_the_output_dir(tmp_path):
    """``--resume auto`` is the trainer's "newest checkpoint in --output-dir", not a file name
    (chapter 8's full run was blocked with "--resume auto does not exist" before)."""
    run = tmp_path / "run"
    run.mkdir()
    setup = _setup(resume="auto", output_dir=str(run))
    (auto,) = doctor.check_resume(setup, None, None)
    assert (auto.check, auto.severity) == ("resume.auto", "info") and "holds no checkpoint" in auto.evidence
    (bare,) = doctor.check_resume(_setup(resume="auto"), None, None)
    assert bare.severity == "info" and "no --output-dir" in bare.evidence
    (run / "ckpt_00000200.pt").write_bytes(b"not a checkpoint")  # the newest is examined
    with pytest.raises(ValueError, match="ckpt_00000200.pt"):
        doctor.check_resume(setup, None, None)
