"""Run the course notebooks in order with papermill: ``python -m amhelpers course``.

Everything is checked before anything is written: the profile, the ``--only`` prefixes, and the
``--out`` folder (writable, not the notebooks folder, not holding another run unless
``--overwrite``). The profile reaches each notebook as its ``PROFILE`` parameter (papermill
injects it after the cell tagged ``parameters``); ``$AMHELPERS_PROFILE`` is only the default of
``--profile`` and of a notebook run by hand. After the run the executed notebooks are rendered
as web pages with an index, ``<out>/html/index.html`` (``amhelpers.site``), unless ``--no-html``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from . import settings, site
from .io import check_output_dir, same_file, write_text_atomic
from .markdown import markdown_table
from .runs import execute_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
REPORTS = ("report.json", "report.md")


def notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """Return the course notebooks (``NN_topic.ipynb``, ``NNa_topic.ipynb``) in order."""
    found = sorted(p for p in Path(folder).glob("*.ipynb") if site.PAGE_NAME.match(p.name))
    if not found:
        raise FileNotFoundError(f"no course notebooks (NN_topic.ipynb) in {folder}; "
                                "give the course's notebooks/ folder")
    return found


def select(folder: Path, only: list[str] | None) -> list[Path]:
    """The notebooks of ``folder`` whose names start with one of ``only`` (all when None).

    Raises:
        ValueError: a prefix matches no notebook (the message lists the notebooks).
    """
    found = notebooks(folder)
    if not only:
        return found
    unmatched = [prefix for prefix in only if not any(nb.name.startswith(prefix) for nb in found)]
    if unmatched:
        raise ValueError(f"--only {' '.join(unmatched)} matches no notebook in {folder}; "
                         f"the notebooks are: {', '.join(nb.name for nb in found)}")
    return [nb for nb in found if any(nb.name.startswith(prefix) for prefix in only)]


def previous_run(out: Path, selected: list[Path]) -> list[Path]:
    """Files in ``out`` that a run of ``selected`` would replace, and the notebooks a previous
    run there wrote (listed in its ``report.json``)."""
    names = set(REPORTS) | {nb.name for nb in selected}
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        old = json.loads((out / "report.json").read_text(encoding="utf-8"))
        names |= {Path(e["notebook"]).name for e in old["notebooks"]
                  if site.PAGE_NAME.match(Path(e["notebook"]).name)}
    return sorted([p for p in (out / name for name in names) if p.is_file()]
                  + site.previous_site(out / "html"))


def run_course(profile: str | None, out: Path, only: list[str] | None = None,
               folder: Path | None = None, overwrite: bool = False, html: bool = True) -> dict:
    """Execute the notebooks with papermill into ``out``; write ``out/report.json`` and ``.md``.

    Each notebook gets the papermill parameter ``PROFILE=profile``; the environment is left as
    it is.

    Args:
        profile: ``quick`` (smoke run) or ``full``; None: ``$AMHELPERS_PROFILE``, else full.
        out: folder for executed notebooks and the report.
        only: notebook name prefixes to run (e.g. ``["01"]``); all when None.
        folder: the notebooks folder (default: this checkout's ``notebooks/``).
        overwrite: replace a previous run in ``out`` (its report and executed notebooks are
            deleted first); without it such a folder is refused.
        html: render the executed notebooks and an index into ``out/html/`` (the report links
            it; a rendering error is recorded in the report as ``html_error``).

    Returns:
        The report: per notebook, status and seconds.

    Raises:
        ValueError: bad profile, an ``--only`` prefix matching nothing, ``out`` a file, under a
            file, the notebooks folder, or holding another run without ``overwrite``.
        PermissionError: ``out`` cannot be written.
    """
    profile = settings.profile_name() if profile is None else profile
    if profile not in settings.PROFILES:
        raise ValueError(f"--profile must be quick or full, got {profile!r}")
    folder = Path(folder) if folder is not None else NOTEBOOKS
    selected = select(folder, only)
    out = check_output_dir(out, "--out")
    if html:  # checked before the run, not after an hour of notebooks
        check_output_dir(out / "html", "--out's html folder")
    if same_file(out, folder):
        raise ValueError(f"--out {out} is the notebooks folder; the executed notebooks would "
                         "replace the course's own: choose another --out (e.g. course_run)")
    old = previous_run(out, selected) if out.is_dir() else []
    if old and not overwrite:
        names = ", ".join(p.relative_to(out).as_posix() for p in old)
        raise ValueError(f"--out {out} holds another course run ({names}); "
                         "pass --overwrite to replace it, or choose another --out")
    try:
        import papermill  # noqa: F401  (runs.execute_notebook uses it)
    except ImportError:
        raise RuntimeError("papermill is not installed: run `python -m amhelpers.setup` "
                           "(it installs the dev extra)") from None

    out.mkdir(parents=True, exist_ok=True)
    for path in old:  # --overwrite: the previous run goes as a whole, so no stale notebook stays
        path.unlink()
    report: dict = {"profile": profile, "notebooks": []}
    for nb in selected:
        start = time.perf_counter()
        status, error = "ok", None
        try:
            execute_notebook(nb, out / nb.name, {"PROFILE": profile})
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's error
            status, error = "failed", (str(err).strip().splitlines() or [type(err).__name__])[-1]
        entry = {"notebook": nb.name, "status": status, "seconds": round(time.perf_counter() - start, 1)}
        if error:
            entry["error"] = error
        report["notebooks"].append(entry)
        print(json.dumps(entry), flush=True)
        if status != "ok":
            break
    report["ok"] = all(e["status"] == "ok" for e in report["notebooks"])
    if html:  # the old pages went with the old run above, so nothing of another run is replaced
        try:
            index = site.render_site(out, overwrite=True, report=report)
            report["html"] = index.relative_to(out).as_posix()
        except (OSError, ValueError, RuntimeError) as err:
            report["html_error"] = str(err)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))
    table = markdown_table([(e["notebook"], e["status"], e["seconds"]) for e in report["notebooks"]],
                           ["notebook", "status", "seconds"], fmt="{:.1f}")
    lines = [f"# Course run ({profile})", "", table]
    if "html" in report:
        lines += ["", f"The executed notebooks as web pages: [{report['html']}]({report['html']})"]
    elif "html_error" in report:
        lines += ["", f"HTML not rendered: {report['html_error']}"]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m amhelpers course [--profile quick|full] [--out DIR] [--only NN ...]``."""
    parser.add_argument("--profile", choices=settings.PROFILES, default=None,
                        help="quick (smoke run, CI) or full (the course as taught); "
                             "default: $AMHELPERS_PROFILE, else full")
    parser.add_argument("--out", default="course_run",
                        help="folder for the executed notebooks and report.md (default: course_run)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NN",
                        help="run only the notebooks whose names start with these prefixes, "
                             "e.g. 01 02; a prefix matching no notebook is an error")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace another course run in --out (its report and executed "
                             "notebooks are deleted first)")
    parser.add_argument("--no-html", dest="html", action="store_false",
                        help="do not render the executed notebooks and an index to <out>/html/")
    parser.add_argument("--notebooks", default=None, metavar="DIR",
                        help="the course's notebooks folder (default: notebooks/ of this checkout)")
    parser.epilog = ("--out holding another course run (a report.json/report.md, a notebook "
                     "this run would write, or pages in its html/ folder) is refused unless "
                     "--overwrite; --out is never the "
                     "notebooks folder. Nothing is written before these checks pass.")


def run(args: argparse.Namespace) -> int:
    """Run the course; exit status 0 when every notebook ran."""
    profile = args.profile or settings.profile_name()  # an explicit flag wins over the variable
    report = run_course(profile, Path(args.out), args.only,
                        folder=Path(args.notebooks) if args.notebooks else None,
                        overwrite=args.overwrite, **({} if args.html else {"html": False}))
    print(f"course {'ok' if report['ok'] else 'FAILED'}: report in {Path(args.out) / 'report.md'}")
    if report.get("html"):
        print(f"web pages: {Path(args.out) / report['html']}")
    elif report.get("html_error"):
        print(f"HTML not rendered: {report['html_error']}")
    return 0 if report["ok"] else 1
