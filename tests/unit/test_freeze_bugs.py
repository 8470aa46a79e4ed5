"""amhelpers.freeze: the four bugs of issue 10 item 9, each with the case that showed it.

- exact-sparse: ``optimizer.zero_grad()`` left the tables' gradients behind when no step ran
  (a step GradScaler skipped, a discarded batch);
- ``model.load_state_dict`` after freezing: the old snapshot was put back at the next step;
- a meta-device model was accepted (``to_empty()`` then orphans the hooks);
- an exact handle that was never attached gave no warning while training.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amhelpers.freeze import DEFAULT_NAMES, FrozenRowsChanged, freeze_base_rows

ROWS, DIM, BASE = 20, 8, 12

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """Text tables named like MiniVoice's around a small body."""

    def __init__(self) -> None:
        super().__init__()
        self.text_embedding = nn.Embedding(ROWS, DIM)
        self.body = nn.Sequential(nn.Linear(DIM, DIM), nn.GELU())
        self.text_head = nn.Linear(DIM, ROWS)

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.text_head(self.body(self.text_embedding(ids)))
        return F.cross_entropy(logits.flatten(0, 1), ids.roll(1, 1).flatten())


def batches(seed: int, n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, ROWS, (4, 6), generator=gen) for _ in range(n)]


