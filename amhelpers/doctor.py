"""Pre-flight check of a real training setup: ranked findings before the GPU hours are spent.

Why this module is long: about 700 lines, because each check is one short function over the same
:class:`Setup`, and the thresholds and the measured numbers they quote sit beside them; split
across modules they would drift apart.

``python -m amhelpers doctor`` takes the files a team has and the trainer command it is about
to run, and reports what would make the run fail or waste steps, worst first, each with its
evidence and its fix:

- the tokenizer on the manifest's text: ``<unk>`` rate, fertility, base ids kept, unreachable
  pieces (chapter 1);
- tokenizer size against ``gpt.number_text_tokens`` and the checkpoint's text rows (+1 row);
- whether new rows exist and how they are (or will be) initialised (chapter 4b);
- learning rates, warmup and loss weights against what chapter 6 measured (:data:`MEASURED`);
- weight decay under a hook freeze and its analytic leak over the planned steps (chapter 4a);
- resuming from a checkpoint saved before the freeze (Adam moments, drifted base rows);
- whether the base languages are replayed (``--replay-manifest``; chapter 6b);
- the route IndexTTS2's text front end sends the target script down (its ``TextNormalizer``
  calls the Chinese normaliser for text without a Latin letter, and returns "" when that
  raises), and, with the ``indextts`` extra installed, the real ``TextTokenizer``'s ids against
  the course's line by line.

Exit status 0 when nothing blocks, 1 otherwise (2 for bad input); ``--json`` prints
``{"ok", "findings": [{"check", "severity", "evidence", "fix"}]}``.

    python -m amhelpers doctor --base-tokenizer bpe.model --config config.yaml \\
        --checkpoint gpt.pth --lang amh --freeze-mode hook -- \\
        python trainers/train_gpt_v2.py --train-manifest train.jsonl \\
        --tokenizer amharic_extended_bpe.model --learning-rate 5e-6 --warmup-steps 2000
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEVERITIES = ("block", "warn", "info")

# The trainer's own defaults where the command leaves a flag out: the community IndexTTS2 trainer
# the team used (docs/background.md: AdamW 2e-5, weight decay 0.01 on everything, 1,000 warmup
# steps, loss 0.2 text + 0.8 mel). A run length must be given (--max-steps or doctor's --steps).
TRAINER_DEFAULTS: dict[str, Any] = {"learning_rate": 2e-5, "new_row_lr": None,
                                    "weight_decay": 0.01, "warmup_steps": 1000,
                                    "text_loss_weight": 0.2, "mel_loss_weight": 0.8,
                                    "max_steps": None, "init": None, "freeze_mode": None,
                                    "freeze_base_rows": None, "decay": "all",
                                    "init_checkpoint": None,
                                    "resume": None, "tokenizer": None, "train_manifest": None,
                                    "replay_manifest": None, "replay_fraction": 0.0,
                                    "freeze_layers": 0, "lora_rank": 0, "output_dir": None}
_FLAG_TYPES = {"learning_rate": float, "new_row_lr": float, "weight_decay": float,
               "warmup_steps": int, "text_loss_weight": float, "mel_loss_weight": float,
               "max_steps": int, "init": str, "freeze_mode": str, "freeze_base_rows": int,
               "decay": str, "resume": str, "init_checkpoint": str,
               "tokenizer": str, "train_manifest": str, "replay_manifest": str,
               "replay_fraction": float, "freeze_layers": int, "lora_rank": int,
               "output_dir": str}

# What chapter 6 measured on the full profile (300 steps, low-resource regime, seed 0; the table
# is docs/results/ch06_full.csv, and a unit test keeps these numbers equal to it). Learning
# rates are ratios to the pretraining rate; val mel is the held-out mel loss, lower is better.
MEASURED = {
    "noise_floor": 0.008,            # largest seed range of val mel loss
    "original": {"val_mel_loss": 2.508},
    "original_fix": {"val_mel_loss": 3.341},
    "fix": {"val_mel_loss": 2.342},
    "loss_weights_0.4_0.6": {"val_mel_loss": 2.576},
    "warmup_8pct": {"val_mel_loss": 2.502},
    "lr_div4": {"val_mel_loss": 3.259},
}
NEW_ROW_RATIO_BLOCK = 0.05  # below half the team's rate: the original fix's 0.025 learnt least
NEW_ROW_RATIO_WARN = 0.5    # the course's fix trains new rows at ratio 1.0
UNK_BLOCK = 0.01            # 1% of tokens <unk>: words the model can never say
WARMUP_WARN_FRACTION = 0.2
MANIFEST_LINES = 2000       # text lines read from the manifest (a sample is enough)


@dataclass
class Finding:
    """One result of the check: what, how bad, the evidence and what to do."""

    check: str
    severity: str
    evidence: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")


@dataclass
class Setup:
    """The files and settings of a training run, as ``doctor`` checks them (None = not given)."""

    tokenizer: Path | None = None
    base_tokenizer: Path | None = None
    config: Path | None = None
    checkpoint: Path | None = None
    manifest: Path | None = None
    lang: str = "amh"
    pretrain_lr: float = 2e-4
    steps: int | None = None
    flags: dict[str, Any] = field(default_factory=lambda: dict(TRAINER_DEFAULTS))
    given: set[str] = field(default_factory=set)  # flags the command set (others: defaults)


# ----------------------------------------------------------------------------- inputs
def parse_trainer_command(command: Sequence[str]) -> tuple[dict[str, Any], set[str]]:
    """The settings a trainer command line sets, over :data:`TRAINER_DEFAULTS`.

    Flags doctor does not know are ignored (a trainer has many); known ones are parsed in
    either ``--flag value`` or ``--flag=value`` form.

    Raises:
        ValueError: a known flag without a value or with a value of the wrong type.
    """
    flags, given = dict(TRAINER_DEFAULTS), set()
    words = list(command)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("--"):
            continue
        name, eq, value = word[2:].partition("=")
        key = name.replace("-", "_")
        if key not in _FLAG_TYPES:
            continue
        if not eq:
            if i >= len(words) or words[i].startswith("--"):
                raise ValueError(f"trainer command: --{name} has no value")
            value, i = words[i], i + 1
        try:
            flags[key] = _FLAG_TYPES[key](value)
        except ValueError:
            raise ValueError(f"trainer command: --{name} {value!r} is not a "
                             f"{_FLAG_TYPES[key].__name__}") from None
        given.add(key)
    return flags, given


def gpt_config(path: Path) -> dict[str, Any]:
    """The ``gpt`` section of an IndexTTS2 ``config.yaml`` (or a MiniVoice config JSON)."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"--config {path} does not exist; give IndexTTS2's config.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path} is not YAML ({str(err).splitlines()[0]})") from None
    gpt = data.get("gpt", data) if isinstance(data, dict) else None
    if not isinstance(gpt, dict) or "number_text_tokens" not in gpt:
        raise ValueError(f"--config {path} has no gpt.number_text_tokens; give IndexTTS2's "
                         "config.yaml (its gpt: section sizes the text tables)")
    return gpt


