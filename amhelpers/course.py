"""Run the course notebooks in order with papermill: ``python -m amhelpers course``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .io import write_text_atomic

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """Return the course notebooks (``NN_topic.ipynb``) in order."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no course notebooks (NN_topic.ipynb) in {folder}")
    return found


def run_course(profile: str, out: Path, only: list[str] | None = None) -> dict:
    """Execute every notebook with papermill into ``out``; write ``out/report.json`` and ``.md``.

    Args:
        profile: ``quick`` (smoke run) or ``full``.
        out: folder for executed notebooks and the report.
        only: notebook name prefixes to run (e.g. ``["01"]``); all when None.

    Returns:
        The report: per notebook, status and seconds.
    """
    import papermill

    if profile not in ("quick", "full"):
        raise ValueError(f"--profile must be quick or full, got {profile!r}")
    os.environ["AMHELPERS_PROFILE"] = profile
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"profile": profile, "notebooks": []}
    for nb in notebooks():
        if only and not any(nb.name.startswith(prefix) for prefix in only):
            continue
        start = time.perf_counter()
        status, error = "ok", None
        try:
            papermill.execute_notebook(str(nb), str(out / nb.name), kernel_name="python3",
                                       cwd=str(nb.parent), progress_bar=False)
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's error
            status, error = "failed", str(err).strip().splitlines()[-1]
        entry = {"notebook": nb.name, "status": status, "seconds": round(time.perf_counter() - start, 1)}
        if error:
            entry["error"] = error
        report["notebooks"].append(entry)
        print(json.dumps(entry), flush=True)
        if status != "ok":
            break
    report["ok"] = all(e["status"] == "ok" for e in report["notebooks"])
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))
    lines = [f"# Course run ({profile})", "", "| notebook | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {e['notebook']} | {e['status']} | {e['seconds']} |" for e in report["notebooks"]]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers course --profile quick|full --out DIR``."""
    parser.add_argument("--profile", choices=["quick", "full"], default="full")
    parser.add_argument("--out", default="course_run", help="folder for executed notebooks and report")
    parser.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 01 02")


def run(args: argparse.Namespace) -> int:
    """Run the course; exit status 0 when every notebook ran."""
    report = run_course(args.profile, Path(args.out), args.only)
    print(f"course {'ok' if report['ok'] else 'FAILED'}: report in {Path(args.out) / 'report.md'}")
    return 0 if report["ok"] else 1
