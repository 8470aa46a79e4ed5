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
    assert settings.profile() == "quick"
    monkeypatch.setenv("AMHELPERS_PROFILE", "huge")
    with pytest.raises(ValueError, match="AMHELPERS_PROFILE='huge'"):
        settings.profile()
