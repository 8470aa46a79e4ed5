"""The course as a web page (``amhelpers.site``): a tiny executed notebook rendered, read back,
and opened in headless Chromium (Debian's ``chromium``; the browser test skips without it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import numpy as np
import pytest

from amhelpers import site
from amhelpers.__main__ import main

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND"]  # offline: the CDN scripts fail at once
TONE = "import numpy as np\ntone = np.sin(np.arange(4000) * 2 * np.pi * 440 / 8000)\n"


def _tiny_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb.cells = [
        md("# Tiny chapter · a figure and two sounds\n\nIntro."),
        code("PROFILE = None", metadata={"tags": ["parameters"]}),
        code("%matplotlib inline\nimport json\nimport matplotlib.pyplot as plt\n"
             "from IPython.display import Audio, display\n" + TONE),
        md("## Look"),
        code("fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([0, 1, 4, 9], lw=6)\nplt.show()"),
        md("## Listen"),
        code('display(Audio(tone, rate=8000), metadata={"label": "a 440 Hz tone"})'),
        code('print("the same tone, unlabelled")\ndisplay(Audio(tone, rate=8000))'),
        code('summary = {"loss": 0.123456, "runs": {"fix": {"ok": True}}}\n'
             'print(json.dumps(summary, indent=1))\nprint("written: summary.json")'),
        md("## Results at a glance\n\n- the tone is **440 Hz**"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    """An executed tiny notebook (nbclient, a few seconds)."""
    from nbclient import NotebookClient

    nb = _tiny_notebook()
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    path = tmp_path_factory.mktemp("executed") / "01_tiny.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def run_dir(executed, tmp_path) -> Path:
    """A course run: the executed notebook, a missing one, and their report."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(executed, run / "01_tiny.ipynb")
    report = {"profile": "quick", "ok": False, "notebooks": [
        {"notebook": "01_tiny.ipynb", "status": "ok", "seconds": 3.2},
        {"notebook": "02_gone.ipynb", "status": "failed", "seconds": 75.4, "error": "boom"}]}
    (run / "report.json").write_text(json.dumps(report))
    return run