def read_manifest_sample(path: Path, limit: int = MANIFEST_LINES) -> tuple[list[str], list[list[int]]]:
    """Text lines and (where rows have them) ``text_ids`` of a manifest sample.

    A ``.jsonl`` manifest gives each row's ``text`` and ``text_ids``; any other file is read as
    one sentence per line.

    Raises:
        FileNotFoundError / ValueError: no such file, or a JSONL row without ``text`` (names
            the file and line).
    """
    if not path.is_file():
        raise FileNotFoundError(f"--manifest {path} does not exist; give the trainer's "
                                "--train-manifest (or a text file of its sentences)")
    texts, ids = [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if len(texts) >= limit:
                break
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                texts.append(line.strip())
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"--manifest {path} line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"--manifest {path} line {number} has no \"text\" string; doctor "
                                 "reads each row's text (and text_ids when present)")
            texts.append(row["text"])
            if isinstance(row.get("text_ids"), list):
                ids.append([int(x) for x in row["text_ids"]])
    if not texts:
        raise ValueError(f"--manifest {path} has no text line")
    return texts, ids


def checkpoint_tables(path: Path) -> dict[str, Any]:
    """Rows, width, layout and (from a real file) the text tables of a checkpoint.

    ``path`` is a checkpoint (MiniVoice ``.pt`` or IndexTTS2 ``gpt.pth``, read safely by
    :func:`amhelpers.ckptio.load_state_dict`) or a header: a JSON object mapping key names to
    shapes, such as ``{"text_embedding.weight": [12001, 1280], ...}``, for a team that does not
    want to copy gigabytes.
    """
    if path.suffix == ".json":
        from .io import read_text_strict

        try:
            header = json.loads(read_text_strict(path, "--checkpoint"))
        except json.JSONDecodeError as err:
            raise ValueError(f"--checkpoint {path} is not JSON ({err.msg})") from None
        shape = header.get("text_embedding.weight") if isinstance(header, dict) else None
        if not (isinstance(shape, list) and len(shape) == 2):
            raise ValueError(f"--checkpoint {path}: a header needs \"text_embedding.weight\": "
                             "[rows, width]")
        return {"rows": int(shape[0]), "dim": int(shape[1]), "layout": "header", "tables": None,
                "left_out": [], "record": None}
    from .checkpoint import record_path
    from .ckptio import load_state_dict
    from .tables import TEXT_KEYS

    sd, meta = load_state_dict(path)
    record_file = record_path(path)
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else None
    return {"rows": meta["rows"], "dim": meta["dim"], "layout": meta["layout"],
            "tables": {k: sd[k].float() for k in TEXT_KEYS}, "left_out": meta["left_out"],
            "record": record, "config": meta.get("config")}


