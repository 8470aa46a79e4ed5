"""Listening tests: blind A/B preference and MOS, answers in a CSV that survives a kill.

Why this module is long: the listening set, the trials, the answer log and the widgets and page
built on them share one file layout and one CSV schema; the statistics are apart
(:mod:`amhelpers.listenstats`).

The pieces, each usable alone:

- trials: :func:`ab_trials` pairs every two systems on every sentence, the order inside each
  pair balanced over its trials and the trials shuffled per listener; :func:`mos_trials` rates
  each system on each sentence, a hidden reference and a low anchor among them.
- answers: :class:`AnswerLog` appends one CSV row per answer at once (one ``write`` of a whole
  line, fsynced) and reads them back, ignoring a last line a kill cut short, so a listener who
  closes the notebook resumes where they stopped.
- widgets: :class:`ABTest` and :class:`MOSTest` (ipywidgets, after agermanidis/pigeon): system
  names are nowhere in the widget tree until the last answer; ``answer()`` is what the buttons
  call, so tests drive them without a browser.
- statistics live in :mod:`amhelpers.listenstats`.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .listenstats import ANCHOR, REFERENCE, ab_summary, mos_summary

AB_COLUMNS = ("listener", "trial", "sentence", "system_a", "system_b", "order", "answer",
              "preferred", "time")
"""A/B rows: ``system_a`` / ``system_b`` as played; ``order`` is ``ab`` when they are in the
canonical (sorted) order, ``ba`` when swapped; ``answer`` A, B or none; ``preferred`` the
system picked (empty for none)."""
MOS_COLUMNS = ("listener", "trial", "sentence", "system", "score", "time")
"""MOS rows: ``score`` 1-5."""
AB_ANSWERS = ("A", "B", "none")
MOS_SCORES = (1, 2, 3, 4, 5)


# ------------------------------------------------------------------------------------- trials
def ab_trials(systems: Sequence[str], sentences: Sequence[str], seed: int,
              listener: str = "") -> list[dict[str, Any]]:
    """Every pair of ``systems`` on every sentence, for one listener.

    Within each pair, the system played first alternates over its sentences (balanced to within
    one), starting from a coin flip; then all trials are shuffled. The seed mixes in the
    listener's name, so two listeners hear different orders and one listener the same order
    after a restart.

    Returns:
        ``trial`` (0, 1, ...), ``sentence`` (index into ``sentences``), ``system_a``,
        ``system_b`` (as played) and ``order`` (``ab`` or ``ba``).

    Raises:
        ValueError: fewer than two systems, a repeated system name, or no sentences.
    """
    _check_systems(systems, 2)
    if not sentences:
        raise ValueError("ab_trials: no sentences: give at least one")
    rng = random.Random(f"{seed}:{listener}")
    trials = []
    for a, b in itertools.combinations(sorted(systems), 2):
        first = rng.random() < 0.5
        for s in range(len(sentences)):
            swapped = (s % 2 == 0) == first
            trials.append({"sentence": s, "system_a": b if swapped else a,
                           "system_b": a if swapped else b, "order": "ba" if swapped else "ab"})
    rng.shuffle(trials)
    return [{"trial": i, **t} for i, t in enumerate(trials)]


def mos_trials(systems: Sequence[str], sentences: Sequence[str], seed: int,
               listener: str = "") -> list[dict[str, Any]]:
    """Each system on each sentence once, shuffled per listener (see :func:`ab_trials`).

    Include :data:`REFERENCE` and :data:`ANCHOR` among ``systems`` to check listeners.
    """
    _check_systems(systems, 1)
    if not sentences:
        raise ValueError("mos_trials: no sentences: give at least one")
    rng = random.Random(f"{seed}:{listener}")
    trials = [{"sentence": s, "system": name} for name in sorted(systems)
              for s in range(len(sentences))]
    rng.shuffle(trials)
    return [{"trial": i, **t} for i, t in enumerate(trials)]


def _check_systems(systems: Sequence[str], least: int) -> None:
    if len(systems) < least:
        raise ValueError(f"give at least {least} system(s) to compare, not {list(systems)}")
    dupes = sorted({s for s in systems if list(systems).count(s) > 1})
    if dupes:
        raise ValueError(f"system names repeat: {dupes}; give each system one name")


# ---------------------------------------------------------------------------- listening set
def listening_set(p: Any, systems: Mapping[str, str | os.PathLike], sentences: Sequence[str],
                  out: str | os.PathLike, tokenizer: str | os.PathLike, seed: int = 0,
                  progress: bool = True) -> dict[str, Any]:
    """Synthesise every sentence with every system into ``out`` as wav files (cached).

    Besides ``systems`` (name -> checkpoint of ``embedded.finetune``), three conditions need no
    model: :data:`REFERENCE` (espeak-ng's reading), ``round_trip`` (its codes decoded: the best
    any system can sound through this codec) and :data:`ANCHOR` (random codes of the
    reference's length). Codes come from greedy batch generation with the KV cache. Each
    condition's folder holds ``settings.json`` (checkpoint sha256, sentences); a condition
    whose settings match is not generated again. Wavs are written to a temporary name, then
    renamed.

    Returns:
        ``sentences``, ``systems``, ``conditions`` (names, systems first), ``seed``, ``wavs``
        {condition: [paths]}, ``n_codes`` {condition: [codes per sentence]} and ``rate``; the
        same is written to ``out/listening_set.json`` (:func:`load_set`).
    """
    import hashlib
    import json

    import numpy as np
    import torch

    from . import embedded
    from .data import build_manifest, read_manifest
    from .io import sha256_file, write_bytes_atomic, write_text_atomic
    from .model import load_checkpoint
    from .speech import SAMPLE_RATE, load_wav

    taken = {REFERENCE, ANCHOR, "round_trip"} & set(systems)
    if taken:
        raise ValueError(f"system names {sorted(taken)} are reserved for the conditions every "
                         "listening set has: rename those systems")
    out = Path(out)
    book = embedded.codec(p, progress=False)
    text_key = hashlib.sha256(json.dumps([list(sentences), str(tokenizer)]).encode()).hexdigest()[:12]
    manifest = out / f"sentences-{text_key}.jsonl"
    if not manifest.is_file():
        build_manifest(manifest, list(sentences), p.target_lang, tokenizer, book, split="listen",
                       progress=progress, key=text_key)
    rows = read_manifest(manifest)
    rng = np.random.default_rng(seed)
    anchor_codes = [rng.integers(0, book.k, r["n_codes"]).tolist() for r in rows]
    conditions: dict[str, Any] = {**{k: Path(v) for k, v in systems.items()},
                                  REFERENCE: None, "round_trip": None, ANCHOR: None}
    wavs, n_codes = {}, {}
    from tqdm.auto import tqdm

    for name in tqdm(conditions, desc="listening set", disable=not progress):
        ckpt = conditions[name]
        folder = out / name
        settings = {"sentences": text_key, "seed": seed,
                    "checkpoint_sha256": sha256_file(ckpt) if ckpt else None}
        paths = [folder / f"{i:03d}.wav" for i in range(len(rows))]
        record = folder / "settings.json"
        if record.is_file() and all(q.is_file() for q in paths):
            saved = json.loads(record.read_text())
            if saved.get("settings") == settings:
                wavs[name], n_codes[name] = paths, saved["n_codes"]
                continue
        folder.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            model, _ = load_checkpoint(ckpt)
            with torch.no_grad():
                codes = model.generate_batch([r["text_ids"] for r in rows])
        else:
            codes = {REFERENCE: [r["codes"] for r in rows], "round_trip": [r["codes"] for r in rows],
                     ANCHOR: anchor_codes}[name]
        for i, (path, c) in enumerate(zip(paths, codes)):
            if name == REFERENCE:
                wav = load_wav(rows[i]["audio"])
            else:
                arr = np.asarray(c, dtype=np.int64)
                wav = book.decode(arr) if len(arr) else np.zeros(160, np.float32)
            write_bytes_atomic(path, wav_bytes(wav, SAMPLE_RATE))
        write_text_atomic(record, json.dumps({"settings": settings,
                                              "n_codes": [len(c) for c in codes]}))
        wavs[name], n_codes[name] = paths, [len(c) for c in codes]
    result = {"sentences": [r["text"] for r in rows], "systems": list(systems),
              "conditions": list(conditions), "seed": seed,
              "wavs": {k: [str(q) for q in v] for k, v in wavs.items()}, "n_codes": n_codes,
              "rate": SAMPLE_RATE}
    write_text_atomic(out / SET_FILE, json.dumps(result, ensure_ascii=False, indent=1))
    return result


SET_FILE = "listening_set.json"
"""What :func:`listening_set` writes into its folder: what a listening page reads."""


def load_set(path: str | os.PathLike) -> dict[str, Any]:
    """Read a listening set (its folder or its ``listening_set.json``), checking every wav.

    Raises:
        FileNotFoundError: no set there, or a wav it names is missing.
    """
    import json

    path = Path(path)
    path = path / SET_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no listening set; run notebook 07 (section 1) to make "
                                "one, or point AMHELPERS_LISTEN_SET at its folder")
    lset = json.loads(path.read_text(encoding="utf-8"))
    missing = [w for paths in lset["wavs"].values() for w in paths if not Path(w).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} wav file(s) it names are missing, e.g. "
                                f"{missing[0]}; run notebook 07 (section 1) again")
    return lset


# ------------------------------------------------------------------------------------ answers
class AnswerLog:
    """A CSV of answers, appended one whole line at a time.

    Each :meth:`append` writes its row with one ``os.write`` on a file opened for appending,
    then fsyncs, so a row is on disk before the next trial shows. A process killed inside the
    write can leave at most a last line without its newline; :meth:`rows` ignores it and the
    next :meth:`append` cuts it off first. The header is checked, so answers of another test
    are never mixed in.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]):
        self.path, self.columns = Path(path), tuple(columns)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder: give a .csv file path for answers")
        if self.path.exists() and self.path.stat().st_size:
            header = self.path.read_text(encoding="utf-8").split("\n", 1)[0]
            if tuple(next(csv.reader([header]), [])) != self.columns:
                raise ValueError(f"{self.path} holds other columns ({header!r}), not "
                                 f"{','.join(self.columns)}: give another file for this test")

    def rows(self) -> list[dict[str, str]]:
        """The complete rows so far (a last line cut short by a kill is left out)."""
        if not self.path.is_file():
            return []
        text = self.path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        return list(csv.DictReader(io.StringIO(complete)))

    def append(self, row: Mapping[str, Any]) -> None:
        """Write ``row`` (every column given) as one line, at once."""
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"answer row lacks {missing}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                writer.writerow(self.columns)
            else:
                self._cut_partial_line(fd, size)
            writer.writerow([row[c] for c in self.columns])
            os.write(fd, buf.getvalue().encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _cut_partial_line(self, fd: int, size: int) -> None:
        tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
        if tail.endswith(b"\n"):
            return
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        os.ftruncate(fd, keep)

    def answered(self, listener: str) -> set[int]:
        """Trial numbers this listener has answered."""
        return {int(r["trial"]) for r in self.rows() if r["listener"] == listener}


# ------------------------------------------------------------------------------------ widgets
def _audio_widget(wav: Any, rate: int):
    import ipywidgets as widgets

    return widgets.Audio(value=wav_bytes(wav, rate), format="wav", autoplay=False, loop=False)


def wav_bytes(wav: Any, rate: int) -> bytes:
    """A mono float waveform as 16-bit WAV bytes (what a browser's audio player reads)."""
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wav, dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class _Test:
    """What A/B and MOS share: trials left for a listener, the log, the end screen."""

    columns: tuple[str, ...] = ()

    def __init__(self, trials: list[dict[str, Any]], audio: Callable[[str, int], Any],
                 sentences: Sequence[str], answers: str | os.PathLike, listener: str,
                 rate: int = 16000, show_text: bool = True):
        import ipywidgets as widgets

        if not listener.strip():
            raise ValueError("listener: give a name or code for the listener (it keys resume)")
        self.trials, self.audio, self.sentences = trials, audio, list(sentences)
        self.listener, self.rate, self.show_text = listener.strip(), rate, show_text
        self.log = AnswerLog(answers, self.columns)
        done = self.log.answered(self.listener)
        self.todo = [t for t in trials if t["trial"] not in done]
        self.progress = widgets.HTML()
        self.body = widgets.VBox()
        self.widget = widgets.VBox([self.progress, self.body])
        self._show()

    @property
    def current(self) -> dict[str, Any] | None:
        return self.todo[0] if self.todo else None

    def _header(self) -> str:
        n, left = len(self.trials), len(self.todo)
        who = html.escape(self.listener)
        return f"<b>{who}</b>: trial {n - left + 1} of {n}" if left else \
            f"<b>{who}</b>: all {n} trials answered, thank you"

    def _text(self, trial: Mapping[str, Any]) -> str:
        text = html.escape(self.sentences[trial["sentence"]])
        return f"<p style='font-size:1.5em'>{text}</p>" if self.show_text else ""

    def _record(self, row: dict[str, Any]) -> None:
        self.log.append({"listener": self.listener, "trial": self.current["trial"],
                         "sentence": self.current["sentence"], **row,
                         "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.todo.pop(0)
        self._show()

    def _show(self) -> None:
        import ipywidgets as widgets

        if self.current is None:
            self.body.children = [widgets.HTML(self.end_text())]
        else:
            self.body.children = self.trial_widgets(self.current)
        self.progress.value = self._header()  # last: a page that shows "trial k" shows its body

    def end_text(self) -> str:  # labels appear here only, after the last answer
        return "<p>Done. The systems behind each trial are in the answer file.</p>"

    def trial_widgets(self, trial: Mapping[str, Any]) -> list:
        raise NotImplementedError


class ABTest(_Test):
    """Blind A/B preference: two players, buttons A, B, no preference, replay.

    ``audio(system, sentence_index)`` returns a waveform. Call :meth:`answer` (what the buttons
    do) with ``"A"``, ``"B"`` or ``"none"``.
    """

    columns = AB_COLUMNS

    def trial_widgets(self, trial: Mapping[str, Any]) -> list:
        import ipywidgets as widgets

        self.players = [_audio_widget(self.audio(trial[k], trial["sentence"]), self.rate)
                        for k in ("system_a", "system_b")]
        buttons = []
        for label, value in (("A is better", "A"), ("B is better", "B"),
                             ("no preference", "none")):
            button = widgets.Button(description=label)
            button.on_click(lambda _b, v=value: self.answer(v))
            buttons.append(button)
        replay = widgets.Button(description="replay", icon="repeat")
        replay.on_click(lambda _b: self.replay())
        return [widgets.HTML(self._text(trial)),
                widgets.HBox([widgets.VBox([widgets.HTML("<b>A</b>"), self.players[0]]),
                              widgets.VBox([widgets.HTML("<b>B</b>"), self.players[1]])]),
                widgets.HBox([*buttons, replay])]

    def replay(self) -> None:
        """Play both again from the start (the players are rebuilt)."""
        if self.current is not None:
            self._show()

    def end_text(self) -> str:
        mine = [r for r in self.log.rows() if r["listener"] == self.listener]
        lines = [f"{r['system_1']} {r['wins_1']}, {r['system_2']} {r['wins_2']}, no preference "
                 f"{r['ties']}" for r in ab_summary(mine) if r["listener"] == "all"]
        return "<p>Done. Your preferences, now that the systems can be named:</p><ul>" + \
            "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"

    def answer(self, choice: str) -> None:
        """Record A, B or none for the current trial and show the next."""
        if choice not in AB_ANSWERS:
            raise ValueError(f"answer {choice!r}: choose one of {AB_ANSWERS}")
        if self.current is None:
            raise RuntimeError("every trial is answered")
        t = self.current
        preferred = {"A": t["system_a"], "B": t["system_b"]}.get(choice, "")
        self._record({"system_a": t["system_a"], "system_b": t["system_b"],
                      "order": t["order"], "answer": choice, "preferred": preferred})


class MOSTest(_Test):
    """Mean opinion score: one player, buttons 1 (bad) to 5 (excellent).

    Call :meth:`answer` with 1-5 (what the buttons do).
    """

    columns = MOS_COLUMNS
    LABELS = {1: "1 bad", 2: "2 poor", 3: "3 fair", 4: "4 good", 5: "5 excellent"}

    def trial_widgets(self, trial: Mapping[str, Any]) -> list:
        import ipywidgets as widgets

        self.players = [_audio_widget(self.audio(trial["system"], trial["sentence"]), self.rate)]
        buttons = []
        for score in MOS_SCORES:
            button = widgets.Button(description=self.LABELS[score])
            button.on_click(lambda _b, s=score: self.answer(s))
            buttons.append(button)
        return [widgets.HTML(self._text(trial) + "<p>How natural and intelligible is it?</p>"),
                self.players[0], widgets.HBox(buttons)]

    def end_text(self) -> str:
        mine = [r for r in self.log.rows() if r["listener"] == self.listener]
        rows = [r for r in mos_summary(mine)["table"] if r["listener"] == "all"]
        return "<p>Done. Your mean scores, now that the systems can be named:</p><ul>" + \
            "".join(f"<li>{html.escape(r['system'])}: {r['mos']:.2f} ({r['n']} ratings)</li>"
                    for r in rows) + "</ul>"

    def answer(self, score: int) -> None:
        """Record a score 1-5 for the current trial and show the next."""
        if score not in MOS_SCORES:
            raise ValueError(f"score {score!r}: give one of {MOS_SCORES}")
        if self.current is None:
            raise RuntimeError("every trial is answered")
        self._record({"system": self.current["system"], "score": score})


class ListeningPage:
    """A page for one listener of a prepared listening set: a name field, then the A/B or the
    MOS test (what ``pages/listen.ipynb`` shows under Voila).

    ``start(listener, test)`` is what the buttons call. Answers go to ``answers_ab.csv`` /
    ``answers_mos.csv`` in ``answers_dir``, the same files notebook 07 summarises.
    """

    def __init__(self, lset: Mapping[str, Any], answers_dir: str | os.PathLike):
        import ipywidgets as widgets

        from .speech import load_wav

        self.lset, self.answers_dir = lset, Path(answers_dir)
        self.audio = lambda condition, i: load_wav(self.lset["wavs"][condition][i])
        self.name = widgets.Text(placeholder="your name or code", description="Listener")
        self.message = widgets.HTML()
        buttons = []
        for label, test in (("start the A/B test", "ab"), ("start the MOS test", "mos")):
            button = widgets.Button(description=label)
            button.on_click(lambda _b, t=test: self._start_from_form(t))
            buttons.append(button)
        self.form = widgets.VBox([widgets.HTML(
            f"<h3>Listening test</h3><p>{len(lset['sentences'])} sentences. Use headphones; "
            "answer with your first impression. You can stop any time and come back with the "
            "same name.</p>"), self.name, widgets.HBox(buttons), self.message])
        self.widget = widgets.VBox([self.form])
        self.test: _Test | None = None

    def _start_from_form(self, test: str) -> None:
        try:
            self.start(self.name.value, test)
        except ValueError as err:
            self.message.value = f"<p style='color:#b00'>{html.escape(str(err))}</p>"

    def start(self, listener: str, test: str = "ab") -> _Test:
        """Show ``listener``'s A/B (``"ab"``) or MOS (``"mos"``) test, resuming their answers."""
        if test not in ("ab", "mos"):
            raise ValueError(f"test {test!r}: choose 'ab' or 'mos'")
        listener = listener.strip()
        if not listener:
            raise ValueError("listener: type your name or code first (it keys your answers)")
        lset, seed = self.lset, self.lset.get("seed", 0)
        if test == "ab":
            trials = ab_trials(lset["systems"], lset["sentences"], seed, listener)
            self.test = ABTest(trials, self.audio, lset["sentences"],
                               self.answers_dir / "answers_ab.csv", listener, rate=lset["rate"])
        else:
            systems = [*lset["systems"], REFERENCE, ANCHOR]
            trials = mos_trials(systems, lset["sentences"], seed, listener)
            self.test = MOSTest(trials, self.audio, lset["sentences"],
                                self.answers_dir / "answers_mos.csv", listener, rate=lset["rate"])
        self.widget.children = [self.test.widget]
        return self.test


def simulate(test: _Test, choose: Callable[[Mapping[str, Any]], Any]) -> int:
    """Answer every trial left in ``test`` with ``choose(trial)`` (a simulated listener, for
    smoke runs and tests): what a person clicking the buttons would record. Returns the count."""
    n = 0
    while test.current is not None:
        test.answer(choose(test.current))
        n += 1
    return n


def read_sentences(path: str | os.PathLike) -> list[str]:
    """Sentences of a text file, one per line; blank lines and lines starting with # skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


HAND_WRITTEN = Path(__file__).resolve().parents[1] / "data_samples"
"""Where ``<lang>_listen.txt`` files of hand-written sentences live (numbers, punctuation)."""
