"""amhelpers.optim: parameter groups, the staged schedule, composition with freeze."""

from __future__ import annotations

import ast
import inspect
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amhelpers import optim
from amhelpers.freeze import DEFAULT_NAMES, freeze_base_rows
from amhelpers.optim import (
    StagedSchedule,
    make_optimizer,
    param_groups,
    text_tables,
    training_optimizer,
)
from amhelpers.train import TrainConfig

ROWS, DIM, MEL = 24, 8, 10


pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """A stand-in with MiniVoice's table names."""

    def __init__(self) -> None:
        super().__init__()
        self.text_embedding = nn.Embedding(ROWS, DIM)
        self.mel_embedding = nn.Embedding(MEL, DIM)
        self.body = nn.Sequential(nn.Linear(DIM, DIM), nn.GELU(), nn.LayerNorm(DIM))
        self.text_head = nn.Linear(DIM, ROWS)
        self.mel_head = nn.Linear(DIM, MEL)

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.body(self.text_embedding(ids) + self.mel_embedding(ids % MEL))
        text = F.cross_entropy(self.text_head(h).flatten(0, 1), ids.roll(1, 1).flatten())
        mel = F.cross_entropy(self.mel_head(h).flatten(0, 1), (ids % MEL).flatten())
        return text + mel


def step(model: Tiny, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    opt.zero_grad()
    model.loss(torch.randint(0, ROWS, (4, 6), generator=gen)).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def names_in(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_groups_follow_the_xtts_decay_rule_and_new_row_lr():
    model = Tiny()
    groups = {g["name"]: g for g in param_groups(model, 12, new_row_lr=1e-2, lr=1e-4,
                                                  weight_decay=0.05)}
    assert set(groups) == {"tables/decay", "tables/no_decay", "body/decay", "body/no_decay"}
    assert names_in(model, groups["tables/decay"]) == {"text_head.weight"}
    assert names_in(model, groups["tables/no_decay"]) == {"text_embedding.weight",
                                                          "text_head.bias"}
    assert names_in(model, groups["body/decay"]) == {"body.0.weight", "mel_head.weight"}
    assert names_in(model, groups["body/no_decay"]) == {
        "mel_embedding.weight", "body.0.bias", "body.2.weight", "body.2.bias", "mel_head.bias"}
    for name, group in groups.items():
        assert group["lr"] == (1e-2 if name.startswith("tables") else 1e-4)
        assert group["weight_decay"] == (0.05 if name.endswith("/decay") else 0.0)
        assert group["role"] == name.split("/")[0]
    assert groups["tables/decay"]["base_rows"] == 12
    # every trainable parameter exactly once
    all_ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())


def test_defaults_frozen_params_and_custom_names():
    model = Tiny()
    model.mel_head.requires_grad_(False)
    groups = param_groups(model, lr=3e-4)
    assert all(g["lr"] == 3e-4 for g in groups)
    held = {n for g in groups for n in names_in(model, g)}
    assert "mel_head.weight" not in held and "mel_head.bias" not in held
    groups = {g["name"]: g for g in param_groups(model, names=("text_embedding.weight",))}
    assert names_in(model, groups["tables/no_decay"]) == {"text_embedding.weight"}
    assert "tables/decay" not in groups


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"base_rows=24 must be in \(0, 24\)"):
        param_groups(Tiny(), 24)
    with pytest.raises(ValueError, match="must be >= 0"):
        param_groups(Tiny(), lr=-1.0)
    with pytest.raises(ValueError, match="names: the model has no parameter"):
        param_groups(Tiny(), names=("txt_head.weight",))


@pytest.mark.parametrize("mode", ["exact", "exact-sparse"])
def test_composes_with_freeze(mode):
    torch.manual_seed(0)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = freeze_base_rows(model, 12, mode=mode)
    opt = torch.optim.AdamW(param_groups(model, 12, new_row_lr=5e-2, lr=1e-3,
                                         weight_decay=0.1, freeze_handle=handle))
    handle.attach(opt)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        step(model, opt, gen)
    handle.verify()
    after = model.state_dict()
    for name in DEFAULT_NAMES:
        assert torch.equal(after[name][:12], before[name][:12])
        assert not torch.equal(after[name][12:], before[name][12:])
    assert not torch.equal(after["body.0.weight"], before["body.0.weight"])
    if mode == "exact-sparse":
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        assert id(model.text_head.weight) not in held
        assert id(handle.leaves["text_head.weight"]) in held


def test_make_optimizer_from_config_like():
    model = Tiny()
    cfg = types.SimpleNamespace(learning_rate=2e-4, weight_decay=0.01, new_row_lr=2e-3)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["tables/no_decay"] == 2e-3 and lrs["body/decay"] == 2e-4
    opt = make_optimizer(model, {"learning_rate": 1e-3})
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01}
    handle = freeze_base_rows(model, 12, mode="exact-sparse")
    opt = make_optimizer(model, cfg, freeze_handle=handle)
    assert handle.optimizers == [opt]
    tables = next(g for g in opt.param_groups if g["name"] == "tables/no_decay")
    assert tables["base_rows"] == 12


