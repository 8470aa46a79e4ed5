"""Exact freezing on the real IndexTTS2 GPT class (a tiny UnifiedVoice).

Needs the optional extra (``python -m amhelpers.setup --extras dev,indextts``); skipped
without it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amhelpers.freeze import DEFAULT_NAMES, freeze_base_rows
from amhelpers.indextts import INSTALL_HINT, load_unifiedvoice_class, tiny_unifiedvoice

BASE_TOKENS, NEW_TOKENS = 100, 40  # 101 base rows (the "+1" row included) -> 141 rows


@pytest.fixture(scope="module")
def unifiedvoice_cls():
    try:
        return load_unifiedvoice_class()
    except ImportError as err:
        pytest.skip(f"indextts2-inference is not installed ({INSTALL_HINT}): {err}")


def extend_text_tables(model: nn.Module, new_tokens: int) -> None:
    """Grow text_embedding / text_head by ``new_tokens`` rows, copying the old rows."""
    old_emb, old_head = model.text_embedding, model.text_head
    rows, dim = old_emb.weight.shape
    emb = nn.Embedding(rows + new_tokens, dim)
    nn.init.normal_(emb.weight, 0.0, 0.02)
    head = nn.Linear(dim, rows + new_tokens)
    with torch.no_grad():
        emb.weight[:rows] = old_emb.weight
        head.weight[:rows] = old_head.weight
        head.bias[:rows] = old_head.bias
    model.text_embedding, model.text_head = emb, head
    model.number_text_tokens += new_tokens


def test_tiny_unifiedvoice_extend_and_freeze_exactly(unifiedvoice_cls):
    torch.manual_seed(0)
    base = tiny_unifiedvoice(number_text_tokens=BASE_TOKENS)
    assert isinstance(base, unifiedvoice_cls)
    assert base.text_embedding.weight.shape[0] == BASE_TOKENS + 1
    assert base.text_head.weight.shape[0] == BASE_TOKENS + 1

    model = tiny_unifiedvoice(number_text_tokens=BASE_TOKENS)
    model.load_state_dict(base.state_dict())
    extend_text_tables(model, NEW_TOKENS)
    # the extended model has exactly the layout UnifiedVoice builds for the bigger tokenizer
    reference = tiny_unifiedvoice(number_text_tokens=BASE_TOKENS + NEW_TOKENS)
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == expected

    base_rows = BASE_TOKENS + 1
    before = {n: model.get_parameter(n).detach().clone() for n in DEFAULT_NAMES}
    body_before = model.gpt.h[0].mlp.c_fc.weight.detach().clone()
    handle = freeze_base_rows(model, base_rows, mode="exact")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    handle.attach(opt)

    gen = torch.Generator().manual_seed(0)
    rows = base_rows + NEW_TOKENS
    model.train()
    for _ in range(3):
        opt.zero_grad()
        ids = torch.randint(0, rows, (2, 8), generator=gen)
        # the real GPT-2 stack (zero conditioning): text_embedding -> gpt -> text_head
        emb = model.text_embedding(ids) + model.text_pos_embedding(ids)
        cond = torch.zeros(2, 1, emb.shape[-1])
        logits = model.get_logits(cond, emb, model.text_head)  # (B, rows, N)
        loss = F.cross_entropy(logits[:, :, :-1], ids[:, 1:])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    handle.verify()
    for name in DEFAULT_NAMES:
        now = model.get_parameter(name).detach()
        assert torch.equal(now[:base_rows], before[name][:base_rows]), name
        assert not torch.equal(now[base_rows:], before[name][base_rows:]), name
    assert not torch.equal(model.gpt.h[0].mlp.c_fc.weight, body_before)
    assert {k: v.shape for k, v in model.state_dict().items()} == expected
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())  # strict: loads into the real class


def test_hook_mode_leaks_on_unifiedvoice(unifiedvoice_cls):
    torch.manual_seed(1)
    model = tiny_unifiedvoice(number_text_tokens=BASE_TOKENS + NEW_TOKENS)
    handle = freeze_base_rows(model, BASE_TOKENS + 1, mode="hook")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        opt.zero_grad()
        ids = torch.randint(0, BASE_TOKENS + NEW_TOKENS + 1, (2, 8), generator=gen)
        loss = F.cross_entropy(model.text_head(model.text_embedding(ids)).flatten(0, 1),
                               ids.flatten())
        loss.backward()
        opt.step()
    with pytest.raises(AssertionError, match="hook mode only zeroes gradients"):
        handle.verify()


def test_missing_package_names_the_setup_command(monkeypatch):
    import importlib.util
    import sys

    for name in [n for n in sys.modules if n == "indextts" or n.startswith("indextts.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(ImportError, match=r"python -m amhelpers\.setup --extras dev,indextts"):
        load_unifiedvoice_class()
    assert "indextts" not in sys.modules


def test_real_size_benchmark_runs_small_and_measures_peft_trainable_tokens(
        unifiedvoice_cls, tmp_path, capsys):
    """benchmarks/bench_unifiedvoice.py on a tiny config.yaml: every mode's lines, exact modes
    bit-identical, and PEFT's TrainableTokens beside them (keys changed, the head's bias)."""
    import json
    import sys
    from pathlib import Path

    import yaml

    from amhelpers.indextts import tiny_config

    pytest.importorskip("peft")
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import bench_unifiedvoice
    finally:
        sys.path.remove(str(bench))
    gpt = {k: v for k, v in tiny_config(BASE_TOKENS).items() if k != "checkpointing"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpt": gpt}), encoding="utf-8")
    assert bench_unifiedvoice.main(["--config", str(config), "--base-tokens", str(BASE_TOKENS),
                                    "--text-tokens", str(BASE_TOKENS + NEW_TOKENS),
                                    "--rounds", "1", "--steps", "1", "--text-len", "8",
                                    "--mel-len", "16", "--threads", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    state = {x["mode"]: x for x in lines if x["bench"] == "unifiedvoice_freeze_optimizer_state"}
    assert set(state) == {"none", "hook", "exact", "exact-sparse", "peft-trainable-tokens"}
    assert state["exact"]["base_rows_bit_identical"] and state["exact-sparse"]["base_rows_bit_identical"]
    assert not state["none"]["base_rows_bit_identical"]
    peft_line = state["peft-trainable-tokens"]
    assert peft_line["base_rows_bit_identical"] and peft_line["grads_finite"]
    assert peft_line["state_dict_keys_unchanged"] is False
    # optimizer state of the tables: Adam's two moments of the rows past the base ones (the new
    # pieces and the "+1" row that moved on) in the embedding and the head weight, float32
    new_rows = BASE_TOKENS + NEW_TOKENS + 1 - BASE_TOKENS
    assert peft_line["table_state_bytes"] == 2 * 2 * new_rows * gpt["model_dim"] * 4
    assert isinstance(peft_line["head_bias_in_forward"], bool)
