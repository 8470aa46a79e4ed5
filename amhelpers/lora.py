"""LoRA adapters on the transformer blocks, with PEFT: a retention lever (chapter 6b).

With ``--lora-rank R`` the trainer leaves every Linear layer of the transformer blocks
(``c_attn``, ``c_proj``, ``c_fc`` and the MLP's ``c_proj``: MiniVoice's names, which are also
GPT-2's in IndexTTS2's UnifiedVoice) at its pretrained weights and trains a low-rank update
``W + (alpha / R) * B @ A`` beside each (Hu et al. 2021, arXiv:2106.09685), through PEFT's
``inject_adapter_in_model``. The blocks' layer norms stay still too. Everything outside the
blocks trains as the recipe says: the text tables (their new rows, with the freeze of the base
rows), the mel table, the position tables, the final norm and the heads.

PEFT marks every non-adapter parameter frozen; :func:`inject_adapters` (which
``benchmarks/bench_unifiedvoice.py`` also uses for PEFT's TrainableTokens) gives the other
parameters back their earlier ``requires_grad``.

Checkpoints stay plain MiniVoice checkpoints (merge on save): ``"model"`` holds the merged
weights ``W + (alpha / R) * B @ A`` under the usual names, so generation, evaluation and every
tool that loads a run's checkpoint work unchanged. For an exact resume the training state also
holds :func:`lora_state` (the unmerged base weights of the adapted layers and the adapters),
which :func:`load_lora_state` puts back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from amhelpers.optim import transformer_blocks

LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
"""The Linear layers of a transformer block that get an adapter."""


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("--lora-rank needs the peft package: run `python -m amhelpers.setup` "
                          "(or `pip install peft`), or train without LoRA (--lora-rank 0)") from None
    return peft


def inject_adapters(model: nn.Module, config: Any, still: Callable[[str], bool]) -> None:
    """PEFT's ``inject_adapter_in_model(config, model)``, keeping every flag PEFT should not set.

    PEFT leaves only its adapters trainable. Here the new adapter parameters train, the
    parameters for which ``still(name)`` holds stop, and every other parameter keeps the
    ``requires_grad`` it had before.
    """
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    _peft().inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(False if still(name) else before.get(name, True))


def has_lora(model: nn.Module) -> bool:
    """Whether :func:`add_lora` has put adapters into ``model``."""
    return any(".lora_A." in name for name, _ in model.named_parameters())


def add_lora(model: nn.Module, rank: int, alpha: float,
             resume: tuple[Any, Mapping[str, Any]] | None = None) -> list[str]:
    """Put LoRA adapters (rank ``rank``, scale ``alpha / rank``) on the blocks' Linear layers.

    The adapted layers' own weights and the blocks' norms stop requiring gradients; the
    adapters (``lora_A`` random, ``lora_B`` zero, so the model's output is unchanged at first)
    train; every parameter outside the blocks keeps its ``requires_grad``.

    Args:
        resume: ``(checkpoint path, its train_state)`` of a trainer's resume: the checkpoint's
            unmerged layers and adapters are put back (:func:`load_lora_state`).

    Returns:
        the names of the adapted layers.

    Raises:
        ValueError: ``rank`` < 1, ``alpha`` <= 0, no block list, adapters already there, or a
            resumed checkpoint without (or with other) adapters, naming the file.
        ImportError: peft is not installed.
    """
    if not isinstance(rank, int) or rank < 1 or not alpha > 0:
        raise ValueError(f"LoRA: rank={rank!r} must be a whole number >= 1 and alpha={alpha!r} > 0")
    if has_lora(model):
        raise ValueError("LoRA: the model already has adapters")
    try:
        prefix, _ = transformer_blocks(model)
    except ValueError as err:
        raise ValueError(f"LoRA: {err}") from None
    pattern = rf"{re.escape(prefix)}\.\d+\.({'|'.join(re.escape(x) for x in LAYERS)})"
    in_blocks = re.compile(rf"{re.escape(prefix)}\.\d+\.")
    inject_adapters(model, _peft().LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                              target_modules=pattern),
                    lambda name: bool(in_blocks.match(name)) and ".lora_" not in name)
    if resume is not None:
        path, state = resume
        if "lora" not in state:
            raise ValueError(f"--resume {path}: the checkpoint was saved without LoRA adapters; "
                             "resume it without --lora-rank, or start a LoRA run from it with "
                             "--init-checkpoint in a new --output-dir")
        try:
            load_lora_state(model, state["lora"])
        except ValueError as err:
            raise ValueError(f"--resume {path}: {err}") from None
    return adapted_layers(model)


def adapted_layers(model: nn.Module) -> list[str]:
    """Names of the modules that carry an adapter (PEFT's LoRA layers)."""
    from peft.tuners.lora import LoraLayer
    return [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under its plain names, each adapter merged into its layer.

    The model itself is not changed (the adapters stay separate for further training). Without
    adapters this is a detached copy of ``model.state_dict()``.
    """
    layers = {name: model.get_submodule(name) for name in adapted_layers(model)} \
        if has_lora(model) else {}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        plain = key.replace(".base_layer.", ".")
        owner = plain.rsplit(".", 1)[0]
        value = value.detach()
        if plain.endswith(".weight") and owner in layers:
            value = value + layers[owner].get_delta_weight("default").detach()
        out[plain] = value.cpu().clone()
    return out


def lora_state(model: nn.Module, rank: int, alpha: float) -> dict[str, Any]:
    """What an exact resume needs beyond the merged weights: the adapted layers' unmerged
    weights and biases and the adapters, on the CPU, with ``rank`` and ``alpha``."""
    layers = tuple(adapted_layers(model))
    tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
               if k.startswith(tuple(f"{name}." for name in layers))}
    return {"rank": rank, "alpha": alpha, "tensors": tensors}


def load_lora_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Put :func:`lora_state` back into a model that :func:`add_lora` adapted alike.

    Raises:
        ValueError: the adapters' names or shapes differ (another rank, another model).
    """
    own = model.state_dict()
    tensors = state["tensors"]
    missing = sorted(set(k for k in own if ".lora_" in k or ".base_layer." in k) - set(tensors))
    wrong = sorted(k for k, v in tensors.items() if k not in own or own[k].shape != v.shape)
    if missing or wrong:
        raise ValueError(f"the checkpoint's LoRA state does not fit this model (rank "
                         f"{state.get('rank')}): missing {missing[:3]}, unexpected or "
                         f"reshaped {wrong[:3]}")
    model.load_state_dict(dict(tensors), strict=False)
