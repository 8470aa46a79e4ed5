"""The listening page in a real browser: Voila serves ``pages/listen.ipynb`` on a loopback port,
Debian's headless Chromium (through its chromedriver and Selenium) types a listener's name,
answers A/B trials, and the answers must be in the CSV; no system name is on the page before
the last answer. Skips with the reason when Voila, Selenium, chromium or chromedriver is missing
(``.ci/run`` installs them)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from amhelpers import listen

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytest.importorskip("voila", reason="pip install voila (dev extras)")
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (dev extras)")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="install Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(DRIVER is None,
                       reason="install Debian's chromedriver (apt-get install chromium-driver)"),
]
SYSTEMS = ["fix", "original_fix", "original"]


def _fake_set(folder: Path) -> Path:
    """A listening set of tones (no model needed): 2 sentences x the conditions."""
    import soundfile as sf

    sentences = ["ሰላም ለዓለም", "ዋጋው 45 ብር ነው፤"]
    conditions = [*SYSTEMS, listen.REFERENCE, "round_trip", listen.ANCHOR]
    wavs = {}
    for k, name in enumerate(conditions):
        wavs[name] = []
        for i in range(len(sentences)):
            path = folder / name / f"{i:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(4000) / 16000
            sf.write(path, 0.1 * np.sin(2 * np.pi * (220 + 40 * k) * t), 16000, subtype="PCM_16")
            wavs[name].append(str(path))
    lset = {"sentences": sentences, "systems": SYSTEMS, "conditions": conditions, "seed": 0,
            "wavs": wavs, "n_codes": {c: [20, 20] for c in conditions}, "rate": 16000}
    (folder / listen.SET_FILE).write_text(json.dumps(lset, ensure_ascii=False))
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_listener_answers_ab_trials_in_headless_chromium(tmp_path, monkeypatch):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    lset = _fake_set(tmp_path / "set")
    answers = tmp_path / "answers"
    port = _free_port()
    env = {**os.environ, "AMHELPERS_LISTEN_SET": str(lset), "AMHELPERS_LISTEN_ANSWERS": str(answers)}
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", str(ROOT / "pages" / "listen.ipynb"), "--no-browser",
         f"--port={port}", "--Voila.ip=127.0.0.1", "--Voila.tornado_settings={'xsrf_cookies': False}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "voila did not start within 120 s"
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--window-size=1100,800", "--autoplay-policy=no-user-gesture-required"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            driver.get(url)
            wait = WebDriverWait(driver, 180)
            name = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[type=text]")))
            name.send_keys("web listener")

            def click(text: str) -> None:
                """Click the button labelled ``text``, again if the widget was redrawn under us."""
                for _ in range(10):
                    try:
                        wait.until(ec.element_to_be_clickable(
                            (By.XPATH, f"//button[normalize-space(.)='{text}']"))).click()
                        return
                    except StaleElementReferenceException:
                        time.sleep(0.2)
                raise AssertionError(f"button {text!r} kept being redrawn")

            click("start the A/B test")
            n_trials = 3 * 2  # pairs x sentences
            for k in range(1, n_trials + 1):
                wait.until(ec.text_to_be_present_in_element(
                    (By.TAG_NAME, "body"), f"trial {k} of {n_trials}"))
                page = driver.find_element(By.TAG_NAME, "body").get_attribute("innerHTML")
                assert not any(s in page for s in SYSTEMS), f"a system name shows at trial {k}"
                assert len(driver.find_elements(By.TAG_NAME, "audio")) == 2
                if k == 1:
                    driver.save_screenshot(str(tmp_path / "ab_trial.png"))
                click("A is better" if k % 3 else "no preference")
            wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "thank you"))
            end = driver.find_element(By.TAG_NAME, "body").text
            assert all(s in end for s in SYSTEMS)  # named only after the last answer
            driver.save_screenshot(str(tmp_path / "ab_end.png"))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = listen.AnswerLog(answers / "answers_ab.csv", listen.AB_COLUMNS).rows()
    assert [r["listener"] for r in rows] == ["web listener"] * n_trials
    assert sorted(int(r["trial"]) for r in rows) == list(range(n_trials))
    assert [r["answer"] for r in rows] == ["A" if k % 3 else "none" for k in range(1, n_trials + 1)]
    assert all(r["preferred"] == (r["system_a"] if r["answer"] == "A" else "") for r in rows)
    shots = os.environ.get("AMHELPERS_SCREENSHOTS")
    if shots:  # keep the screenshots to look at
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, Path(shots) / png.name)
