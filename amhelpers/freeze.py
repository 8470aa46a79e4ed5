"""Freeze the base rows of the text tables while the new rows train: the fix, done right.

Why this module is long: the handle must follow everything that can touch a table between two
steps (``zero_grad``, ``GradScaler``, ``load_state_dict``, DDP's gradient buckets), and
splitting those hooks across modules would hide how they interact (about 750 lines).

A model whose tokenizer was extended from ``B`` to ``R - 1`` tokens has text tables with ``R``
rows (``text_embedding.weight``, ``text_head.weight``, ``text_head.bias``); rows ``[0, B)`` hold
what the base model learned and should not move, rows ``[B, R)`` are new and must train.

:func:`freeze_base_rows` offers three modes:

``mode="hook"``
    The original fix (docs/original_fix.md) exactly: a gradient hook (``param.register_hook``) that
    zeroes ``grad[:B]``, nothing else. It leaks: AdamW applies ``p -= lr * wd * p`` to every
    parameter with a gradient, zero or not, so the "frozen" rows shrink by ``analytic_decay``;
    Adam moments restored from a checkpoint (pytorch/pytorch#18404) keep moving them too. The
    course keeps this mode to measure the leak.

``mode="exact"`` (default)
    Rows ``[0, B)`` stay bit-identical under any ``torch.optim`` optimizer, weight decay,
    momentum restored from a checkpoint, grad clipping, gradient accumulation and autocast:

    - a snapshot of the frozen rows is taken at freeze time;
    - after every ``optimizer.step()`` a step post-hook (registered by :meth:`FreezeHandle.attach`)
      copies the snapshot back (``param.data[:B].copy_(snapshot)``) and zeroes the optimizer
      state rows of the frozen part (momentum, second moments), so stale moments cannot pile up;
    - a post-accumulate-grad hook zeroes ``grad[:B]`` so clipping norms and optimizer
      statistics only see the trainable rows;
    - before every step a pre-hook checks that nobody changed the frozen rows outside the
      optimizer (rows are compared only when the table's autograd version counter moved, so
      an ordinary step compares nothing): putting the snapshot back would silently undo such
      a change, so the step raises instead (see "Loading weights" below).

    Exact mode needs the optimizer attached (``optimizer=`` or ``handle.attach(opt)``): the
    post-hook is what makes the rows bit-identical. Without it the rows get the hook mode's
    guarantees only: the first backward pass warns (``UserWarning`` naming
    ``handle.attach(optimizer)``), and :meth:`FreezeHandle.verify` says so when it finds
    changed rows.

``mode="exact-sparse"``
    The same guarantee with less optimizer memory: the optimizer holds state only for the
    trainable rows, as PEFT's Trainable Tokens does. For each table a ``(R - B) x d`` leaf
    parameter is made that *aliases* rows ``[B, R)`` of the full table (same storage, so the
    optimizer's in-place update lands in the table and ``state_dict()`` is unchanged); a
    post-accumulate-grad hook hands it the gradient rows ``[B, R)`` (a view of the table's
    gradient, so clipping over either ``model.parameters()`` or the optimizer's parameters sees
    one consistent gradient) and zeroes ``grad[:B]``. The full table is never given to the
    optimizer, so nothing ever writes its base rows. Build the optimizer from
    ``handle.parameters(model)`` (or :func:`amhelpers.optim.param_groups` with
    ``freeze_handle=``); :meth:`FreezeHandle.attach` refuses an optimizer that holds a full
    table. Adam state for the tables shrinks from ``2 R d`` to ``2 (R - B) d`` numbers.

    The optimizer's ``zero_grad()`` clears only the leaves, so the table's gradient is dropped
    by the handle: after each step, and before a backward pass whose leaf gradient was cleared
    without a step (a step ``GradScaler`` skipped on inf, a batch discarded with
    ``zero_grad``), so no stale or inf gradient is added to the next one. At the end of each
    backward pass the leaf's gradient is pointed at the table's current one, which
    DistributedDataParallel with ``gradient_as_bucket_view=True`` replaces by its averaged
    bucket. Like exact mode it warns when no optimizer was attached.

Loading weights after freezing: ``load_state_dict`` on the model (or on a wrapper such as
DistributedDataParallel, or on a table's own module) **re-snapshots** the tables it loads: the
loaded base rows are the ones kept from then on, and :meth:`FreezeHandle.verify` and
:func:`drift` compare against them. (Chosen over raising: loading a checkpoint into a frozen
model, to resume or because the weights came after the freeze, means "keep these rows".) What
cannot be followed is refused: ``load_state_dict(..., assign=True)``, ``to_empty()`` or
assigning a new ``Parameter`` replace the tensor the hooks guard, so that load, the next step
and ``verify()`` raise; a meta-device table is refused by :func:`freeze_base_rows` (freeze
after materialising the weights). Rows changed in place some other way (``torch.no_grad()``
writes, ``nn.init``) make the next exact step raise: call :meth:`FreezeHandle.resnapshot` to
keep such a change or :meth:`FreezeHandle.restore` to undo it. Writes through ``.data`` bypass
autograd's version counter: only ``verify()`` sees those.

Data-parallel training: the handle works on the model inside DistributedDataParallel or on
the wrapper (``module.`` names match as suffixes); each rank freezes its own replica, and
``tests/unit/test_freeze_ddp.py`` checks exact and exact-sparse with gloo, a checkpoint and a
resume.

In every mode ``model.state_dict()`` keeps its keys and shapes (no reparametrisation), and
``handle.remove()`` takes every hook away so training is normal again.
"""

