"""The course as a web page: executed notebooks rendered to HTML with an index (``<run>/html/``).

``render_site(run_dir)`` reads the course report (``report.json``) and the executed notebooks
beside it. Each notebook becomes a page (nbconvert's HTMLExporter, images embedded, audio players
kept, each with a visible label); ``index.html`` lists the chapters (status, runtime, first
heading), and per chapter its results at a glance (the "Results at a glance" / "What to take
away" cell, the values the notebook printed as ``summary.json``), its first figure and first
audio player. A chapter that cannot be read is listed with the reason; it never stops the site.
"""

from __future__ import annotations

import base64
import html
import json
import re
import warnings
from pathlib import Path
from typing import Any

from .io import check_output_dir, read_text_strict, write_text_atomic

TAKEAWAY = re.compile(r"^#+\s*(results at a glance|what to take away)\b", re.I)
# A course notebook: NN_topic.ipynb, or NNx_topic.ipynb for a chapter in parts (04a, 04b, 06b)
CHAPTER_STEM = r"[0-9][0-9][a-z]?_[^/\\]*"
PAGE_NAME = re.compile(rf"^{CHAPTER_STEM}\.ipynb$")
SUMMARY_ROWS = 40  # values of a summary shown on the index; the rest are counted
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}td:nth-child(3){white-space:nowrap}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.ok{color:#17692b;font-weight:bold}.failed,.missing,.unreadable{color:#b00020;font-weight:bold}
section{border-top:1px solid #ddd;margin-top:1.5em;padding-top:.5em}
.glance{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.glance img{max-width:420px;border:1px solid #ddd}.takeaway{flex:1;min-width:300px}
"""
AUDIO_CSS = "figure.amh-audio{margin:.4em 0}figure.amh-audio figcaption{font-weight:600}"


def _text(value: Any) -> str:
    """A notebook field (str or list of str) as one string."""
    return "".join(value) if isinstance(value, list) else str(value or "")


def first_heading(nb: Any) -> str:
    """The notebook's first markdown heading, without its ``#`` marks ('' when none)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in _text(cell.source).splitlines():
                if line.lstrip().startswith("#"):
                    return line.strip().lstrip("#").strip()
    return ""


def takeaway(nb: Any) -> str:
    """Markdown of the cell headed "Results at a glance" or "What to take away", heading removed."""
    for cell in nb.cells:
        lines = _text(cell.source).strip().splitlines()
        if cell.cell_type == "markdown" and lines and TAKEAWAY.match(lines[0].strip()):
            return "\n".join(lines[1:]).strip()
    return ""


def printed_summary(nb: Any) -> dict | None:
    """The JSON object printed by the cell that writes ``summary.json`` (None when none is)."""
    for cell in nb.cells:
        if cell.cell_type != "code" or "summary.json" not in _text(cell.source):
            continue
        text = "".join(_text(o.get("text")) for o in cell.get("outputs", [])
                       if o.get("output_type") == "stream")
        try:  # the first JSON object printed; lines after it (e.g. "written: ...") are ignored
            value, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as ``(dotted.key, short value)`` rows; floats to 4 significant digits."""
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in flatten(v, f"{prefix}{k}.")]
    if isinstance(value, float):
        return [(prefix[:-1], f"{value:.4g}")]
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list) else str(value)
    return [(prefix[:-1], text if len(text) <= 80 else text[:77] + "...")]


def label_audio(nb: Any) -> list[tuple[str, str]]:
    """Give every audio player of ``nb`` a visible label; return ``(label, player html)`` in order.

    The label is the output's ``metadata["label"]`` (``display(Audio(...), metadata={"label":
    "..."})``), else the last line the cell printed before the player, else the heading of the
    markdown above; players sharing a label are numbered ``k/n``. The label goes into the output's
    HTML as a ``<figcaption>``, so the exported page shows it above the player.
    """
    players: list[tuple[str, str]] = []
    context = ""
    for cell in nb.cells:
        source = _text(cell.source).strip()
        if cell.cell_type == "markdown" and source:
            context = source.splitlines()[0].lstrip("#").strip()
        if cell.cell_type != "code":
            continue
        found, printed = [], ""
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if out.get("output_type") == "stream" and _text(out.get("text")).strip():
                printed = _text(out.get("text")).strip().splitlines()[-1].strip()
            elif "<audio" in _text(data.get("text/html")):
                given = out.get("metadata", {}).get("label")
                found.append((out, str(given) if given else printed or context or "audio"))
        for out, label in found:
            same = [o for o, other in found if other == label]
            if len(same) > 1:
                label = f"{label} ({same.index(out) + 1}/{len(same)})"
            player = _text(out["data"]["text/html"])
            out["data"]["text/html"] = (f'<figure class="amh-audio"><figcaption>'
                                        f"{html.escape(label)}</figcaption>{player}</figure>")
            players.append((label, player))
    return players


def first_figure(nb: Any) -> str:
    """A ``data:`` URI of the first PNG, JPEG or SVG output ('' when the notebook has none)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for mime in ("image/png", "image/jpeg"):
                if mime in data:
                    return f"data:{mime};base64,{_text(data[mime]).strip()}"
            if "image/svg+xml" in data:
                svg = base64.b64encode(_text(data["image/svg+xml"]).encode()).decode()
                return f"data:image/svg+xml;base64,{svg}"
    return ""


def duration(seconds: Any) -> str:
    """``11.9 s`` or ``4 min 25 s`` ('?' when unknown)."""
    if not isinstance(seconds, (int, float)):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{round(seconds) // 60} min {round(seconds) % 60} s"


def chapter_page(nb: Any, entry: dict) -> str:
    """One notebook as a full HTML page (labelled audio, embedded images, a link to the index)."""
    from nbconvert import HTMLExporter  # imported when used: `course --no-html` does not need it

    with warnings.catch_warnings():
        # 05 records its summary as an application/json output (for scripts and `runs`); HTML has
        # no view of that type, so the page leaves it out, and nbconvert would warn at each page.
        warnings.filterwarnings("ignore", "Your element with mimetype", UserWarning)
        body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)
    status = html.escape(str(entry.get("status", "?")))
    nav = (f'<nav style="padding:.6em 1em;border-bottom:1px solid #ccc"><a href="index.html">'
           f"&larr; Course index</a> &middot; {html.escape(entry['notebook'])} &middot; "
           f'<span class="{status}">{status}</span> in {duration(entry.get("seconds"))}</nav>')
    body = body.replace("</head>", f"<style>{AUDIO_CSS}</style></head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)


def chapter(run_dir: Path, entry: dict) -> tuple[dict, str | None]:
    """Read one report entry's notebook: its index facts, and its page (None when unreadable)."""
    import nbformat
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    name = str(entry.get("notebook", ""))
    facts = {"name": name, "page": Path(name).stem + ".html", "status": entry.get("status", "?"),
             "seconds": entry.get("seconds"), "error": entry.get("error", ""), "title": "",
             "takeaway": "", "summary": None, "figure": "", "audio": []}
    path = run_dir / Path(name).name
    if not PAGE_NAME.match(Path(name).name):
        facts.update(status="unreadable", page="",
                     error=f"{name!r} is not a course notebook (NN_topic.ipynb, NNx_topic.ipynb)")
        return facts, None
    if not path.is_file():
        facts.update(status="missing" if facts["status"] == "ok" else facts["status"], page="",
                     error="; ".join(filter(None, [facts["error"], f"{path.name} does not exist"])))
        return facts, None
    try:
        nb = nbformat.read(str(path), as_version=4)
        text = takeaway(nb)
        facts.update(title=first_heading(nb), summary=printed_summary(nb), figure=first_figure(nb),
                     takeaway=markdown2html_mistune(text) if text else "", audio=label_audio(nb))
        return facts, chapter_page(nb, entry)
    except Exception as err:  # any unreadable notebook: listed with the reason, the site goes on
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        facts.update(status="unreadable", page="",
                     error="; ".join(filter(None, [facts["error"], f"{path.name}: {reason}"])))
        return facts, None


def glance(c: dict) -> str:
    """One chapter's section of the index: first figure, takeaways, first audio, printed values."""
    esc, page = html.escape, html.escape(c["page"])
    alt = f"first figure of {esc(c['name'])}"
    parts = [f'<a href="{page}"><img src="{c["figure"]}" alt="{alt}"></a>'] if c["figure"] else []
    text = c["takeaway"]
    if c["audio"]:
        label, player = c["audio"][0]
        text += (f'<figure class="amh-audio"><figcaption>{esc(label)}</figcaption>{player}</figure>'
                 f'<p><a href="{page}">all {len(c["audio"])} audio players in the chapter</a></p>')
    if c["summary"]:
        flat = flatten(c["summary"])
        table = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>"
                        for k, v in flat[:SUMMARY_ROWS])
        if len(flat) > SUMMARY_ROWS:
            table += f"<tr><td colspan=2>{len(flat) - SUMMARY_ROWS} more in the chapter</td></tr>"
        text += (f"<details><summary>Values printed where the notebook writes summary.json "
                 f"({len(flat)})</summary><table>{table}</table></details>")
    parts.append(f'<div class="takeaway">{text or "<p>(no results-at-a-glance cell)</p>"}</div>')
    return (f'<section id="{esc(Path(c["name"]).stem)}"><h2><a href="{page}">'
            f'{esc(c["title"] or c["name"])}</a></h2><div class="glance">{"".join(parts)}</div>'
            "</section>")


def index_page(report: dict, chapters: list[dict]) -> str:
    """The index: a table of chapters (status, runtime, heading), then each chapter's glance."""
    esc = html.escape
    rows = []
    for c in chapters:
        link = f'<a href="{esc(c["page"])}">{esc(c["name"])}</a>' if c["page"] else esc(c["name"])
        note = f'<br><small>{esc(c["error"])}</small>' if c["error"] else ""
        rows.append(f'<tr><td>{link}</td><td class="{esc(c["status"])}">{esc(c["status"])}</td>'
                    f'<td>{duration(c["seconds"])}</td><td>{esc(c["title"])}{note}</td></tr>')
    total = sum(c["seconds"] for c in chapters if isinstance(c["seconds"], (int, float)))
    profile = esc(str(report.get("profile", "?")))
    state = "ok" if report.get("ok") else "failed"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Course run ({profile})</title><style>{CSS}{AUDIO_CSS}</style></head><body>"
            f'<h1>Course run ({profile} profile)</h1>'
            f'<p>Status <span class="{state}">{state}</span>, '
            f"{len(chapters)} notebooks, {duration(total)} in all. Each chapter links to its "
            "executed notebook.</p><table><tr><th>notebook</th><th>status</th><th>runtime</th>"
            f'<th>chapter</th></tr>{"".join(rows)}</table><h2>Results at a glance</h2>'
            f'{"".join(glance(c) for c in chapters if c["page"])}</body></html>')