# ----------------------------------------------------------------------------- the checks
def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def check_tokenizer(setup: Setup, texts: list[str]) -> list[Finding]:
    """``<unk>``, fertility, base ids kept and reachability of the tokenizer on the manifest."""
    from . import tokenizer as tk
    from .text import normalize

    out: list[Finding] = []
    if setup.base_tokenizer is not None:
        report = tk.verify(setup.base_tokenizer, setup.tokenizer, texts, setup.lang)
        unk, fert_b, fert_e = report["unk_rate"], report["fertility_base"], report["fertility_extended"]
        if not report["base_ids_stable"]:
            out.append(Finding("tokenizer.base_ids", "block",
                               f"{setup.tokenizer} does not keep the base's {report['n_base']} "
                               "pieces (id, score, type, normaliser): the pretrained rows would "
                               "mean other pieces",
                               "extend the base by appending only: python -m amhelpers "
                               "tokenizer extend (chapter 1)"))
        if report["unreachable_added"]:
            n = len(report["unreachable_added"])
            out.append(Finding("tokenizer.unreachable", "warn",
                               f"{n} of {report['n_added']} added pieces can never be produced: "
                               "their rows are dead weight that never trains",
                               "drop them (tokenizer extend does) or re-extend"))
        out.append(Finding("tokenizer.fertility", "info",
                           f"{fert_e:.2f} tokens per word with {setup.tokenizer.name} on "
                           f"{report['target_lines']} manifest lines (the base alone: "
                           f"{fert_b:.2f}, each <unk> character counted); {report['n_added']} "
                           f"piece{'s' if report['n_added'] != 1 else ''} added, "
                           f"{_pct(report['new_id_fraction'])} of the tokens are new ids"))
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(setup.tokenizer))
        lines = [t for t in (normalize(x, setup.lang) for x in texts) if t]
        encoded = [sp.encode(t) for t in lines]
        n = sum(len(x) for x in encoded)
        unk = sum(x.count(sp.unk_id()) for x in encoded) / max(n, 1)
        out.append(Finding("tokenizer.fertility", "info",
                           f"{tk.fertility(sp, lines):.2f} tokens per word on {len(lines)} lines "
                           "(no --base-tokenizer: base ids and added pieces not checked)"))
    if unk > 0:
        severity = "block" if unk >= UNK_BLOCK else "warn"
        out.append(Finding("tokenizer.unk", severity,
                           f"{_pct(unk)} of the tokens of {setup.lang} manifest text are <unk>: "
                           "the model can never say those words, and every <unk> shares one row",
                           "extend with the whole script as a fallback so that <unk> is zero "
                           "(python -m amhelpers tokenizer extend; chapter 1 measures a quick "
                           "merge script's <unk>)"))
    return out