def test_make_optimizer_with_the_trainers_config():
    cfg = TrainConfig(learning_rate=5e-4, weight_decay=0.02)
    opt = make_optimizer(Tiny(), cfg)
    assert {g["lr"] for g in opt.param_groups} == {5e-4}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.02}  # the config's decay="all"


def test_decay_policy_all_keeps_the_groups_and_decays_every_one():
    model = Tiny()
    weights_only = param_groups(model, 12, new_row_lr=1e-2, lr=1e-4, weight_decay=0.05)
    every = param_groups(model, 12, new_row_lr=1e-2, lr=1e-4, weight_decay=0.05, decay="all")
    assert [g["name"] for g in every] == [g["name"] for g in weights_only]
    assert {g["weight_decay"] for g in every} == {0.05}
    with pytest.raises(ValueError, match="decay='some': choose one of all, weights"):
        param_groups(model, decay="some")


def test_text_tables_resolve_suffixes_inside_a_wrapper():
    wrapped = nn.ModuleDict({"gpt": Tiny()})
    tables = text_tables(wrapped)
    assert list(tables) == ["gpt.text_embedding.weight", "gpt.text_head.weight",
                            "gpt.text_head.bias"]
    assert tables["gpt.text_head.bias"] is wrapped["gpt"].text_head.bias
    with pytest.raises(ValueError, match="no parameter 'text_emb.weight'.*gpt.text_embedding"):
        text_tables(wrapped, ("text_emb.weight",))


@pytest.mark.parametrize("settings, groups, freeze", [
    ({}, ["all"], None),
    ({"freeze_base_rows": 12, "freeze_mode": "hook"}, 4, "hook"),
    ({"new_row_lr": 1e-2, "decay": "weights"}, 4, None),
    ({"freeze_base_rows": 12, "freeze_mode": "exact-sparse", "new_rows_only_steps": 2}, 4,
     "exact-sparse"),
])
def test_training_optimizer_builds_what_the_config_names(settings, groups, freeze):
    model = Tiny()
    cfg = TrainConfig(learning_rate=1e-3, weight_decay=0.1, warmup_steps=2, max_steps=10,
                      **settings)
    optimizer, scheduler, handle = training_optimizer(model, cfg)
    if groups == ["all"]:
        assert len(optimizer.param_groups) == 1
        assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))
    else:
        assert len(optimizer.param_groups) == groups
    assert (handle.mode if handle else None) == freeze
    if settings.get("new_rows_only_steps"):
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert lrs["body/decay"] == 0.0 and lrs["tables/decay"] > 0
    assert scheduler.optimizer is optimizer


def test_optim_imports_no_private_name_of_another_module():
    tree = ast.parse(inspect.getsource(optim))
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) for alias in node.names
               if alias.name.startswith("_") and alias.name != "annotations"]
    assert private == []


def test_staged_schedule_trains_only_the_tables_first():
    torch.manual_seed(1)
    model = Tiny()
    handle = freeze_base_rows(model, 12)
    opt = make_optimizer(model, {"learning_rate": 1e-2, "weight_decay": 0.1},
                         freeze_handle=handle)
    sched = StagedSchedule(new_rows_only_steps=3).scheduler(opt, lambda s: 1.0 / (1 + s))
    body0 = {n: p.detach().clone() for n, p in model.named_parameters()
             if not n.startswith("text_")}
    table0 = model.text_head.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["body/decay"] == 0.0 and lrs["tables/decay"] == pytest.approx(1e-2 / (1 + i))
        step(model, opt, gen)
        sched.step()
    for name, value in body0.items():  # lr 0: bit-identical body
        assert torch.equal(model.get_parameter(name), value), name
    assert not torch.equal(model.text_head.weight[12:], table0[12:])
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["body/decay"] == pytest.approx(1e-2 / 4)
    step(model, opt, gen)
    assert not torch.equal(model.body[0].weight, body0["body.0.weight"])
    handle.verify()

    # resume: a fresh scheduler loading the state continues the stage
    opt2 = make_optimizer(model, {"learning_rate": 1e-2})
    sched2 = StagedSchedule(3).scheduler(opt2, lambda s: 1.0 / (1 + s))
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 3


def test_staged_schedule_bad_inputs():
    with pytest.raises(ValueError, match=">= 0"):
        StagedSchedule(-1)
    with pytest.raises(TypeError, match="int"):
        StagedSchedule(2.5)
    plain = torch.optim.AdamW(Tiny().parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="role 'tables'"):
        StagedSchedule(2).scheduler(plain)
    staged = StagedSchedule(2)
    assert staged.factor("body", 1) == 0.0 and staged.factor("body", 2) == 1.0
    assert staged.factor("tables", 0) == 1.0
    assert "2" in repr(staged)