def read_report(run_dir: Path) -> dict:
    """The course report ``run_dir/report.json``.

    Raises:
        FileNotFoundError: there is none. ValueError: it is not a course report.
    """
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no course report {path}: run `python -m amhelpers course --out "
                                f"{run_dir}` first, or give the folder of a course run")
    try:
        report = json.loads(read_text_strict(path, "course report"))
    except json.JSONDecodeError as err:
        raise ValueError(f"course report {path} is not JSON (line {err.lineno}: {err.msg}); "
                         "run the course again with --overwrite") from None
    if not isinstance(report, dict) or not isinstance(report.get("notebooks"), list) or not all(
            isinstance(e, dict) and "notebook" in e for e in report["notebooks"]):
        raise ValueError(f"course report {path} has no list of notebooks "
                         "({'notebooks': [{'notebook': ...}]}); "
                         "run the course again with --overwrite")
    return report


def previous_site(html_dir: Path) -> list[Path]:
    """Pages a rendering into ``html_dir`` would replace: ``index.html`` and the chapters'."""
    if not Path(html_dir).is_dir():
        return []
    return sorted(p for p in Path(html_dir).glob("*.html")
                  if p.is_file() and (p.name == "index.html"
                                      or re.match(rf"^{CHAPTER_STEM}\.html$", p.name)))