from __future__ import annotations

import difflib
import math
import operator
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_NAMES: tuple[str, ...] = ("text_embedding.weight", "text_head.weight", "text_head.bias")
MODES: tuple[str, ...] = ("hook", "exact", "exact-sparse")

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class FrozenRowsChanged(AssertionError):
    """A frozen row differs (by at least one bit) from its snapshot taken at freeze time."""


# ----------------------------------------------------------------------------- helpers
def _bits(t: Tensor) -> Tensor:
    """View a tensor as integers of the same width, so comparisons are bit-exact."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point():
        return t.view(_INT_OF_SIZE[t.element_size()])
    return t


def _changed_rows(current: Tensor, reference: Tensor) -> Tensor:
    """Indices of rows of ``current`` that differ bitwise from ``reference``."""
    diff = _bits(current) != _bits(reference)
    if diff.dim() > 1:
        diff = diff.flatten(1).any(dim=1)
    return diff.nonzero().flatten()


def _owner_modules(model: nn.Module) -> dict[int, nn.Module]:
    """id(parameter) -> the module that registered it."""
    owners: dict[int, nn.Module] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), module)
    return owners


def text_tables(model: nn.Module, names: Iterable[str] = DEFAULT_NAMES) -> dict[str, nn.Parameter]:
    """The model's text tables: each name is a parameter's full name or its unique suffix
    (e.g. ``text_embedding.weight`` inside a wrapper module is ``gpt.text_embedding.weight``).

    Raises:
        TypeError: a name is not a str.
        ValueError: a name matches no parameter, or several; the message lists the model's
            table-like parameters.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    resolved: dict[str, nn.Parameter] = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"names must hold parameter names (str), got {name!r}")
        if name in params:
            resolved[name] = params[name]
            continue
        suffix = [n for n in params if n.endswith("." + name)]
        if len(suffix) == 1:  # e.g. "gpt.text_embedding.weight" inside a wrapper module
            resolved[suffix[0]] = params[suffix[0]]
            continue
        leaf = name.rsplit(".", 2)[-2] if "." in name else name
        similar = [n for n in params if leaf in n or "text" in n or "embedding" in n
                   or "head" in n]
        similar = similar or difflib.get_close_matches(name, list(params), n=8, cutoff=0.3)
        raise ValueError(
            f"names: the model has no parameter {name!r}"
            + (f" (several end with it: {suffix})" if suffix else "")
            + f"; matching parameters it has: {similar[:20] or sorted(params)[:20]}. "
            "Pass names=(...) with the model's own table names.")
    return resolved


def _bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _queue_callback(callback: Any) -> None:
    """Run ``callback`` when the running backward pass ends (from inside an autograd hook)."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)


def _graph_task_id() -> int | None:
    """Id of the running backward pass, or None where torch cannot tell."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current() if current is not None else None


