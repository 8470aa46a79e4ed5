"""Load, save and grow the text tables of MiniVoice checkpoints and IndexTTS2's ``gpt.pth``.

Two layouts are read and written back as they came:

- **MiniVoice** (:func:`amhelpers.model.save_checkpoint`): a dict ``{"format", "config",
  "model", "meta"[, "train_state"]}`` with the state dict under ``"model"``.
- **IndexTTS2** (``indextts/gpt/model_v2.py``, ``UnifiedVoice``): a plain state dict, or one
  nested under ``"model"`` (trainer checkpoints). ``inference_model.*`` keys (the HF wrapper
  that ``post_init_gpt2_config`` builds around the GPT's mel-side modules) are dropped; a
  ``module.`` / ``_orig_mod.`` prefix (DDP, ``torch.compile``) is stripped and put back on save.

Both share UnifiedVoice's names for the text tables, each with ``number_text_tokens + 1`` rows
(``V + 1``; the "+1" row, index ``V``, is never produced by the V-piece tokenizer):
``text_embedding.weight`` [V+1, d], ``text_head.weight`` [V+1, d], ``text_head.bias`` [V+1].

Growing the tables for an extended tokenizer (:func:`grow_text_tables`): rows ``[0, V)`` are
copied bit for bit; the added pieces get ids ``[V, V')``; **the base's "+1" row moves to the new
end** (index ``V'``), so the table is again "tokenizer ids, then one extra row". Id ``V``, which
the base never produced and is now the first added piece, gets a fresh init like every other
added piece (it does not inherit the untrained "+1" row). The extension record says so.

Init strategies for added rows (FACTS.md, "Initialising new rows"):

- ``indextts``: what UnifiedVoice's constructor (and so the original trainer) gives: embedding
  N(0, 0.02), head weight and bias uniform ±1/sqrt(d) (``nn.Linear`` default).
- ``torch-default``: ``nn.Embedding`` default N(0, 1) for the embedding; head as ``nn.Linear``.
- ``mean``: the mean of the trained base rows (embedding, head weight and bias each).
- ``hewitt``: that mean plus Gaussian noise with covariance ``HEWITT_COV_SCALE`` (0.01) times the
  covariance of the trained base rows: noise 10% of the base rows' spread along every principal
  direction, so added rows stay distinct (pairwise cosine < 1) while sitting near the mean.
  transformers' ``mean_resizing`` uses 1e-9 (identical rows in effect); 1.0 would make added
  rows look like arbitrary trained tokens.
- ``romanized`` (FVT with a romanisation step): each added piece's text goes through
  :func:`amhelpers.text.romanize`, is encoded by the base tokenizer (upper-cased when the base
  only knows upper-case Latin, as IndexTTS2's), and the base rows of those ids are averaged;
  the mean is used when that gives only ``<unk>``, nothing, or untrained rows.

Statistics (mean, covariance) use only *trained* base rows: rows flagged by the Magikarp-style
test of :func:`amhelpers.diagnose.magikarp` (control rows, unused pieces) are left out, or the
rows given in ``exclude_rows``. The "+1" row is never part of them.

Safety: ``extend`` refuses an ``--out`` that is one of its inputs, a folder, under a file or in
an unwritable folder, and replaces an existing ``--out`` (or its ``<out>.extension.json``
record) only with ``--overwrite``; loading names what a refused pickle holds and what
``--trust-pickle`` would do; NaN/inf rows are named by table and row.

Size: about 750 lines, over the usual 500, because loading, saving and growing share the
layout handling and the record format; splitting them would spread one file format over
several modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import operator
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write, check_output_file, sha256_file, write_text_atomic

TEXT_KEYS = ("text_embedding.weight", "text_head.weight", "text_head.bias")
STRATEGIES = ("indextts", "torch-default", "mean", "hewitt", "romanized")
HEWITT_COV_SCALE = 0.01
EMBEDDING_INIT_STD = 0.02
MINIVOICE_FORMAT = "amhelpers.minivoice/1"
RECORD_FORMAT = "amhelpers.extension/1"
DROP_PREFIX = "inference_model."
STRIP_PREFIXES = ("module.", "_orig_mod.")
RECORD_SUFFIX = ".extension.json"
TRAINING_STATE_KEYS = ("train_state", "optimizer", "scheduler", "lr_scheduler", "scaler", "ema")


# ----------------------------------------------------------------------------- loading
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


def _looks_like_text(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(256)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return False
        text = head[:err.start].decode("utf-8")   # a character cut at the 256th byte
    return bool(text) and all(c.isprintable() or c in "\r\n\t" for c in text)


def _not_torch(path: Path, detail: str) -> ValueError:
    kind = ": it looks like a text file" if _looks_like_text(path) else ""
    return ValueError(
        f"checkpoint {path} is corrupted or not a torch file{kind} ({detail[:200]}); give a file "
        "written by torch.save (a copy cut short or a text file gives this error). --trust-pickle "
        "cannot repair a file: it only lets a complete torch file holding Python objects load, by "
        "running its code (use it only for files you trust)")


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # permission, I/O: the CLI prints it with the path
    except pickle.UnpicklingError as err:
        text = str(err)
        name, blocked = _pickle_global(text)
        if blocked:
            raise ValueError(
                f"checkpoint {path} asks to call {name} when loaded: that is code, not weights (a "
                "malicious or broken file), so it is refused, also with --trust-pickle; delete it, "
                "or re-save the weights from a trusted copy with torch.save(model.state_dict())"
            ) from None
        if name is None:
            detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
            detail = next((line.strip() for line in detail if line.strip()
                           and "Weights only load failed" not in line), text[:200])
            raise _not_torch(path, detail) from None
        if not trust_pickle:
            raise ValueError(
                f"checkpoint {path} holds Python objects besides tensors ({name}), which safe "
                "loading (torch.load weights_only=True) refuses. If you trust the file, pass "
                f"trust_pickle=True (CLI: --trust-pickle); {TRUST_PICKLE_HELP}") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:  # noqa: BLE001 -- any error of the full unpickler
            raise _not_torch(path, f"{type(err2).__name__}: {err2}") from None
    except Exception as err:  # noqa: BLE001 -- torch raises many types on damaged files
        raise _not_torch(path, f"{type(err).__name__}: {err}") from None


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


def check_text_tables(state_dict: Mapping[str, Any], where: str = "state dict") -> tuple[int, int]:
    """Check the three text tables and return ``(rows, dim)``.

    Raises:
        ValueError: a table is missing or the shapes disagree (names the keys expected and a
            few keys found).
    """
    missing = [k for k in TEXT_KEYS if k not in state_dict]
    if missing:
        found = sorted(state_dict)[:6]
        raise ValueError(
            f"{where} has no text tables: expected keys {', '.join(TEXT_KEYS)} (UnifiedVoice / "
            f"MiniVoice names); missing {', '.join(missing)}; found {len(state_dict)} keys such as "
            f"{', '.join(found) or '(none)'}")
    emb, head, bias = (state_dict[k] for k in TEXT_KEYS)
    if emb.dim() != 2 or head.dim() != 2 or bias.dim() != 1:
        raise ValueError(f"{where}: text tables have shapes {tuple(emb.shape)}, {tuple(head.shape)}, "
                         f"{tuple(bias.shape)}; expected [V+1, d], [V+1, d], [V+1]")
    if not (emb.shape[0] == head.shape[0] == bias.shape[0]) or emb.shape[1] != head.shape[1]:
        raise ValueError(f"{where}: text tables disagree: {TEXT_KEYS[0]} {tuple(emb.shape)}, "
                         f"{TEXT_KEYS[1]} {tuple(head.shape)}, {TEXT_KEYS[2]} {tuple(bias.shape)}")
    return int(emb.shape[0]), int(emb.shape[1])


def non_finite_rows(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, list[int]]]:
    """Rows of each text table holding NaN (``"nan"``) or only +-inf (``"inf"``); empty when none."""
    out = {}
    for key in TEXT_KEYS:
        t = state_dict[key].detach()
        if not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        nan = torch.isnan(t).reshape(len(t), -1).any(1)
        inf = torch.isinf(t).reshape(len(t), -1).any(1) & ~nan
        out[key] = {"nan": torch.nonzero(nan).flatten().tolist(),
                    "inf": torch.nonzero(inf).flatten().tolist()}
    return out


def check_finite_tables(state_dict: Mapping[str, torch.Tensor], where: str = "state dict") -> None:
    """Raise a ValueError naming the tables and rows that hold NaN or inf (see :func:`non_finite_rows`)."""
    bad = non_finite_rows(state_dict)
    if not bad:
        return
    parts = []
    for key, kinds in bad.items():
        for kind, ids in kinds.items():
            if ids:
                shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
                parts.append(f"{key}: {len(ids)} row{'s' * (len(ids) != 1)} with {kind} ({shown})")
    raise ValueError(f"{where} holds non-finite values: {'; '.join(parts)}; training diverged or "
                     "the file is damaged: use an earlier checkpoint (and lower the learning rate "
                     "or clip gradients)")


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
        does not fit grown tables, and non-JSON objects), ``rows``,
        ``dim``, ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch file, or no text tables.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; give the checkpoint file in it (a "
                         "MiniVoice .pt such as a run folder's ckpt_00001000.pt, or IndexTTS2 gpt.pth)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a MiniVoice .pt or "
                                "IndexTTS2 gpt.pth)")
    payload = _torch_load(path, trust_pickle)
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
    layout = meta.get("layout", "indextts2")
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
    prefix = meta.get("prefix", "")
    if prefix:
        sd = {prefix + k: v for k, v in sd.items()}
    if layout == "minivoice":
        config = dict(meta.get("config") or {})
        config["number_text_tokens"] = rows - 1
        payload: Any = {"format": meta.get("format", MINIVOICE_FORMAT), "config": config,
                        "model": sd, "meta": dict(meta.get("meta") or {}), **meta.get("extra", {})}
    elif meta.get("nested"):
        payload = {**meta.get("extra", {}), "model": sd}
    else:
        payload = sd
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)
    return path


# ----------------------------------------------------------------------------- growing
def record_path(checkpoint: str | Path) -> Path:
    """Where the extension record of ``checkpoint`` lives: ``<checkpoint>.extension.json``."""
    return Path(str(checkpoint) + RECORD_SUFFIX)


def expected_init_norm(name: str, dim: int, strategy: str = "indextts") -> float:
    """Expected row norm (bias: mean absolute value) of a constructor-initialised row.

    Embedding N(0, s) in d dims: s*sqrt(d) (s = 0.02 for ``indextts``, 1 for
    ``torch-default``); head weight uniform ±1/sqrt(d): sqrt(d/3)/sqrt(d) = 1/sqrt(3); head bias
    uniform ±1/sqrt(d): mean |b| = 1/(2 sqrt(d)).
    """
    if name == TEXT_KEYS[0]:
        return (1.0 if strategy == "torch-default" else EMBEDDING_INIT_STD) * math.sqrt(dim)
    if name == TEXT_KEYS[1]:
        return 1.0 / math.sqrt(3.0)
    return 0.5 / math.sqrt(dim)


def base_rows_sha256(state_dict: Mapping[str, torch.Tensor], base_rows: int) -> str:
    """sha256 over rows ``[0, base_rows)`` of the three text tables (detects any base change)."""
    digest = hashlib.sha256()
    for key in TEXT_KEYS:
        t = state_dict[key][:base_rows].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _pieces(path: str | Path, what: str) -> list:
    from .tokenizer import load_proto

    return list(load_proto(path, what).pieces)


def _generator(seed: int, key: str) -> torch.Generator:
    offset = TEXT_KEYS.index(key)
    return torch.Generator().manual_seed(int(seed) * 1000 + offset)


def _romanized_sources(tokenizer: str | Path, base_tokenizer: str | Path, base_vocab: int,
                       new_vocab: int, usable: set[int]) -> tuple[list[list[int]], list[dict]]:
    """Base ids to average for each added piece (empty list: fall back to the mean)."""
    from .text import romanize
    from .tokenizer import UNKNOWN, base_text_case, load_proto, processor

    base_proto = load_proto(base_tokenizer, "--base-tokenizer")
    sp = processor(base_proto)
    upper = base_text_case(base_proto) == "upper"
    pieces = _pieces(tokenizer, "--tokenizer")
    unk = sp.unk_id()
    sources, fallbacks = [], []
    for i in range(base_vocab, new_vocab):
        piece = pieces[i]
        text = romanize(piece.piece.replace("\u2581", " ")).strip()
        if upper:
            text = text.upper()
        ids = sp.encode(text) if text and piece.type != UNKNOWN else []
        kept = [j for j in ids
                if j != unk and j in usable and base_proto.pieces[j].piece.strip("\u2581")]
        sources.append(kept)
        if not kept:
            fallbacks.append({"id": i, "piece": piece.piece, "romanized": text,
                              "why": "empty" if not ids else ("<unk>" if unk in ids else "untrained rows")})
    return sources, fallbacks


def grow_text_tables(state_dict: Mapping[str, torch.Tensor], base_vocab: int, new_vocab: int,
                     strategy: str = "indextts", seed: int = 0,
                     tokenizer: str | Path | None = None, base_tokenizer: str | Path | None = None,
                     exclude_rows: Iterable[int] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Grow the three text tables from ``base_vocab + 1`` to ``new_vocab + 1`` rows.

    Args:
        state_dict: a state dict with UnifiedVoice's text table names (other keys pass through).
        base_vocab: pieces of the base tokenizer (tables must have ``base_vocab + 1`` rows).
        new_vocab: pieces of the extended tokenizer (> ``base_vocab``).
        strategy: one of :data:`STRATEGIES`.
        seed: seed of every random draw (each table has its own generator).
        tokenizer: the extended ``.model`` (needed by ``romanized``; checked and hashed if given).
        base_tokenizer: the base ``.model`` (needed by ``romanized``; checked and hashed if given).
        exclude_rows: base rows to leave out of the statistics; default: the rows that
            :func:`amhelpers.diagnose.magikarp` flags as under-trained.

    Returns:
        ``(new_state_dict, record)``; the record holds base/added rows, strategy, seed,
        tokenizer sha256s, the "+1" row move, the rows left out of the statistics and init
        details (see :func:`write_extension_record`).

    Raises:
        ValueError: unknown strategy, ``new_vocab <= base_vocab``, row counts that do not match
            ``base_vocab + 1`` (naming the tokenizer), tokenizer sizes that disagree, or
            ``romanized`` without tokenizers.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--init {strategy!r} is not a strategy; choose from {', '.join(STRATEGIES)}")
    try:
        ok = not isinstance(seed, bool) and abs(operator.index(seed)) < 2 ** 53
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"--seed {seed!r} must be an integer between -2**53 and 2**53")
    base_vocab, new_vocab = int(base_vocab), int(new_vocab)
    base_name = f"base tokenizer {base_tokenizer}" if base_tokenizer else f"base_vocab={base_vocab}"
    if base_tokenizer is not None:
        n = len(_pieces(base_tokenizer, "--base-tokenizer"))
        if n != base_vocab:
            raise ValueError(f"--base-tokenizer {base_tokenizer} has {n} pieces, not base_vocab={base_vocab}")
    if tokenizer is not None:
        n = len(_pieces(tokenizer, "--tokenizer"))
        if n != new_vocab:
            raise ValueError(f"--tokenizer {tokenizer} has {n} pieces, not new_vocab={new_vocab}")
    if new_vocab <= base_vocab:
        raise ValueError(f"the extended vocabulary ({new_vocab}) must be larger than the base "
                         f"({base_vocab}); nothing to grow")
    rows, dim = check_text_tables(state_dict)
    check_finite_tables(state_dict, "the text tables to grow")
    if rows != base_vocab + 1:
        hint = (" (the checkpoint already has the extended size)" if rows == new_vocab + 1 else
                " (is this the checkpoint trained with that tokenizer?)")
        raise ValueError(
            f"text tables have {rows} rows but the {base_name} has {base_vocab} pieces, so "
            f"number_text_tokens + 1 = {base_vocab + 1} rows are expected{hint}")
    if strategy == "romanized" and (tokenizer is None or base_tokenizer is None):
        raise ValueError("--init romanized needs --tokenizer (extended) and --base-tokenizer "
                         "(it encodes each added piece's romanisation with the base tokenizer)")

    if exclude_rows is None:
        from .diagnose import magikarp

        flagged = magikarp(state_dict, base_vocab, unused_rows=[base_vocab])["flagged_rows"]
        excluded = sorted(int(r) for r in flagged if r < base_vocab)
        exclusion_rule = "magikarp"
    else:
        excluded = sorted({int(r) for r in exclude_rows if 0 <= int(r) < base_vocab})
        exclusion_rule = "given"
    mask = torch.ones(base_vocab, dtype=torch.bool)
    if excluded:
        mask[excluded] = False
    used = torch.nonzero(mask).flatten()
    if len(used) < 2:
        raise ValueError(f"only {len(used)} trained base rows left for the statistics after "
                         f"excluding {len(excluded)} under-trained rows")

    n_new = new_vocab - base_vocab
    details: dict[str, Any] = {}
    sources: list[list[int]] | None = None
    if strategy == "romanized":
        sources, fallbacks = _romanized_sources(tokenizer, base_tokenizer, base_vocab, new_vocab,
                                                set(used.tolist()))
        details["romanized_fallback_to_mean"] = len(fallbacks)
        details["romanized_fallback_examples"] = fallbacks[:20]
    if strategy == "hewitt":
        details["hewitt_cov_scale"] = HEWITT_COV_SCALE

    out = dict(state_dict)
    for key in TEXT_KEYS:
        old = state_dict[key]
        trained = old[:base_vocab][used].detach().to(torch.float64)
        gen = _generator(seed, key)
        shape = (n_new,) + tuple(old.shape[1:])
        bound = 1.0 / math.sqrt(dim)
        if strategy in ("indextts", "torch-default"):
            if key == TEXT_KEYS[0]:
                std = 1.0 if strategy == "torch-default" else EMBEDDING_INIT_STD
                new = torch.randn(shape, generator=gen, dtype=torch.float64) * std
            else:
                new = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        else:
            mean = trained.mean(0)
            if strategy == "mean":
                new = mean.expand(shape).clone()
            elif strategy == "hewitt":
                centred = trained - mean
                if trained.dim() == 1:
                    std = centred.pow(2).sum().div(max(len(trained) - 1, 1)).sqrt()
                    noise = torch.randn(shape, generator=gen, dtype=torch.float64) * std
                else:
                    cov = centred.T @ centred / max(len(trained) - 1, 1)
                    evals, evecs = torch.linalg.eigh(cov)
                    root = evecs * evals.clamp_min(0).sqrt()
                    noise = torch.randn(shape, generator=gen, dtype=torch.float64) @ root.T
                new = mean + math.sqrt(HEWITT_COV_SCALE) * noise
            else:  # romanized
                full = old[:base_vocab].detach().to(torch.float64)
                new = mean.expand(shape).clone()
                for k, ids in enumerate(sources or []):
                    if ids:
                        new[k] = full[ids].mean(0)
        grown = torch.empty((new_vocab + 1,) + tuple(old.shape[1:]), dtype=old.dtype)
        grown[:base_vocab] = old[:base_vocab]
        grown[base_vocab:new_vocab] = new.to(old.dtype)
        grown[new_vocab] = old[base_vocab]
        out[key] = grown

    record = {
        "format": RECORD_FORMAT,
        "base_rows": base_vocab,
        "base_vocab": base_vocab,
        "new_vocab": new_vocab,
        "rows_before": base_vocab + 1,
        "rows_after": new_vocab + 1,
        "added_rows": {"start": base_vocab, "stop": new_vocab, "count": n_new},
        "tables": list(TEXT_KEYS),
        "dim": dim,
        "strategy": strategy,
        "seed": int(seed),
        "plus_one_row": {
            "from": base_vocab, "to": new_vocab,
            "note": (f"the base's extra row {base_vocab} (never produced by the base tokenizer) "
                     f"moved to the new end, row {new_vocab}; id {base_vocab} is now an added "
                     f"piece and got the '{strategy}' init"),
        },
        "stat_rows_used": len(used),
        "stat_rows_excluded": excluded,
        "stat_exclusion": exclusion_rule,
        "init_details": details,
        "base_rows_sha256": base_rows_sha256(state_dict, base_vocab),
        "tokenizer": str(tokenizer) if tokenizer is not None else None,
        "tokenizer_sha256": sha256_file(tokenizer) if tokenizer is not None else None,
        "base_tokenizer": str(base_tokenizer) if base_tokenizer is not None else None,
        "base_tokenizer_sha256": sha256_file(base_tokenizer) if base_tokenizer is not None else None,
    }
    return out, record


def initial_state_from_record(state_dict: Mapping[str, torch.Tensor], record: Mapping[str, Any]
                              ) -> tuple[dict[str, torch.Tensor], bool]:
    """Rebuild the text tables as they were right after the extension, from its record.

    The added rows are drawn again with the record's strategy, seed and excluded rows, from the
    base rows found in ``state_dict``. Exact when those base rows are bit-identical to the ones
    grown (``base_rows_sha256``) -- always so for the ``indextts`` / ``torch-default`` draws,
    which do not read the base rows.

    Returns:
        ``(init_state_dict, exact)``.
    """
    base, new = int(record["base_vocab"]), int(record["new_vocab"])
    rows, _ = check_text_tables(state_dict)
    if rows != new + 1:
        raise ValueError(f"the extension record describes {new + 1} rows but the checkpoint has {rows}")
    shaped = {k: torch.cat([state_dict[k][:base], state_dict[k][new:new + 1]]) for k in TEXT_KEYS}
    tok, base_tok = record.get("tokenizer"), record.get("base_tokenizer")
    needs_tok = record["strategy"] == "romanized"
    if needs_tok and not (tok and Path(tok).is_file() and base_tok and Path(base_tok).is_file()):
        raise FileNotFoundError(f"the extension record's tokenizers ({tok}, {base_tok}) are needed to "
                                "rebuild a 'romanized' init; pass --init-snapshot instead")
    init, _ = grow_text_tables(shaped, base, new, record["strategy"], record.get("seed", 0),
                               tok if needs_tok else None, base_tok if needs_tok else None,
                               exclude_rows=record.get("stat_rows_excluded", []))
    exact = (record["strategy"] in ("indextts", "torch-default")
             or base_rows_sha256(state_dict, base) == record.get("base_rows_sha256"))
    return init, exact


def _is_record_name(path: Path) -> bool:
    return path.name.endswith(RECORD_SUFFIX)


def write_extension_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write an extension record as JSON, atomically.

    ``path`` is the record file itself when its name ends in ``.extension.json``; any other path
    is the checkpoint the record belongs to, and the record goes to ``<path>.extension.json``
    (so a checkpoint named ``grown.json`` is never written over).
    """
    path = Path(path)
    if not _is_record_name(path):
        path = record_path(path)
    write_text_atomic(path, json.dumps(dict(record), indent=2, ensure_ascii=False) + "\n")
    return path