def check_sizes(setup: Setup, ckpt: dict[str, Any] | None) -> list[Finding]:
    """Tokenizer size against ``number_text_tokens`` and the checkpoint's rows (+1 row)."""
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_file=str(setup.tokenizer)).get_piece_size()
    out: list[Finding] = []
    tokens = None
    if setup.config is not None:
        tokens = int(gpt_config(setup.config)["number_text_tokens"])
    elif ckpt is not None and ckpt.get("config"):
        tokens = int(ckpt["config"]["number_text_tokens"])
    if tokens is not None and size > tokens:
        out.append(Finding("rows.config", "block",
                           f"the tokenizer has {size} pieces but gpt.number_text_tokens is {tokens}: "
                           f"ids {tokens}..{size - 1} index past the text tables",
                           f"set gpt.number_text_tokens: {size} in config.yaml"))
    elif tokens is not None and size < tokens:
        out.append(Finding("rows.config", "warn",
                           f"gpt.number_text_tokens is {tokens} but the tokenizer has {size} "
                           f"pieces: {tokens - size} rows are never used",
                           f"set gpt.number_text_tokens: {size}"))
    if ckpt is not None:
        want = (tokens if tokens is not None else size) + 1
        rows = ckpt["rows"]
        if rows > want:
            out.append(Finding("rows.checkpoint", "block",
                               f"the checkpoint has {rows} text rows, more than the {want} "
                               f"(number_text_tokens + 1) the config builds",
                               "give the config and tokenizer this checkpoint was trained with"))
        elif rows < want:
            base = setup.base_tokenizer
            out.append(Finding("rows.checkpoint", "info",
                               f"the checkpoint has {rows} text rows; the model needs {want} "
                               f"(number_text_tokens + 1): {want - rows} new rows will be created",
                               "grow them with python -m amhelpers checkpoint extend (it moves "
                               "the unused +1 row and records the init)" if base else ""))
    return out


def check_init(setup: Setup, ckpt: dict[str, Any] | None, base_size: int | None) -> list[Finding]:
    """How the new rows are (or will be) initialised, against chapter 4b's recommendation."""
    if ckpt is None or base_size is None:
        return []
    record, rows, dim = ckpt["record"], ckpt["rows"], ckpt["dim"]
    init = setup.flags.get("init")
    if record is not None:
        strategy = record.get("strategy")
        severity = "info" if strategy in ("mean", "hewitt", "romanized") else "warn"
        return [Finding("init.new_rows", severity,
                        f"rows {record['added_rows']['start']}..{record['added_rows']['stop'] - 1} "
                        f"were added by `checkpoint extend` with init {strategy!r}",
                        "" if severity == "info" else "re-extend with --init mean (chapter 4b)")]
    if rows > base_size + 1 and ckpt["tables"] is not None:
        emb = ckpt["tables"]["text_embedding.weight"]
        base_norm = emb[:base_size].norm(dim=1).mean().item()
        new_norm = emb[base_size:].norm(dim=1).mean().item()
        random_norm = 0.02 * dim ** 0.5
        looks_random = abs(new_norm - random_norm) < 0.25 * random_norm
        return [Finding("init.new_rows", "warn" if looks_random else "info",
                        f"new rows' mean norm {new_norm:.3f} against the base rows' {base_norm:.3f}"
                        + (f"; N(0, 0.02) gives {random_norm:.3f}: they look like the constructor's "
                           "random init" if looks_random else ""),
                        "start them at the mean of the base rows (chapter 4b)" if looks_random else "")]
    if rows <= base_size + 1 and init not in ("mean", "hewitt", "romanized"):
        return [Finding("init.new_rows", "warn",
                        "the checkpoint has only the base rows and the trainer command sets no "
                        "init: the new rows get UnifiedVoice's constructor init (embedding "
                        f"N(0, 0.02), norm about {0.02 * dim ** 0.5:.2f}; head uniform "
                        f"±1/sqrt({dim})), far from what the base rows learned",
                        "grow the rows first with python -m amhelpers checkpoint extend --init "
                        "mean, and train from that file")]
    return []