# ----------------------------------------------------------------------------- the handle
class FreezeHandle:
    """What :func:`freeze_base_rows` returns: attach, verify, restore, remove.

    ``model.load_state_dict`` after freezing re-snapshots the tables it loads (the loaded base
    rows are kept from then on); a load with ``assign=True`` or any other replacement of a
    table's tensor raises, as does an exact step after the frozen rows were changed in place
    outside the optimizer (call :meth:`resnapshot` if that was meant). An exact handle that
    gets a gradient before any optimizer is attached warns once.

    Attributes:
        mode: ``"hook"``, ``"exact"`` or ``"exact-sparse"``.
        base_rows: rows ``[0, base_rows)`` are frozen.
        rows: rows of every frozen table.
        params: ``{name: parameter}`` of the frozen tables (the model's own parameters).
        snapshots: ``{name: rows [0, base_rows)}`` as they were at freeze time or at the last
            ``load_state_dict`` / :meth:`resnapshot`.
        leaves: exact-sparse mode only, ``{name: (rows - base_rows) x ... parameter}`` aliasing
            the trainable rows; give these to the optimizer instead of the full tables.
    """

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], base_rows: int,
                 mode: str, zero_state: bool) -> None:
        self.mode = mode
        self.base_rows = base_rows
        self.rows = next(iter(params.values())).shape[0]
        self.params = params
        self.zero_state = zero_state
        self.snapshots: dict[str, Tensor] = {}
        self._versions: dict[str, int] = {}
        self.resnapshot()
        self.leaves: dict[str, nn.Parameter] = {}
        if mode == "exact-sparse":
            for name, p in params.items():
                leaf = nn.Parameter(p.data[base_rows:], requires_grad=True)  # shares storage
                self.leaves[name] = leaf
        # (module, attribute) that holds each table, to notice a replaced parameter
        self._slots = {n: (model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2])
                       for n in params}
        self._handed = dict.fromkeys(params, False)  # exact-sparse: a leaf got a gradient view
        self._follow_task: int | None = None  # the backward pass that queued the follow-up
        self._warned = False
        self._hooks: list[Any] = []
        self._opt_hooks: list[Any] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self._removed = False
        for name, p in params.items():
            if mode == "hook":
                self._hooks.append(p.register_hook(self._hook_zero(base_rows)))
            elif mode == "exact":
                self._hooks.append(
                    p.register_post_accumulate_grad_hook(self._zero_base_grad))
            else:
                self._hooks.append(p.register_hook(self._drop_cleared_grad(name)))
                self._hooks.append(
                    p.register_post_accumulate_grad_hook(self._split_grad(name)))
        ids = {id(p) for p in params.values()}
        for module in model.modules():  # every module that loads a table (tied ones too)
            if any(id(q) in ids for q in module._parameters.values() if q is not None):
                self._hooks.append(
                    module.register_load_state_dict_post_hook(self._after_load))

    # -- gradient hooks
    @staticmethod
    def _hook_zero(base_rows: int):
        def hook(grad: Tensor) -> Tensor:
            # The original fix: zero the gradient of the base rows, nothing else.
            grad = grad.clone()
            grad[:base_rows] = 0
            return grad
        return hook

    def _warn_unattached(self) -> None:
        if self.optimizers or self._warned:
            return
        self._warned = True
        build = " built from handle.parameters(model)" if self.mode == "exact-sparse" else ""
        warnings.warn(
            f"amhelpers.freeze: the frozen tables got a gradient but no optimizer is attached "
            f"to this {self.mode!r} freeze handle, so nothing keeps weight decay and momentum "
            f"off the base rows; call handle.attach(optimizer) with the optimizer{build} "
            "before training (or pass optimizer= to freeze_base_rows)", UserWarning,
            stacklevel=2)

    def _zero_base_grad(self, param: Tensor) -> None:
        self._warn_unattached()
        if param.grad is not None:
            param.grad[: self.base_rows].zero_()

    def _drop_cleared_grad(self, name: str):
        def hook(grad: Tensor) -> None:
            # Runs before the new gradient is accumulated into the table's. The optimizer holds
            # only the leaf, so its zero_grad() drops the leaf's view and leaves the table's
            # gradient behind (after a step GradScaler skipped, or a discarded batch): drop it
            # too, so the new gradient is not added to a stale (or inf) one.
            param = self.params[name]
            if self._handed[name] and self.leaves[name].grad is None and param.grad is not None:
                param.grad = None
            self._handed[name] = False
        return hook

    def _split_grad(self, name: str):
        def hook(param: Tensor) -> None:
            self._warn_unattached()
            grad = param.grad
            if grad is None:
                return
            grad[: self.base_rows].zero_()
            self._realias(name)
            self.leaves[name].grad = grad[self.base_rows:]  # a view: clipping scales both
            self._handed[name] = True
            task = _graph_task_id()
            if task is None or task != self._follow_task:  # once per backward pass
                self._follow_task = task
                _queue_callback(lambda: _queue_callback(self._follow_table_grads))
        return hook

    def _follow_table_grads(self) -> None:
        """End of backward: point each leaf's gradient at its table's current gradient.

        DistributedDataParallel with ``gradient_as_bucket_view=True`` replaces ``.grad`` by a
        view of its all-reduce bucket after the hook above ran, which would leave the leaf
        with the local, un-averaged gradient. Queued twice so it runs after callbacks queued
        during backward (DDP's own finalisation among them).
        """
        for name, p in self.params.items():
            leaf = self.leaves[name]
            if p.grad is not None and leaf.grad is not None:
                rows = p.grad[self.base_rows:]
                if leaf.grad.data_ptr() != rows.data_ptr() or leaf.grad.shape != rows.shape:
                    leaf.grad = rows

    def _realias(self, name: str) -> None:
        """Keep the exact-sparse leaf aliasing the table even if ``param.data`` was replaced."""
        p, leaf = self.params[name], self.leaves[name]
        rows = p.data[self.base_rows:]
        if leaf.data_ptr() != rows.data_ptr() or leaf.device != rows.device:
            leaf.data = rows

    # -- optimizer hooks
    def _held_params(self, optimizer: torch.optim.Optimizer) -> set[int]:
        return {id(p) for group in optimizer.param_groups for p in group["params"]}

    def attach(self, optimizer: torch.optim.Optimizer) -> FreezeHandle:
        """Register the step hooks on ``optimizer`` (idempotent); return the handle.

        Raises:
            TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
            ValueError: the optimizer does not hold the tables (exact, hook) or their
                trainable-row leaves (exact-sparse), or holds a full table in exact-sparse mode.
            RuntimeError: the handle was removed.
        """
        if self._removed:
            raise RuntimeError("this freeze handle was removed; call freeze_base_rows again")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}; for another optimizer call "
                            "handle.restore() after each of its steps")
        if any(o is optimizer for o in self.optimizers):
            return self
        held = self._held_params(optimizer)
        if self.mode == "exact-sparse":
            full = [n for n, p in self.params.items() if id(p) in held]
            if full:
                raise ValueError(
                    f"optimizer holds the full table(s) {full}, so it would keep state for every "
                    "row; in exact-sparse mode build it from handle.parameters(model) (or "
                    "amhelpers.optim.param_groups(..., freeze_handle=handle))")
            missing = [n for n, leaf in self.leaves.items() if id(leaf) not in held]
            if missing:
                raise ValueError(
                    f"optimizer does not hold the trainable rows of {missing}; build it from "
                    "handle.parameters(model) so the new rows train")
        else:
            missing = [n for n, p in self.params.items() if id(p) not in held]
            if missing:
                raise ValueError(
                    f"optimizer does not hold the frozen table(s) {missing}: attach the "
                    "optimizer that trains the model (built from model.parameters() or "
                    "amhelpers.optim.param_groups(model, ...))")
        if self.mode == "exact":
            self._opt_hooks.append(optimizer.register_step_pre_hook(self._before_step))
            self._opt_hooks.append(optimizer.register_step_post_hook(self._after_step))
            self._zero_optimizer_state(optimizer)
        elif self.mode == "exact-sparse":
            self._opt_hooks.append(optimizer.register_step_pre_hook(self._before_sparse_step))
            self._opt_hooks.append(optimizer.register_step_post_hook(self._after_sparse_step))
        self.optimizers.append(optimizer)
        return self

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._check_untouched()

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.restore()
        if self.zero_state:
            self._zero_optimizer_state(optimizer)
        self._versions = {n: p._version for n, p in self.params.items()}

    def _check_untouched(self) -> None:
        """Before a step: refuse to restore over rows someone changed since the snapshot.

        Cheap in the usual case: rows are compared only when the table's version counter
        moved (an in-place write outside ``load_state_dict``, which re-snapshots).
        """
        for name, p in self.params.items():
            self._check_slot(name, RuntimeError)
            if p._version == self._versions.get(name):
                continue
            with torch.no_grad():
                cur = p.detach()[: self.base_rows]
                rows = _changed_rows(cur, self.snapshots[name].to(cur.device))
            if rows.numel():
                raise RuntimeError(
                    f"{name}: frozen row {int(rows[0])} was changed outside the optimizer after "
                    f"freeze_base_rows ({rows.numel()} of {self.base_rows} frozen rows differ "
                    "from the snapshot); this step would silently put the old rows back. Call "
                    "handle.restore() to put them back, or handle.resnapshot() to keep the rows "
                    "as they are now (model.load_state_dict re-snapshots by itself)")
            self._versions[name] = p._version

    def _check_slot(self, name: str, error: type[Exception]) -> None:
        """Raise ``error`` if the model no longer holds the frozen tensor (hooks orphaned)."""
        module, attr = self._slots[name]
        if module._parameters.get(attr) is not self.params[name]:
            raise error(
                f"{name} was replaced by a new tensor after freeze_base_rows (model.to_empty(), "
                "load_state_dict(..., assign=True) or assigning the attribute do that), so the "
                "freeze hooks and the optimizer still hold the old one; call handle.remove(), "
                "then freeze_base_rows(...) and build the optimizer again on the model as it is")

    def _after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        """``load_state_dict`` post-hook: the loaded rows become the new snapshot."""
        if self._removed:
            return
        for name, p in self.params.items():
            if module is self._slots[name][0] or any(q is p for q in module._parameters.values()):
                self._check_slot(name, RuntimeError)
                self.resnapshot(name)

    def _zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the frozen rows of every per-element state tensor (moments, buffers)."""
        if not self.zero_state:
            return
        with torch.no_grad():
            for p in self.params.values():
                state = optimizer.state.get(p)
                if not state:
                    continue
                for value in state.values():
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape == p.shape:
                        value[: self.base_rows].zero_()

    def _before_sparse_step(self, optimizer: torch.optim.Optimizer, args: Any,
                            kwargs: Any) -> None:
        self._check_untouched()
        for name in self.leaves:
            self._realias(name)

    def _after_sparse_step(self, optimizer: torch.optim.Optimizer, args: Any,
                           kwargs: Any) -> None:
        # The tables are not in the optimizer, so its zero_grad() never clears them: drop their
        # gradients here (the leaves' gradients are views of them).
        for name, p in self.params.items():
            p.grad = None
            self.leaves[name].grad = None
            self._handed[name] = False

    # -- public operations
    def resnapshot(self, name: str | None = None) -> None:
        """Take rows ``[0, base_rows)`` as they are now as the snapshot to keep (one table or all).

        ``model.load_state_dict`` calls it for the tables it loads; call it yourself after
        changing the frozen rows on purpose in another way.

        Raises:
            ValueError: ``name`` is not one of the frozen tables.
        """
        if name is not None and name not in self.params:
            raise ValueError(f"resnapshot: {name!r} is not a frozen table; the handle freezes "
                             f"{list(self.params)}")
        with torch.no_grad():
            for n, p in self.params.items():
                if name is None or n == name:
                    self.snapshots[n] = p.detach()[: self.base_rows].clone()
                    self._versions[n] = p._version

    def restore(self) -> None:
        """Copy the snapshot back into rows ``[0, base_rows)`` of every frozen table.

        Runs after every step of an attached optimizer in exact mode; call it yourself after
        the step of an optimizer that is not a ``torch.optim.Optimizer``.
        """
        with torch.no_grad():
            for name, p in self.params.items():
                snap = self.snapshots[name]
                if snap.dtype != p.dtype:
                    raise RuntimeError(
                        f"{name} changed dtype from {snap.dtype} to {p.dtype} after it was "
                        "frozen; convert the model first, then call freeze_base_rows")
                if snap.device != p.device:
                    snap = self.snapshots[name] = snap.to(p.device)
                p.data[: self.base_rows].copy_(snap)

    def changed(self) -> dict[str, list[int]]:
        """``{name: [changed frozen row ids]}`` for tables whose frozen rows changed."""
        out: dict[str, list[int]] = {}
        with torch.no_grad():
            for name, p in self.params.items():
                snap = self.snapshots[name]
                cur = p.detach()[: self.base_rows]
                rows = _changed_rows(cur, snap.to(cur.device))
                if rows.numel():
                    out[name] = rows.tolist()
        return out

    def verify(self) -> None:
        """Raise :class:`FrozenRowsChanged` if any frozen row differs by even one bit.

        The message names the tensor, the first changed row, how many rows changed and the
        largest absolute change.
        """
        for name, p in self.params.items():
            self._check_slot(name, FrozenRowsChanged)
            snap = self.snapshots[name]
            cur = p.detach()[: self.base_rows]
            if cur.dtype != snap.dtype:
                raise FrozenRowsChanged(f"{name}: dtype changed from {snap.dtype} to {cur.dtype}")
            rows = _changed_rows(cur, snap.to(cur.device))
            if rows.numel():
                first = int(rows[0])
                delta = (cur.double() - snap.to(cur.device).double()).abs().max().item()
                hint = ""
                if self.mode == "hook":
                    hint = (" (hook mode only zeroes gradients: weight decay and restored "
                            "optimizer moments still move the rows; use mode='exact')")
                elif self.mode == "exact" and not self.optimizers:
                    hint = (" (no optimizer was attached: exact mode restores the rows after "
                            "each optimizer.step() only once handle.attach(optimizer) is called)")
                raise FrozenRowsChanged(
                    f"{name}: frozen row {first} changed ({rows.numel()} of {self.base_rows} "
                    f"frozen rows differ, max |change| {delta:.3g}){hint}")

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters an optimizer should hold: the model's trainable parameters, with each
        full table swapped for its trainable-row leaf in exact-sparse mode."""
        return [self.leaf_for(p) for p in model.parameters() if p.requires_grad]

    def leaf_for(self, param: nn.Parameter) -> nn.Parameter:
        """In exact-sparse mode the leaf that trains ``param``'s new rows; else ``param``."""
        for name, p in self.params.items():
            if p is param and name in self.leaves:
                return self.leaves[name]
        return param

    def optimizer_state_bytes(self, optimizer: torch.optim.Optimizer) -> int:
        """Bytes of optimizer state held for the frozen tables (or their leaves)."""
        total = 0
        for name, p in self.params.items():
            for key in (p, self.leaves.get(name)):
                if key is None:
                    continue
                for value in optimizer.state.get(key, {}).values():
                    if torch.is_tensor(value) and value.dim() > 0:
                        total += _bytes(value)
        return total

    def remove(self) -> None:
        """Remove every hook; later steps train all rows again (idempotent).

        In exact-sparse mode the optimizer still holds the leaves, which no longer receive
        gradients: build a new optimizer from ``model.parameters()`` to train on.
        """
        for h in self._hooks + self._opt_hooks:
            h.remove()
        self._hooks, self._opt_hooks = [], []
        self._removed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else f"{len(self.optimizers)} optimizer(s) attached"
        return (f"FreezeHandle(mode={self.mode!r}, base_rows={self.base_rows}, rows={self.rows}, "
                f"tables={list(self.params)}, {state})")


