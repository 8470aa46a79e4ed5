"""Run notebook 05 once per point of a grid with papermill: ``python -m amhelpers runs``.

A grid file (YAML) names notebook 05's parameters::

    parameters:            # shared by every point (optional)
      PROFILE: quick
    grid:                  # every combination of these lists (optional) ...
      RECIPE: [original_fix, fix]
      SEED: [0, 1]
    points:                # ... and/or these points (optional), each on top of `parameters`
      - {RECIPE: fix, TRAIN_PHRASES: 0}

Layout of ``--out``::

    points/<point>/point.json       its parameters (a rerun with other ones is refused)
    points/<point>/05_train.ipynb   the executed notebook of one point
    points/<point>/summary.json     its results (the notebook writes it last: the point is done)
    tb/<recipe>-seed<n>[-<point>]/  a copy of the point's TensorBoard logs, so that
                                    ``tensorboard --logdir <out>/tb`` compares every run
    results.csv, results.md         one row per point: its settings and results
    grid.json                       the grid as run: status, seconds and error of each point

A point whose ``summary.json`` exists is skipped, so a grid killed part-way continues where it
stopped when run again (the point that was running resumes from its run's last checkpoint:
:func:`amhelpers.embedded.finetune`). A point that fails is reported with its notebook and the
others go on. Runs are cached by their settings, so a point that matches a run an earlier chapter
made reuses it.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from .io import check_output_dir, check_output_file, write_text_atomic
from .markdown import markdown_table

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_train.ipynb"
GRIDS = Path(__file__).resolve().parent.parent / "grids"
"""The course's grid files (chapters 6 and 6b per profile, and the complete comparisons)."""
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
"""Committed results tables of grids run on the full profile (``docs/results``)."""
SECTIONS = ("parameters", "grid", "points")
# Each point's OUT_DIR is set by the runner; the grid file does not choose it.
RESERVED = ("OUT_DIR",)
RESULT_KEYS = ("steps", "wall_s", "learning_rate", "new_row_lr")
GENERATION_KEYS = ("length_ratio", "length_corr", "length_corr_chars", "mcd_vs_random", "per", "hit_cap")
ENGLISH_KEYS = ("val_mel_loss", "length_corr", "mcd_vs_random", "per")  # English retention
TABLE_PATHS = ("val.mel_loss", "generation.length_corr", "generation.mcd_vs_random", "generation.per",
               "english.val_mel_loss", "english.length_corr", "english.mcd_vs_random", "english.per")
"""The results ``runs --table`` writes (:func:`write_results_csv`), as dotted paths."""


def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters (names and defaults) of ``notebook``'s cell tagged ``parameters``."""
    import papermill

    found = papermill.inspect_notebook(str(notebook))
    return {name: spec.get("default") for name, spec in found.items()}


def read_grid(path: Path, notebook: Path = NOTEBOOK) -> list[dict[str, Any]]:
    """The points of the grid file ``path``, each a dict of notebook parameters, in order.

    Raises:
        ValueError: unreadable YAML, an unknown section or parameter (named, with the file and
            the notebook's parameters), an empty list, or the same point twice.
    """
    import yaml

    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"--grid {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not set(spec) <= set(SECTIONS) or not (
            spec.get("grid") or spec.get("points")):
        raise ValueError(f"--grid {path}: a mapping with a non-empty 'grid' and/or 'points' "
                         f"(and optional 'parameters'); sections allowed: {', '.join(SECTIONS)}")
    known = notebook_parameters(notebook)
    common = spec.get("parameters") or {}
    grid = spec.get("grid") or {}
    extra = spec.get("points") or []
    if not isinstance(common, dict) or not isinstance(grid, dict) or not isinstance(extra, list) \
            or not all(isinstance(x, dict) for x in extra):
        raise ValueError(f"--grid {path}: 'parameters' and 'grid' are mappings, 'points' a list "
                         "of mappings")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"--grid {path}: grid.{name} must be a non-empty list, got {values!r}")
    names = set(common) | set(grid) | {k for x in extra for k in x}
    unknown = sorted(names - set(known))
    reserved = sorted(names & set(RESERVED))
    if unknown or reserved:
        bad = ", ".join(unknown + reserved)
        raise ValueError(f"--grid {path}: {bad} {'is' if len(unknown + reserved) == 1 else 'are'} "
                         f"not parameters a grid may set in {notebook.name}; choose from "
                         f"{', '.join(n for n in known if n not in RESERVED)}")
    keys = list(grid)
    points = [{**common, **dict(zip(keys, combo))}
              for combo in itertools.product(*grid.values())] if grid else []
    points += [{**common, **x} for x in extra]
    seen: set[str] = set()
    for point in points:
        key = json.dumps(point, sort_keys=True, default=str)
        if key in seen:
            raise ValueError(f"--grid {path}: the point {point} appears twice")
        seen.add(key)
    return points