def check_rates(setup: Setup) -> list[Finding]:
    """Learning rates, warmup and loss weights against chapter 6's measurements."""
    f, out = setup.flags, []
    lr, new_lr = f["learning_rate"], f["new_row_lr"]
    rows_lr = new_lr if new_lr is not None else lr
    ratio = rows_lr / setup.pretrain_lr
    src = "" if "learning_rate" in setup.given or new_lr is not None else " (trainer default)"
    m = MEASURED
    evidence = (f"the new rows train at {rows_lr:g}{src}, {ratio:.3g}x the pretraining rate "
                f"{setup.pretrain_lr:g}; they start from scratch. Chapter 6 (300 steps): new "
                f"rows at 1.0x gave val mel {m['fix']['val_mel_loss']}, the team's 0.1x "
                f"{m['original']['val_mel_loss']}, the original fix's 0.025x "
                f"{m['original_fix']['val_mel_loss']}")
    fix = (f"give the new rows their own rate near pretraining (--new-row-lr "
           f"{setup.pretrain_lr:g}, amhelpers.optim.param_groups) and keep the backbone low")
    if ratio < NEW_ROW_RATIO_BLOCK:
        out.append(Finding("lr.new_rows", "block", evidence, fix))
    elif ratio < NEW_ROW_RATIO_WARN:
        out.append(Finding("lr.new_rows", "warn", evidence, fix))
    else:
        out.append(Finding("lr.new_rows", "info", evidence))
    lower = m["lr_div4"]["val_mel_loss"] - m["original"]["val_mel_loss"]
    if lr < TRAINER_DEFAULTS["learning_rate"]:
        out.append(Finding("lr.lowered", "warn",
                           f"--learning-rate {lr:g} is below the trainer's {TRAINER_DEFAULTS['learning_rate']:g}; "
                           f"chapter 6 lowered the team's rate 4x and val mel rose by {lower:+.3f} "
                           f"(seed noise {m['noise_floor']})",
                           "keep the trainer's rate for the backbone; raise only the new rows'"))
    steps = setup.steps or f["max_steps"]
    warmup = f["warmup_steps"]
    if steps and warmup > WARMUP_WARN_FRACTION * steps:
        out.append(Finding("schedule.warmup", "warn",
                           f"--warmup-steps {warmup} is {warmup / steps:.0%} of the {steps} planned "
                           "steps", "warm up for a few percent of the run"))
    warm = m["warmup_8pct"]["val_mel_loss"] - m["original"]["val_mel_loss"]
    if "warmup_steps" in setup.given and warmup > TRAINER_DEFAULTS["warmup_steps"]:
        out.append(Finding("schedule.warmup_changed", "info",
                           f"--warmup-steps {warmup}, longer than the trainer's: chapter 6 changed "
                           "the team's warmup alone and "
                           f"val mel moved by {warm:+.3f}, within the seed noise {m['noise_floor']}"))
    tw, mw = f["text_loss_weight"], f["mel_loss_weight"]
    if tw > TRAINER_DEFAULTS["text_loss_weight"]:
        delta = m["loss_weights_0.4_0.6"]["val_mel_loss"] - m["original"]["val_mel_loss"]
        out.append(Finding("loss.weights", "warn",
                           f"text/mel loss weights {tw:g}/{mw:g} move weight off the mel loss "
                           f"that inference uses; chapter 6's 0.4/0.6 on the team's run: val mel "
                           f"{delta:+.3f} (seed noise {m['noise_floor']})",
                           "keep 0.2/0.8: inference decodes with the mel head alone"))
    return out


def _schedule(lr: float, warmup: int, steps: int) -> list[float]:
    from .optim import warmup_cosine

    return [lr * warmup_cosine(s, warmup, steps) for s in range(steps)]


def check_freeze(setup: Setup) -> list[Finding]:
    """Weight decay on frozen rows: the analytic leak of a hook freeze over the planned steps."""
    from .freeze import analytic_decay

    f = setup.flags
    mode = f["freeze_mode"] or "none"
    wd, lr = f["weight_decay"], f["learning_rate"]
    steps = setup.steps or f["max_steps"]
    if mode == "hook" and wd > 0 and f["decay"] != "weights":
        if not steps:
            return [Finding("freeze.leak", "warn",
                            f"a hook freeze with weight decay {wd:g}: AdamW shrinks the 'frozen' "
                            "rows every step (give --steps to compute by how much)",
                            "use amhelpers.freeze.freeze_base_rows(mode='exact')")]
        leak = analytic_decay(_schedule(lr, min(f["warmup_steps"], steps), steps), wd)
        return [Finding("freeze.leak", "warn",
                        f"a hook freeze zeroes the base rows' gradients, but AdamW still applies "
                        f"weight decay {wd:g}: over {steps} steps at {lr:g} (warmup + cosine) the "
                        f"'frozen' rows shrink by {_pct(leak)}, and Adam moments restored from a "
                        "checkpoint move them too (chapter 4a)",
                        "use amhelpers.freeze.freeze_base_rows(mode='exact'), or put the tables "
                        "in a group without weight decay (amhelpers.optim.param_groups)")]
    if mode == "none":
        return [Finding("freeze.none", "info",
                        "no freeze: the base rows train with the new ones (chapter 6's "
                        "fix_no_freeze did as well on the target language; retention of the "
                        "base language is its own question)")]
    return []