def read_extension_record(path: str | Path, as_is: bool = False) -> dict[str, Any]:
    """Read an extension record: the record itself, or the checkpoint it sits beside.

    A name ending in ``.extension.json`` is the record; otherwise ``<path>.extension.json`` is
    read when it exists, else ``path`` itself when it is a ``.json`` file (a renamed record).
    ``as_is``: ``path`` is the record whatever its name.

    Raises:
        FileNotFoundError: no record there.
        ValueError: not JSON, or ``base_vocab`` / ``new_vocab`` missing or not integers with
            ``0 < base_vocab < new_vocab``.
    """
    path = Path(path)
    if not as_is and not _is_record_name(path) and (record_path(path).is_file()
                                                     or path.suffix != ".json"):
        path = record_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"extension record {path} does not exist (checkpoint extend writes "
                                f"it beside the grown checkpoint as <checkpoint>{RECORD_SUFFIX})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"extension record {path} is not valid JSON ({err}); give the "
                         f"{RECORD_SUFFIX} file that checkpoint extend wrote") from None
    if not isinstance(record, dict) or "base_vocab" not in record or "new_vocab" not in record:
        raise ValueError(f"extension record {path} lacks base_vocab/new_vocab (is it the "
                         f"{RECORD_SUFFIX} file that checkpoint extend wrote?)")
    base, new = record["base_vocab"], record["new_vocab"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (base, new)) \
            or not 0 < base < new:
        raise ValueError(f"extension record {path}: base_vocab {base!r} and new_vocab {new!r} must "
                         "be integers with 0 < base_vocab < new_vocab")
    return record


