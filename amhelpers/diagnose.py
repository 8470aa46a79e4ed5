"""Diagnose an extended checkpoint: are the new text rows trained, and if not, why?

What it measures (chapter 3), on the three text tables (``text_embedding.weight``,
``text_head.weight``, ``text_head.bias``) of a MiniVoice checkpoint or a real IndexTTS2
``gpt.pth``, and where each measure lives:

- per-row norms, base rows ``[0, base_rows)`` against new rows ``[base_rows, rows - 1)``; the
  last row is the "+1" row no tokenizer id produces (:func:`amhelpers.tables.table_stats`);
- under-trained rows (:func:`amhelpers.undertrained.undertrained_rows`, after Land & Bartolo
  2024, "Fishing for Magikarp");
- drift of each new row from its init, beyond what weight decay explains
  (:func:`amhelpers.tables.drift_from_init`), from an init snapshot or rebuilt from the
  extension record and its seed (:func:`amhelpers.checkpoint.initial_state_from_record`);
- per-row gradient norms for one batch (:func:`amhelpers.tables.gradient_probe`);
- loss plateau in ``metrics.jsonl`` or TensorBoard event files
  (:func:`amhelpers.logs.plateau_from_log`);
- ``<unk>`` rate of the target text under the tokenizer (:func:`unk_rate`);
- a ranked checklist of likely causes (:func:`amhelpers.causes.rank_causes`), and the norm
  figure (:func:`plot_norms`).

:func:`diagnose` gathers them into one JSON-ready report (``python -m amhelpers diagnose
--json``: ``tables``, ``flagged_rows``, ``causes`` with ``cause`` / ``score`` / ``evidence``, and
more); :func:`print_report` prints it for people.

Inputs are checked before any work: ``--plot`` (not an input, a folder, under a file,
unwritable, or a non-PNG file), ``--evidence`` (known keys, each of its type, no NaN),
``--window`` / ``--threshold``, ``--base-rows``; malformed ``--log`` lines are counted and
reported; NaN/inf rows are named.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .causes import check_evidence, parse_evidence, rank_causes
from .checkpoint import initial_state_from_record, read_extension_record, record_path
from .ckptio import load_state_dict
from .data import read_manifest
from .io import check_output_file, same_file, write_bytes_atomic
from .logs import PLATEAU_THRESHOLD, check_plateau_args, plateau_from_log
from .tables import (
    TEXT_KEYS,
    base_rows_sha256,
    check_finite_tables,
    check_text_tables,
    drift_from_init,
    expected_init_norm,
    row_norms,
    split_rows,
    table_stats,
)
from .text import normalize
from .tokenizer import load_proto, processor, read_texts
from .undertrained import undertrained_rows


# ----------------------------------------------------------------------------- tokenizer
def unk_rate(tokenizer: str | Path, texts: Sequence[str], lang: str | None = None) -> dict[str, Any]:
    """Share of ``<unk>`` tokens when ``tokenizer`` encodes ``texts`` (normalised for ``lang``)."""
    sp = processor(load_proto(tokenizer, "--tokenizer"))
    unk = sp.unk_id()
    tokens = unks = lines_unk = lines = 0
    for raw in texts:
        text = normalize(raw, lang) if lang else raw
        if not text:
            continue
        ids = sp.encode(text)
        n = sum(1 for i in ids if i == unk)
        lines += 1
        tokens += len(ids)
        unks += n
        lines_unk += n > 0
    if lines == 0:
        raise ValueError("--text: no non-empty line to encode")
    return {"unk_rate": unks / max(tokens, 1), "tokens": tokens, "unk_tokens": unks,
            "lines": lines, "lines_with_unk": lines_unk, "vocab_size": sp.get_piece_size()}


# ----------------------------------------------------------------------------- plots
def plot_norms(state_dict: Mapping[str, torch.Tensor], base_rows: int | None,
               flagged: Sequence[int] | None = None, path: str | Path | None = None,
               title: str | None = None):
    """Norm by row id (top) and base/new histograms (bottom) for the three text tables.

    The constructor init's expected norm is marked: 0.02 sqrt(d) for the embedding,
    1/sqrt(3) for head rows, 1/(2 sqrt(d)) mean |bias|. Uses matplotlib's object API (no
    pyplot state; safe under the Agg backend). Returns the Figure; writes a PNG atomically
    when ``path`` is given.
    """
    # matplotlib costs 0.9 s on top of torch (measured); only --plot needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, dim = check_text_tables(state_dict)
    base, new, plus = split_rows(rows, base_rows)
    norms = row_norms(state_dict)
    fig = Figure(figsize=(15, 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    flagged_ids = np.asarray(sorted(flagged or []), dtype=int)
    for col, key in enumerate(TEXT_KEYS):
        n = norms[key]
        init = expected_init_norm(key, dim)
        log_scale = key != TEXT_KEYS[2] and bool((n > 0).all())
        ax = axes[0, col]
        ax.scatter(base, n[base], s=3, c="C0", label=f"base ({len(base)})", rasterized=True)
        if len(new):
            ax.scatter(new, n[new], s=3, c="C1", label=f"new ({len(new)})", rasterized=True)
        if plus is not None:
            ax.scatter([plus], [n[plus]], s=30, c="C3", marker="D", label=f"+1 row ({plus})")
        if len(flagged_ids):
            ax.scatter(flagged_ids, n[flagged_ids], s=14, facecolors="none", edgecolors="k",
                       linewidths=0.5, label=f"flagged ({len(flagged_ids)})")
        ax.axhline(init, color="C2", ls="--", lw=1, label=f"constructor init {init:.3g}")
        if base_rows is not None and len(new):
            ax.axvline(base_rows - 0.5, color="gray", lw=0.8)
        if log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("row id")
        ax.set_ylabel("|bias|" if key == TEXT_KEYS[2] else "L2 norm")
        ax.set_title(key)
        ax.legend(fontsize=7, markerscale=2, loc="upper left")

        ax = axes[1, col]
        values = n[np.concatenate([base, new])]
        positive = values[values > 0]
        if log_scale and len(positive):
            lo, hi = min(positive.min(), init) * 0.9, max(positive.max(), init) * 1.1
            bins = np.geomspace(lo, hi, 60)
            ax.set_xscale("log")
        else:
            bins = 60
        ax.hist(n[base], bins=bins, alpha=0.6, color="C0", label="base")
        if len(new):
            ax.hist(n[new], bins=bins, alpha=0.6, color="C1", label="new")
        ax.axvline(init, color="C2", ls="--", lw=1, label="constructor init")
        ax.set_xlabel("|bias|" if key == TEXT_KEYS[2] else "L2 norm")
        ax.set_ylabel("rows")
        ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.07, top=0.92, wspace=0.25, hspace=0.3)
    if title:
        fig.suptitle(title)
    if path is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        write_bytes_atomic(path, buffer.getvalue())
    return fig


# ----------------------------------------------------------------------------- diagnose
def _find_record(checkpoint: Path, meta: Mapping[str, Any], given: str | Path | None
                 ) -> tuple[dict | None, str | None]:
    if given is not None:  # the record itself, or a checkpoint with its record beside it
        beside = record_path(given)
        if beside.is_file():
            return read_extension_record(beside), str(beside)
        return read_extension_record(given, as_is=True), str(given)
    if record_path(checkpoint).is_file():
        return read_extension_record(record_path(checkpoint)), str(record_path(checkpoint))
    inner = meta.get("meta") or {}
    if isinstance(inner, Mapping) and isinstance(inner.get("extension"), Mapping):
        record = dict(inner["extension"])
        if all(isinstance(record.get(k), int) for k in ("base_vocab", "new_vocab")):
            return record, "checkpoint meta"
    return None, None


def _check_plot(plot: str | Path, inputs: Mapping[str, Any]) -> None:
    """Refuse a --plot path that is an input, a folder, under a file, unwritable, or an
    existing file that is not a PNG (someone's data, not an earlier plot)."""
    path = check_output_file(plot, "--plot", dict(inputs))
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                raise ValueError(f"--plot {path} exists and is not a PNG image; choose another "
                                 "path (an earlier plot would be replaced, other files are not)")


def diagnose(checkpoint: str | Path, base_rows: int | None = None,
             init_snapshot: str | Path | None = None, extension_record: str | Path | None = None,
             tokenizer: str | Path | None = None, text: str | Path | Sequence[str] | None = None,
             lang: str | None = None, log: str | Path | None = None, log_key: str = "loss",
             log_split: str | None = "train", window: int | None = None,
             threshold: float = PLATEAU_THRESHOLD, evidence: Mapping[str, Any] | None = None,
             plot: str | Path | None = None, trust_pickle: bool = False,
             train_manifest: str | Path | None = None) -> dict[str, Any]:
    """Gather every measurement on one checkpoint into a JSON-ready dict.

    Args:
        checkpoint: MiniVoice ``.pt`` or IndexTTS2 ``gpt.pth``.
        base_rows: pretrained rows; default from the extension record (beside the checkpoint,
            given, or in a MiniVoice checkpoint's meta).
        init_snapshot: a checkpoint/state dict holding the text tables at init (for drift);
            default: rebuilt from the extension record and its seed.
        extension_record: the record's path when it is not beside the checkpoint.
        tokenizer, text, lang: measure the ``<unk>`` rate of ``text`` (a file, a HornMT code
            -- its train split -- or a list of lines) under ``tokenizer``.
        log, log_key, log_split, window, threshold: plateau detection on a metrics.jsonl or a
            TensorBoard folder.
        evidence: extra checklist numbers (``val_loss_ratio``, ``length_corr``, ``mcd_ratio``).
        plot: write the norm figure here (PNG).
        trust_pickle: see :func:`amhelpers.ckptio.load_state_dict`.
        train_manifest: the run's training manifest (JSONL with ``text_ids``): new rows whose
            token never occurs in it cannot move, so "not moving" is judged on the others.

    Returns:
        ``checkpoint``, ``layout``, ``rows``, ``dim``, ``base_rows``, ``base_rows_source``,
        ``tables``, ``undertrained``, ``flagged_rows``, ``flagged``, ``drift``, ``unk``,
        ``plateau``, ``evidence``, ``causes``, ``notes``, ``plot``.
    """
    checkpoint = Path(checkpoint)
    if evidence is not None:  # every argument is checked before the (slow) work
        evidence = check_evidence(evidence, "--evidence")
    if (tokenizer is None) != (text is None):
        raise ValueError("--tokenizer and --text go together (the <unk> rate of --text under "
                         "--tokenizer)")
    if log is not None:
        check_plateau_args(window, threshold)
    if plot is not None:
        _check_plot(plot, {"--checkpoint": checkpoint, "--init-snapshot": init_snapshot,
                           "--extension-record": extension_record, "--tokenizer": tokenizer,
                           "--text": text if isinstance(text, (str, Path)) else None,
                           "--log": log})
    if init_snapshot is not None and same_file(init_snapshot, checkpoint):
        raise ValueError(f"--init-snapshot {init_snapshot} is the --checkpoint itself, so every "
                         "row would show zero drift; give the snapshot taken right after the "
                         "extension (e.g. the run's init.pt), or leave it out to rebuild it from "
                         "the extension record")
    sd, meta = load_state_dict(checkpoint, trust_pickle)
    check_finite_tables(sd, f"checkpoint {checkpoint}")
    rows, dim = meta["rows"], meta["dim"]
    notes: list[str] = []
    record, record_source = _find_record(checkpoint, meta, extension_record)
    source = "argument"
    if base_rows is None and record is not None:
        base_rows, source = int(record["base_vocab"]), f"extension record ({record_source})"
        if base_rows >= rows:
            raise ValueError(f"the extension record ({record_source}) says {base_rows} base rows "
                             f"but {checkpoint} has only {rows} text rows: it is not this "
                             "checkpoint's record; pass --extension-record or --base-rows")
    elif base_rows is None:
        source = "none"
        notes.append("no --base-rows and no extension record: every row but the last counts as "
                     "base; pass --base-rows to split base and new rows")
    if base_rows is not None and not 2 <= base_rows <= rows:
        raise ValueError(f"--base-rows {base_rows} is larger than the text tables of {checkpoint} "
                         f"({rows} rows)" if base_rows > rows else
                         f"--base-rows {base_rows} must be at least 2 (the trained rows that "
                         f"serve as the reference; {checkpoint} has {rows} text rows)")
    if tokenizer is not None:
        pieces = len(load_proto(tokenizer, "--tokenizer").pieces)
        if pieces + 1 != rows:
            notes.append(f"--tokenizer {tokenizer} has {pieces} pieces but the checkpoint's text "
                         f"tables have {rows} rows ({pieces + 1} expected): the <unk> rate is that "
                         "of another tokenizer than the one this checkpoint was grown for")

    tables = table_stats(sd, base_rows)
    flags = undertrained_rows(sd, base_rows)
    _, new, _ = split_rows(rows, base_rows)
    flagged = np.asarray(flags["flagged_rows"], dtype=int)
    n_new_flagged = int(np.isin(flagged, new).sum()) if len(new) else 0
    n_base_flagged = int((flagged < (base_rows if base_rows is not None else rows - 1)).sum())
    flagged_summary = {"base": n_base_flagged, "new": n_new_flagged,
                       "new_share": n_new_flagged / len(new) if len(new) else None}

    trained_ids = None
    if train_manifest is not None:
        trained_ids = {i for row in read_manifest(train_manifest) for i in row["text_ids"]}
    drift_out = None
    if init_snapshot is not None:
        init_sd, _ = load_state_dict(init_snapshot, trust_pickle)
        drift_out = {"source": f"init snapshot {init_snapshot}", "exact": True,
                     **drift_from_init(sd, init_sd, base_rows if base_rows is not None else rows - 1,
                                       trained_ids=trained_ids)}
    elif record is not None and base_rows is not None and len(new):
        try:
            init_sd, exact = initial_state_from_record(sd, record)
            drift_out = {"source": f"rebuilt from extension record ({record_source}), "
                                   f"strategy {record['strategy']}, seed {record.get('seed', 0)}",
                         "exact": exact, **drift_from_init(sd, init_sd, base_rows,
                                                           trained_ids=trained_ids)}
            # the rebuilt init reuses today's base rows: compare them by the record's sha256
            same = base_rows_sha256(sd, base_rows) == record.get("base_rows_sha256")
            for table in drift_out["tables"].values():
                table["base"] = {"rows": table["base"]["rows"], "median": None, "max": None,
                                 "changed_rows": None, "unchanged_since_extension": same}
            if not exact:
                notes.append("base rows changed since the extension, so the rebuilt init of "
                             "mean/hewitt/romanized rows is approximate")
        except (FileNotFoundError, ValueError) as err:
            notes.append(f"drift not measured: {err}")

    unk = None
    if tokenizer is not None and text is not None:
        if isinstance(text, (str, Path)):
            lines, code = read_texts(text, "train", "--text")
        else:
            lines, code = list(text), None
        unk = unk_rate(tokenizer, lines, lang or code)
        unk["text"] = str(text) if isinstance(text, (str, Path)) else f"{len(lines)} lines"

    plateau = plateau_from_log(log, log_key, log_split, window, threshold) if log is not None else None
    if plateau is not None and plateau["warning"]:
        notes.append(plateau["warning"])

    ev: dict[str, Any] = {}
    if unk is not None:
        ev["unk_rate"] = unk["unk_rate"]
    if drift_out is not None and drift_out["tables"][TEXT_KEYS[0]]["new"]["rows"]:
        moved = drift_out["tables"][TEXT_KEYS[0]]["new"]
        ev["new_drift_median"] = moved["median"]
        ev["new_decay_factor"] = moved["decay_factor"]
        seen = moved.get("in_training")
        if seen is not None and seen["rows"]:  # judged on the rows a gradient could reach
            ev["new_share_below_1pct"] = seen["beyond_decay"]["share_below_1pct"]
            ev["new_rows_in_training"] = seen["rows"]
            ev["new_rows_not_in_training"] = moved["rows"] - seen["rows"]
        else:
            ev["new_share_below_1pct"] = moved["beyond_decay"]["share_below_1pct"]
    if flagged_summary["new_share"] is not None:
        ev["flagged_new_share"] = flagged_summary["new_share"]
    if len(new):
        ev["norm_ratio"] = {k: tables[k]["new"]["norm_mean"] / tables[k]["base"]["norm_mean"]
                            for k in TEXT_KEYS[:2] if tables[k]["base"]["norm_mean"]}
    if plateau is not None:
        ev.update(plateau=plateau["plateau"], loss_relative_change=plateau["relative_change"],
                  loss_level=plateau["level"])
    ev.update(dict(evidence or {}))
    causes = rank_causes(ev)

    if plot is not None:
        plot_norms(sd, base_rows, flags["flagged_rows"], plot, title=str(checkpoint.name))
    return {
        "checkpoint": str(checkpoint), "layout": meta["layout"], "rows": rows, "dim": dim,
        "base_rows": base_rows, "base_rows_source": source, "extension_record": record_source,
        "tables": tables, "undertrained": {k: v for k, v in flags.items() if k != "flagged_rows"},
        "flagged_rows": flags["flagged_rows"], "flagged": flagged_summary, "drift": drift_out,
        "unk": unk, "plateau": plateau, "evidence": ev, "causes": causes, "notes": notes,
        "plot": str(plot) if plot is not None else None,
    }


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def print_report(report: Mapping[str, Any]) -> None:
    """Readable text version of :func:`diagnose`'s result."""
    print(f"diagnose {report['checkpoint']} ({report['layout']}): {report['rows']} text rows x "
          f"{report['dim']}; base rows {report['base_rows']} ({report['base_rows_source']})")
    for key, t in report["tables"].items():
        b, n = t["base"], t["new"]
        print(f"  {key:22s} base {b['rows']:6d} rows norm {_fmt(b['norm_mean'])} ± {_fmt(b['norm_std'])}"
              f" | new {n['rows']:6d} rows norm {_fmt(n['norm_mean'])} ± {_fmt(n['norm_std'])}"
              f" | init {t['init_norm']:.3g}")
    f = report["flagged"]
    print(f"  flagged as under-trained: {len(report['flagged_rows'])} rows ({f['base']} base, "
          f"{f['new']} new)")
    for item in report["undertrained"]["disabled"]:
        print(f"    test disabled: {item}")
    if report["drift"]:
        d = report["drift"]["tables"][TEXT_KEYS[0]]["new"]
        print(f"  drift of new embedding rows from init ({report['drift']['source']}): median "
              f"{_fmt(d['median'])}, max {_fmt(d['max'])}, share moved < 1%: "
              f"{_fmt(d['share_below_1pct'])}; beyond weight decay: median "
              f"{_fmt(d['beyond_decay']['median'])}, share < 1%: "
              f"{_fmt(d['beyond_decay']['share_below_1pct'])} (rows scaled by "
              f"{_fmt(d['decay_factor'])})")
    if report["unk"]:
        print(f"  <unk> rate of {report['unk']['text']}: {report['unk']['unk_rate']:.2%}")
    if report["plateau"]:
        p = report["plateau"]
        print(f"  loss ({p['source']}): {p['relative_change']:+.2%} over the last {p['window']} points "
              f"-> plateau {p['plateau']}")
    print("  likely causes:")
    for c in report["causes"]:
        print(f"    {c['score']:.2f}  {c['cause']}: {c['evidence']}")
        if c["measured"] and c["score"] >= 0.5:
            print(f"          fix: {c['fix']}")
    for note in report["notes"]:
        print(f"  note: {note}")
    if report["plot"]:
        print(f"  plot: {report['plot']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers diagnose --checkpoint C [...] [--json] [--plot P]``."""
    parser.add_argument("--checkpoint", required=True, help="MiniVoice .pt or IndexTTS2 gpt.pth")
    parser.add_argument("--base-rows", type=int, default=None,
                        help="pretrained rows (default: from the extension record)")
    parser.add_argument("--init-snapshot", default=None,
                        help="checkpoint holding the text tables at init (for drift)")
    parser.add_argument("--extension-record", default=None,
                        help="extension record when it is not beside the checkpoint")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for the <unk> rate")
    parser.add_argument("--text", default=None, help="target text: a UTF-8 file or a HornMT code")
    parser.add_argument("--lang", default=None, help="ISO 639-3 code of --text (normalisation)")
    parser.add_argument("--log", default=None, help="metrics.jsonl, a run folder or a TensorBoard folder")
    parser.add_argument("--train-manifest", default=None,
                        help="the run's training manifest: judge 'not moving' on the new rows "
                             "whose token occurs in it (the others get no gradient)")
    parser.add_argument("--log-key", default="loss", help="loss key / scalar tag (default loss)")
    parser.add_argument("--log-split", default="train", help="JSONL split to read (default train)")
    parser.add_argument("--window", type=int, default=None, help="plateau window in log points")
    parser.add_argument("--threshold", type=float, default=PLATEAU_THRESHOLD,
                        help="smallest relative loss fall over the window that is progress")
    parser.add_argument("--evidence", default=None,
                        help="extra checklist numbers as JSON (a string or a file), e.g. "
                             '\'{"val_loss_ratio": 1.1, "length_corr": 0.2}\'')
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow unsafe unpickling of a checkpoint holding Python objects")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", default=None, help="write the norm plot (PNG) here")


def run(args: argparse.Namespace) -> int:
    """Run the diagnose CLI; exit 0 when the diagnosis ran (whatever it found)."""
    evidence = parse_evidence(args.evidence) if args.evidence else None
    report = diagnose(args.checkpoint, args.base_rows, args.init_snapshot, args.extension_record,
                      args.tokenizer, args.text, args.lang, args.log, args.log_key,
                      args.log_split or None, args.window, args.threshold, evidence, args.plot,
                      args.trust_pickle, train_manifest=args.train_manifest)
    if report["plateau"] and report["plateau"]["warning"]:
        print(f"warning: {report['plateau']['warning']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print_report(report)
    return 0