def check_resume(setup: Setup, base: dict[str, Any] | None, base_size: int | None
                 ) -> list[Finding]:
    """Resuming from a checkpoint saved before the freeze, or one whose base rows drifted.

    The base rows ``[0, base_size)`` of ``--resume`` are compared with ``--checkpoint``'s (the
    pretrained ones); new rows are expected to move.
    """
    resume = setup.flags.get("resume")
    if not resume:
        return []
    if resume == "auto":  # the trainer's "the newest checkpoint in --output-dir, if any"
        from .rundir import latest_checkpoint

        folder = setup.flags.get("output_dir")
        found = latest_checkpoint(folder) if folder else None
        if found is None:
            where = (f"--output-dir {folder} holds no checkpoint yet" if folder else
                     "no --output-dir given, so which checkpoint it takes is not checked")
            return [Finding("resume.auto", "info",
                            f"--resume auto: {where}; a run without one starts from its "
                            "initial checkpoint", "")]
        resume = str(found)
    path = Path(resume)
    if not path.is_file():
        return [Finding("resume.missing", "block", f"--resume {path} does not exist",
                        "give the checkpoint file or drop --resume")]
    ckpt = checkpoint_tables(path)
    out = []
    mode = setup.flags["freeze_mode"] or "none"
    if ckpt["left_out"] and mode == "hook":
        out.append(Finding("resume.optimizer_state", "block",
                           f"--resume {path} carries {', '.join(ckpt['left_out'])}: under a hook "
                           "freeze the restored Adam moments keep moving rows whose gradient is "
                           "now zero (pytorch/pytorch#18404)",
                           "start from the model weights only, or freeze with mode='exact'"))
    if (base is not None and base_size is not None and base["tables"] is not None
            and ckpt["tables"] is not None):
        a = base["tables"]["text_embedding.weight"][:base_size]
        b = ckpt["tables"]["text_embedding.weight"][:base_size]
        if a.shape == b.shape:
            moved = (a - b).abs().amax(dim=1)
            share = float((moved > 0).float().mean())
            if share > 0:
                out.append(Finding("resume.base_rows_moved", "warn",
                                   f"{_pct(share)} of the base rows in --resume {path.name} differ "
                                   f"from the base checkpoint (largest change {float(moved.max()):.3g}): "
                                   "it was saved before a freeze, so the pretrained rows are gone",
                                   "start from the base checkpoint grown with checkpoint extend"))
    return out


def check_front_end(setup: Setup, texts: list[str]) -> list[Finding]:
    """The upstream normaliser's route for the target script, and the real front end's ids.

    Only for an IndexTTS2 setup (``--config`` given, or a tokenizer whose base pieces are
    upper-case, as IndexTTS2's): another model has its own front end.
    """
    from . import tokenizer as tk
    from .indextts import front_end_parity, upstream_route

    if setup.config is None and tk.base_text_case(tk.load_proto(setup.tokenizer)) != "upper":
        return []
    out = []
    zh = sum(upstream_route(t) == "zh" for t in texts)
    if setup.lang not in ("zho", "cmn") and zh:
        out.append(Finding("front_end.route", "warn",
                           f"{zh} of {len(texts)} manifest lines have no Latin letter: IndexTTS2's "
                           "TextNormalizer sends them to the Chinese normaliser, which returns \"\" "
                           "when it raises (the line is dropped silently) or rewrites what it "
                           "does not know",
                           "tokenise training and inference text with the same normaliser "
                           "(amhelpers.text.normalize) and bypass TextNormalizer for this script"))
    parity = front_end_parity(setup.tokenizer, texts, setup.lang)
    if parity is not None and parity["differ"]:
        example = parity["examples"][0]
        out.append(Finding("front_end.parity", "warn",
                           f"IndexTTS2's TextTokenizer (no normaliser) and amhelpers encode "
                           f"{parity['differ']} of {parity['lines']} lines differently, e.g. "
                           f"{example['text']!r}: {example['upstream'][:12]} vs "
                           f"{example['ours'][:12]}",
                           "preprocess the manifest and run inference through the same front end"))
    return out


