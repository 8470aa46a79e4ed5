"""Checkpoint files: the one place that reads and writes them.

Two layouts are read and written back as they came:

- **MiniVoice** (:func:`amhelpers.model.save_checkpoint`, :func:`save_minivoice`): a dict
  ``{"format": MINIVOICE_FORMAT, "config", "model", "meta"[, "train_state"]}`` with the state
  dict under ``"model"``, as in IndexTTS2's ``gpt.pth``.
- **IndexTTS2** (``indextts/gpt/model_v2.py``, ``UnifiedVoice``): a plain state dict, or one
  nested under ``"model"`` (trainer checkpoints). ``inference_model.*`` keys (the HF wrapper
  that ``post_init_gpt2_config`` builds around the GPT's mel-side modules) are dropped; a
  ``module.`` / ``_orig_mod.`` prefix (DDP, ``torch.compile``) is stripped and put back on save.

Reading (:func:`read_torch_file`, used by :func:`read_checkpoint` and :func:`load_state_dict`)
is safe by default: ``torch.load(weights_only=True)``. Before loading, the first bytes tell an
empty file, a text file or another format from a torch file (a zip or a pickle); a file holding
Python objects besides tensors is refused, and loaded only with ``trust_pickle=True``
(``--trust-pickle``); one whose pickle names code (``os.system``, ``eval``, ...) is refused even
then. Every error is one line naming the file, what it holds and what to do.

Writes are atomic (temporary file + rename): a checkpoint is complete or untouched.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write
from .tables import TEXT_KEYS, check_text_tables

MINIVOICE_FORMAT = "amhelpers.minivoice/1"
DROP_PREFIX = "inference_model."
STRIP_PREFIXES = ("module.", "_orig_mod.")
TRAINING_STATE_KEYS = ("train_state", "optimizer", "scheduler", "lr_scheduler", "scaler", "ema")

TRUST_PICKLE_HELP = (
    "--trust-pickle (trust_pickle=True) loads with torch.load(weights_only=False), which runs "
    "whatever code the file's pickle names: use it only for a checkpoint you made or got from a "
    "source you trust, never for a download you cannot check")

# Globals no checkpoint needs: a pickle naming one runs code (torch blocks os/posix/nt/sys).
# Protocol 2 (torch.save's) writes Python 2 names: subprocess -> commands, builtins -> __builtin__.
CODE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "commands", "shutil", "socket",
                "importlib", "runpy", "pty", "ctypes", "code", "pickle", "marshal", "webbrowser",
                "multiprocessing")
CODE_BUILTINS = ("eval", "exec", "compile", "__import__", "open", "getattr", "setattr", "globals",
                 "input", "breakpoint", "delattr", "vars")


# ----------------------------------------------------------------------------- reading
def _pickle_global(text: str) -> tuple[str | None, bool]:
    """The Python global a weights-only load refused, and whether it is code, never weights."""
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked", text)
    if blocked:
        return blocked.group(1), True
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if not found:
        return None, False
    name = found.group(1)
    module, _, attr = name.rpartition(".")
    code = module.split(".")[0] in CODE_MODULES or (
        module in ("", "builtins", "__builtin__") and attr in CODE_BUILTINS)  # torch shows builtins bare
    return name, code


def _describe_head(head: bytes) -> str:
    """Say what the first bytes of a file that is not a torch file look like."""
    if not head:
        return "the file is empty"
    for cut in range(4):  # the 64 bytes may end inside a multi-byte character
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return f"it starts with bytes {head[:8]!r}"
    if not all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it starts with bytes {head[:8]!r}"
    first = text.strip().splitlines()[0][:40] if text.strip() else text[:40]
    return f"it is a text file (starts with {first!r})"


def _no_repair(trust_pickle: bool | None) -> str:
    """What --trust-pickle cannot do, for callers that offer it (``trust_pickle`` not None)."""
    if trust_pickle is None:
        return ""
    return ("; --trust-pickle cannot repair a file: it only lets a complete torch file holding "
            "Python objects load, by running its code (use it only for files you trust)")


def _damaged(path: Path, err: BaseException, trust_pickle: bool | None) -> ValueError:
    text = str(err).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.strip().splitlines()
             if line.strip() and "Weights only load failed" not in line]
    detail = f"{type(err).__name__}{': ' + lines[0][:200] if lines else ''}"
    return ValueError(f"checkpoint {path} cannot be read: it is truncated or damaged, or not "
                      f"written by torch.save ({detail}); was its copy or download interrupted? "
                      f"use another checkpoint{_no_repair(trust_pickle)}")


def read_torch_file(path: str | Path, trust_pickle: bool | None = None) -> Any:
    """Load a checkpoint file with ``torch.load`` on the CPU, safely, or say why it cannot.

    Args:
        path: the file.
        trust_pickle: ``None`` for callers that offer no way to trust a file (the trainer);
            ``False`` refuses Python objects and says what ``--trust-pickle`` would do;
            ``True`` loads them with ``weights_only=False`` (runs the file's code; only for
            files you trust). A pickle that names code is refused in every case.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an empty or text file, a truncated or damaged file, Python objects
            (unless trusted) or code in the pickle; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; give a checkpoint file in it, such as "
                         f"{path / 'ckpt_00001000.pt'} (MiniVoice) or {path / 'gpt.pth'} (IndexTTS2)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a MiniVoice .pt or "
                                "IndexTTS2 gpt.pth)")
    with path.open("rb") as fh:
        head = fh.read(64)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip, or a legacy pickle
        raise ValueError(f"checkpoint {path} cannot be read: {_describe_head(head)}, not a torch "
                         "checkpoint; give a file written by torch.save (a MiniVoice .pt or "
                         f"IndexTTS2 gpt.pth){_no_repair(trust_pickle)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        if err.filename is not None or isinstance(err, (PermissionError, FileNotFoundError)):
            raise  # permission, a file gone: the CLI prints it with the path
        raise _damaged(path, err, trust_pickle) from None  # a cut zip: "[Errno 22] Invalid argument"
    except pickle.UnpicklingError as err:
        name, code = _pickle_global(str(err))
        if code:
            also = ", also with --trust-pickle" if trust_pickle is not None else ""
            raise ValueError(
                f"checkpoint {path} asks to call {name} when loaded: that is code, not weights (a "
                f"malicious or broken file), so it is refused{also}; delete it, or re-save the "
                "weights from a trusted copy with torch.save(model.state_dict())") from None
        if name is None:
            raise _damaged(path, err, trust_pickle) from None
        if not trust_pickle:
            refused = (f"checkpoint {path} cannot be read: it pickles {name}, which a safe "
                       "(weights-only) load refuses")
            if trust_pickle is None:
                raise ValueError(f"{refused}; it is not a MiniVoice checkpoint (they hold only "
                                 "tensors and plain values)") from None
            raise ValueError(
                f"{refused}: it holds Python objects besides tensors. If you trust the file, pass "
                f"trust_pickle=True (CLI: --trust-pickle); {TRUST_PICKLE_HELP}") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:  # noqa: BLE001 -- any error of the full unpickler
            raise _damaged(path, err2, trust_pickle) from None
    except Exception as err:  # noqa: BLE001 -- torch raises many types on damaged files
        raise _damaged(path, err, trust_pickle) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a MiniVoice checkpoint file as its raw dict (safe ``weights_only`` loading).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the path is a folder, or the file is not a (complete) MiniVoice checkpoint;
            the message names the file and says what it holds instead.
    """
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != MINIVOICE_FORMAT:
        raise ValueError(f"checkpoint {path} is not a MiniVoice checkpoint (no format "
                         f"{MINIVOICE_FORMAT!r}); train and model.load_checkpoint take only MiniVoice "
                         "checkpoints (an IndexTTS2 gpt.pth is read by amhelpers.ckptio.load_state_dict)")
    return payload


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) for k in obj) and any(torch.is_tensor(v) for v in obj.values())


def _json_like(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_json_like(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _json_like(v) for k, v in value.items())
    return False


def _find_prefix(keys: Iterable[str]) -> str:
    """The DDP / torch.compile prefix in front of ``text_embedding.weight`` ("" when none)."""
    for key in keys:
        if key.endswith(TEXT_KEYS[0]):
            prefix = key[: -len(TEXT_KEYS[0])]
            rest = prefix
            while rest:
                for p in STRIP_PREFIXES:
                    if rest.startswith(p):
                        rest = rest[len(p):]
                        break
                else:
                    break
            if not rest:
                return prefix
    return ""


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a MiniVoice checkpoint or an IndexTTS2 ``gpt.pth``.

    Args:
        path: the checkpoint file.
        trust_pickle: allow a full (unsafe) unpickle when the file holds Python objects that
            ``torch.load(weights_only=True)`` refuses. Only for files you trust.

    Returns:
        ``(state_dict, meta)``: the state dict with UnifiedVoice key names (no prefix, no
        ``inference_model.*``), and what :func:`save_state_dict` needs to write the same layout:
        ``layout`` (``minivoice`` | ``indextts2``), ``nested``, ``prefix``, ``dropped_keys``,
        ``config`` / ``format`` / ``meta`` (MiniVoice), ``extra`` (other JSON-like top-level
        entries), ``left_out`` (top-level entries not carried: optimizer / training state, which
        does not fit grown tables, and non-JSON objects), ``rows``, ``dim``, ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch file (see :func:`read_torch_file`), or no text tables.
    """
    path = Path(path)
    payload = read_torch_file(path, bool(trust_pickle))
    meta: dict[str, Any] = {"path": str(path), "extra": {}, "left_out": [], "dropped_keys": []}
    if isinstance(payload, Mapping) and _is_state_dict(payload.get("model")):
        sd = dict(payload["model"])
        meta["nested"] = True
        is_mini = payload.get("format") == MINIVOICE_FORMAT or (
            isinstance(payload.get("config"), Mapping) and "number_text_tokens" in payload["config"])
        meta["layout"] = "minivoice" if is_mini else "indextts2"
        for key, value in payload.items():
            if key == "model":
                continue
            if is_mini and key in ("format", "config", "meta"):
                meta[key] = value
            elif key not in TRAINING_STATE_KEYS and _json_like(value):
                meta["extra"][key] = value
            else:
                meta["left_out"].append(key)
    elif _is_state_dict(payload):
        sd = dict(payload)
        meta.update(nested=False, layout="indextts2")
    else:
        kind = type(payload).__name__
        keys = list(payload)[:6] if isinstance(payload, Mapping) else []
        raise ValueError(f"checkpoint {path} holds a {kind} {keys or ''} without a state dict; "
                         f"expected a state dict with {', '.join(TEXT_KEYS)}, or one under 'model'")
    prefix = _find_prefix(sd)
    if prefix:
        sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    meta["prefix"] = prefix
    dropped = sorted(k for k in sd if k.startswith(DROP_PREFIX))
    for key in dropped:
        del sd[key]
    meta["dropped_keys"] = dropped
    rows, dim = check_text_tables(sd, f"checkpoint {path}")
    meta.update(rows=rows, dim=dim)
    return sd, meta


# ----------------------------------------------------------------------------- writing
def _write(path: str | Path, payload: Any) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def save_minivoice(path: str | Path, config: Mapping[str, Any],
                   state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None,
                   train_state: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Write a MiniVoice checkpoint atomically: ``{"format", "config", "model", "meta"}``.

    Args:
        path: the file (``*.pt``).
        config: :meth:`amhelpers.model.MiniVoiceConfig.to_dict`.
        state_dict: the weights, stored under ``"model"`` as given.
        meta: JSON-like metadata (step, tokenizer and its sha256, the extension record, ...).
        train_state: optimizer, scheduler, RNG and data state for resuming (trainer only).
        extra: other top-level JSON-like entries to carry (from :func:`load_state_dict`).

    Returns:
        The path written.
    """
    payload: dict[str, Any] = {"format": MINIVOICE_FORMAT, "config": dict(config),
                               "model": dict(state_dict), "meta": dict(meta or {}),
                               **dict(extra or {})}
    if train_state is not None:
        payload["train_state"] = train_state
    return _write(path, payload)


def save_state_dict(path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
                    ) -> Path:
    """Write ``state_dict`` atomically in the layout ``meta`` describes (from :func:`load_state_dict`).

    A MiniVoice checkpoint gets its config's ``number_text_tokens`` set from the text tables
    (rows - 1) and no ``train_state`` (optimizer state does not fit grown tables). An IndexTTS2
    file gets its prefix back; ``inference_model.*`` keys stay out (IndexTTS2 rebuilds them).

    Returns:
        The path written.
    """
    rows, _ = check_text_tables(state_dict, "state dict to save")
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
    prefix = meta.get("prefix", "")
    if prefix:
        sd = {prefix + k: v for k, v in sd.items()}
    if meta.get("layout", "indextts2") == "minivoice":
        config = dict(meta.get("config") or {})
        config["number_text_tokens"] = rows - 1
        return save_minivoice(path, config, sd, meta.get("meta"), extra=meta.get("extra"))
    if meta.get("nested"):
        return _write(path, {**meta.get("extra", {}), "model": sd})
    return _write(path, sd)
