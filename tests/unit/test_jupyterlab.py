"""JupyterLab comes with the setup command and starts: headless, on a loopback port."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url: str) -> int | None:
    """HTTP status of a GET, or None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_jupyter_lab_starts_answers_and_stops(tmp_path):
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), f"{jupyter} missing: `python -m amhelpers.setup` installs jupyterlab"
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR"):
        env[name] = str(tmp_path / name.lower())
    root = tmp_path / "root"
    root.mkdir()
    cmd = [str(jupyter), "lab", "--no-browser", f"--IdentityProvider.token={token}",
           f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI and containers run as root; jupyter refuses it otherwise
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/status?token={token}"
        status, deadline = None, time.monotonic() + 90
        while status is None and proc.poll() is None and time.monotonic() < deadline:
            status = _status(url)
            if status is None:
                time.sleep(0.5)
        assert status == 200, (f"jupyter lab did not answer (exit {proc.poll()}):\n"
                               + (tmp_path / "lab.log").read_text()[-3000:])
        # the token is required: without it the API refuses
        assert _status(f"http://127.0.0.1:{port}/api/status") == 403
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
    assert proc.returncode is not None


def test_jupyterlab_is_a_dependency():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.split(">")[0].split("=")[0].strip() == "jupyterlab" for d in deps)