def check_manifest_ids(setup: Setup, texts: list[str], ids: list[list[int]], rows: int | None,
                       base_size: int | None) -> list[Finding]:
    """The manifest's stored ``text_ids``: in range, ``<unk>`` share, new ids used at all."""
    import sentencepiece as spm

    if not ids:
        return []
    flat = [i for row in ids for i in row]
    sp = spm.SentencePieceProcessor(model_file=str(setup.tokenizer))
    out = []
    if rows is not None and flat and max(flat) >= rows:
        out.append(Finding("manifest.ids_range", "block",
                           f"the manifest holds text id {max(flat)} but the model has {rows} rows",
                           "rebuild the manifest with the tokenizer the model is sized for"))
    unk = flat.count(sp.unk_id()) / max(len(flat), 1)
    if unk >= UNK_BLOCK:
        out.append(Finding("manifest.unk", "block",
                           f"{_pct(unk)} of the manifest's stored text_ids are <unk> (id "
                           f"{sp.unk_id()}): it was tokenised with a tokenizer that lacks the script",
                           "re-tokenise the manifest with the extended tokenizer"))
    if base_size is not None and sp.get_piece_size() > base_size and not any(i >= base_size for i in flat):
        from .text import normalize

        texts = [normalize(t, setup.lang) for t in texts]
        if any(i >= base_size for t in texts for i in sp.encode(t)):
            out.append(Finding("manifest.no_new_ids", "block",
                               f"no stored text id is >= {base_size}, yet {setup.tokenizer.name} "
                               "gives new ids on the same text: the manifest was tokenised with "
                               "the base tokenizer, so the new rows never train",
                               "re-tokenise the manifest with the extended tokenizer"))
        else:
            n = sp.get_piece_size() - base_size
            out.append(Finding("manifest.new_ids_unused", "warn",
                               f"{n} added piece{'s' if n != 1 else ''}, none of which occurs in "
                               "this manifest's text: their rows never train, and the base "
                               "tokenizer already encodes this language",
                               "keep the base tokenizer for this language (chapter 8 decides "
                               "with newlang.assess)"))
    return out


# ----------------------------------------------------------------------------- the report
def check_retention(setup: Setup) -> list[Finding]:
    """Whether the run keeps the base language: base-language replay (chapter 6b)."""
    f = setup.flags
    if f["replay_manifest"] and f["replay_fraction"] > 0:
        return [Finding("retention.replay", "info",
                        f"{f['replay_fraction']:.0%} of every batch replays "
                        f"{f['replay_manifest']}")]
    measured = ""
    from .runs import RESULTS

    table = RESULTS / "retention_full.json"
    if table.is_file():  # chapter 6b's committed full-profile grid
        done = json.loads(table.read_text(encoding="utf-8"))
        rows = {r["run"]: r for r in done["rows"]}
        fix, replay = rows.get("fix"), rows.get("fix, replay 0.25")
        if fix and replay:
            measured = (f"; chapter 6b (300 steps): the base model's English MCD / random "
                        f"{done['base_english']['mcd_vs_random']:.3f}, "
                        f"{fix['eng_mcd_vs_random']:.3f} after the fix alone, "
                        f"{replay['eng_mcd_vs_random']:.3f} with a quarter of every batch replayed")
    lora = (f"; --lora-rank {f['lora_rank']} does not replace it: in chapter 6b LoRA kept English "
            "only as far as its rate kept the blocks still" if f["lora_rank"] else "")
    return [Finding("retention.no_replay", "warn",
                    "no base-language replay (--replay-manifest): training on the new language "
                    "alone moves the backbone, and the freeze of the base rows does not stop the "
                    f"base languages from degrading{measured}{lora}",
                    "mix the base languages' training data into every batch "
                    "(--replay-manifest base.jsonl --replay-fraction 0.25, or "
                    "amhelpers.data.ReplayBatches as your DataLoader's batch_sampler)")]


