"""LoRA adapters on the transformer blocks (``--lora-rank``, :mod:`amhelpers.lora`), on the tiny
synthetic setup of test_train: what trains, merge on save, exact resume, refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_train import TINY, assert_identical, config, stop_at, synthetic_rows, weights

from amhelpers import lora, recipes
from amhelpers.ckptio import read_checkpoint
from amhelpers.data import write_manifest
from amhelpers.model import MiniVoice, MiniVoiceConfig
from amhelpers.train import TrainConfig, train

pytest.importorskip("peft", reason="peft is a dependency of amhelpers: run python -m amhelpers.setup")


@pytest.fixture
def manifests(tmp_path):
    return tuple(write_manifest(tmp_path / f"{split}.jsonl", synthetic_rows(n, seed, split[:2]))
                 for split, n, seed in (("train", 64, 0), ("val", 16, 1)))


def tiny_model() -> MiniVoice:
    torch.manual_seed(0)
    return MiniVoice(MiniVoiceConfig(number_text_tokens=40, number_mel_codes=24, **{
        k: v for k, v in TINY.items() if k not in ("number_text_tokens", "number_mel_codes")}))


def test_adapters_replace_the_blocks_and_the_rest_keeps_its_flags():
    model = tiny_model()
    model.mel_head.requires_grad_(False)  # a flag set before LoRA survives it
    layers = lora.add_lora(model, rank=2, alpha=4.0)
    assert len(layers) == 4 * model.config.layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, _ in model.named_parameters():
        if name.startswith("gpt."):
            assert (name in trainable) == (".lora_" in name), name
        else:
            assert (name in trainable) == (not name.startswith("mel_head.")), name
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert adapters == sum(2 * (m.in_features + m.out_features) for m in (
        model.get_submodule(n).base_layer for n in layers))
    with pytest.raises(ValueError, match="already has adapters"):
        lora.add_lora(model, 2, 4.0)
    with pytest.raises(ValueError, match="rank=0"):
        lora.add_lora(tiny_model(), 0, 4.0)


def test_merged_weights_load_into_a_plain_model_and_give_the_same_output():
    model = tiny_model()
    lora.add_lora(model, rank=2, alpha=4.0)
    with torch.no_grad():  # B starts at zero: give the adapters a non-zero update
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    merged = lora.merged_state_dict(model)
    plain = tiny_model()
    assert merged.keys() == plain.state_dict().keys()
    plain.load_state_dict(merged)
    assert not torch.equal(merged["gpt.0.attn.c_attn.weight"],
                           model.gpt[0].attn.c_attn.base_layer.weight)
    ids = torch.tensor([[3, 4, 5, 6]])
    codes = torch.tensor([[1, 2, 3]])
    batch = {"text_ids": ids, "text_lengths": torch.tensor([4]), "codes": codes,
             "code_lengths": torch.tensor([3])}
    model.eval()
    plain.eval()
    with torch.no_grad():
        a, b = model(**batch), plain(**batch)
    assert torch.allclose(a["mel_loss"], b["mel_loss"], atol=1e-5)


def test_lora_run_keeps_block_weights_trains_adapters_and_resumes_bit_identically(
        tmp_path, manifests, one_thread):
    first = train(config(manifests, tmp_path / "a", max_steps=1, save_every=1))
    start = weights(first["checkpoint"])
    cfg = config(manifests, tmp_path / "b", init_checkpoint=first["checkpoint"], lora_rank=2,
                 decay="all", weight_decay=0.1)
    whole = train(cfg)
    payload = read_checkpoint(whole["checkpoint"])
    end = weights(whole["checkpoint"])  # a plain MiniVoice checkpoint: the merged weights
    assert end.keys() == start.keys()
    state = payload["train_state"]["lora"]["tensors"]
    for name in start:
        if name.startswith("gpt.") and ".ln_" not in name:  # an adapted layer
            base = state[name.replace(".weight", ".base_layer.weight").replace(
                ".bias", ".base_layer.bias")]
            assert torch.equal(base, start[name]), name  # its own weight never moved
            assert torch.equal(end[name], start[name]) == name.endswith(".bias"), name
        else:
            assert torch.equal(end[name], start[name]) == name.startswith("gpt."), name
    # Killed at step 6 (last checkpoint: step 4), resumed: the same weights and adapters.
    part = dataclasses.replace(cfg, output_dir=str(tmp_path / "part"))
    stop_at(part, 6)
    with pytest.raises(ValueError, match="--lora-rank 4"):
        train(dataclasses.replace(part, lora_rank=4, resume="auto"))
    resumed = train(dataclasses.replace(part, resume="auto"))
    assert_identical(weights(resumed["checkpoint"]), end)
    assert_identical(read_checkpoint(resumed["checkpoint"])["train_state"]["lora"]["tensors"],
                     state)


def test_lora_settings_are_checked_and_carried_by_recipes(tmp_path, manifests):
    for values, flag in (({"lora_rank": -1}, "--lora-rank=-1"),
                         ({"lora_rank": 4, "lora_alpha": 0.0}, "--lora-alpha=0.0"),
                         ({"lora_rank": 4, "freeze_layers": 1}, "choose one")):
        with pytest.raises(ValueError, match=flag):
            TrainConfig(train_manifest="t.jsonl", **values).check()
    plain = train(config(manifests, tmp_path / "plain", max_steps=4))
    with pytest.raises(ValueError, match=r"--lora-rank 2 \(checkpoint: 0\)"):
        train(config(manifests, tmp_path / "plain", max_steps=8, resume=plain["checkpoint"],
                     lora_rank=2))
    fix = recipes.with_settings(recipes.FIX, 1e-3, 100, lora_rank=8)
    assert fix.train_config(500, 1e-3, 100, train_manifest="t.jsonl").lora_rank == 8
    with pytest.raises(ValueError, match="lora_rank"):
        recipes.with_settings(recipes.FIX, 1e-3, 100, lora_rank=-8)