def frozen(mode: str, seed: int = 0) -> tuple[Tiny, object, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Tiny()
    handle = freeze_base_rows(model, BASE, mode=mode)
    opt = torch.optim.AdamW(handle.parameters(model), lr=1e-2, weight_decay=0.1)
    handle.attach(opt)
    return model, handle, opt


def train(model: Tiny, opt: torch.optim.Optimizer, data: list[torch.Tensor]) -> None:
    for ids in data:
        opt.zero_grad()
        model.loss(ids).backward()
        opt.step()


def base_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {n: state[n][:BASE].clone() for n in DEFAULT_NAMES}


def assert_bits_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        assert torch.equal(a[name].view(torch.int32), b[name].view(torch.int32)), name


EXACT_MODES = ["exact", "exact-sparse"]


# ----------------------------------------------------------------------------- zero_grad
@pytest.mark.parametrize("mode", EXACT_MODES)
def test_grad_scaler_steps_again_after_one_overflowing_batch(mode):
    model, handle, opt = frozen(mode)
    before = base_rows(model)
    ran = []
    opt.register_step_post_hook(lambda *_: ran.append(1))
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    for i, ids in enumerate(batches(1, 8)):
        opt.zero_grad()
        loss = model.loss(ids)
        if i == 0:
            loss = loss * float("inf")  # one overflowing batch: GradScaler skips this step
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert len(ran) == 7, f"{len(ran)} of the 7 finite steps ran"
    assert scaler.get_scale() == 128.0  # halved once, for the inf batch only
    assert_bits_equal(base_rows(model), before)
    handle.verify()


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("mode", EXACT_MODES)
def test_a_batch_discarded_with_zero_grad_leaves_no_trace(mode, set_to_none):
    data = batches(2, 3)
    model_a, _, opt_a = frozen(mode)
    train(model_a, opt_a, data)

    model_b, handle_b, opt_b = frozen(mode)
    model_b.loss(batches(3, 1)[0]).backward()  # computed, then thrown away
    opt_b.zero_grad(set_to_none=set_to_none)
    train(model_b, opt_b, data)
    for name, value in model_a.state_dict().items():  # bit-exact, new rows included
        assert torch.equal(value.view(torch.int32), model_b.state_dict()[name].view(torch.int32))
    handle_b.verify()


def test_exact_sparse_accumulation_still_sums_micro_batches():
    """Clearing a dropped gradient must not clear one the optimizer still holds."""
    data = batches(4, 2)
    model, handle, opt = frozen("exact-sparse")
    opt.zero_grad()
    for ids in data:
        model.loss(ids).backward()
    summed = handle.leaves["text_head.weight"].grad.clone()
    reference = Tiny()
    reference.load_state_dict(model.state_dict())
    for ids in data:
        reference.loss(ids).backward()
    assert torch.allclose(summed, reference.text_head.weight.grad[BASE:], atol=1e-7)


# ----------------------------------------------------------------------------- load_state_dict
@pytest.mark.parametrize("mode", ["hook", *EXACT_MODES])
def test_load_state_dict_after_freezing_takes_the_loaded_rows(mode):
    model, handle, opt = frozen(mode)
    torch.manual_seed(99)
    checkpoint = Tiny().state_dict()
    model.load_state_dict(checkpoint)
    loaded = {n: checkpoint[n][:BASE].clone() for n in DEFAULT_NAMES}
    assert_bits_equal(handle.snapshots, loaded)
    if mode == "hook":
        return  # hook mode leaks by design; only its snapshot follows the load
    train(model, opt, batches(5, 3))
    assert_bits_equal(base_rows(model), loaded)
    handle.verify()


def test_load_state_dict_of_a_submodule_resnapshots_that_table():
    model, handle, opt = frozen("exact")
    head = nn.Linear(DIM, ROWS)
    model.text_head.load_state_dict(head.state_dict())
    train(model, opt, batches(6, 2))
    assert torch.equal(model.text_head.weight[:BASE], head.weight[:BASE])
    assert torch.equal(model.text_head.bias[:BASE], head.bias[:BASE])
    handle.verify()


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_rows_changed_outside_the_optimizer_are_refused_before_the_step(mode):
    model, handle, opt = frozen(mode)
    with torch.no_grad():
        model.text_head.weight[3] += 1.0
    opt.zero_grad()
    model.loss(batches(7, 1)[0]).backward()
    with pytest.raises(RuntimeError, match=r"text_head\.weight: frozen row 3 was changed outside "
                                           r"the optimizer.*handle\.resnapshot\(\)"):
        opt.step()
    with pytest.raises(ValueError, match=r"resnapshot: 'text_head' is not a frozen table"):
        handle.resnapshot("text_head")
    handle.resnapshot()  # the change was meant: keep it from now on
    changed = model.text_head.weight[:BASE].detach().clone()
    opt.step()
    assert torch.equal(model.text_head.weight[:BASE], changed)
    handle.verify()


def test_steps_taken_before_attach_are_caught_at_the_first_attached_step():
    torch.manual_seed(0)
    model = Tiny()
    handle = freeze_base_rows(model, BASE)
    snapshot = {n: t.clone() for n, t in handle.snapshots.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    with pytest.warns(UserWarning, match="no optimizer is attached"):
        train(model, opt, batches(11, 2))  # weight decay moves the base rows
    handle.attach(opt)
    with pytest.raises(RuntimeError, match=r"changed outside the optimizer.*handle\.restore\(\)"):
        train(model, opt, batches(12, 1))
    handle.restore()  # back to the rows frozen at the start
    train(model, opt, batches(12, 1))
    assert_bits_equal(base_rows(model), snapshot)


@pytest.mark.parametrize("mode", ["hook", *EXACT_MODES])
def test_load_state_dict_with_assign_is_refused(mode):
    model, handle, _ = frozen(mode)
    with pytest.raises(RuntimeError, match=r"text_embedding\.weight was replaced by a new tensor"
                                           r".*assign=True.*handle\.remove\(\)"):
        model.load_state_dict(Tiny().state_dict(), assign=True)
    with pytest.raises(FrozenRowsChanged, match="replaced by a new tensor"):
        handle.verify()


def test_a_replaced_table_is_refused_at_the_next_step():
    model, handle, opt = frozen("exact")
    model.text_head.weight = nn.Parameter(model.text_head.weight.detach().clone())
    model.loss(batches(8, 1)[0]).backward()
    with pytest.raises(RuntimeError, match=r"text_head\.weight was replaced by a new tensor"):
        opt.step()


# ----------------------------------------------------------------------------- meta device
@pytest.mark.parametrize("mode", ["hook", *EXACT_MODES])
def test_meta_device_model_is_refused(mode):
    with torch.device("meta"):
        model = Tiny()
    with pytest.raises(ValueError, match=r"text_embedding\.weight is on the meta device.*"
                                         r"materialise the weights first.*to_empty"):
        freeze_base_rows(model, BASE, mode=mode)
    model.to_empty(device="cpu")  # what the message asks for, then it works
    torch.manual_seed(0)
    model.load_state_dict(Tiny().state_dict())
    handle = freeze_base_rows(model, BASE, mode=mode)
    assert handle.snapshots["text_head.weight"].device.type == "cpu"


# ----------------------------------------------------------------------------- not attached
@pytest.mark.parametrize("mode", EXACT_MODES)
def test_unattached_exact_handle_warns_once_at_backward(mode):
    torch.manual_seed(0)
    model = Tiny()
    handle = freeze_base_rows(model, BASE, mode=mode)
    opt = torch.optim.AdamW(handle.parameters(model), lr=1e-2, weight_decay=0.1)
    data = batches(9, 3)
    with pytest.warns(UserWarning, match=r"no optimizer is attached.*handle\.attach\(optimizer\)"):
        train(model, opt, data[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, data[1:])  # once per handle, not once per step


@pytest.mark.parametrize("mode", ["hook", *EXACT_MODES])
def test_attached_or_hook_handle_does_not_warn(mode):
    model, _, opt = frozen(mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, batches(10, 2))
