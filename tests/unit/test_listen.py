"""Listening tests without a browser: trials, the answer log, the widgets, the statistics."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest

from amhelpers import listen, listenstats

SYSTEMS = ["fix", "original_fix", "original"]
SENTENCES = [f"ሰላም {i}" for i in range(6)]


def audio(system: str, sentence: int) -> np.ndarray:
    return np.full(800, 0.01 * (1 + SYSTEMS.index(system) if system in SYSTEMS else 1),
                   dtype=np.float32)


def texts_of(widget) -> str:
    """Everything a page would show: the state of every widget in the tree, as text."""
    out, todo = [], [widget]
    while todo:
        w = todo.pop()
        todo.extend(getattr(w, "children", ()))
        state = w.get_state()
        out.append(json.dumps({k: v for k, v in state.items() if not isinstance(v, (bytes, memoryview))},
                              default=str, ensure_ascii=False))
    return "\n".join(out)


def test_ab_trials_cover_every_pair_and_sentence_with_balanced_order():
    trials = listen.ab_trials(SYSTEMS, SENTENCES, seed=0, listener="l1")
    assert len(trials) == 3 * len(SENTENCES)
    assert [t["trial"] for t in trials] == list(range(len(trials)))
    pairs = Counter((frozenset((t["system_a"], t["system_b"])), t["sentence"]) for t in trials)
    assert set(pairs.values()) == {1} and len(pairs) == 3 * len(SENTENCES)
    for pair in {frozenset((t["system_a"], t["system_b"])) for t in trials}:
        firsts = Counter(t["system_a"] for t in trials if {t["system_a"], t["system_b"]} == pair)
        assert sorted(firsts.values()) == [3, 3]  # each played first in half its trials
    for t in trials:
        canonical = sorted((t["system_a"], t["system_b"]))
        assert t["order"] == ("ab" if [t["system_a"], t["system_b"]] == canonical else "ba")


def test_trials_are_shuffled_per_listener_and_stable_for_one():
    a = listen.ab_trials(SYSTEMS, SENTENCES, seed=0, listener="l1")
    assert a == listen.ab_trials(SYSTEMS, SENTENCES, seed=0, listener="l1")
    assert a != listen.ab_trials(SYSTEMS, SENTENCES, seed=0, listener="l2")
    # the sequence is not the generation order: not sorted by pair
    assert [t["system_a"] for t in a] != sorted(t["system_a"] for t in a)


@pytest.mark.parametrize("systems, words", [(["fix"], "at least 2"),
                                            (["fix", "fix"], "repeat")])
def test_bad_system_lists_are_refused(systems, words):
    with pytest.raises(ValueError, match=words):
        listen.ab_trials(systems, SENTENCES, seed=0)


def test_ab_widget_hides_labels_records_and_resumes(tmp_path):
    csv_path = tmp_path / "ab.csv"
    trials = listen.ab_trials(SYSTEMS, SENTENCES, seed=1, listener="ann")
    test = listen.ABTest(trials, audio, SENTENCES, csv_path, "ann")
    for _ in range(4):
        page = texts_of(test.widget)
        assert not any(name in page for name in SYSTEMS), "a system name is on the page"
        assert SENTENCES[test.current["sentence"]] in page
        test.answer("A")
    rows = listen.AnswerLog(csv_path, listen.AB_COLUMNS).rows()
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    assert all(r["preferred"] == r["system_a"] and r["answer"] == "A" for r in rows)

    # A restart (the notebook closed): the same listener goes on at trial 4.
    again = listen.ABTest(trials, audio, SENTENCES, csv_path, "ann")
    assert again.current["trial"] == 4
    again.replay()
    assert again.current["trial"] == 4  # replay answers nothing
    while again.current is not None:
        again.answer("none" if again.current["trial"] % 2 else "B")
    rows = listen.AnswerLog(csv_path, listen.AB_COLUMNS).rows()
    assert sorted(int(r["trial"]) for r in rows) == list(range(len(trials)))
    end = texts_of(again.widget)
    assert all(name in end for name in SYSTEMS)  # named only now
    with pytest.raises(RuntimeError):
        again.answer("A")
    with pytest.raises(ValueError, match="choose one of"):
        listen.ABTest(trials, audio, SENTENCES, tmp_path / "b.csv", "bob").answer("C")


def test_mos_widget_records_scores_and_flags_a_listener_who_inverts_the_anchors(tmp_path):
    systems = ["fix", listen.REFERENCE, listen.ANCHOR]
    csv_path = tmp_path / "mos.csv"
    for who, ref_score, anchor_score in (("good", 5, 1), ("careless", 1, 4)):
        test = listen.MOSTest(listen.mos_trials(systems, SENTENCES[:3], 0, who), audio,
                              SENTENCES[:3], csv_path, who)
        assert not any(name in texts_of(test.widget) for name in ("fix", "reference", "anchor"))
        while test.current is not None:
            s = test.current["system"]
            test.answer(ref_score if s == listen.REFERENCE else anchor_score if s == listen.ANCHOR else 3)
    summary = listenstats.mos_summary(listen.AnswerLog(csv_path, listen.MOS_COLUMNS).rows())
    assert summary["flagged"] == ["careless"]
    pooled = {r["system"]: r for r in summary["table"] if r["listener"] == "all"}
    assert pooled["fix"]["mos"] == 3 and pooled["fix"]["n"] == 6
    assert pooled[listen.REFERENCE]["mos"] == 3.0  # 5 and 1
    with pytest.raises(ValueError, match="give one of"):
        listen.MOSTest(listen.mos_trials(systems, SENTENCES, 0, "x"), audio, SENTENCES,
                       tmp_path / "m2.csv", "x").answer(6)


def test_an_answer_file_of_another_test_is_refused(tmp_path):
    csv_path = tmp_path / "answers.csv"
    listen.AnswerLog(csv_path, listen.MOS_COLUMNS).append(
        {"listener": "a", "trial": 0, "sentence": 0, "system": "fix", "score": 3, "time": "t"})
    with pytest.raises(ValueError, match="other columns"):
        listen.AnswerLog(csv_path, listen.AB_COLUMNS)
    with pytest.raises(ValueError, match="listener"):
        listen.ABTest([], audio, SENTENCES, tmp_path / "x.csv", "  ")


def test_a_line_cut_short_by_a_kill_is_ignored_and_then_replaced(tmp_path):
    csv_path = tmp_path / "ab.csv"
    log = listen.AnswerLog(csv_path, listen.MOS_COLUMNS)
    row = {"listener": "a", "trial": 0, "sentence": 0, "system": "fix", "score": 3, "time": "t"}
    log.append(row)
    with open(csv_path, "a", encoding="utf-8") as fh:
        fh.write("a,1,0,fi")  # what a kill in the middle of a write can leave
    assert [r["trial"] for r in log.rows()] == ["0"]
    log.append({**row, "trial": 1})
    assert [r["trial"] for r in log.rows()] == ["0", "1"]
    assert csv_path.read_text().count("\n") == 3 and "fi\n" not in csv_path.read_text()


def test_sigkill_while_answering_never_corrupts_the_file(tmp_path):
    """A child appends answers as fast as it can and is SIGKILLed; every row read back is whole."""
    csv_path = tmp_path / "ab.csv"
    code = textwrap.dedent(f"""
        import sys
        from amhelpers import listen
        log = listen.AnswerLog({str(csv_path)!r}, listen.AB_COLUMNS)
        i = 0
        while True:
            log.append({{"listener": "k", "trial": i, "sentence": i % 7, "system_a": "x" * 300,
                         "system_b": "y", "order": "ab", "answer": "A", "preferred": "x" * 300,
                         "time": "t"}})
            i += 1
            if i == 50:
                print("ready", flush=True)
        """)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        rows = listen.AnswerLog(csv_path, listen.AB_COLUMNS).rows()
        assert rows and all(r["preferred"] == "x" * 300 and r["time"] == "t" for r in rows)
    trials = [int(r["trial"]) for r in rows]
    assert len(trials) >= 150


def test_wilson_interval_matches_known_values():
    lo, hi = listenstats.wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)  # Wilson 95%, 8 of 10
    assert listenstats.wilson(0, 0) == (0.0, 1.0)
    lo, hi = listenstats.wilson(10, 10)
    assert hi == pytest.approx(1.0) and round(lo, 3) == 0.722


def test_sign_test_known_cases():
    assert listenstats.sign_test(10, 0) == pytest.approx(2 / 1024)  # always the same system
    assert listenstats.sign_test(5, 5) == 1.0
    assert listenstats.sign_test(0, 0) == 1.0
    assert listenstats.sign_test(8, 2) == pytest.approx(0.109375)


def test_ab_summary_a_listener_who_always_picks_one_system_and_ties(tmp_path):
    rows = []
    for i in range(10):
        a, b = ("fix", "original") if i % 2 else ("original", "fix")
        rows.append({"listener": "always", "system_a": a, "system_b": b, "preferred": "fix"})
        rows.append({"listener": "undecided", "system_a": a, "system_b": b, "preferred": ""})
    table = {(r["listener"]): r for r in listenstats.ab_summary(rows)}
    always = table["always"]
    assert (always["system_1"], always["wins_1"], always["wins_2"], always["ties"]) == \
        ("fix", 10, 0, 0)
    assert always["sign_test_p"] < 0.01 and always["share_1_low"] > 0.7
    undecided = table["undecided"]
    assert undecided["ties"] == 10 and math.isnan(undecided["share_1"])
    assert undecided["sign_test_p"] == 1.0
    assert table["all"]["trials"] == 20 and table["all"]["wins_1"] == 10


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = listenstats.bootstrap_mean(rng.integers(1, 6, 10))
    large = listenstats.bootstrap_mean(rng.integers(1, 6, 1000))
    for mos, lo, hi in (small, large):
        assert lo <= mos <= hi
    assert (large[2] - large[1]) < (small[2] - small[1]) / 3
    assert listenstats.bootstrap_mean([4, 4, 4]) == (4.0, 4.0, 4.0)


def _tone_set(folder):
    import soundfile as sf

    conditions = [*SYSTEMS, listen.REFERENCE, "round_trip", listen.ANCHOR]
    wavs = {}
    for name in conditions:
        wavs[name] = []
        for i in range(2):
            path = folder / name / f"{i:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.zeros(1600, np.float32), 16000, subtype="PCM_16")
            wavs[name].append(str(path))
    lset = {"sentences": SENTENCES[:2], "systems": SYSTEMS, "conditions": conditions, "seed": 3,
            "wavs": wavs, "n_codes": {c: [10, 10] for c in conditions}, "rate": 16000}
    (folder / listen.SET_FILE).write_text(json.dumps(lset, ensure_ascii=False))
    return folder


def test_listening_page_starts_either_test_for_a_named_listener(tmp_path):
    lset = listen.load_set(_tone_set(tmp_path / "set"))
    page = listen.ListeningPage(lset, tmp_path / "answers")
    page._start_from_form("ab")  # no name typed: the form says so, nothing starts
    assert page.test is None and "name" in page.message.value
    mos = page.start("  ann ", "mos")
    assert isinstance(mos, listen.MOSTest) and mos.listener == "ann"
    assert {t["system"] for t in mos.trials} == {*SYSTEMS, listen.REFERENCE, listen.ANCHOR}
    assert page.widget.children == (mos.widget,)
    mos.answer(4)
    assert listen.AnswerLog(tmp_path / "answers" / "answers_mos.csv", listen.MOS_COLUMNS).rows()[0]["score"] == "4"
    ab = listen.ListeningPage(lset, tmp_path / "answers").start("ann", "ab")
    assert ab.trials == listen.ab_trials(SYSTEMS, SENTENCES[:2], 3, "ann")  # the set's seed
    with pytest.raises(ValueError, match="'ab' or 'mos'"):
        page.start("ann", "mushra")


def test_a_listening_set_with_a_missing_wav_is_refused_by_name(tmp_path):
    folder = _tone_set(tmp_path / "set")
    (folder / "fix" / "001.wav").unlink()
    with pytest.raises(FileNotFoundError, match="001.wav"):
        listen.load_set(folder)
    with pytest.raises(FileNotFoundError, match="no listening set"):
        listen.load_set(tmp_path / "nothing")