def point_name(point: dict[str, Any], varying: list[str]) -> str:
    """A folder name for ``point`` from the parameters that vary over the grid
    (``recipe-fix_seed-1``); ``point`` when nothing varies."""
    parts = [f"{k.lower()}-{point[k]}" for k in varying if k in point]
    name = re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts)) or "point"
    return name[:120]


def _varying(points: list[dict[str, Any]]) -> list[str]:
    names = sorted({k for p in points for k in p})
    return [k for k in names if len({json.dumps(p.get(k), default=str) for p in points}) > 1]


def execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any],
                     kernel_name: str = "python3") -> None:
    """Execute ``notebook`` into ``output`` with papermill, from the notebook's own folder.

    The kernel logs errors only: ipykernel 7 warns at each start over TCP without CurveZMQ keys
    ("Kernel is running over TCP without encryption"), though papermill's kernels listen on
    127.0.0.1; a kernel that 06 starts for a grid point writes into 06's own cell, so the warning
    would fill its output. Raises papermill's ``PapermillExecutionError`` when a cell fails.
    """
    import papermill

    papermill.execute_notebook(str(notebook), str(output), parameters=parameters,
                               kernel_name=kernel_name, cwd=str(Path(notebook).parent),
                               progress_bar=False,
                               extra_arguments=["--IPKernelApp.log_level=ERROR"])