def render_site(run_dir: Path, html_dir: Path | None = None, overwrite: bool = False,
                report: dict | None = None) -> Path:
    """Render a course run's executed notebooks and an index into ``html_dir``.

    Args:
        run_dir: the course's ``--out`` folder (``report.json`` and executed notebooks).
        html_dir: where the pages go (default ``run_dir/html``).
        overwrite: replace the pages of an earlier rendering there (its stale pages are deleted).
        report: the course report (default: read from ``run_dir/report.json``).

    Returns:
        The path of ``index.html``.

    Raises:
        FileNotFoundError, ValueError: no report or a malformed one; ``html_dir`` a file, or
            holding another rendering without ``overwrite``.
        PermissionError: ``html_dir`` cannot be written.
        RuntimeError: nbconvert is not installed.
    """
    try:
        import nbconvert  # noqa: F401  (a dependency of jupyterlab)
    except ImportError:
        raise RuntimeError("nbconvert is not installed: run `python -m amhelpers.setup` "
                           "(it installs JupyterLab), or pass --no-html") from None
    run_dir = Path(run_dir)
    report = read_report(run_dir) if report is None else report
    html_dir = check_output_dir(run_dir / "html" if html_dir is None else html_dir, "html folder")
    old = previous_site(html_dir)
    if old and not overwrite:
        raise ValueError(f"html folder {html_dir} holds another rendered course "
                         f"({', '.join(p.name for p in old)}); pass --overwrite to replace it, "
                         "or choose another folder")
    html_dir.mkdir(parents=True, exist_ok=True)
    chapters = []
    for entry in report["notebooks"]:
        facts, page = chapter(run_dir, entry)
        if page is not None:
            write_text_atomic(html_dir / facts["page"], page)
        chapters.append(facts)
    written = {c["page"] for c in chapters if c["page"]} | {"index.html"}
    for stale in old:
        if stale.name not in written:
            stale.unlink()
    write_text_atomic(html_dir / "index.html", index_page(report, chapters))
    return html_dir / "index.html"
