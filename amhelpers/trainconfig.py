"""What a training run is given, and whether it can work: :class:`TrainConfig` and its checks.

Each field of :class:`TrainConfig` is a flag of ``python -m amhelpers train`` and carries its
CLI help (and type and choices) in its metadata, so the flags (:func:`add_arguments`) and the
config a notebook builds are one list. The checks, each error naming the flag (or the file and
line) and how to fix it:

- :meth:`TrainConfig.check`: every setting that cannot work, in one message;
- :func:`resolve_device`: ``--device`` on this machine (CUDA missing is one line);
- :func:`tokenizer_size`, :func:`model_config`, :func:`check_rows`: the tokenizer, the
  checkpoint started from and the manifests against the model config;
- :func:`check_resume_settings`: a resumed run's settings against its checkpoint's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from amhelpers.data import Manifest
from amhelpers.freeze import MODES as FREEZE_MODES
from amhelpers.model import CheckpointMismatchError, MiniVoiceConfig
from amhelpers.optim import DECAY_POLICIES

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
"""The values ``--device`` takes."""
AMP = ("off", "bf16")
"""The values ``--amp`` takes (fp16 would need a gradient scaler; bf16 has float32's range)."""


def _opt(help_text: str, **kw: Any) -> Any:
    """A dataclass field default carrying its CLI help text."""
    default = kw.pop("default", None)
    return field(default=default, metadata={"help": help_text, **kw})


@dataclass
class TrainConfig:
    """Everything a training run needs; each field is also a ``--flag`` of the CLI."""

    train_manifest: str | None = _opt("training manifest (JSONL); required", type=str)
    val_manifest: str | None = _opt("validation manifest (JSONL)", type=str)
    replay_manifest: str | None = _opt(
        "base-language manifest (JSONL) mixed into every batch at --replay-fraction, so the "
        "model keeps the language it was pretrained on (chapter 6b)", type=str)
    replay_fraction: float = _opt("share of each batch drawn from --replay-manifest, in "
                                  "[0, 1); 0 = no replay", default=0.0, type=float)
    tokenizer: str | None = _opt(
        "SentencePiece model: sets number_text_tokens of a fresh model; path and sha256 go "
        "into checkpoint meta", type=str)
    output_dir: str | None = _opt(
        "run folder (checkpoints, metrics.jsonl, tb/); default $AMHELPERS_HOME/runs/minivoice",
        type=str)
    learning_rate: float = _opt("peak learning rate (IndexTTS2 trainer: 2e-5 for the full "
                                "model; 1e-3 suits the miniature one)", default=1e-3, type=float)
    text_loss_weight: float = _opt("weight of the text loss", default=0.1, type=float)
    mel_loss_weight: float = _opt("weight of the mel (code) loss", default=1.0, type=float)
    guided_attention_weight: float = _opt(
        "weight of a guided-attention loss (DC-TTS) on one head per layer after the first; "
        "0 = off, as in the IndexTTS2 trainer. The embedded base model uses it: a small model "
        "on little data learns to read the text in order much sooner", default=0.0, type=float)
    guided_attention_sigma: float = _opt("width of the guided-attention band, as a fraction "
                                         "of the utterance", default=0.2, type=float)
    warmup_steps: int = _opt("linear warmup steps before the cosine decay", default=100, type=int)
    weight_decay: float = _opt("AdamW weight decay (on every parameter, as the IndexTTS2 "
                               "trainer)", default=0.01, type=float)
    batch_size: int = _opt("utterances per batch", default=32, type=int)
    grad_clip: float = _opt("clip the gradient norm to this (0 = off)", default=1.0, type=float)
    max_steps: int = _opt("total optimizer steps; the cosine schedule ends here", default=1000,
                          type=int)
    max_minutes: float | None = _opt("stop (and save) after this many wall-clock minutes of "
                                     "this invocation", type=float)
    val_every: int = _opt("validate every N steps (0 = only at the start and the end)",
                          default=200, type=int)
    log_every: int = _opt("log training metrics every N steps", default=10, type=int)
    save_every: int = _opt("save a checkpoint every N steps (and always at the end)",
                           default=500, type=int)
    keep_last: int = _opt("keep this many newest checkpoints", default=3, type=int)
    resume: str | None = _opt("checkpoint to resume from, or 'auto' (the newest in "
                              "--output-dir, if any)", type=str)
    init_checkpoint: str | None = _opt("start from these weights (and their model config) with "
                                       "a fresh optimizer at step 0; ignored when resuming",
                                       type=str)
    overwrite: bool = _opt("replace the run already in --output-dir: a fresh run deletes its "
                           "checkpoints and latest.json and rewrites config.json and "
                           "metrics.jsonl; a resume deletes its checkpoints newer than the one "
                           "resumed. Without it such a run is refused", default=False)
    seed: int = _opt("seed of initialisation, batches and dropout", default=0, type=int)
    freeze_base_rows: int | None = _opt(
        "keep rows [0, N) of text_embedding/text_head frozen (chapter 4); default: no freeze",
        type=int)
    freeze_mode: str = _opt("how to freeze: exact (bit-identical under any optimizer), "
                            "exact-sparse (the same, with optimizer state for the new rows "
                            "only), or hook (the original fix's gradient hook, which leaks "
                            "under weight decay)", default="exact", type=str,
                            choices=list(FREEZE_MODES))
    new_row_lr: float | None = _opt("learning rate of the text tables (their new rows); "
                                    "default --learning-rate", type=float)
    decay: str = _opt("weight decay on 'all' parameters (the IndexTTS2 trainer) or on "
                      "'weights' only (no decay on embeddings, biases, norms; XTTS)",
                      default="all", type=str, choices=list(DECAY_POLICIES))
    new_rows_only_steps: int = _opt("train only the text tables for the first N steps, then "
                                    "everything (a staged schedule)", default=0, type=int)
    freeze_layers: int = _opt("keep the first N transformer blocks frozen (not trained, no "
                              "weight decay): a retention lever, chapter 6b", default=0, type=int)
    lora_rank: int = _opt("train LoRA adapters of this rank (PEFT) on the transformer blocks' "
                          "Linear layers instead of the blocks themselves; 0 = off. The text "
                          "tables and heads train as the other settings say; checkpoints hold "
                          "the merged weights (chapter 6b)", default=0, type=int)
    lora_alpha: float = _opt("LoRA scale numerator: the update is (alpha / rank) * B @ A",
                             default=16.0, type=float)
    bucket_window: int = _opt("batches per length-sorting window", default=50, type=int)
    device: str = _opt("where to train: auto (cuda if a GPU is visible, else cpu), cpu, cuda "
                       "or cuda:N", default="auto", type=str)
    amp: str = _opt("mixed precision: off, or bf16 (autocast on the device; the weights and "
                    "the optimizer stay float32)", default="off", type=str, choices=list(AMP))
    progress: bool = _opt("show a tqdm progress bar", default=True)
    model: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "MiniVoiceConfig fields to set (a fresh run infers number_text_tokens and "
                "number_mel_codes from the tokenizer and manifests)"})

    def check(self) -> None:
        """Raise ValueError naming the flag of every setting that cannot work."""
        if not self.train_manifest:
            raise ValueError("--train-manifest is required")
        bad = []
        for name in ("batch_size", "max_steps", "log_every", "save_every", "keep_last",
                     "bucket_window"):
            if not _is_int(getattr(self, name), minimum=1):
                bad.append(f"{_flag(name)}={getattr(self, name)} (must be a whole number >= 1)")
        for name in ("warmup_steps", "val_every", "new_rows_only_steps", "freeze_layers",
                     "lora_rank"):
            if not _is_int(getattr(self, name), minimum=0):
                bad.append(f"{_flag(name)}={getattr(self, name)} (must be a whole number >= 0)")
        if self.freeze_base_rows is not None and not _is_int(self.freeze_base_rows, minimum=1):
            bad.append(f"--freeze-base-rows={self.freeze_base_rows} (must be positive: the "
                       "number of base rows to keep)")
        if not _is_int(self.seed, minimum=0) or self.seed >= 2 ** 32:
            bad.append(f"--seed={self.seed} (must be a whole number in [0, 2**32))")
        for name in ("learning_rate", "weight_decay", "grad_clip", "text_loss_weight",
                     "mel_loss_weight", "guided_attention_weight", "new_row_lr"):
            value = getattr(self, name)
            if value is not None and not _is_number(value, minimum=0.0):
                bad.append(f"{_flag(name)}={value} (must be a finite number >= 0)")
        if not _is_number(self.guided_attention_sigma, minimum=0.0, strict=True):
            bad.append(f"--guided-attention-sigma={self.guided_attention_sigma} (must be a "
                       "finite number > 0)")
        if self.max_minutes is not None and not _is_number(self.max_minutes, 0.0, strict=True):
            bad.append(f"--max-minutes={self.max_minutes} (must be a finite number > 0; omit "
                       "it for no time limit)")
        if not _is_number(self.replay_fraction, minimum=0.0) or self.replay_fraction >= 1:
            bad.append(f"--replay-fraction={self.replay_fraction} (must be a number in [0, 1): "
                       "the share of each batch that is replay)")
        elif self.replay_fraction > 0 and not self.replay_manifest:
            bad.append(f"--replay-fraction={self.replay_fraction} without --replay-manifest "
                       "(give the base-language manifest to replay)")
        elif self.replay_manifest and self.replay_fraction == 0:
            bad.append(f"--replay-manifest={self.replay_manifest} with --replay-fraction 0 "
                       "(give the share of each batch to replay, e.g. 0.25, or drop the manifest)")
        if not _is_number(self.lora_alpha, minimum=0.0, strict=True):
            bad.append(f"--lora-alpha={self.lora_alpha} (must be a finite number > 0)")
        if _is_int(self.lora_rank, minimum=1) and _is_int(self.freeze_layers, minimum=1):
            bad.append(f"--lora-rank={self.lora_rank} with --freeze-layers={self.freeze_layers} "
                       "(LoRA already keeps every block's own weights still; choose one)")
        if not isinstance(self.device, str) or not DEVICE.fullmatch(self.device):
            bad.append(f"--device={self.device!r} (choose auto, cpu, cuda or cuda:N)")
        for name, allowed in (("freeze_mode", FREEZE_MODES), ("decay", DECAY_POLICIES),
                              ("amp", AMP)):
            if getattr(self, name) not in allowed:
                bad.append(f"{_flag(name)}={getattr(self, name)!r} (choose one of "
                           f"{', '.join(allowed)})")
        if bad:
            raise ValueError("train settings out of range: " + "; ".join(bad))
        known = {f.name for f in dataclasses.fields(MiniVoiceConfig)}
        if set(self.model) - known:
            raise ValueError(f"unknown model field(s) {sorted(set(self.model) - known)}")


