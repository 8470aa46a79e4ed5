"""Manifests, batching and the training loop: exact resume, determinism, checkpoints, logs, CLI.

Synthetic manifests (codes are a function of the text, so there is something to learn) and a
tiny model (d=32, 2 layers, 30 text tokens, K=16) keep each run to a second or two.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch

from amhelpers import __main__ as cli
from amhelpers.data import LengthBucketBatches, collate, read_manifest, write_manifest
from amhelpers.model import CheckpointMismatchError, load_checkpoint, save_checkpoint
from amhelpers.train import TrainConfig, latest_checkpoint, train, warmup_cosine

K = 16
TINY = {"model_dim": 32, "layers": 2, "heads": 2, "number_text_tokens": 30,
        "number_mel_codes": K + 2, "max_text_tokens": 20, "max_mel_tokens": 40}


def synthetic_rows(n: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = [rng.randrange(2, 30) for _ in range(rng.randint(1, 8))]
        codes = [c for t in text for c in (t % K, (3 * t) % K)]
        rows.append({"id": f"{prefix}{i:04d}", "lang": "eng", "text": "t", "norm_text": "t",
                     "text_ids": text, "codes": codes, "n_text": len(text),
                     "n_codes": len(codes), "audio": f"{prefix}{i}.wav"})
    return rows


@pytest.fixture
def manifests(tmp_path) -> tuple[Path, Path]:
    train_path = write_manifest(tmp_path / "train.jsonl", synthetic_rows(64, 0, "tr"))
    val_path = write_manifest(tmp_path / "val.jsonl", synthetic_rows(16, 1, "va"))
    return train_path, val_path


def config(manifests, out: Path, **overrides) -> TrainConfig:
    values = {"train_manifest": str(manifests[0]), "val_manifest": str(manifests[1]),
              "output_dir": str(out), "max_steps": 12, "batch_size": 8, "warmup_steps": 3,
              "val_every": 4, "log_every": 2, "save_every": 4, "keep_last": 2,
              "progress": False, "model": dict(TINY)}
    values.update(overrides)
    return TrainConfig(**values)


def stop_at(cfg: TrainConfig, step: int) -> None:
    """Train ``cfg`` and stop it (KeyboardInterrupt) once optimizer step ``step`` is done, as a
    killed run stops: the checkpoints written before it stay."""
    def die(model, optimizer, at):
        if at == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=die)


def weights(checkpoint: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)[0].state_dict()


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


# ---------------------------------------------------------------------------- manifests
def test_manifest_round_trip_keeps_unicode(tmp_path):
    rows = synthetic_rows(3, 0, "am")
    rows[0]["text"] = "ሰላም ለዓለም።"
    path = write_manifest(tmp_path / "m.jsonl", rows)
    assert read_manifest(path) == rows
    assert "ሰላም" in path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_manifest_errors_name_file_line_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_manifest(tmp_path / "missing.jsonl")
    good = json.dumps(synthetic_rows(1, 0, "x")[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl line 3: invalid JSON"):
        read_manifest(bad)
    row = synthetic_rows(1, 0, "x")[0]
    del row["codes"]
    bad.write_text(good + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: missing key.*codes"):
        read_manifest(bad)
    row = synthetic_rows(1, 0, "x")[0] | {"n_codes": 99}
    bad.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="n_codes=99"):
        read_manifest(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.jsonl has no rows"):
        read_manifest(empty)
    assert read_manifest(empty, allow_empty=True) == []


def test_collate_pads_and_reports_lengths():
    rows = [{"id": "a", "text_ids": [3, 4], "codes": [1, 2, 3]},
            {"id": "b", "text_ids": [5], "codes": []}]
    out = collate(rows)
    assert out["text_ids"].tolist() == [[3, 4], [5, 0]]
    assert out["codes"].tolist() == [[1, 2, 3], [0, 0, 0]]
    assert out["text_lengths"].tolist() == [2, 1] and out["code_lengths"].tolist() == [3, 0]
    assert out["ids"] == ["a", "b"] and out["codes"].dtype == torch.long


def test_length_buckets_are_seeded_complete_and_sorted_in_windows():
    lengths = [random.Random(0).randint(1, 100) for _ in range(103)]
    sampler = LengthBucketBatches(lengths, batch_size=8, seed=5, window=3)
    first = sampler.epoch_batches(0)
    assert first == LengthBucketBatches(lengths, 8, seed=5, window=3).epoch_batches(0)
    assert first != sampler.epoch_batches(1)
    assert first != LengthBucketBatches(lengths, 8, seed=6, window=3).epoch_batches(0)
    assert sorted(i for b in first for i in b) == list(range(103)) and len(first) == len(sampler)
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first]
    assert sum(spans) / len(spans) < 50  # sorted windows: batches hold similar lengths
    ordered = LengthBucketBatches(lengths, 8, shuffle=False).epoch_batches(0)
    assert [lengths[i] for b in ordered for i in b] == sorted(lengths)


def test_length_buckets_resume_at_the_exact_batch():
    lengths = list(range(40))
    straight = LengthBucketBatches(lengths, 4, seed=1)
    stream = iter(straight)
    seen = [next(stream) for _ in range(7)]
    state = straight.state_dict()
    rest = list(stream) + list(straight)  # rest of epoch 0, then epoch 1
    resumed = LengthBucketBatches(lengths, 4, seed=1)
    resumed.load_state_dict(state)
    assert state["epoch"] == 0 and state["index"] == 7
    assert list(resumed) + list(resumed) == rest
    assert seen + rest[:3] == straight.epoch_batches(0)
    with pytest.raises(ValueError, match="batch_size=4 \\(now 5\\)"):
        LengthBucketBatches(lengths, 5, seed=1).load_state_dict(state)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------- train
def test_training_learns_logs_and_keeps_last_checkpoints(manifests, tmp_path):
    out = tmp_path / "run"
    result = train(config(manifests, out, max_steps=40, val_every=20, save_every=10,
                          learning_rate=3e-3))
    assert result["step"] == 40 and result["stopped"] == "max_steps"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [0, 20, 40]
    assert val[-1]["mel_loss"] < val[0]["mel_loss"] - 0.3
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 20
    assert {"step", "lr", "text_loss", "mel_loss", "loss", "tokens_per_s", "wall_s"} <= set(
        train_rows[0])
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_00000030.pt",
                                                            "ckpt_00000040.pt"]
    assert not list(out.glob("*.tmp")) and [p.name for p in out.glob(".*")] == [".lock"]
    assert json.loads((out / "latest.json").read_text())["checkpoint"] == "ckpt_00000040.pt"
    assert latest_checkpoint(out) == out / "ckpt_00000040.pt" == Path(result["checkpoint"])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    model, meta = load_checkpoint(result["checkpoint"])
    assert meta["step"] == 40 and meta["val"]["step"] == 40
    assert model.config.number_text_tokens == 30


def test_resume_continues_bit_exactly(manifests, tmp_path):
    """2N steps straight == N steps, a crash, resume, N steps (dropout on, so RNG matters)."""
    straight = train(config(manifests, tmp_path / "a", model={**TINY, "dropout": 0.1}))

    class Crash(Exception):
        pass

    def crash_after_checkpoint(model, optimizer, step):
        if step == 6:  # the checkpoint of step 4 exists; steps 5 and 6 are lost
            raise Crash

    cfg = config(manifests, tmp_path / "b", model={**TINY, "dropout": 0.1})
    with pytest.raises(Crash):
        train(cfg, on_step=crash_after_checkpoint)
    assert latest_checkpoint(tmp_path / "b").name == "ckpt_00000004.pt"
    cfg.resume = "auto"
    resumed = train(cfg)
    assert resumed["step"] == straight["step"] == 12
    assert_identical(weights(straight["checkpoint"]), weights(resumed["checkpoint"]))
    logged = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [2, 4, 6, 8, 10, 12]


def test_same_seed_gives_identical_weights(manifests, tmp_path):
    a = train(config(manifests, tmp_path / "a", max_steps=6, val_manifest=None))
    b = train(config(manifests, tmp_path / "b", max_steps=6, val_manifest=None))
    c = train(config(manifests, tmp_path / "c", max_steps=6, val_manifest=None, seed=1))
    assert_identical(weights(a["checkpoint"]), weights(b["checkpoint"]))
    assert not torch.equal(weights(a["checkpoint"])["mel_head.weight"],
                           weights(c["checkpoint"])["mel_head.weight"])
    assert not torch.are_deterministic_algorithms_enabled()  # train() restores the setting


def test_init_checkpoint_and_step_hook(manifests, tmp_path):
    first = train(config(manifests, tmp_path / "a", max_steps=4, val_manifest=None))
    start = weights(first["checkpoint"])
    steps = []
    result = train(config(manifests, tmp_path / "b", max_steps=5, val_manifest=None,
                          init_checkpoint=first["checkpoint"], model={}),
                   on_step=lambda model, optimizer, step: steps.append(step))
    assert steps == [1, 2, 3, 4, 5]
    assert not torch.equal(weights(result["checkpoint"])["mel_head.weight"],
                           start["mel_head.weight"])
    # it starts from those weights: at learning rate 0 AdamW leaves every bit as it was
    still = train(config(manifests, tmp_path / "c", max_steps=3, val_manifest=None,
                         init_checkpoint=first["checkpoint"], model={}, learning_rate=0.0))
    assert_identical(weights(still["checkpoint"]), start)


def test_time_budget_stops_and_saves(manifests, tmp_path):
    result = train(config(manifests, tmp_path / "a", max_minutes=1e-9))  # 60 ns: spent at once
    assert result["stopped"] == "max_minutes" and result["step"] == 0
    assert Path(result["checkpoint"]).name == "ckpt_00000000.pt"


def test_fresh_run_infers_vocabulary_sizes(manifests, tmp_path, work_home):
    model_fields = {k: v for k, v in TINY.items() if not k.startswith("number_")}
    with pytest.warns(UserWarning, match="no --tokenizer"):
        result = train(config(manifests, None, output_dir=None, max_steps=1, model=model_fields))
    assert Path(result["output_dir"]) == work_home / "runs" / "minivoice"
    cfg = load_checkpoint(result["checkpoint"])[0].config
    rows = read_manifest(manifests[0]) + read_manifest(manifests[1])
    assert cfg.number_text_tokens == 1 + max(max(r["text_ids"]) for r in rows)
    assert cfg.codebook_size == 1 + max(max(r["codes"]) for r in rows)
    assert (cfg.start_mel_token, cfg.stop_mel_token) == (cfg.codebook_size,
                                                         cfg.codebook_size + 1)


def tiny_tokenizer(folder: Path) -> Path:
    """A 33-piece SentencePiece model (``folder/sp.model``)."""
    spm = pytest.importorskip("sentencepiece")
    corpus = folder / "corpus.txt"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(6))
                                for _ in range(200)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "sp"),
                                   vocab_size=33, model_type="bpe", minloglevel=2)
    return folder / "sp.model"


def test_tokenizer_sets_the_text_table_size_and_is_recorded(manifests, tmp_path):
    tiny_tokenizer(tmp_path)
    model_fields = {k: v for k, v in TINY.items() if k != "number_text_tokens"}
    result = train(config(manifests, tmp_path / "a", max_steps=1, val_manifest=None,
                          tokenizer=str(tmp_path / "sp.model"), model=model_fields))
    model, meta = load_checkpoint(result["checkpoint"])
    assert model.config.number_text_tokens == 33
    assert model.text_embedding.num_embeddings == 34
    assert meta["tokenizer"] == str(tmp_path / "sp.model") and len(meta["tokenizer_sha256"]) == 64


# ---------------------------------------------------------------------------- bad inputs
def test_resuming_with_another_model_config_is_a_clear_error(manifests, tmp_path):
    train(config(manifests, tmp_path / "a", max_steps=2, val_manifest=None))
    with pytest.raises(CheckpointMismatchError, match=r"model_dim=32 \(asked 64\)"):
        train(config(manifests, tmp_path / "a", resume="auto", model={**TINY, "model_dim": 64}))
    with pytest.raises(CheckpointMismatchError, match=r"--init-checkpoint .*ckpt_00000002.pt: .*"
                                                      r"text_embedding.weight: checkpoint has "
                                                      r"shape \(31, 32\), model has \(41, 32\)"
                       ) as info:
        train(config(manifests, tmp_path / "b", val_manifest=None,
                     init_checkpoint=str(tmp_path / "a" / "ckpt_00000002.pt"),
                     model={"number_text_tokens": 40}))
    assert "\n" not in str(info.value)  # the CLI prints one line
    with pytest.raises(FileNotFoundError):
        train(config(manifests, tmp_path / "c", resume=str(tmp_path / "nope.pt")))
    with pytest.raises(ValueError, match="already holds another run.*--resume auto"):
        train(config(manifests, tmp_path / "a"))  # a fresh run would mix with the old one
    weights_only = save_checkpoint(tmp_path / "w.pt", load_checkpoint(
        tmp_path / "a" / "ckpt_00000002.pt")[0])
    with pytest.raises(ValueError, match="no training state.*--init-checkpoint"):
        train(config(manifests, tmp_path / "d", resume=str(weights_only)))
    assert not torch.are_deterministic_algorithms_enabled()


def test_empty_manifest_and_out_of_range_ids_are_clear_errors(manifests, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.jsonl has no rows"):
        train(config(manifests, tmp_path / "a", train_manifest=str(empty)))
    rows = synthetic_rows(4, 0, "x")
    rows[2]["text_ids"][0] = 30
    bad = write_manifest(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"bad.jsonl line 3 \(row 'x0002'\): text id 30 at "
                                         r"text_ids\[0\] is outside \[0, 30\): the model has "
                                         r"number_text_tokens=30"):
        train(config(manifests, tmp_path / "a", val_manifest=str(bad)))
    with pytest.raises(ValueError, match="train-manifest is required"):
        train(TrainConfig())


def manifest_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def row_json(row: dict) -> bytes:
    return json.dumps(row).encode()


def test_non_utf8_manifest_names_the_file_and_line(manifests, tmp_path, capsys):
    rows = synthetic_rows(2, 0, "x")
    bad = manifest_lines(tmp_path / "latin.jsonl", [row_json(rows[0]), b"",
                                                    row_json(rows[1] | {"text": "caf\xe9"})
                                                    .replace(b"\\u00e9", b"\xe9")])
    with pytest.raises(ValueError, match=r"latin.jsonl line 3: not UTF-8 \(byte \d+ of the line "
                                         r"is b'\\xe9'\); convert the file"):
        read_manifest(bad)
    assert cli.main(["train", "--train-manifest", str(bad), "--output-dir",
                     str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latin.jsonl line 3: not UTF-8" in err
    assert not (tmp_path / "run").exists()  # an input error creates no run folder


def test_manifest_values_errors_name_value_position_and_line(manifests, tmp_path):
    rows = synthetic_rows(12, 0, "x")
    rows[11] |= {"codes": [1, 2, 3, 4, 5, -3, 6], "n_codes": 7}
    lines = [row_json(r) for r in rows[:11]] + [b"", row_json(rows[11])]  # row 12 on line 13
    bad = manifest_lines(tmp_path / "neg.jsonl", lines)
    with pytest.raises(ValueError, match=r"neg.jsonl line 13: code -3 at codes\[5\] is negative"):
        read_manifest(bad)
    with pytest.raises(ValueError, match=r"neg.jsonl line 13: code -3 at codes\[5\]"):
        train(config(manifests, tmp_path / "a", train_manifest=str(bad)))

    rows = synthetic_rows(3, 0, "x")
    rows[1]["codes"][3] = K  # one past the codebook
    high = write_manifest(tmp_path / "high.jsonl", rows)
    with pytest.raises(ValueError, match=r"high.jsonl line 2 \(row 'x0001'\): code 16 at "
                                         r"codes\[3\] is outside \[0, 16\): the codebook has K=16"):
        train(config(manifests, tmp_path / "a", val_manifest=str(high)))

    for change, message in (({"text_ids": "abc"}, r"text_ids must be a list of integers, got str"),
                            ({"codes": [1, True], "n_codes": 2}, r"codes\[1\] = true is not an "
                                                                 r"integer")):
        bad = write_manifest(tmp_path / "types.jsonl", [rows[0] | change])
        with pytest.raises(ValueError, match=rf"types.jsonl line 1: {message}"):
            read_manifest(bad)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(ValueError, match="folder.jsonl is a folder"):
        read_manifest(folder)


def test_manifest_with_a_byte_order_mark_is_read(tmp_path):
    rows = synthetic_rows(2, 0, "x")
    path = manifest_lines(tmp_path / "bom.jsonl", [b"\xef\xbb\xbf" + row_json(rows[0]),
                                                   row_json(rows[1])])
    assert read_manifest(path) == rows and read_manifest(path).lines == [1, 2]


@pytest.mark.parametrize("flags, message", [
    (["--max-minutes", "-1"], "--max-minutes=-1.0 (must be a finite number > 0; omit it"),
    (["--max-minutes", "0"], "--max-minutes=0.0"),
    (["--max-minutes", "nan"], "--max-minutes=nan"),
    (["--max-steps", "0"], "--max-steps=0 (must be a whole number >= 1)"),
    (["--batch-size", "-4"], "--batch-size=-4"),
    (["--learning-rate=-1e-3"], "--learning-rate=-0.001 (must be a finite number >= 0)"),
    (["--learning-rate", "nan"], "--learning-rate=nan"),
    (["--weight-decay", "inf"], "--weight-decay=inf"),
    (["--grad-clip", "nan"], "--grad-clip=nan"),
    (["--new-row-lr", "-1"], "--new-row-lr=-1.0"),
    (["--keep-last", "0"], "--keep-last=0"),
    (["--warmup-steps", "-1"], "--warmup-steps=-1 (must be a whole number >= 0)"),
    (["--seed", "-1"], "--seed=-1 (must be a whole number in [0, 2**32))"),
    (["--heads", "0"], "heads=0 must be a positive integer"),
    (["--layers", "0"], "layers=0 must be a positive integer"),
    (["--dropout", "nan"], "dropout=nan must be in [0, 1)"),
    (["--freeze-base-rows", "40"], "--freeze-base-rows 40 is more than the model's "
                                   "number_text_tokens=30"),
])
def test_bad_numbers_are_one_line_errors_naming_the_flag(manifests, tmp_path, capsys, flags,
                                                         message):
    argv = ["train", "--train-manifest", str(manifests[0]), "--output-dir", str(tmp_path / "r"),
            "--no-progress", "--max-steps", "2", "--batch-size", "8", "--model-dim", "32",
            "--layers", "2", "--heads", "2", "--number-text-tokens", "30",
            "--number-mel-codes", "18"]
    assert cli.main(argv + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list((tmp_path / "r").glob("ckpt_*"))


def test_files_that_are_not_checkpoints_are_one_line_errors(manifests, tmp_path, capsys):
    good = train(config(manifests, tmp_path / "a", max_steps=2, val_manifest=None))["checkpoint"]
    text = tmp_path / "notes.txt"
    text.write_text("hello, not weights\n", encoding="utf-8")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(good).read_bytes()[:5000])
    pickled = tmp_path / "object.pt"
    torch.save({"args": argparse.Namespace(lr=1)}, pickled)
    cases = [("--resume", text, "cannot be read: it is a text file (starts with 'hello, "),
             ("--init-checkpoint", text, "cannot be read: it is a text file"),
             ("--resume", empty, "cannot be read: the file is empty, not a torch checkpoint"),
             ("--resume", cut, "cannot be read: it is truncated or damaged"),
             ("--resume", pickled, "cannot be read: it pickles argparse.Namespace, which a "
                                   "safe (weights-only) load refuses"),
             ("--init-checkpoint", tmp_path / "a", "is a folder; give a checkpoint file"),
             ("--resume", tmp_path / "nope.pt", "checkpoint " + str(tmp_path / "nope.pt")
              + " does not exist")]
    for i, (flag, path, message) in enumerate(cases):
        argv = ["train", "--train-manifest", str(manifests[0]), "--output-dir",
                str(tmp_path / f"r{i}"), "--no-progress", flag, str(path)]
        assert cli.main(argv) == 2, (flag, path)
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag}: ") and str(path) in err, err
        assert message in err and err.count("\n") == 1, err


def test_tokenizer_that_does_not_fit_the_checkpoint_is_refused(manifests, tmp_path):
    first = train(config(manifests, tmp_path / "a", max_steps=2, val_manifest=None))
    tokenizer = tiny_tokenizer(tmp_path)  # 33 pieces; the checkpoint has 30 text tokens
    with pytest.raises(ValueError, match=r"--tokenizer .*sp.model has 33 pieces but "
                                         r"--init-checkpoint .*ckpt_00000002.pt has "
                                         r"number_text_tokens=30.*checkpoint extend"):
        train(config(manifests, tmp_path / "b", val_manifest=None, model={},
                     init_checkpoint=first["checkpoint"], tokenizer=str(tokenizer)))
    with pytest.raises(ValueError, match=r"--tokenizer .*sp.model has 33 pieces but --resume"):
        train(config(manifests, tmp_path / "a", val_manifest=None, resume="auto",
                     tokenizer=str(tokenizer)))
    with pytest.raises(ValueError, match=r"--number-text-tokens 30 but --tokenizer .*sp.model "
                                         r"has 33 pieces"):
        train(config(manifests, tmp_path / "c", val_manifest=None, tokenizer=str(tokenizer)))
    for bad, message in ((tmp_path / "corpus.txt", "is not a SentencePiece model"),
                         (tmp_path / "none.model", "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=rf"--tokenizer {bad} {message}"):
            train(config(manifests, tmp_path / "c", val_manifest=None, tokenizer=str(bad)))
    assert not list((tmp_path / "c").glob("*.json*"))  # nothing written


def test_resume_with_other_batches_or_groups_names_the_checkpoint(manifests, tmp_path):
    train(config(manifests, tmp_path / "a", max_steps=2, val_manifest=None))
    with pytest.raises(ValueError, match=r"--resume .*ckpt_00000002.pt: this run's settings differ "
                                         r"from the checkpoint's: --batch-size 4 \(checkpoint: 8\)"):
        train(config(manifests, tmp_path / "a", val_manifest=None, resume="auto", batch_size=4))
    with pytest.raises(ValueError, match=r"--resume .*ckpt_00000002.pt: this run's settings differ "
                                         r"from the checkpoint's: --freeze-base-rows 20 "
                                         r"\(checkpoint: None\)"):
        train(config(manifests, tmp_path / "a", val_manifest=None, resume="auto",
                     freeze_base_rows=20))
    with pytest.raises(ValueError, match=r"--resume .*ckpt_00000002.pt: the saved data position "
                                         r"belongs to other batches"):
        train(config((manifests[1], manifests[1]), tmp_path / "a", val_manifest=None,
                     resume="auto"))


# ----------------------------------------------------------------------------------- CLI
def test_cli_trains_five_steps(manifests, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--train-manifest", str(manifests[0]), "--val-manifest", str(manifests[1]),
            "--output-dir", str(out), "--max-steps", "5", "--batch-size", "8",
            "--learning-rate", "2e-3", "--text-loss-weight", "0.2", "--mel-loss-weight", "0.8",
            "--warmup-steps", "2", "--weight-decay", "0.01", "--grad-clip", "1.0",
            "--seed", "3", "--no-progress", "--model-dim", "32", "--layers", "2",
            "--heads", "2", "--number-text-tokens", "30", "--number-mel-codes", "18"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 5 and Path(result["checkpoint"]).is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["text_loss_weight"] == 0.2 and saved["model"]["model_dim"] == 32
    assert cli.main(["train", "--train-manifest", str(tmp_path / "none.jsonl"),
                     "--output-dir", str(tmp_path / "cli2"), "--no-progress"]) == 2
    assert "none.jsonl does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("mode, frozen", [("exact", True), ("hook", False)])
def test_freeze_flags_keep_base_rows(manifests, tmp_path, mode, frozen):
    first = train(config(manifests, tmp_path / "a", max_steps=4, val_manifest=None))
    start = weights(first["checkpoint"])
    args = ["train", "--train-manifest", str(manifests[0]), "--output-dir", str(tmp_path / "b"),
            "--init-checkpoint", first["checkpoint"], "--max-steps", "6", "--batch-size", "8",
            "--warmup-steps", "1", "--no-progress", "--freeze-base-rows", "20",
            "--freeze-mode", mode, "--new-row-lr", "1e-2", "--learning-rate", "1e-3",
            "--weight-decay", "0.1", "--new-rows-only-steps", "3"]
    assert cli.main(args) == 0
    after = weights(latest_checkpoint(tmp_path / "b"))
    for name in ("text_embedding.weight", "text_head.weight", "text_head.bias"):
        assert torch.equal(after[name][:20], start[name][:20]) is frozen, name
        assert not torch.equal(after[name][20:], start[name][20:]), name
    assert not torch.equal(after["mel_head.weight"], start["mel_head.weight"])


def test_freeze_flags_reject_bad_values(manifests, tmp_path):
    with pytest.raises(ValueError, match="--freeze-base-rows=0 .must be positive"):
        train(config(manifests, tmp_path / "c", freeze_base_rows=0))
    with pytest.raises(SystemExit):
        cli.main(["train", "--train-manifest", str(manifests[0]), "--freeze-mode", "magic"])


def test_guided_attention_flag_trains_the_alignment_and_resumes_exactly(manifests, tmp_path):
    """The synthetic codes follow the text in order (two codes a token): the guide loss falls."""
    plain = train(config(manifests, tmp_path / "plain", max_steps=4, val_manifest=None))
    rows = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert "guide_loss" not in rows[-1]  # off by default, as in the IndexTTS2 trainer

    args = ["train", "--train-manifest", str(manifests[0]), "--output-dir", str(tmp_path / "g"),
            "--max-steps", "40", "--batch-size", "8", "--warmup-steps", "2", "--no-progress",
            "--learning-rate", "3e-3", "--guided-attention-weight", "1.0",
            "--guided-attention-sigma", "0.2", "--model-dim", "32", "--layers", "2",
            "--heads", "2", "--number-text-tokens", "30", "--number-mel-codes", "18"]
    assert cli.main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    guide = [r["guide_loss"] for r in rows if r["split"] == "train"]
    assert len(guide) == 4 and guide[-1] < 0.7 * guide[0]
    assert all(r["loss"] > r["mel_loss"] for r in rows if r["split"] == "train")

    straight = train(config(manifests, tmp_path / "a", guided_attention_weight=0.5))
    cfg = config(manifests, tmp_path / "b", guided_attention_weight=0.5)
    stop_at(cfg, 6)  # after the checkpoint of step 4
    cfg.resume = "auto"
    resumed = train(cfg)
    assert_identical(weights(straight["checkpoint"]), weights(resumed["checkpoint"]))
    assert not torch.equal(weights(straight["checkpoint"])["mel_head.weight"],
                           weights(plain["checkpoint"])["mel_head.weight"])
    with pytest.raises(ValueError, match="--guided-attention-weight=-1"):
        train(config(manifests, tmp_path / "c", guided_attention_weight=-1.0))
    with pytest.raises(ValueError, match="--guided-attention-sigma=0"):
        train(config(manifests, tmp_path / "c", guided_attention_sigma=0.0))
