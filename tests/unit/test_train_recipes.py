"""One route for a recipe into training: :class:`TrainConfig` carries the freeze, the new-row
learning rate, the decay policy and the staged schedule (issue 11).

Chapters 3 and 4 used to pass closures (``param_groups_fn``, ``on_start``) beside the config.
:func:`reference_train` is that route written out as a plain loop: one AdamW group unless the
recipe sets a new-row learning rate or weight-only decay (then ``param_groups``), the freeze
attached after the optimizer is built. Each course recipe trained through
``Finetune.train_config`` must give the same weights, bit for bit.

Tiny model and synthetic manifests from ``test_train``: about a second a run.
"""

from __future__ import annotations

import dataclasses
import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY, assert_identical, config, synthetic_rows, weights

from amhelpers import __main__ as cli
from amhelpers import embedded
from amhelpers.data import LengthBucketBatches, collate, read_manifest, write_manifest
from amhelpers.freeze import DEFAULT_NAMES, freeze_base_rows
from amhelpers.model import MiniVoice, MiniVoiceConfig, load_checkpoint
from amhelpers.optim import param_groups, warmup_cosine
from amhelpers.train import train, weighted_loss

B = 20  # base rows of the tiny model's 31-row text tables; rows 20..30 play the new ones
STEPS = 12

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Manifests and a trained "grown" checkpoint to fine-tune from (dropout 0.1: RNG matters)."""
    folder = tmp_path_factory.mktemp("recipes")
    manifests = (write_manifest(folder / "train.jsonl", synthetic_rows(64, 0, "tr")),
                 write_manifest(folder / "val.jsonl", synthetic_rows(16, 1, "va")))
    init = train(config(manifests, folder / "init", max_steps=4, val_manifest=None,
                        model={**TINY, "dropout": 0.1}))
    return {"train": manifests[0], "val": manifests[1], "init": Path(init["checkpoint"]),
            "folder": folder}


def reference_train(spec: embedded.Finetune, data: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The closure route of ``embedded.finetune`` before issue 11, as a textbook loop."""
    payload = torch.load(data["init"], map_location="cpu", weights_only=True)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = MiniVoice(MiniVoiceConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    model.train()
    if spec.decay == "all" and spec.new_row_lr is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        groups = param_groups(model, B, spec.new_row_lr or spec.learning_rate,
                              spec.learning_rate, spec.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        warmup_cosine, warmup_steps=spec.warmup_steps, max_steps=STEPS))
    if spec.freeze:
        freeze_base_rows(model, B, mode=spec.freeze).attach(optimizer)
    rows = read_manifest(data["train"])
    sampler = LengthBucketBatches([len(r["text_ids"]) + len(r["codes"]) for r in rows], 8,
                                  seed=0)
    batches = (b for _ in range(STEPS) for b in sampler)
    for _ in range(STEPS):
        batch = collate([rows[i] for i in next(batches)])
        out = model(**{k: batch[k] for k in ("text_ids", "text_lengths", "codes",
                                              "code_lengths")})
        loss = weighted_loss(out, spec.text_loss_weight, spec.mel_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    return model.state_dict()


def trainer_run(spec: embedded.Finetune, data: dict[str, Path], out: Path, on_step=None,
                **settings) -> dict:
    run = {"train_manifest": str(data["train"]), "output_dir": str(out),
           "init_checkpoint": str(data["init"]), "max_steps": STEPS, "batch_size": 8,
           "save_every": STEPS, "seed": 0, "progress": False, **settings}
    return train(spec.train_config(B, **run), on_step=on_step)


# The course's recipes, with learning rates x100 so 12 steps move every weight far.
RECIPES = [dataclasses.replace(spec, learning_rate=spec.learning_rate * 100,
                               new_row_lr=spec.new_row_lr and spec.new_row_lr * 100)
           for spec in (embedded.ORIGINAL, embedded.ORIGINAL_FIX, embedded.FIX,
                        embedded.FIX_NO_FREEZE)]


@pytest.mark.parametrize("spec", RECIPES, ids=[s.name for s in RECIPES])
def test_course_recipes_train_bit_identically_through_the_config(spec, data, tmp_path):
    result = trainer_run(spec, data, tmp_path / spec.name)
    trained = weights(result["checkpoint"])
    assert_identical(reference_train(spec, data), trained)
    start = load_checkpoint(data["init"])[0].state_dict()
    for name in DEFAULT_NAMES:  # the freeze went through the config: exact keeps every bit
        frozen = torch.equal(trained[name][:B], start[name][:B])
        assert frozen is (spec.freeze == "exact"), (spec.name, name)


def test_recipe_fields_are_the_trainers_settings():
    """A recipe reaches the trainer only as TrainConfig settings of the same names."""
    cfg = embedded.FIX.train_config(B, train_manifest="t.jsonl")
    assert (cfg.freeze_base_rows, cfg.freeze_mode, cfg.decay) == (B, "exact", "weights")
    assert (cfg.learning_rate, cfg.new_row_lr) == (embedded.FIX.learning_rate,
                                                    embedded.FIX.new_row_lr)
    assert embedded.ORIGINAL.train_config(B).freeze_base_rows is None
    spec = dataclasses.replace(embedded.FIX, freeze="exact-sparse", new_rows_only_steps=3,
                               text_loss_weight=0.2, mel_loss_weight=0.8)
    cfg = spec.train_config(B)
    assert (cfg.freeze_mode, cfg.new_rows_only_steps) == ("exact-sparse", 3)
    assert (cfg.text_loss_weight, cfg.mel_loss_weight) == (0.2, 0.8)
    shared = {f.name for f in dataclasses.fields(embedded.Finetune)} - {"name", "init", "steps",
                                                                       "freeze", "extension"}
    assert all(getattr(cfg, name) == getattr(spec, name) for name in shared)


def test_staged_exact_sparse_recipe_keeps_base_rows_and_resumes_exactly(data, tmp_path):
    spec = dataclasses.replace(embedded.FIX, learning_rate=1e-2, new_row_lr=1e-1,
                               freeze="exact-sparse", new_rows_only_steps=4)
    straight = trainer_run(spec, data, tmp_path / "a")
    trained = weights(straight["checkpoint"])
    start = load_checkpoint(data["init"])[0].state_dict()
    for name in DEFAULT_NAMES:
        assert torch.equal(trained[name][:B], start[name][:B]), name
        assert not torch.equal(trained[name][B:], start[name][B:]), name
    state = torch.load(straight["checkpoint"], weights_only=True)["train_state"]["optimizer"]
    rows = {tuple(s["exp_avg"].shape) for s in state["state"].values()}
    assert (31 - B, 32) in rows and (31, 32) not in rows  # Adam state only for the new rows

    def crash(model, optimizer, step):
        if step == 9:  # after the checkpoint of step 8
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer_run(spec, data, tmp_path / "b", on_step=crash, save_every=4)
    resumed = trainer_run(spec, data, tmp_path / "b", save_every=4, resume="auto")
    assert_identical(trained, weights(resumed["checkpoint"]))


def test_cli_offers_exact_sparse_and_the_decay_policy(data, tmp_path):
    out = tmp_path / "cli"
    argv = ["train", "--train-manifest", str(data["train"]), "--output-dir", str(out),
            "--init-checkpoint", str(data["init"]), "--max-steps", "3", "--batch-size", "8",
            "--no-progress", "--freeze-base-rows", str(B), "--freeze-mode", "exact-sparse",
            "--decay", "weights", "--weight-decay", "0.1", "--learning-rate", "1e-2"]
    assert cli.main(argv) == 0
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["freeze_mode"], saved["decay"]) == ("exact-sparse", "weights")
    ckpt = torch.load(out / "ckpt_00000003.pt", weights_only=True)
    decay = {g["name"]: g["weight_decay"] for g in ckpt["train_state"]["optimizer"]["param_groups"]}
    assert decay == {"tables/decay": 0.1, "tables/no_decay": 0.0, "body/decay": 0.1,
                     "body/no_decay": 0.0}
    start = load_checkpoint(data["init"])[0].state_dict()
    for name in DEFAULT_NAMES:
        assert torch.equal(ckpt["model"][name][:B], start[name][:B]), name