def check_extend_outputs(checkpoint: str | Path, base_tokenizer: str | Path,
                         tokenizer: str | Path, out: str | Path, overwrite: bool = False
                         ) -> tuple[Path, Path]:
    """Check ``--out`` and its record before any work; return ``(out, record path)``.

    Raises:
        ValueError: ``out`` (or its record ``<out>.extension.json``) is an input, a directory,
            under a file, or already exists without ``overwrite``.
        PermissionError: the folder cannot be written.
    """
    inputs = {"--checkpoint": checkpoint, "--base-tokenizer": base_tokenizer, "--tokenizer": tokenizer}
    out = check_output_file(out, "--out", inputs)
    record = check_output_file(record_path(out), "--out's extension record", inputs)
    for path, what in ((out, "--out"), (record, "the extension record")):
        if path.exists() and not overwrite:
            raise ValueError(f"{what} {path} already exists; pass --overwrite (overwrite=True) to "
                             "replace it, or choose another --out")
    return out, record


def extend_checkpoint(checkpoint: str | Path, base_tokenizer: str | Path, tokenizer: str | Path,
                      out: str | Path, init: str = "mean", seed: int = 0,
                      trust_pickle: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Grow a checkpoint's text tables for an extended tokenizer; write it and its record.

    The output keeps the input's layout. The record goes to ``<out>.extension.json`` and, for a
    MiniVoice checkpoint, also into the checkpoint's ``meta["extension"]``. ``out`` may not be
    an input, and an existing ``out`` or record is replaced only with ``overwrite``
    (:func:`check_extend_outputs`).

    Returns:
        The extension record (with ``checkpoint``, ``base_checkpoint`` and their sha256).
    """
    out, record_file = check_extend_outputs(checkpoint, base_tokenizer, tokenizer, out, overwrite)
    base_pieces = _pieces(base_tokenizer, "--base-tokenizer")
    ext_pieces = _pieces(tokenizer, "--tokenizer")
    if len(ext_pieces) <= len(base_pieces):
        raise ValueError(f"--tokenizer {tokenizer} is not an extension of --base-tokenizer "
                         f"{base_tokenizer}: it has {len(ext_pieces)} pieces, the base {len(base_pieces)}")
    for i, (a, b) in enumerate(zip(base_pieces, ext_pieces)):
        if (a.piece, a.type) != (b.piece, b.type):
            raise ValueError(f"--tokenizer {tokenizer} is not an extension of --base-tokenizer "
                             f"{base_tokenizer}: piece {i} is {b.piece!r}, the base has {a.piece!r}")
    sd, meta = load_state_dict(checkpoint, trust_pickle)
    check_finite_tables(sd, f"checkpoint {checkpoint}")
    new_sd, record = grow_text_tables(sd, len(base_pieces), len(ext_pieces), init, seed,
                                      tokenizer, base_tokenizer)
    record = {"checkpoint": str(out), "base_checkpoint": str(checkpoint),
              "base_checkpoint_sha256": sha256_file(checkpoint), "layout": meta["layout"], **record}
    if meta["layout"] == "indextts2":
        record["note"] = (f"set gpt.number_text_tokens: {len(ext_pieces)} in IndexTTS2's config.yaml "
                          "and point it at the extended tokenizer")
    if meta["left_out"]:
        record["left_out"] = list(meta["left_out"])
    out_meta = dict(meta)
    if meta["layout"] == "minivoice":
        out_meta["meta"] = {**dict(meta.get("meta") or {}), "extension": record,
                            "tokenizer": str(tokenizer), "tokenizer_sha256": record["tokenizer_sha256"]}
    save_state_dict(out, new_sd, out_meta)
    record["checkpoint_sha256"] = sha256_file(out)
    write_extension_record(record_file, record)
    return record


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers checkpoint {extend,info}``."""
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extend", help="grow the text tables for an extended tokenizer")
    ext.add_argument("--checkpoint", required=True, help="MiniVoice .pt or IndexTTS2 gpt.pth")
    ext.add_argument("--base-tokenizer", required=True, help="the tokenizer the checkpoint was trained with")
    ext.add_argument("--tokenizer", required=True, help="the extended tokenizer (base pieces first)")
    ext.add_argument("--init", choices=STRATEGIES, default="mean", help="init of the added rows")
    ext.add_argument("--out", required=True,
                     help=f"grown checkpoint to write (same layout); its record goes to <out>{RECORD_SUFFIX}")
    ext.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out (and its record); never an input file")
    ext.add_argument("--seed", type=int, default=0)
    ext.add_argument("--trust-pickle", action="store_true",
                     help="allow unsafe unpickling of a trusted checkpoint holding Python objects "
                          "(runs the file's code: never for files from an untrusted source)")
    ext.add_argument("--json", action="store_true", help="print the extension record as JSON")
    info = sub.add_parser("info", help="print layout and text table shapes")
    info.add_argument("--checkpoint", required=True)
    info.add_argument("--trust-pickle", action="store_true",
                      help="allow unsafe unpickling of a trusted checkpoint (runs the file's code)")


def run(args: argparse.Namespace) -> int:
    """Run the checkpoint CLI."""
    if args.command == "extend":
        record = extend_checkpoint(args.checkpoint, args.base_tokenizer, args.tokenizer, args.out,
                                   args.init, args.seed, args.trust_pickle, args.overwrite)
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"wrote {args.out} ({record['layout']}): text tables {record['rows_before']} -> "
                  f"{record['rows_after']} rows, {record['added_rows']['count']} added "
                  f"({record['strategy']}, seed {record['seed']}); {record['plus_one_row']['note']}")
            print(f"record: {record_path(args.out)}")
        return 0
    sd, meta = load_state_dict(args.checkpoint, args.trust_pickle)
    print(json.dumps({"path": meta["path"], "layout": meta["layout"], "nested": meta["nested"],
                      "prefix": meta["prefix"], "dropped_keys": len(meta["dropped_keys"]),
                      "rows": meta["rows"], "dim": meta["dim"], "keys": len(sd),
                      "left_out": meta["left_out"], "non_finite_rows": {
                          k: {kind: len(ids) for kind, ids in v.items()}
                          for k, v in non_finite_rows(sd).items()}}))
    return 0
