"""espeak-ng synthesis: format, trimming, cache reuse and repair, clear errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

from amhelpers import speech
from amhelpers.__main__ import main

PHRASES = {
    "eng": ["Where is the station?", "The quick brown fox."],
    "amh": ["ሰላም ለዓለም", "ዛሬ ጥሩ ቀን ነው"],
}


@pytest.fixture(autouse=True)
def work_home(tmp_path, monkeypatch):
    """Keep every cached wav under tmp_path."""
    monkeypatch.setenv("AMHELPERS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def espeak_calls(monkeypatch):
    """Count espeak-ng synthesis runs (``-w`` calls) while passing them through."""
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(cmd, *args, **kwargs):
        if "-w" in cmd:
            calls.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(speech.subprocess, "run", counting_run)
    return calls


def _quiet_ms(wav: np.ndarray) -> tuple[float, float]:
    """Milliseconds below 1% of the peak at the start and at the end."""
    loud = np.flatnonzero(np.abs(wav) > 0.01 * np.abs(wav).max())
    return loud[0] / 16, (len(wav) - 1 - loud[-1]) / 16


@pytest.mark.parametrize("lang", ["eng", "amh"])
def test_synthesize_writes_trimmed_16k_mono_pcm16(lang, work_home):
    paths = speech.synthesize(PHRASES[lang], lang, progress=False)
    assert len(paths) == 2 and paths[0] != paths[1]
    for path in paths:
        assert path.is_relative_to(work_home / "audio" / speech.VOICES[lang])
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        wav = speech.load_wav(path)
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert 0.3 < len(wav) / 16000 < 5.0
        head, tail = _quiet_ms(wav)
        assert 30 <= head <= 100 and 30 <= tail <= 100, (head, tail)
    assert not list(work_home.rglob("*.tmp"))


def test_cache_hit_does_not_run_espeak(espeak_calls):
    first = speech.synthesize(PHRASES["eng"], "eng", progress=False)
    assert len(espeak_calls) == 2
    again = speech.synthesize(PHRASES["eng"] + [PHRASES["eng"][0]], "eng", progress=False)
    assert again == first + [first[0]]
    assert len(espeak_calls) == 2


def test_duplicates_in_one_call_are_synthesised_once(espeak_calls):
    text = PHRASES["eng"][0]
    paths = speech.synthesize([text, text, f"  {text} "], "eng", progress=False)
    assert len(set(paths)) == 1 and len(espeak_calls) == 1


def _garbage(path):
    path.write_bytes(b"not a wav at all")


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-2000])


def _wrong_rate(path):
    sf.write(str(path), np.zeros(22050, np.float32), 22050, subtype="PCM_16")


def _stereo(path):
    sf.write(str(path), np.zeros((16000, 2), np.float32), 16000, subtype="PCM_16")


@pytest.mark.parametrize("damage", [_garbage, _truncated, _wrong_rate, _stereo])
def test_bad_cached_wav_is_resynthesised(damage, espeak_calls, caplog):
    (path,) = speech.synthesize(PHRASES["amh"][:1], "amh", progress=False)
    good = path.read_bytes()
    damage(path)
    with pytest.raises(ValueError, match=str(path)):
        speech.load_wav(path)
    with caplog.at_level("WARNING", logger="amhelpers.speech"):
        (again,) = speech.synthesize(PHRASES["amh"][:1], "amh", progress=False)
    assert again == path and len(espeak_calls) == 2
    assert path.read_bytes() == good
    assert str(path) in caplog.text


def test_tigrinya_uses_the_amharic_voice(espeak_calls):
    text = PHRASES["amh"][0]
    assert speech.voice_for("tir") == "am"
    assert speech.cache_path(text, "tir") == speech.cache_path(text, "amh")
    (path,) = speech.synthesize([text], "tir", progress=False)
    assert espeak_calls[0][espeak_calls[0].index("-v") + 1] == "am"
    assert speech.synthesize([text], "amh", progress=False) == [path]
    assert len(espeak_calls) == 1


def test_cache_key_depends_on_voice_and_text(tmp_path):
    a = speech.cache_path("hello", "eng", tmp_path)
    assert a.parent.parent == tmp_path / "en-us" and a.parent.name == a.stem[:2]
    assert a != speech.cache_path("hello", "orm", tmp_path)
    assert a != speech.cache_path("hello!", "eng", tmp_path)


def test_missing_espeak_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng") as err:
        speech.synthesize(["hello"], "eng", progress=False)
    assert "conda install -c conda-forge espeak-ng" in str(err.value)


def test_missing_voice_is_a_runtime_error(monkeypatch):
    monkeypatch.setitem(speech.VOICES, "xyz", "zz-no-such-voice")
    with pytest.raises(RuntimeError, match="zz-no-such-voice.*apt-get install espeak-ng"):
        speech.synthesize(["hello"], "xyz", progress=False)


def test_espeak_failure_raises_and_leaves_no_file(monkeypatch, work_home):
    real_run = subprocess.run

    def failing_run(cmd, *args, **kwargs):
        if "-w" in cmd:
            return subprocess.CompletedProcess(cmd, 1, b"", b"boom")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(speech.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="boom"):
        speech.synthesize(["hello"], "eng", progress=False)
    assert not [p for p in (work_home / "audio").rglob("*") if p.is_file()]


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="eng, amh, orm, tir"):
        speech.synthesize(["hello"], "fra", progress=False)
    for empty in ["", "   \n"]:
        with pytest.raises(ValueError, match="empty"):
            speech.synthesize(["fine", empty], "eng", progress=False)


def test_load_wav_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"empty\.wav.*0 samples"):
        speech.load_wav(empty)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        speech.load_wav(tmp_path / "missing.wav")
    path = tmp_path / "rate.wav"
    _wrong_rate(path)
    with pytest.raises(ValueError, match=r"rate\.wav.*22050"):
        speech.load_wav(path)


def test_cli_synth_text_and_file(tmp_path, capsys):
    out = tmp_path / "x.wav"
    assert main(["speech", "synth", "--lang", "amh", "--text", PHRASES["amh"][0],
                 "--out", str(out), "--no-progress"]) == 0
    assert speech.load_wav(out).size > 0
    assert capsys.readouterr().out.strip() == str(out)

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(PHRASES["eng"]) + "\n\n", encoding="utf-8")
    assert main(["speech", "synth", "--lang", "eng", "--file", str(lines), "--no-progress"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(speech.cache_path(t, "eng")) for t in PHRASES["eng"]]