# ----------------------------------------------------------------------------- the entry point
def freeze_base_rows(model: nn.Module, base_rows: int, names: Iterable[str] | str | None = None,
                     mode: str = "exact", optimizer: torch.optim.Optimizer | None = None, *,
                     zero_state: bool = True) -> FreezeHandle:
    """Freeze rows ``[0, base_rows)`` of the text tables; rows from ``base_rows`` on train.

    Args:
        model: the model (MiniVoice, UnifiedVoice, or any module with these tables).
        base_rows: number of base rows (12000 for IndexTTS2's 12k tokenizer). Must satisfy
            ``0 < base_rows < rows``.
        names: parameter names of the tables, default :data:`DEFAULT_NAMES`. A name may also
            be the unique suffix of a parameter name (``text_embedding.weight`` matches
            ``gpt.text_embedding.weight``). Every table must have the same number of rows.
        mode: ``"exact"`` (bit-identical base rows; needs the optimizer attached),
            ``"exact-sparse"`` (the same with optimizer state only for the new rows; build
            the optimizer from ``handle.parameters(model)``) or ``"hook"`` (the original,
            leaky gradient hook). See the module docstring.
        optimizer: attach this optimizer now (same as ``handle.attach(optimizer)``). Not
            possible in exact-sparse mode, whose optimizer is built from the handle's
            leaves: call ``handle.attach(optimizer)`` then.
        zero_state: exact mode: also zero the optimizer state rows (moments, momentum) of the
            frozen part after every step.

    Returns:
        a :class:`FreezeHandle`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``base_rows`` not an integer.
        ValueError: unknown mode or name, ``base_rows`` out of range, a table whose first
            dimension is not the row count, a sparse embedding, a table that does not require
            grad, a table on the meta device, or an optimizer that does not hold the tables.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(base_rows, bool):
        raise TypeError("base_rows must be an int (the number of base-tokenizer rows), got bool")
    try:
        base_rows = operator.index(base_rows)
    except TypeError:
        raise TypeError(f"base_rows must be an int (the number of base-tokenizer rows), got "
                        f"{type(base_rows).__name__} {base_rows!r}") from None
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if names is None:
        names = DEFAULT_NAMES
    elif isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise ValueError("names is empty: name at least one table (default "
                         f"{DEFAULT_NAMES})")
    params = text_tables(model, names)
    # one entry per tensor (tied weights appear once)
    unique: dict[str, nn.Parameter] = {}
    for name, p in params.items():
        if all(p is not q for q in unique.values()):
            unique[name] = p
    params = unique

    owners = _owner_modules(model)
    first_name, first = next(iter(params.items()))
    if first.dim() == 0:
        raise ValueError(f"names: {first_name} is a scalar, not a table with rows")
    rows = first.shape[0]
    for name, p in params.items():
        owner = owners.get(id(p))
        if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)) and owner.sparse:
            raise ValueError(
                f"{name} belongs to an embedding built with sparse=True; freezing needs dense "
                "gradients: build it with sparse=False (the default)")
        if p.dim() == 0 or p.shape[0] != rows:
            raise ValueError(
                f"names: {name} has shape {tuple(p.shape)}, but its first dimension must be the "
                f"row count {rows} of {first_name}; every frozen table needs one row per token "
                "(drop it from names, or extend it to the same number of rows)")
        if not p.requires_grad:
            raise ValueError(f"{name} does not require grad, so it does not train at all; "
                             "set requires_grad=True or leave it out of names")
        if p.is_sparse:
            raise ValueError(f"{name} is a sparse tensor; freeze needs a dense table")
        if p.is_meta:
            raise ValueError(
                f"{name} is on the meta device (a shape without values), and to_empty() would "
                "replace it and orphan the freeze hooks: materialise the weights first "
                "(model.to_empty(device=...), then load or initialise them), then call "
                "freeze_base_rows")
    if base_rows <= 0:
        raise ValueError(f"base_rows must be at least 1 (rows [0, base_rows) are frozen), got "
                         f"{base_rows}")
    if base_rows >= rows:
        raise ValueError(
            f"base_rows={base_rows} leaves no row to train: the tables have {rows} rows. Extend "
            "the tables to the new tokenizer's size first (amhelpers.embeddings), or pass the "
            "base model's row count")
    handle = FreezeHandle(model, params, base_rows, mode, zero_state)
    if optimizer is not None:
        try:
            handle.attach(optimizer)
        except Exception:
            handle.remove()
            raise
    return handle


# ----------------------------------------------------------------------------- measuring drift
def snapshot(model: nn.Module, base_rows: int | None = None,
             names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Copy the tables (only rows ``[0, base_rows)`` when given) for a later :func:`drift`."""
    params = text_tables(model, tuple(names or DEFAULT_NAMES))
    with torch.no_grad():
        return {n: (p.detach()[:base_rows] if base_rows else p.detach()).clone()
                for n, p in params.items()}


