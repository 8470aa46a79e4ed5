"""The optimizer of a training run: parameter groups, new-row learning rate, decay, schedules.

:func:`param_groups` splits a model into up to four AdamW groups:

====================  ===============================  ================  ==============
group ``name``        parameters                       ``lr``            weight decay
====================  ===============================  ================  ==============
``tables/decay``      text-table weights of Linear     ``new_row_lr``    ``weight_decay``
                      layers (``text_head.weight``)
``tables/no_decay``   ``text_embedding.weight``,       ``new_row_lr``    0
                      ``text_head.bias``
``body/decay``        other matrices                   ``lr``            ``weight_decay``
``body/no_decay``     embeddings, biases, norms,       ``lr``            0
                      every 0-/1-D parameter
====================  ===============================  ================  ==============

The decay rule (``decay="weights"``) is XTTS's ``optimizer_wd_only_on_weights`` (coqui TTS,
GPT trainer): no weight decay on ``nn.Embedding`` tables, biases or normalisation layers.
``decay="all"`` keeps the IndexTTS2 trainer's decay on every group. Each group carries
``"role"`` (``"tables"`` or ``"body"``) so :class:`StagedSchedule` can tell them apart.

The frozen part of the tables is :mod:`amhelpers.freeze`'s business; the two compose::

    handle = freeze_base_rows(model, base_rows, mode="exact")
    opt = torch.optim.AdamW(param_groups(model, base_rows, new_row_lr=1e-3, lr=1e-4,
                                         weight_decay=0.01, freeze_handle=handle))
    handle.attach(opt)

(``make_optimizer(model, cfg, freeze_handle=handle)`` does the same in one call.)

The trainer's one route from its settings to an optimizer is :func:`training_optimizer`: a
:class:`amhelpers.train.TrainConfig` names the freeze (``freeze_base_rows``, ``freeze_mode``),
the new-row learning rate, the decay policy and the staged schedule, and gets the freeze
handle, the AdamW optimizer and the warmup-cosine scheduler built from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from amhelpers.freeze import DEFAULT_NAMES, FreezeHandle, freeze_base_rows, text_tables

DECAY_POLICIES = ("all", "weights")
"""``all``: weight decay on every parameter (IndexTTS2's trainer); ``weights``: XTTS's rule."""

NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)
EMBEDDING_MODULES = (nn.Embedding, nn.EmbeddingBag)


def _no_decay(name: str, param: nn.Parameter, owner: nn.Module | None) -> bool:
    """XTTS's rule: no decay on biases, norms and embeddings (and any 0-/1-D parameter)."""
    if name.endswith(".bias") or param.dim() < 2:
        return True
    return owner is not None and (isinstance(owner, NORM_MODULES + EMBEDDING_MODULES)
                                  or "norm" in type(owner).__name__.lower())


def param_groups(model: nn.Module, base_rows: int | None = None, new_row_lr: float | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.01,
                 names: Iterable[str] = DEFAULT_NAMES, *,
                 freeze_handle: FreezeHandle | None = None,
                 decay: str = "weights") -> list[dict[str, Any]]:
    """Build optimizer parameter groups (see the module docstring for the table).

    Args:
        model: the model; only parameters with ``requires_grad`` are grouped.
        base_rows: the base row count, checked against the tables (``0 < base_rows < rows``)
            and recorded in the table groups; ``None`` skips the check.
        new_row_lr: learning rate of the text tables (whose base rows ``freeze`` keeps
            still); default ``lr``.
        lr: learning rate of everything else.
        weight_decay: decay of the matrices that get it.
        names: the text tables (default ``text_embedding.weight``, ``text_head.weight``,
            ``text_head.bias``).
        freeze_handle: a :func:`amhelpers.freeze.freeze_base_rows` handle; in exact-sparse
            mode each table is replaced by its trainable-row leaf.
        decay: ``"weights"`` (XTTS: no decay on embeddings, biases, norms) or ``"all"``
            (every group decays by ``weight_decay``, as the IndexTTS2 trainer).

    Returns:
        a list of groups (empty groups dropped), each ``{"params", "lr", "weight_decay",
        "name", "role"}``; the table groups also carry ``"base_rows"``.
    """
    if lr < 0 or weight_decay < 0 or (new_row_lr is not None and new_row_lr < 0):
        raise ValueError(f"lr, new_row_lr and weight_decay must be >= 0, got lr={lr}, "
                         f"new_row_lr={new_row_lr}, weight_decay={weight_decay}")
    if decay not in DECAY_POLICIES:
        raise ValueError(f"decay={decay!r}: choose one of {', '.join(DECAY_POLICIES)}")
    new_row_lr = lr if new_row_lr is None else new_row_lr
    tables = text_tables(model, tuple(names))
    table_ids = {id(p) for p in tables.values()}
    if base_rows is not None:
        for name, p in tables.items():
            if not 0 < base_rows < p.shape[0]:
                raise ValueError(f"base_rows={base_rows} must be in (0, {p.shape[0]}) for "
                                 f"{name} with {p.shape[0]} rows")
    owners: dict[int, nn.Module] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), module)
    buckets: dict[str, list[nn.Parameter]] = {"tables/decay": [], "tables/no_decay": [],
                                              "body/decay": [], "body/no_decay": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        role = "tables" if id(p) in table_ids else "body"
        kind = "no_decay" if _no_decay(name, p, owners.get(id(p))) else "decay"
        if freeze_handle is not None:
            p = freeze_handle.leaf_for(p)
        buckets[f"{role}/{kind}"].append(p)
    groups = []
    for key, params in buckets.items():
        if not params:
            continue
        role, kind = key.split("/")
        group = {"params": params, "lr": new_row_lr if role == "tables" else lr,
                 "weight_decay": weight_decay if kind == "decay" or decay == "all" else 0.0,
                 "name": key, "role": role}
        if role == "tables" and base_rows is not None:
            group["base_rows"] = base_rows
        groups.append(group)
    return groups


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def make_optimizer(model: nn.Module, cfg_like: Any, *,
                   freeze_handle: FreezeHandle | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, configured from a TrainConfig-like object or dict.

    Reads ``learning_rate`` (default 1e-3), ``weight_decay`` (0.01), ``new_row_lr`` (default
    the learning rate), ``base_rows`` (optional), ``freeze_names`` (default the three text
    tables) and ``decay`` (default ``"weights"``). Attaches ``freeze_handle`` to the new
    optimizer when given. (The trainer builds its optimizer with :func:`training_optimizer`.)
    """
    lr = float(_cfg_get(cfg_like, "learning_rate", 1e-3))
    wd = float(_cfg_get(cfg_like, "weight_decay", 0.01))
    new_row_lr = _cfg_get(cfg_like, "new_row_lr", None)
    base_rows = _cfg_get(cfg_like, "base_rows", None)
    if base_rows is None and freeze_handle is not None:
        base_rows = freeze_handle.base_rows
    names = _cfg_get(cfg_like, "freeze_names", None) or (
        tuple(freeze_handle.params) if freeze_handle is not None else DEFAULT_NAMES)
    groups = param_groups(model, base_rows, None if new_row_lr is None else float(new_row_lr),
                          lr, wd, names, freeze_handle=freeze_handle,
                          decay=_cfg_get(cfg_like, "decay", "weights"))
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    if freeze_handle is not None:
        freeze_handle.attach(optimizer)
    return optimizer


class StagedSchedule:
    """Train only the new rows first: body groups get learning rate 0 for N steps.

    Compose it with any per-step multiplier (warmup, cosine) through ``LambdaLR``'s list of
    per-group lambdas::

        staged = StagedSchedule(new_rows_only_steps=500)
        scheduler = staged.scheduler(optimizer, lambda s: warmup_cosine(s, 100, 5000))

    Table groups (``role == "tables"``, as :func:`param_groups` makes them) follow ``base``;
    every other group follows ``0`` for steps ``< N`` and ``base`` afterwards. With lr 0 AdamW
    leaves the body bit-identical (its moments still accumulate). The scheduler's state is
    LambdaLR's, so resuming from a checkpoint continues the stage correctly.
    """

    def __init__(self, new_rows_only_steps: int) -> None:
        if isinstance(new_rows_only_steps, bool) or int(new_rows_only_steps) != new_rows_only_steps:
            raise TypeError(f"new_rows_only_steps must be an int, got {new_rows_only_steps!r}")
        if new_rows_only_steps < 0:
            raise ValueError(f"new_rows_only_steps must be >= 0, got {new_rows_only_steps}")
        self.new_rows_only_steps = int(new_rows_only_steps)

    def factor(self, role: str, step: int) -> float:
        """The multiplier of a group with this role at this step (before any base schedule)."""
        return 1.0 if role == "tables" or step >= self.new_rows_only_steps else 0.0

    def lambdas(self, optimizer: torch.optim.Optimizer,
                base: Callable[[int], float] | None = None) -> list[Callable[[int], float]]:
        """One lambda per parameter group of ``optimizer`` for ``LambdaLR``."""
        roles = [g.get("role") for g in optimizer.param_groups]
        if "tables" not in roles:
            raise ValueError("no parameter group has role 'tables': build the optimizer with "
                             "amhelpers.optim.param_groups (or make_optimizer)")
        base = base or (lambda step: 1.0)

        def make(role: str) -> Callable[[int], float]:
            return lambda step: self.factor(role, step) * base(step)

        return [make(r or "body") for r in roles]

    def scheduler(self, optimizer: torch.optim.Optimizer,
                  base: Callable[[int], float] | None = None
                  ) -> torch.optim.lr_scheduler.LambdaLR:
        """A ``LambdaLR`` applying the stage on top of ``base`` (default constant 1)."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lambdas(optimizer, base))

    def __repr__(self) -> str:
        return f"StagedSchedule(new_rows_only_steps={self.new_rows_only_steps})"


# ----------------------------------------------------------------------- the trainer's route
def warmup_cosine(step: int, warmup_steps: int, max_steps: int) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine decay to 0 at ``max_steps``.

    Args:
        step: optimizer steps already taken (0 for the first step).
        warmup_steps: steps of linear warmup.
        max_steps: the step at which the factor reaches 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks and their name: ``gpt`` (MiniVoice) or ``gpt.h`` (a Hugging Face
    GPT-2, as in IndexTTS2's UnifiedVoice).

    Raises:
        ValueError: the model has no block list at ``.gpt`` or ``.gpt.h``.
    """
    gpt = getattr(model, "gpt", None)
    if isinstance(getattr(gpt, "h", None), nn.ModuleList):
        return "gpt.h", gpt.h
    if isinstance(gpt, nn.ModuleList):
        return "gpt", gpt
    raise ValueError("the model has no transformer block list at .gpt or .gpt.h")


def freeze_layers(model: nn.Module, n: int) -> None:
    """Keep the first ``n`` transformer blocks still: their parameters stop requiring gradients,
    so no optimizer group holds them (no update, no weight decay; bit-identical).

    The blocks are ``model.gpt`` (MiniVoice) or ``model.gpt.h`` (a Hugging Face GPT-2, as in
    IndexTTS2's UnifiedVoice).

    Raises:
        ValueError: the model has no such block list, or fewer than ``n`` blocks.
    """
    try:
        _, blocks = transformer_blocks(model)
    except ValueError as err:
        raise ValueError(f"freeze_layers: {err}") from None
    if not 0 <= n <= len(blocks):
        raise ValueError(f"freeze_layers: {n} blocks asked, the model has {len(blocks)}")
    for block in blocks[:n]:
        block.requires_grad_(False)


def needs_groups(cfg: Any) -> bool:
    """Whether a TrainConfig asks for :func:`param_groups` (else one group holds everything)."""
    return (cfg.freeze_base_rows is not None or cfg.new_row_lr is not None
            or cfg.decay != "all" or cfg.new_rows_only_steps > 0)


def training_optimizer(model: nn.Module, cfg: Any) -> tuple[
        torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, FreezeHandle | None]:
    """The freeze, optimizer and scheduler a :class:`amhelpers.train.TrainConfig` asks for.

    Reads ``freeze_base_rows`` and ``freeze_mode`` (rows ``[0, N)`` of the text tables kept
    still: ``hook``, ``exact`` or ``exact-sparse``), ``learning_rate``, ``new_row_lr``,
    ``weight_decay``, ``decay`` (:data:`DECAY_POLICIES`), ``warmup_steps``, ``max_steps`` and
    ``new_rows_only_steps`` (:class:`StagedSchedule`); ``freeze_layers`` keeps the first
    blocks still (:func:`freeze_layers`). With none of the grouping settings
    (:func:`needs_groups`) AdamW gets one group with every trainable parameter, as in the
    IndexTTS2 trainer.

    Returns:
        ``(optimizer, scheduler, handle)``; ``handle`` (None without a freeze) is not yet
        attached: call ``handle.attach(optimizer)`` once the optimizer state is final (after
        loading a checkpoint's).
    """
    if getattr(cfg, "freeze_layers", 0):
        freeze_layers(model, cfg.freeze_layers)
    handle = (freeze_base_rows(model, cfg.freeze_base_rows, mode=cfg.freeze_mode)
              if cfg.freeze_base_rows is not None else None)
    if needs_groups(cfg):
        groups = param_groups(model, cfg.freeze_base_rows, cfg.new_row_lr, cfg.learning_rate,
                              cfg.weight_decay, freeze_handle=handle, decay=cfg.decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = partial(warmup_cosine, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps)
    if cfg.new_rows_only_steps > 0:
        scheduler = StagedSchedule(cfg.new_rows_only_steps).scheduler(optimizer, schedule)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler, handle
