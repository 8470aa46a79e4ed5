"""Manifests, batching and the training loop: exact resume, determinism, checkpoints, logs, CLI.

Synthetic manifests (codes are a function of the text, so there is something to learn) and a
tiny model (d=32, 2 layers, 30 text tokens, K=16) keep each run to a second or two.
"""

from __future__ import annotations

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
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
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


def test_init_checkpoint_and_hooks(manifests, tmp_path):
    first = train(config(manifests, tmp_path / "a", max_steps=4, val_manifest=None))
    start = weights(first["checkpoint"])
    seen = {}

    def groups(model, cfg):  # freeze the text embedding by leaving it out
        model.text_embedding.weight.requires_grad_(False)
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def on_start(model, optimizer, step):
        seen["start"] = (step, torch.equal(model.mel_head.weight, start["mel_head.weight"]))

    steps = []
    result = train(config(manifests, tmp_path / "b", max_steps=5, val_manifest=None,
                          init_checkpoint=first["checkpoint"], model={}),
                   param_groups_fn=groups, on_start=on_start,
                   on_step=lambda model, optimizer, step: steps.append(step))
    assert seen["start"] == (0, True) and steps == [1, 2, 3, 4, 5]
    after = weights(result["checkpoint"])
    assert torch.equal(after["text_embedding.weight"], start["text_embedding.weight"])
    assert not torch.equal(after["mel_head.weight"], start["mel_head.weight"])


def test_time_budget_stops_and_saves(manifests, tmp_path):
    result = train(config(manifests, tmp_path / "a", max_minutes=0.0))
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


def test_tokenizer_sets_the_text_table_size_and_is_recorded(manifests, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(6))
                                for _ in range(200)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=33, model_type="bpe", minloglevel=2)
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
    with pytest.raises(CheckpointMismatchError, match=r"text_embedding.weight: checkpoint has "
                                                      r"shape \(31, 32\), model has \(41, 32\)"):
        train(config(manifests, tmp_path / "b", val_manifest=None,
                     init_checkpoint=str(tmp_path / "a" / "ckpt_00000002.pt"),
                     model={"number_text_tokens": 40}))
    with pytest.raises(FileNotFoundError):
        train(config(manifests, tmp_path / "c", resume=str(tmp_path / "nope.pt")))
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume auto"):
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
    with pytest.raises(ValueError, match=r"bad.jsonl: row 'x0002' has text id 30 but the model "
                                         r"has number_text_tokens=30"):
        train(config(manifests, tmp_path / "a", val_manifest=str(bad)))
    with pytest.raises(ValueError, match="train-manifest is required"):
        train(TrainConfig())


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
    with pytest.raises(ValueError, match="--freeze-base-rows must be positive"):
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

    def crash(model, optimizer, step):
        if step == 6:  # after the checkpoint of step 4
            raise KeyboardInterrupt

    cfg = config(manifests, tmp_path / "b", guided_attention_weight=0.5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=crash)
    cfg.resume = "auto"
    resumed = train(cfg)
    assert_identical(weights(straight["checkpoint"]), weights(resumed["checkpoint"]))
    assert not torch.equal(weights(straight["checkpoint"])["mel_head.weight"],
                           weights(plain["checkpoint"])["mel_head.weight"])
    with pytest.raises(ValueError, match="guided_attention_weight=-1"):
        train(config(manifests, tmp_path / "c", guided_attention_weight=-1.0))
    with pytest.raises(ValueError, match="guided_attention_sigma=0"):
        train(config(manifests, tmp_path / "c", guided_attention_sigma=0.0))
