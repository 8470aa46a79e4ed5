"""The shared output checks and the CLI's one-line errors for OSError."""

from __future__ import annotations

import os

import pytest

from amhelpers import __main__ as cli
from amhelpers.io import check_output_dir, check_output_file, describe_os_error


def test_output_equal_to_an_input_is_refused(tmp_path):
    source = tmp_path / "in.model"
    source.write_bytes(b"x")
    with pytest.raises(ValueError, match="same file as --base"):
        check_output_file(tmp_path / "sub" / ".." / "in.model", "--out", {"--base": source})
    link = tmp_path / "link.model"
    link.symlink_to(source)
    with pytest.raises(ValueError, match="same file as --base"):
        check_output_file(link, "--out", {"--base": source})
    assert check_output_file(tmp_path / "other.model", "--out", {"--base": source, "--x": None})


def test_output_file_that_is_a_folder_or_under_a_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        check_output_file(tmp_path, "--out")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_file(blocker / "deeper" / "out.model", "--out")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_dir(blocker, "--out")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_dir(blocker / "sub", "--out")


def test_unwritable_folder(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: let the folder look read-only
        monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != os.fspath(locked))
    with pytest.raises(PermissionError, match="not writable"):
        check_output_file(locked / "out.model", "--out")
    with pytest.raises(PermissionError, match="not writable"):
        check_output_dir(locked / "run", "--output-dir")


def test_describe_os_error_names_the_path():
    err = IsADirectoryError(21, "Is a directory", "/tmp/some/dir")
    assert describe_os_error(err) == "Is a directory: /tmp/some/dir (give a file path, not a folder)"


def test_cli_turns_os_errors_into_one_line(monkeypatch, capsys):
    import argparse
    import types

    def run(_args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/root/x.png")

    fake = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
    monkeypatch.setitem(cli.GROUPS, "fake", ("fake_group_module", "a fake group"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Permission denied: /root/x.png (fix its permissions, or choose a "
                   "path you can read and write)"]