def examine(setup: Setup) -> dict[str, Any]:
    """Run every check that the given files allow; findings ranked block, warn, info."""
    if setup.tokenizer is None:
        raise ValueError("no tokenizer: give --tokenizer or the trainer's --tokenizer after --")
    for name in ("tokenizer", "base_tokenizer", "config", "checkpoint"):
        path = getattr(setup, name)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {path} does not exist")
    findings: list[Finding] = []
    base_size = None
    if setup.base_tokenizer is not None:
        import sentencepiece as spm

        base_size = spm.SentencePieceProcessor(model_file=str(setup.base_tokenizer)).get_piece_size()
    ckpt = checkpoint_tables(setup.checkpoint) if setup.checkpoint else None
    texts, ids = read_manifest_sample(setup.manifest) if setup.manifest else ([], [])
    if texts:
        findings += check_tokenizer(setup, texts)
        findings += check_front_end(setup, texts)
    findings += check_sizes(setup, ckpt)
    findings += check_manifest_ids(setup, texts, ids, ckpt["rows"] if ckpt else None, base_size)
    findings += check_init(setup, ckpt, base_size)
    findings += check_rates(setup)
    findings += check_freeze(setup)
    findings += check_resume(setup, ckpt, base_size)
    findings += check_retention(setup)
    findings.sort(key=lambda x: SEVERITIES.index(x.severity))
    return {"ok": not any(x.severity == "block" for x in findings),
            "findings": [asdict(x) for x in findings]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``doctor`` flags; the trainer command follows ``--``."""
    parser.add_argument("--tokenizer", type=Path, help="the extended .model (default: the "
                        "trainer command's --tokenizer)")
    parser.add_argument("--base-tokenizer", type=Path, help="the base .model (IndexTTS2's bpe.model)")
    parser.add_argument("--config", type=Path, help="IndexTTS2's config.yaml")
    parser.add_argument("--checkpoint", type=Path, help="the gpt.pth training starts from, or a "
                        "JSON header of its shapes ({\"text_embedding.weight\": [rows, width]}); "
                        "default: the command's --init-checkpoint")
    parser.add_argument("--manifest", type=Path, help="a sample of the training manifest (JSONL "
                        "with text, or one sentence per line; default: --train-manifest)")
    parser.add_argument("--lang", default="amh", help="ISO 639-3 code of the target language")
    parser.add_argument("--freeze-mode", choices=("none", "hook", "exact", "exact-sparse"),
                        help="how the trainer freezes base rows (the original fix's trainer: hook)")
    parser.add_argument("--pretrain-lr", type=float, default=2e-4,
                        help="the base model's pretraining rate (rates are judged relative to it)")
    parser.add_argument("--steps", type=int, help="planned steps (default: --max-steps)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("trainer", nargs="*", metavar="-- TRAINER COMMAND",
                        help="the training command to check, after --")


def setup_from_args(args: argparse.Namespace) -> Setup:
    """A :class:`Setup` from doctor's flags and the trainer command (doctor's flags win)."""
    flags, given = parse_trainer_command(args.trainer)
    if args.freeze_mode:
        flags["freeze_mode"], given = args.freeze_mode, given | {"freeze_mode"}
    elif flags["freeze_mode"] is None and flags["freeze_base_rows"] is not None:
        flags["freeze_mode"] = "exact"  # amhelpers train: --freeze-base-rows freezes exactly
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps} must be at least 1")
    pick = lambda mine, theirs: mine if mine is not None else (Path(theirs) if theirs else None)  # noqa: E731
    from .tokenizer import check_lang

    return Setup(tokenizer=pick(args.tokenizer, flags["tokenizer"]),
                 base_tokenizer=args.base_tokenizer, config=args.config,
                 checkpoint=pick(args.checkpoint, flags["init_checkpoint"]), manifest=pick(args.manifest, flags["train_manifest"]),
                 lang=check_lang(args.lang), pretrain_lr=args.pretrain_lr, steps=args.steps,
                 flags=flags, given=given)


def command_from_config(train: dict[str, Any]) -> list[str]:
    """The trainer flags of an ``amhelpers train`` run's ``config.json`` ``"train"`` section
    (None values left out), for :func:`check`."""
    words = []
    for key, value in train.items():
        if value is not None and not isinstance(value, (dict, bool)):
            words += [f"--{key.replace('_', '-')}", str(value)]
    return words


def check(command: Sequence[str] = (), **options: Any) -> dict[str, Any]:
    """:func:`examine` from Python: ``options`` are doctor's flags by name (``base_tokenizer``,
    ``lang``, ``pretrain_lr``, ...), ``command`` the trainer's words."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise ValueError(f"unknown doctor option(s) {', '.join(unknown)}; known: "
                         f"{', '.join(k for k in vars(args) if k != 'trainer')}")
    for key, value in options.items():
        setattr(args, key, Path(value) if isinstance(value, str) and key in (
            "tokenizer", "base_tokenizer", "config", "checkpoint", "manifest") else value)
    args.trainer = list(command)
    return examine(setup_from_args(args))


def print_findings(report: dict[str, Any]) -> None:
    """The findings as text, worst first."""
    marks = {"block": "BLOCK", "warn": "warn ", "info": "info "}
    for f in report["findings"]:
        print(f"[{marks[f['severity']]}] {f['check']}: {f['evidence']}")
        if f["fix"]:
            print(f"         fix: {f['fix']}")
    blocks = sum(f["severity"] == "block" for f in report["findings"])
    print(f"\n{'ok: nothing blocks' if report['ok'] else f'NOT OK: {blocks} finding(s) block'}")


def run(args: argparse.Namespace) -> int:
    """``python -m amhelpers doctor``: 0 when nothing blocks, 1 otherwise."""
    report = examine(setup_from_args(args))
    if args.json:
        print(json.dumps(report))
    else:
        print_findings(report)
    return 0 if report["ok"] else 1

