"""One route for a recipe into training: :class:`TrainConfig` carries the freeze, the new-row
learning rate, the decay policy and the staged schedule (issue 11).

Chapters 3 and 4 used to pass closures (``param_groups_fn``, ``on_start``) beside the config.
:func:`reference_train` is that route written out as a plain loop: one AdamW group unless the
recipe sets a new-row learning rate or weight-only decay (then ``param_groups``), the freeze
attached after the optimizer is built. Each course recipe trained through
``Recipe.train_config`` must give the same weights, bit for bit.

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
from amhelpers import recipes
from amhelpers.data import LengthBucketBatches, collate, read_manifest, write_manifest
from amhelpers.freeze import DEFAULT_NAMES, freeze_base_rows
from amhelpers.model import MiniVoice, MiniVoiceConfig, load_checkpoint
from amhelpers.optim import param_groups, warmup_cosine
from amhelpers.train import train, weighted_loss

PRETRAIN_LR = 0.1  # the tiny model's rates are these ratios x 0.1, so 12 steps move every weight
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


def reference_train(spec: recipes.Recipe, data: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The closure route of ``embedded.finetune`` before issue 11, as a textbook loop."""
    payload = torch.load(data["init"], map_location="cpu", weights_only=True)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = MiniVoice(MiniVoiceConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    model.train()
    lr, new_row_lr = spec.lr_ratio * PRETRAIN_LR, spec.new_row_lr_ratio
    new_row_lr = lr if new_row_lr is None else new_row_lr * PRETRAIN_LR
    if spec.decay == "all" and spec.new_row_lr_ratio is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        groups = param_groups(model, B, new_row_lr, lr, spec.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=spec.weight_decay)
    warmup = max(1, round(spec.warmup_fraction * STEPS))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        warmup_cosine, warmup_steps=warmup, max_steps=STEPS))
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


def trainer_run(spec: recipes.Recipe, data: dict[str, Path], out: Path, on_step=None,
                **settings) -> dict:
    run = {"train_manifest": str(data["train"]), "output_dir": str(out),
           "init_checkpoint": str(data["init"]), "batch_size": 8,
           "save_every": STEPS, "seed": 0, "progress": False, **settings}
    return train(spec.train_config(B, PRETRAIN_LR, run.pop("max_steps", STEPS), **run),
                 on_step=on_step)


# The course's recipes as they are (their rates are ratios to PRETRAIN_LR).
RECIPES = [recipes.ORIGINAL, recipes.ORIGINAL_FIX, recipes.FIX, recipes.FIX_NO_FREEZE]


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
    cfg = recipes.FIX.train_config(B, 1e-3, 300, train_manifest="t.jsonl")
    assert (cfg.freeze_base_rows, cfg.freeze_mode, cfg.decay) == (B, "exact", "weights")
    assert (cfg.learning_rate, cfg.new_row_lr, cfg.max_steps) == (1e-4, 1e-3, 300)
    assert recipes.ORIGINAL.train_config(B, 1e-3, 300).freeze_base_rows is None
    spec = dataclasses.replace(recipes.FIX, freeze="exact-sparse", new_rows_only_fraction=0.25,
                               text_loss_weight=0.3, mel_loss_weight=0.7)
    cfg = spec.train_config(B, 1e-3, 12)
    assert (cfg.freeze_mode, cfg.new_rows_only_steps) == ("exact-sparse", 3)
    assert (cfg.text_loss_weight, cfg.mel_loss_weight) == (0.3, 0.7)
    shared = {f.name for f in dataclasses.fields(recipes.Recipe)} - {
        "name", "init", "steps", "freeze", "extension", "lr_ratio", "new_row_lr_ratio",
        "warmup_fraction", "new_rows_only_fraction", "pretrained"}
    assert all(getattr(cfg, name) == getattr(spec, name) for name in shared)


def test_recipes_map_the_team_rates_through_the_pretraining_rate():
    """The team's 2e-5 and the fix's 5e-6 on IndexTTS2 (pretrained at the assumed 2e-4) are
    ratios 0.1 and 0.025; on the mini model (1e-3) 1e-4 and 2.5e-5. Warmup: 1,000 of 38k steps
    and 2,000 of 25k, so 8 and 24 of a 300-step run."""
    team, fix = recipes.ORIGINAL, recipes.ORIGINAL_FIX
    assert team.learning_rates(recipes.INDEXTTS2_PRETRAIN_LR)[0] == pytest.approx(2e-5)
    assert fix.learning_rates(recipes.INDEXTTS2_PRETRAIN_LR)[0] == pytest.approx(5e-6)
    assert team.learning_rates(1e-3) == (pytest.approx(1e-4), None)
    assert fix.learning_rates(1e-3)[0] == pytest.approx(2.5e-5)
    assert (team.schedule_steps(300), fix.schedule_steps(300)) == ((8, 0), (24, 0))
    assert (team.text_loss_weight, team.mel_loss_weight) == (0.2, 0.8)
    assert (fix.text_loss_weight, fix.mel_loss_weight) == (0.4, 0.6)
    assert team.schedule_steps(10) == (1, 0)  # never a zero-step warmup
    rows = recipes.mapping_rows([team, fix, recipes.FIX], 1e-3, 300)
    assert [r[:4] for r in rows] == [("original", "0.1", "2e-05", "0.0001"),
                                     ("original_fix", "0.025", "5e-06", "2.5e-05"),
                                     ("fix", "0.1", "2e-05", "0.0001")]
    assert rows[2][4:6] == ("1", "0.001") and len(rows[0]) == len(recipes.MAPPING_COLUMNS)