def test_zero_new_row_learning_rate_is_zero_not_the_body_rate(data, tmp_path):
    """``--new-row-lr 0`` used to fall back to --learning-rate (``new_row_lr or lr``)."""
    spec = dataclasses.replace(embedded.FIX_NO_FREEZE, learning_rate=1e-2, new_row_lr=0.0)
    trained = weights(trainer_run(spec, data, tmp_path / "a")["checkpoint"])
    start = load_checkpoint(data["init"])[0].state_dict()
    assert torch.equal(trained["text_embedding.weight"], start["text_embedding.weight"])
    assert not torch.equal(trained["mel_head.weight"], start["mel_head.weight"])


def test_resume_with_another_freeze_mode_is_a_clear_error(data, tmp_path):
    """exact -> exact-sparse has the same groups but smaller table state: it used to fail at
    the first step with "The size of tensor a (31) must match the size of tensor b (11)"."""
    spec = dataclasses.replace(embedded.FIX, freeze="exact")
    trainer_run(spec, data, tmp_path / "a", max_steps=4, save_every=4)
    sparse = dataclasses.replace(spec, freeze="exact-sparse")
    with pytest.raises(ValueError, match=r"--resume .*ckpt_00000004.pt: its optimizer state does "
                                         r"not fit this run's parameter groups \(exp_avg of shape "
                                         r"\(31, 32\) for a parameter of shape \(11, 32\)\); "
                                         r"resume with the run's own --freeze-base-rows, "
                                         r"--freeze-mode"):
        trainer_run(sparse, data, tmp_path / "a", max_steps=8, resume="auto")