def drift(model: nn.Module, snapshot_or_handle: FreezeHandle | Mapping[str, Tensor],
          base_rows: int | None = None) -> dict[str, Any]:
    """How far the frozen rows moved since a snapshot.

    Args:
        model: the model now.
        snapshot_or_handle: a :class:`FreezeHandle` (its freeze-time snapshot) or a
            ``{name: tensor}`` from :func:`snapshot`; rows ``[0, len(tensor))`` are compared.
        base_rows: compare only the first ``base_rows`` rows.

    Returns:
        ``{"tables": {name: stats}, "max_abs", "rel", "shrink", "changed_rows",
        "bit_identical"}`` where each ``stats`` has ``rows``, ``max_abs`` (largest absolute
        change), ``rel`` (``||W - W0|| / ||W0||``, Frobenius), ``shrink`` (``1 - ||W|| /
        ||W0||``, what weight decay alone gives, compare :func:`analytic_decay`),
        ``changed_rows`` (rows with any bit changed) and ``bit_identical``. The top-level
        numbers are the largest over tables (``changed_rows`` the sum).
    """
    if isinstance(snapshot_or_handle, FreezeHandle):
        snaps = snapshot_or_handle.snapshots
        base_rows = base_rows or snapshot_or_handle.base_rows
    elif isinstance(snapshot_or_handle, Mapping):
        snaps = dict(snapshot_or_handle)
    else:
        raise TypeError("snapshot_or_handle must be a FreezeHandle or a {name: tensor} mapping "
                        f"from amhelpers.freeze.snapshot(), got {type(snapshot_or_handle).__name__}")
    params = text_tables(model, tuple(snaps))
    tables: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for (name, p), ref in zip(params.items(), snaps.values()):
            n = ref.shape[0] if base_rows is None else min(base_rows, ref.shape[0])
            w0 = ref[:n].to(p.device)
            w = p.detach()[:n]
            d = (w.double() - w0.double())
            n0 = float(w0.double().norm())
            tables[name] = {
                "rows": n,
                "max_abs": float(d.abs().max()) if d.numel() else 0.0,
                "rel": float(d.norm()) / n0 if n0 else float(d.norm()),
                "shrink": 1.0 - float(w.double().norm()) / n0 if n0 else 0.0,
                "changed_rows": int(_changed_rows(w, w0).numel()),
            }
            tables[name]["bit_identical"] = tables[name]["changed_rows"] == 0
    stats = list(tables.values())
    return {
        "tables": tables,
        "max_abs": max(s["max_abs"] for s in stats),
        "rel": max(s["rel"] for s in stats),
        "shrink": max(s["shrink"] for s in stats),
        "changed_rows": sum(s["changed_rows"] for s in stats),
        "bit_identical": all(s["bit_identical"] for s in stats),
    }


def analytic_decay(lr: float | Sequence[float], wd: float, steps: int | None = None) -> float:
    """Fraction by which decoupled weight decay shrinks a row whose gradient is zero.

    AdamW multiplies every parameter by ``1 - lr * wd`` each step, so after ``steps`` steps a
    row with zero gradient (and no momentum) is ``(1 - lr * wd) ** steps`` times its start:
    ``analytic_decay = 1 - (1 - lr * wd) ** steps``. ``lr`` may also be the per-step learning
    rates of a schedule (then ``steps`` is their count): ``1 - prod(1 - lr_t * wd)``.
    """
    if isinstance(lr, (int, float)):
        if steps is None:
            raise ValueError("steps is required when lr is a single number")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        return 1.0 - (1.0 - lr * wd) ** steps
    lrs = list(lr)
    if steps is not None and steps != len(lrs):
        raise ValueError(f"steps={steps} but {len(lrs)} per-step learning rates were given")
    return 1.0 - math.prod(1.0 - x * wd for x in lrs)