class Page(HTMLParser):
    """Links, images, audio sources and captions of an HTML page, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.imgs, self.audio, self.captions, self.text = [], [], [], [], []
        self._caption = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "img":
            self.imgs.append(attrs.get("src", ""))
        elif tag == "audio":
            self.audio.append("")
        elif tag == "source" and self.audio:
            self.audio[-1] = attrs.get("src", "")
        self._caption = tag == "figcaption"

    def handle_data(self, data):
        if self._caption and data.strip():
            self.captions.append(data.strip())
        self.text.append(data)

    def handle_endtag(self, tag):
        self._caption = False


def _read(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def test_index_lists_chapters_runtime_glance_figure_and_audio(run_dir):
    index = site.render_site(run_dir)
    assert index == run_dir / "html" / "index.html"
    page = _read(index)
    text = " ".join(" ".join(page.text).split())
    assert "01_tiny.html" in page.links and "02_gone.html" not in page.links
    assert "Tiny chapter · a figure and two sounds" in text and "3.2 s" in text
    assert "1 min 15 s" in text and "failed" in text and "boom; 02_gone.ipynb does not exist" in text
    assert "the tone is 440 Hz" in text  # the "Results at a glance" cell
    assert "runs.fix.ok" in text and "0.1235" in text  # the printed summary, flattened
    assert len(page.imgs) == 1 and page.imgs[0].startswith("data:image/png;base64,")
    assert page.audio == [page.audio[0]] and page.audio[0].startswith("data:audio/wav;base64,")
    assert page.captions == ["a 440 Hz tone"]


def test_chapter_page_keeps_figures_and_labels_every_audio_player(run_dir):
    site.render_site(run_dir)
    page = _read(run_dir / "html" / "01_tiny.html")
    assert "index.html" in page.links
    assert [src[:22] for src in page.imgs] == ["data:image/png;base64,"]
    assert len(page.audio) == 2 and all(s.startswith("data:audio/wav;base64,") for s in page.audio)
    assert page.captions == ["a 440 Hz tone", "the same tone, unlabelled"]


def test_a_json_output_is_left_off_the_page_without_a_warning(recwarn):
    # notebook 05 displays its summary as application/json; HTML has no view of it
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("display(summary)", outputs=[nbformat.v4.new_output(
        "display_data", data={"application/json": {"loss": 0.123987}})])]
    page = site.chapter_page(nb, {"notebook": "05_x.ipynb", "status": "ok", "seconds": 1})
    assert "</html>" in page and "0.123987" not in page
    assert [str(w.message) for w in recwarn] == []


def test_audio_labels_fall_back_to_printed_text_then_the_heading():
    player = {"output_type": "display_data", "metadata": {},
              "data": {"text/html": "<audio controls><source src='data:audio/wav;base64,AA'></audio>"}}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## 4. Listen: reference and model"),
                nbformat.v4.new_code_cell("", outputs=[nbformat.from_dict(player)]),
                nbformat.v4.new_code_cell("", outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="first line\nSelam\n"),
                    nbformat.from_dict(player), nbformat.from_dict(player)])]
    labels = [label for label, _ in site.label_audio(nb)]
    assert labels == ["4. Listen: reference and model", "Selam (1/2)", "Selam (2/2)"]
    assert "<figcaption>Selam (2/2)</figcaption>" in nb.cells[2].outputs[2]["data"]["text/html"]


@pytest.mark.skipif(CHROMIUM is None, reason="install Debian's chromium (apt-get install chromium)")
def test_index_and_chapter_in_headless_chromium(run_dir, tmp_path):
    """The pages as a browser builds them: DOM dumps, and a screenshot showing the figure."""
    from PIL import Image

    index = site.render_site(run_dir)

    def chromium(*args: str) -> str:
        done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    home = Page(chromium("--dump-dom", index.as_uri()))
    assert "01_tiny.html" in home.links and home.captions == ["a 440 Hz tone"]
    assert len(home.imgs) == 1 and len(home.audio) == 1
    chapter = Page(chromium("--dump-dom", (index.parent / "01_tiny.html").as_uri()))
    assert len(chapter.imgs) == 1 and len(chapter.audio) == 2 and len(chapter.captions) == 2

    shot = tmp_path / "index.png"
    chromium("--hide-scrollbars", "--window-size=1200,1000", f"--screenshot={shot}", index.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = int((np.abs(pixels - [31, 119, 180]).max(axis=-1) < 30).sum())
    assert blue > 200, "the figure's line (matplotlib's first colour) is not on the screenshot"


def test_bad_reports_and_folders(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no course report .*run `python -m amhelpers course"):
        site.render_site(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        site.render_site(bad)
    (bad / "report.json").write_text('{"notebooks": 3}')
    with pytest.raises(ValueError, match="has no list of notebooks"):
        site.render_site(bad)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        site.render_site(run_dir, tmp_path / "afile")


def test_another_rendering_is_replaced_only_with_overwrite(run_dir):
    html = run_dir / "html"
    site.render_site(run_dir)
    (html / "03_old.html").write_text("a page of an earlier run")
    before = {p.name: p.read_bytes() for p in html.iterdir()}
    with pytest.raises(ValueError, match="holds another rendered course .*pass --overwrite"):
        site.render_site(run_dir)
    assert {p.name: p.read_bytes() for p in html.iterdir()} == before
    site.render_site(run_dir, overwrite=True)
    assert sorted(p.name for p in html.iterdir()) == ["01_tiny.html", "index.html"]


def test_a_chapter_in_parts_gets_its_page_and_counts_as_a_page_to_replace(run_dir):
    # 04a, 04b and 06b: a letter after the chapter number is still a course notebook
    (run_dir / "01_tiny.ipynb").rename(run_dir / "06b_tiny.ipynb")
    report = json.loads((run_dir / "report.json").read_text())
    report["notebooks"][0]["notebook"] = "06b_tiny.ipynb"
    (run_dir / "report.json").write_text(json.dumps(report))
    index = site.render_site(run_dir)
    assert "06b_tiny.html" in _read(index).links
    assert "not a course notebook" not in " ".join(_read(index).text)
    assert [p.name for p in site.previous_site(run_dir / "html")] == ["06b_tiny.html", "index.html"]


def test_unreadable_notebooks_are_listed_not_fatal(run_dir):
    (run_dir / "01_tiny.ipynb").write_text("{}")
    report = json.loads((run_dir / "report.json").read_text())
    report["notebooks"].append({"notebook": "../escape.ipynb", "status": "ok", "seconds": 1})
    (run_dir / "report.json").write_text(json.dumps(report))
    text = " ".join(_read(site.render_site(run_dir)).text)
    assert "unreadable" in text and "01_tiny.ipynb:" in text
    assert "'../escape.ipynb' is not a course notebook" in text
    assert sorted(p.name for p in (run_dir / "html").iterdir()) == ["index.html"]


def test_course_writes_the_site_and_no_html_skips_it(executed, tmp_path, monkeypatch, capsys):
    """``course`` with a fake papermill that copies the executed notebook (no kernel needed)."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("01_tiny.ipynb", "02_more.ipynb"):
        nbformat.write(_tiny_notebook(), notebooks / name)
    fake = types.SimpleNamespace(execute_notebook=lambda src, dst, **kw: shutil.copy(executed, dst))
    monkeypatch.setitem(sys.modules, "papermill", fake)

    def course(out: Path, *extra: str) -> int:
        return main(["course", "--notebooks", str(notebooks), "--out", str(out),
                     "--profile", "quick", *extra])

    out = tmp_path / "run"
    assert course(out) == 0
    assert json.loads((out / "report.json").read_text())["html"] == "html/index.html"
    assert "[html/index.html](html/index.html)" in (out / "report.md").read_text()
    assert {"01_tiny.html", "02_more.html"} <= set(_read(out / "html" / "index.html").links)
    assert f"web pages: {out / 'html' / 'index.html'}" in capsys.readouterr().out

    # the pages belong to the run: a second run is refused, --overwrite removes stale pages
    (out / "01_tiny.ipynb").unlink()
    (out / "02_more.ipynb").unlink()
    assert course(out, "--only", "01") == 2
    err = capsys.readouterr().err
    assert "holds another course run" in err and "html/index.html" in err
    assert course(out, "--only", "01", "--overwrite") == 0
    assert sorted(p.name for p in (out / "html").iterdir()) == ["01_tiny.html", "index.html"]

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "html").write_text("a file where the pages would go")
    assert course(blocked) == 2  # refused before any notebook runs
    assert "--out's html folder" in capsys.readouterr().err
    assert sorted(blocked.iterdir()) == [blocked / "html"]

    assert course(tmp_path / "plain", "--no-html") == 0
    assert not (tmp_path / "plain" / "html").exists()
    assert "html" not in json.loads((tmp_path / "plain" / "report.json").read_text())


def test_course_without_nbconvert_still_writes_its_report(executed, tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(_tiny_notebook(), notebooks / "01_tiny.ipynb")
    fake = types.SimpleNamespace(execute_notebook=lambda src, dst, **kw: shutil.copy(executed, dst))
    monkeypatch.setitem(sys.modules, "papermill", fake)
    monkeypatch.setitem(sys.modules, "nbconvert", None)  # `import nbconvert` raises ImportError
    out = tmp_path / "run"
    assert main(["course", "--notebooks", str(notebooks), "--out", str(out), "--profile", "quick"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and "nbconvert is not installed" in report["html_error"]
    assert "HTML not rendered: nbconvert is not installed" in (out / "report.md").read_text()
    assert "or pass --no-html" in capsys.readouterr().out