def run_grid(grid: Path, out: Path, notebook: Path = NOTEBOOK, progress: bool = True,
             kernel_name: str = "python3", parameters: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Execute ``notebook`` once per point of ``grid`` into ``out`` (see the module docstring).

    ``parameters`` are set on every point on top of the grid file's (chapter 6 passes its own
    ``PROFILE`` and ``TARGET_LANG`` this way); they must be parameters of the notebook.

    Returns:
        ``points`` (name, parameters, status: ``done``, ``skipped`` or ``failed``, seconds,
        notebook, error) and ``ok``.

    Raises:
        ValueError: a bad grid file (see :func:`read_grid`) or ``--out`` (a file, under a file).
    """
    import papermill  # noqa: F401  (missing, it fails here, before any point runs)
    from tqdm.auto import tqdm

    notebook = Path(notebook)
    if not notebook.is_file():
        raise ValueError(f"--notebook {notebook} does not exist; give notebook 05 of the course")
    points = read_grid(Path(grid), notebook)
    if parameters:
        unknown = sorted(set(parameters) - set(notebook_parameters(notebook)))
        if unknown:
            raise ValueError(f"parameters {', '.join(unknown)} are not parameters of "
                             f"{notebook.name}")
        points = [{**point, **parameters} for point in points]
    out = check_output_dir(Path(out), "--out")
    varying = _varying(points)
    names = [point_name(p, varying) for p in points]
    if len(set(names)) < len(names):  # long values cut short: add the index
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    for name, point in zip(names, points):  # nothing runs if --out holds another grid's points
        record = out / "points" / name / "point.json"
        if record.is_file():
            old = json.loads(record.read_text(encoding="utf-8"))
            if old != json.loads(json.dumps(point, default=str)):
                raise ValueError(f"--out {out} holds another grid's point {name} (parameters "
                                 f"{old}, now {point}): choose another --out, or delete "
                                 f"{record.parent}")
    (out / "points").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"grid": str(grid), "notebook": str(notebook), "points": []}
    bar = tqdm(total=len(points), desc="grid points", unit="point", disable=not progress)
    for name, point in zip(names, points):
        folder = out / "points" / name
        summary = folder / "summary.json"
        entry: dict[str, Any] = {"name": name, "parameters": point,
                                 "notebook": str(folder / notebook.name)}
        start = time.perf_counter()
        if summary.is_file():
            entry["status"] = "skipped"
        else:
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(folder / "point.json", json.dumps(point, default=str))
            try:
                execute_notebook(notebook, folder / notebook.name,
                                 {**point, "OUT_DIR": str(folder)}, kernel_name)
                entry["status"] = "done" if summary.is_file() else "failed"
                if not summary.is_file():
                    entry["error"] = "the notebook ran but wrote no summary.json"
            except Exception as err:  # papermill raises PapermillExecutionError with the cause
                entry["status"] = "failed"
                entry["error"] = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        entry["seconds"] = round(time.perf_counter() - start, 1)
        if entry["status"] != "failed":
            entry["summary"] = json.loads(summary.read_text(encoding="utf-8"))
            _copy_tensorboard(entry["summary"], out / "tb", name, len(points) > 1)
        else:
            bar.write(f"point {name} failed: {entry['error']} (see {entry['notebook']})")
        report["points"].append(entry)
        bar.update(1)
    bar.close()
    report["ok"] = all(e["status"] != "failed" for e in report["points"])
    _write_tables(report, out, varying)
    write_text_atomic(out / "grid.json", json.dumps(
        {**report, "points": [{k: v for k, v in e.items() if k != "summary"}
                              for e in report["points"]]}, indent=1, default=str))
    return report


def _copy_tensorboard(summary: dict[str, Any], tb_root: Path, name: str, many: bool) -> None:
    """Copy a point's TensorBoard logs to ``tb_root/<recipe>-seed<n>`` (+ the point's name when
    recipe and seed do not tell the points apart)."""
    source = Path(summary.get("tensorboard", ""))
    if not source.is_dir():
        return
    label = f"{summary.get('recipe_name', 'run')}-seed{summary.get('seed', 0)}"
    target = tb_root / (f"{label}-{name}" if many and label not in name else label)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def results_rows(report: dict[str, Any], varying: list[str]) -> tuple[list[str], list[list[Any]]]:
    """The results table: one row per point, its varying parameters, status and results."""
    columns = ["point", *varying, "status", *RESULT_KEYS, "val_mel_loss", "val_text_loss",
               *GENERATION_KEYS, *(f"english_{k}" for k in ENGLISH_KEYS)]
    rows = []
    for e in report["points"]:
        s = e.get("summary") or {}
        gen = s.get("generation") or {}
        val = s.get("val") or {}
        rows.append([e["name"], *(e["parameters"].get(k) for k in varying), e["status"],
                     *(s.get(k) for k in RESULT_KEYS), val.get("mel_loss"), val.get("text_loss"),
                     *(gen.get(k) for k in GENERATION_KEYS),
                     *((s.get("english") or {}).get(k) for k in ENGLISH_KEYS)])
    return columns, rows


def _write_tables(report: dict[str, Any], out: Path, varying: list[str]) -> None:
    columns, rows = results_rows(report, varying)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_text_atomic(out / "results.csv", buffer.getvalue())
    write_text_atomic(out / "results.md", markdown_table(rows, columns) + "\n")


def metric(entry: dict[str, Any], path: str) -> float | None:
    """A result of a point by dotted path into its summary (``val.mel_loss``,
    ``generation.length_corr``, ``english.val_mel_loss``); None when it has none."""
    value: Any = entry.get("summary") or {}
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else None


def setting_of(parameters: dict[str, Any]) -> str:
    """A point's setting apart from its seed, as a key: ``SEED``, ``PROFILE`` and ``TARGET_LANG``
    left out, and parameters given as None too (None is notebook 05's default, the same as
    leaving the parameter out, e.g. ``TRAIN_PHRASES: null`` from a grid's product)."""
    kept = {k: v for k, v in parameters.items()
            if k not in ("SEED", "PROFILE", "TARGET_LANG") and v is not None}
    return json.dumps(kept, sort_keys=True, default=str)


def seed_spread(report: dict[str, Any], paths: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Points of the same setting (:func:`setting_of`) but their seed, as one row each: the
    settings, the number of seeds, and per result its mean and its range over seeds
    (``"4.12 (4.10-4.15)"``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in report["points"]:
        if e["status"] == "failed":
            continue
        groups.setdefault(setting_of(e["parameters"]), []).append(e)
    rows = []
    for key, entries in groups.items():
        settings = ", ".join(f"{k}={v}" for k, v in json.loads(key).items())
        cells = []
        for path in paths:
            values = [v for v in (metric(e, path) for e in entries) if v is not None]
            if not values:
                cells.append(None)
            elif len(values) == 1:
                cells.append(f"{values[0]:.3g}")
            else:
                cells.append(f"{sum(values) / len(values):.3g} ({min(values):.3g}-{max(values):.3g})")
        rows.append([settings, len(entries), *cells])
    return ["settings", "seeds", *paths], rows


def values_by(report: dict[str, Any], path: str, by: tuple[str, ...] = ("RECIPE", "TRAIN_PHRASES")
              ) -> dict[tuple[Any, ...], list[float]]:
    """A result (:func:`metric`) of the points that ran and set nothing but ``by`` and their
    seed (``PROFILE`` and ``TARGET_LANG`` aside), grouped by ``by``: one list over seeds per
    setting. Points that change another parameter (chapter 6's one-change points) are left out."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for e in report["points"]:
        other = {k for k, v in e["parameters"].items()
                 if v is not None and k not in (*by, "SEED", "PROFILE", "TARGET_LANG")}
        value = metric(e, path) if e["status"] != "failed" and not other else None
        if value is not None:
            groups.setdefault(tuple(e["parameters"].get(k) for k in by), []).append(value)
    return groups


def best_of(groups: dict[tuple[Any, ...], list[float]], regime: Any, higher: bool = False
            ) -> dict[str, Any] | None:
    """The best and the runner-up recipe of one data regime by their mean over seeds, from
    :func:`values_by` groups keyed ``(recipe, regime)``; ``higher``: a higher value is better.

    Returns ``best``, ``runner_up`` (recipe, mean, seed range and seed count each), ``gap``
    (between the two means) and ``clear``: the gap exceeds both seed ranges, so it is not seed
    noise (with one seed a range is 0 and nothing can be called noise). None with under two
    recipes."""
    ranked = sorted(((sum(v) / len(v), recipe, max(v) - min(v), len(v))
                     for (recipe, r), v in groups.items() if r == regime and v),
                    key=lambda t: -t[0] if higher else t[0])
    if len(ranked) < 2:
        return None
    (m1, r1, s1, n1), (m2, r2, s2, n2) = ranked[:2]
    return {"best": {"recipe": r1, "mean": m1, "range": s1, "seeds": n1},
            "runner_up": {"recipe": r2, "mean": m2, "range": s2, "seeds": n2},
            "gap": abs(m1 - m2), "clear": abs(m1 - m2) > max(s1, s2)}


def write_results_csv(report: dict[str, Any], parameters: list[str], paths: list[str],
                      out: Path) -> Path:
    """A compact results table to commit: one row per point that ran, its ``parameters`` and
    its results by dotted path (:func:`metric`), rounded to 4 decimals; written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["point", *parameters, *paths])
    for e in report["points"]:
        if e["status"] == "failed":
            continue
        values = [metric(e, path) for path in paths]
        writer.writerow([e["name"], *("" if e["parameters"].get(k) is None else e["parameters"][k]
                                      for k in parameters),
                         *("" if v is None else round(v, 4) for v in values)])
    write_text_atomic(out, buffer.getvalue())
    return Path(out)


def read_results_csv(path: Path) -> dict[str, Any]:
    """A table :func:`write_results_csv` wrote, as a report :func:`seed_spread` and
    :func:`metric` read: ``{"points": [{"name", "parameters", "status", "summary"}]}``.

    Upper-case columns are notebook parameters (``RECIPE``), the others results, by dotted
    path (``val.mel_loss``); a blank cell is None; numbers are parsed (integers stay integers).
    """
    def parse(text: str) -> Any:
        if text == "":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    points = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            summary: dict[str, Any] = {}
            parameters = {}
            for key, text in row.items():
                if key == "point":
                    continue
                if key.isupper():
                    parameters[key] = parse(text)
                elif "." in key:
                    head, tail = key.split(".", 1)
                    summary.setdefault(head, {})[tail] = parse(text)
                else:
                    summary[key] = parse(text)
            points.append({"name": row["point"], "parameters": parameters, "status": "done",
                           "summary": summary})
    return {"points": points}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers runs --grid GRID.yaml --out DIR [--notebook NB] [--table CSV]``."""
    parser.add_argument("--grid", required=True, help="the grid file (YAML; see the module's help)")
    parser.add_argument("--out", required=True,
                        help="folder for the points' notebooks and summaries, tb/ and the "
                             "results table; run again to continue a grid killed part-way")
    parser.add_argument("--notebook", default=str(NOTEBOOK),
                        help="the notebook to run per point (default: the course's 05_train.ipynb)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar")
    parser.add_argument("--table", default=None,
                        help="also write a compact results table to commit (CSV: each point's "
                             "varying parameters and results, as docs/results/ holds them); "
                             "refused if the file exists")
    parser.epilog = ("A point whose summary.json exists in --out is skipped; a failed point is "
                     "reported and the others go on (exit status 1 when any failed).")


def run(args: argparse.Namespace) -> int:
    """Run the grid; exit status 0 when every point ran (or was there already)."""
    grid = Path(args.grid)
    if not grid.is_file():
        raise ValueError(f"--grid {grid} does not exist")
    table = None if args.table is None else check_output_file(args.table, "--table")
    if table is not None and table.exists():
        raise ValueError(f"--table {table} exists; choose another path or delete it first")
    report = run_grid(grid, Path(args.out), Path(args.notebook), progress=args.progress)
    if table is not None:
        write_results_csv(report, _varying([e["parameters"] for e in report["points"]]),
                          list(TABLE_PATHS), table)
        print(f"runs: table of {sum(e['status'] != 'failed' for e in report['points'])} points "
              f"in {table}")
    counts = {s: sum(e["status"] == s for e in report["points"]) for s in ("done", "skipped", "failed")}
    print(f"runs: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"results in {Path(args.out) / 'results.md'}; TensorBoard: tensorboard --logdir "
          f"{Path(args.out) / 'tb'}")
    return 0 if report["ok"] else 1