def _flag(name: str) -> str:
    """The CLI flag of a TrainConfig field: ``max_minutes`` -> ``--max-minutes``."""
    return "--" + name.replace("_", "-")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any, minimum: float, strict: bool = False) -> bool:
    """True for a finite int or float >= ``minimum`` (> with ``strict``); False for NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names: ``auto`` is CUDA when a GPU is visible, else the CPU.

    Raises:
        ValueError: an unknown name, or CUDA asked on a machine (or a PyTorch build) without
            it, or a CUDA index the machine does not have; one line naming ``--device``.
    """
    if not isinstance(name, str) or not DEVICE.fullmatch(name):
        raise ValueError(f"--device {name!r} is not a device: choose auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"this PyTorch ({torch.__version__}) was built without CUDA"
                   if torch.version.cuda is None else "no CUDA GPU is visible on this machine")
            raise ValueError(f"--device {name}: {why}; use --device cpu (or auto, which picks "
                             "the GPU when there is one)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return device


# ---------------------------------------------------------------------------- CLI flags
_MODEL_TYPES = {f.name: (float if f.name == "dropout" else int)
                for f in dataclasses.fields(MiniVoiceConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` flags (one per :class:`TrainConfig` field) to ``parser``."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "progress":
            parser.add_argument("--no-progress", dest="progress", action="store_false",
                                help="hide the progress bar")
            continue
        if f.name == "overwrite":
            parser.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
            continue
        parser.add_argument(flag, dest=f.name, type=f.metadata["type"], default=f.default,
                            choices=f.metadata.get("choices"),
                            help=f.metadata["help"] + (f" (default {f.default})"
                                                       if f.default is not None else ""))
    group = parser.add_argument_group("model", TrainConfig.__dataclass_fields__["model"]
                                      .metadata["help"])
    for name, kind in _MODEL_TYPES.items():
        group.add_argument("--" + name.replace("_", "-"), dest=f"model.{name}", type=kind,
                           default=None, metavar=kind.__name__.upper())


def command_line(cfg: TrainConfig) -> str:
    """``python -m amhelpers train ...`` with the flags of ``cfg`` that differ from the defaults
    (the same run from the shell; a notebook prints it)."""
    parts = ["python -m amhelpers train"]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name == "model" or value == f.default:
            continue
        if f.name == "progress":
            parts.append("--no-progress")
        elif f.name == "overwrite":
            parts.append("--overwrite")
        else:
            parts.append(f"{_flag(f.name)} {value:g}" if isinstance(value, float)
                         else f"{_flag(f.name)} {value}")
    return " \\\n    ".join(parts)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build a :class:`TrainConfig` from parsed ``train`` flags."""
    values = vars(args)
    model = {name: values[f"model.{name}"] for name in _MODEL_TYPES
             if values.get(f"model.{name}") is not None}
    fields = {f.name: values[f.name] for f in dataclasses.fields(TrainConfig)
              if f.name != "model" and f.name in values}
    return TrainConfig(**fields, model=model)


# ------------------------------------------------------ the inputs: model, tokenizer, data
def _resolve_model_config(cfg: TrainConfig, base: dict[str, Any] | None,
                          rows: list[dict[str, Any]], tokenizer_size: int | None
                          ) -> MiniVoiceConfig:
    """The run's model config: ``base`` (a checkpoint's) or inferred, plus ``cfg.model``.

    Raises:
        ValueError: a model flag out of range, or ``--number-text-tokens`` that differs from
            the ``--tokenizer``'s size.
    """
    values = {**base, **cfg.model} if base is not None else dict(cfg.model)
    if base is None and "number_text_tokens" not in values:
        if tokenizer_size is not None:
            values["number_text_tokens"] = tokenizer_size
        else:
            values["number_text_tokens"] = max(2, 1 + max(max(r["text_ids"], default=1)
                                                           for r in rows))
            warnings.warn("no --tokenizer: number_text_tokens inferred from the manifests as "
                          f"{values['number_text_tokens']} (give --tokenizer to size the text "
                          "tables by the vocabulary)", stacklevel=4)
    elif base is None and tokenizer_size not in (None, values["number_text_tokens"]):
        raise ValueError(f"--number-text-tokens {values['number_text_tokens']} but --tokenizer "
                         f"{cfg.tokenizer} has {tokenizer_size} pieces; drop "
                         "--number-text-tokens (the tokenizer sets it)")
    if base is None and "number_mel_codes" not in values:
        values["number_mel_codes"] = 3 + max(max(r["codes"], default=0) for r in rows)
    try:
        return MiniVoiceConfig.from_dict(values)
    except ValueError as err:
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.model.items())
        raise ValueError(f"{err} (model flags given: {given or 'none'})") from None


def tokenizer_size(path: str) -> int:
    """Number of pieces of the SentencePiece model at ``path`` (errors name ``--tokenizer``)."""
    if Path(path).is_dir():
        raise ValueError(f"--tokenizer {path} is a folder; give the SentencePiece .model file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--tokenizer {path} does not exist")
    try:
        return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    except Exception as err:  # noqa: BLE001 (sentencepiece raises RuntimeError, OSError, ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"--tokenizer {path} is not a SentencePiece model ({first}); give "
                         "the .model file that `python -m amhelpers tokenizer` wrote") from None


def _check_tokenizer(size: int, path: str, config: MiniVoiceConfig, flag: str,
                     source: Path) -> None:
    """Raise when the tokenizer and the checkpoint's text tables differ in size."""
    if size != config.number_text_tokens:
        raise ValueError(
            f"--tokenizer {path} has {size} pieces but {flag} {source} has "
            f"number_text_tokens={config.number_text_tokens}: pass the tokenizer that checkpoint "
            "was trained with, or grow its text tables to this tokenizer first "
            "(`python -m amhelpers checkpoint extend`)")


def check_rows(rows: list[dict[str, Any]], config: MiniVoiceConfig, flag: str
                ) -> list[dict[str, Any]]:
    """Raise for ids the model cannot embed; drop (and count) rows longer than its tables.

    Errors name the manifest file and line (``rows`` from :func:`read_manifest`), the bad
    value and its position in the row's list.
    """
    limits = (("text_ids", "text id", config.number_text_tokens,
               f"the model has number_text_tokens={config.number_text_tokens} (was the manifest "
               "built with a larger tokenizer? grow the text tables or pass the matching "
               "--tokenizer)"),
              ("codes", "code", config.codebook_size,
               f"the codebook has K={config.codebook_size} codes (number_mel_codes - 2; was the "
               "manifest built with another codebook?)"))
    for index, row in enumerate(rows):
        for key, what, size, hint in limits:
            values = row[key]
            if values and (max(values) >= size or min(values) < 0):
                pos = next(i for i, v in enumerate(values) if not 0 <= v < size)
                where = (rows.where(index) if isinstance(rows, Manifest)
                         else f"{flag} row {index + 1}")
                raise ValueError(f"{where} (row {row.get('id')!r}): {what} {values[pos]} at "
                                 f"{key}[{pos}] is outside [0, {size}): {hint}")
    kept = [r for r in rows if len(r["text_ids"]) <= config.max_text_tokens
            and len(r["codes"]) <= config.max_mel_tokens]
    name = rows.path if isinstance(rows, Manifest) else flag
    if not kept:
        raise ValueError(f"manifest {name}: no row fits the model's length limits "
                         f"(max_text_tokens={config.max_text_tokens}, "
                         f"max_mel_tokens={config.max_mel_tokens}); raise them or shorten the "
                         "rows")
    if len(kept) < len(rows):
        warnings.warn(f"manifest {name}: skipped {len(rows) - len(kept)} of {len(rows)} rows "
                      f"longer than max_text_tokens={config.max_text_tokens} or "
                      f"max_mel_tokens={config.max_mel_tokens}", stacklevel=4)
    return kept


def model_config(cfg: TrainConfig, payload: dict[str, Any] | None, flag: str,
                 source: Path | None, resume_path: Path | None, rows: list[dict[str, Any]],
                 tokenizer_size: int | None) -> MiniVoiceConfig:
    """The run's model config, checked against the checkpoint, the freeze and the tokenizer.

    Args:
        cfg: the run's settings.
        payload: the checkpoint started from (:func:`amhelpers.model.read_checkpoint`), or
            None for fresh weights; ``flag`` and ``source`` name it in errors.
        resume_path: the checkpoint resumed (its model config must not change), or None.
        rows: every manifest row (a fresh model's table sizes are inferred from them).
        tokenizer_size: pieces of ``--tokenizer``, or None.

    Raises:
        CheckpointMismatchError: a resume asks for another model config.
        ValueError: the freeze or the tokenizer does not fit the model.
    """
    config = _resolve_model_config(cfg, payload["config"] if payload else None, rows,
                                   tokenizer_size)
    if resume_path and config.to_dict() != payload["config"]:
        differ = {k: (payload["config"].get(k), v) for k, v in config.to_dict().items()
                  if payload["config"].get(k) != v}
        raise CheckpointMismatchError(
            f"cannot resume from {resume_path}: it was trained with another model config "
            + ", ".join(f"{k}={old} (asked {new})" for k, (old, new) in differ.items())
            + "; drop those flags or use a new --output-dir")
    if cfg.freeze_base_rows is not None and cfg.freeze_base_rows > config.number_text_tokens:
        raise ValueError(f"--freeze-base-rows {cfg.freeze_base_rows} is more than the model's "
                         f"number_text_tokens={config.number_text_tokens}; give the base "
                         "tokenizer's size (the rows to keep)")
    if cfg.freeze_layers > config.layers:
        raise ValueError(f"--freeze-layers {cfg.freeze_layers} is more than the model's "
                         f"{config.layers} transformer blocks")
    if payload is not None and tokenizer_size is not None:
        _check_tokenizer(tokenizer_size, cfg.tokenizer, config, flag, source)
    return config


# Settings a resumed run must share with its checkpoint: they shape every later step (the recipe,
# the effective batch, the seed); the data order and vocabulary are checked by the sampler and
# the model config. --max-steps may change (to extend a run), which changes the schedule's tail.
RESUME_MUST_MATCH = ("learning_rate", "new_row_lr", "text_loss_weight", "mel_loss_weight",
                     "guided_attention_weight", "guided_attention_sigma", "warmup_steps",
                     "weight_decay", "batch_size", "grad_clip", "freeze_base_rows", "freeze_mode",
                     "decay", "new_rows_only_steps", "seed", "bucket_window",
                     "replay_fraction", "freeze_layers", "lora_rank", "lora_alpha")


def check_resume_settings(cfg: TrainConfig, meta: dict[str, Any], tokenizer_sha: str | None,
                          resume_path: Path) -> None:
    """Refuse to resume ``resume_path`` with settings that differ from its own.

    Raises:
        ValueError: naming each differing flag with this run's and the checkpoint's value, or a
            tokenizer whose sha256 differs from the one the checkpoint was trained with.
    """
    def show(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    saved = meta.get("train_config") or {}
    diffs = [f"{_flag(name)} {show(getattr(cfg, name))} (checkpoint: {show(saved[name])})"
             for name in RESUME_MUST_MATCH if name in saved and saved[name] != getattr(cfg, name)]
    if tokenizer_sha and meta.get("tokenizer_sha256") not in (None, tokenizer_sha):
        diffs.insert(0, f"--tokenizer {cfg.tokenizer} (sha256 {tokenizer_sha[:12]}; the "
                        f"checkpoint was trained with {meta.get('tokenizer')}, sha256 "
                        f"{meta['tokenizer_sha256'][:12]})")
    if diffs:
        raise ValueError(f"--resume {resume_path}: this run's settings differ from the "
                         f"checkpoint's: {'; '.join(diffs)}. Resume with the checkpoint's "
                         "settings (its run's config.json), or start a new run in another "
                         "--output-dir")
