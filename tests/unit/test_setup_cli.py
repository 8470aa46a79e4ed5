import os
import subprocess
import sys

import pytest

from amhelpers import setup as amsetup
from amhelpers.__main__ import main


def test_missing_system_packages_named(monkeypatch):
    monkeypatch.setattr(amsetup.shutil, "which", lambda name: None)
    monkeypatch.setattr(amsetup, "_font_installed", lambda: False)
    assert amsetup.missing_system_packages() == ["espeak-ng", "sox", "fonts-sil-abyssinica"]


def test_no_apt_prints_packages(monkeypatch, capsys):
    monkeypatch.setattr(amsetup.shutil, "which", lambda name: None)
    assert amsetup.install_system(["espeak-ng", "sox"]) is False
    err = capsys.readouterr().err
    assert "apt-get install -y espeak-ng sox" in err and "environment.yml" in err


def test_nothing_missing_is_ok():
    assert amsetup.install_system([]) is True


def test_cli_help_and_unknown_group(capsys):
    assert main([]) == 0
    assert "tokenizer" in capsys.readouterr().out
    assert main(["nonsense"]) == 2
    assert "unknown group 'nonsense'" in capsys.readouterr().err


def test_course_rejects_bad_profile(tmp_path):
    from amhelpers.course import run_course
    with pytest.raises(ValueError, match="--profile must be quick or full"):
        run_course("medium", tmp_path)


def test_settings_profile(monkeypatch):
    from amhelpers import settings
    monkeypatch.setenv("AMHELPERS_PROFILE", "Quick")
    assert settings.profile_name() == "quick"
    monkeypatch.setenv("AMHELPERS_PROFILE", "huge")
    with pytest.raises(ValueError, match="AMHELPERS_PROFILE='huge'"):
        settings.profile_name()


def _offline_pip(monkeypatch) -> None:
    """Point pip at an index nobody answers on, with no other source of packages."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


def test_setup_pip_failure_is_one_clear_line(monkeypatch, capfd):
    """Offline: the real pip fails; setup names the command and the fix, exits 2, no traceback."""
    _offline_pip(monkeypatch)
    monkeypatch.setattr(amsetup, "torch_ok", lambda: False)  # so setup asks pip for a package
    monkeypatch.setattr(amsetup, "TORCH", "amhelpers-no-such-package==0.0.1")
    assert amsetup.main(["--no-system"]) == 2
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("setup: error: `")
    assert "-m pip install --disable-pip-version-check amhelpers-no-such-package==0.0.1` failed" in last
    assert "network" in last and "rerun `python -m amhelpers.setup`" in last
    assert "Traceback" not in err and "CalledProcessError" not in err


def test_setup_without_pip_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setattr(amsetup, "torch_ok", lambda: True)
    monkeypatch.setattr(amsetup.importlib.util, "find_spec", lambda name: None)
    assert amsetup.main(["--no-system"]) == 2
    err = capsys.readouterr().err
    assert "pip is not installed" in err and "python -m ensurepip" in err


def test_setup_as_a_command_exits_2_without_traceback(tmp_path):
    """The same through `python -m amhelpers.setup`, with pip itself failing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_NO_CACHE_DIR="1", PIP_RETRIES="0", PIP_TIMEOUT="5",
               PYTHONPATH=str(amsetup.ROOT))
    code = ("import sys; from amhelpers import setup as s; s.torch_ok = lambda: False; "
            "s.TORCH = 'amhelpers-no-such-package==0.0.1'; sys.exit(s.main(['--no-system']))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("setup: error: `")