def test_staged_exact_sparse_recipe_keeps_base_rows_and_resumes_exactly(data, tmp_path):
    spec = dataclasses.replace(recipes.FIX, freeze="exact-sparse", new_rows_only_fraction=1 / 3)
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
    spec = dataclasses.replace(recipes.FIX_NO_FREEZE, new_row_lr_ratio=0.0)
    trained = weights(trainer_run(spec, data, tmp_path / "a")["checkpoint"])
    start = load_checkpoint(data["init"])[0].state_dict()
    assert torch.equal(trained["text_embedding.weight"], start["text_embedding.weight"])
    assert not torch.equal(trained["mel_head.weight"], start["mel_head.weight"])


def test_resume_with_another_freeze_mode_is_a_clear_error(data, tmp_path):
    """exact -> exact-sparse has the same groups but smaller table state: it used to fail at
    the first step with "The size of tensor a (31) must match the size of tensor b (11)"."""
    spec = dataclasses.replace(recipes.FIX, freeze="exact")
    trainer_run(spec, data, tmp_path / "a", max_steps=4, save_every=4)
    sparse = dataclasses.replace(spec, freeze="exact-sparse")
    with pytest.raises(ValueError, match=r"--resume .*ckpt_00000004.pt: this run's settings "
                                         r"differ from the checkpoint's: --freeze-mode "
                                         r"exact-sparse \(checkpoint: exact\)\. Resume with the "
                                         r"checkpoint's settings"):
        trainer_run(sparse, data, tmp_path / "a", max_steps=8, resume="auto")


@pytest.mark.parametrize("change, named", [
    ({"lr_ratio": 0.2}, r"--learning-rate 0\.02 \(checkpoint: 0\.01\)"),
    ({"text_loss_weight": 0.4, "mel_loss_weight": 0.6},
     r"--text-loss-weight 0\.4 \(checkpoint: 0\.2\); --mel-loss-weight 0\.6 \(checkpoint: 0\.8\)"),
    ({"freeze": None}, r"--freeze-base-rows None \(checkpoint: 20\)"),
    ({"decay": "all"}, r"--decay all \(checkpoint: weights\)"),
])
def test_resume_with_another_recipe_names_the_difference(data, tmp_path, change, named):
    trainer_run(recipes.FIX, data, tmp_path / "a", max_steps=4, save_every=4)
    with pytest.raises(ValueError, match=named):
        trainer_run(dataclasses.replace(recipes.FIX, **change), data, tmp_path / "a",
                    max_steps=4, resume="auto")


def test_resume_with_another_batch_seed_or_tokenizer_names_the_difference(data, tmp_path):
    trainer_run(recipes.FIX, data, tmp_path / "a", max_steps=4, save_every=4)
    for settings, named in (({"batch_size": 4}, r"--batch-size 4 \(checkpoint: 8\)"),
                            ({"seed": 1}, r"--seed 1 \(checkpoint: 0\)")):
        with pytest.raises(ValueError, match=named):
            trainer_run(recipes.FIX, data, tmp_path / "a", max_steps=4, resume="auto", **settings)
    other = tmp_path / "other.model"
    other.write_bytes(b"not the checkpoint's tokenizer")
    from amhelpers.trainconfig import check_resume_settings

    meta = {"tokenizer": "t.model", "tokenizer_sha256": "a" * 64, "train_config": {}}
    with pytest.raises(ValueError, match=r"--tokenizer .*other.model \(sha256 [0-9a-f]{12}; the "
                                         r"checkpoint was trained with t.model, sha256 aaaaaaaaaaaa\)"):
        check_resume_settings(recipes.FIX.train_config(B, PRETRAIN_LR, 4, tokenizer=str(other)),
                              meta, "b" * 64, Path("ckpt.pt"))


def test_notebook_settings_become_a_recipe_with_rates_as_ratios():
    """Chapter 5's parameters are absolute trainer settings; the recipe keeps ratios/fractions."""
    spec = recipes.with_settings(recipes.preset("original"), 1e-3, 300, learning_rate=2.5e-5,
                                 warmup_steps=24, freeze_mode="hook", new_row_lr=None)
    assert spec.lr_ratio == pytest.approx(0.025) and spec.warmup_fraction == pytest.approx(0.08)
    assert spec.freeze == "hook" and spec.new_row_lr_ratio is None and spec.steps == 300
    assert spec.train_config(B, 1e-3, 300).warmup_steps == 24
    assert recipes.with_settings(recipes.FIX, 1e-3, 300, freeze_mode="none").freeze is None
    assert recipes.with_settings(recipes.FIX, 1e-3, 40) == dataclasses.replace(recipes.FIX, steps=40)


@pytest.mark.parametrize("call, message", [
    (lambda: recipes.preset("fixx"), r"RECIPE='fixx' is not a recipe; choose from original, "),
    (lambda: recipes.with_settings(recipes.FIX, 1e-3, 300, warmup_steps=500),
     r"warmup_steps=500 must be between 0 and the run's 300 steps"),
    (lambda: recipes.with_settings(recipes.FIX, 1e-3, 300, learning_rate=-0.1),
     r"learning_rate=-0.1 must be a number >= 0"),
    (lambda: recipes.with_settings(recipes.FIX, 1e-3, 300, learning_rat=0.1),
     r"unknown recipe setting\(s\) learning_rat; known: "),
])
def test_bad_recipe_settings_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_negative_data_regime_is_refused_before_any_work():
    from amhelpers import embedded

    with pytest.raises(ValueError, match=r"phrases=-1: give a number of phrases > 0, 0 for every "
                                         r"phrase, or None"):
        embedded.run_folder(embedded.profile("quick"), recipes.FIX, phrases=-1)
