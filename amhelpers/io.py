"""Small file helpers: atomic writes and strict text reading."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it over ``path`` on success.

    On any exception the temporary file is removed, so ``path`` is either the old file or
    the complete new one, never a partial write.

    Args:
        path: the final file.
        mode: ``"wb"`` or ``"w"``.
        encoding: text encoding for ``"w"`` (default utf-8).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if "b" in mode:
            fh = os.fdopen(fd, mode)
        else:
            fh = os.fdopen(fd, mode, encoding=encoding or "utf-8", newline="")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def read_text_strict(path: str | os.PathLike, what: str = "file") -> str:
    """Read a UTF-8 text file with errors that name the file and the fix.

    Args:
        path: the file.
        what: how to call it in errors (for example ``"--corpus"``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid UTF-8.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder; give the path of a UTF-8 text file")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist (give the path of a UTF-8 text file)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what}: {path} is not UTF-8 (byte {err.start}: {data[err.start:err.start + 4]!r}); "
            "convert it, e.g. `iconv -f LATIN1 -t UTF-8 in.txt > out.txt`"
        ) from None


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Return True when ``a`` and ``b`` name the same file (also through links or ``..``)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also hard links
    except OSError:
        pass
    return a.resolve() == b.resolve()  # a path not written yet: compare the spelled-out paths


def check_output_file(path: str | os.PathLike, what: str = "--out",
                      inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Check that a file can be written at ``path`` and that it replaces none of ``inputs``.

    Args:
        path: the output file.
        what: how to call it in errors (for example ``"--out"``).
        inputs: the command's input files by flag name (``{"--base": path}``); None values are
            skipped.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``path`` is one of the inputs, a directory, or under a file.
        PermissionError: its folder cannot be written.
    """
    path = Path(path)
    for flag, source in (inputs or {}).items():
        if source is not None and same_file(path, source):
            raise ValueError(f"{what} {path} is the same file as {flag}; writing it would replace "
                             f"your input: choose another {what} path")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file path, e.g. {path / 'out'}")
    _check_writable_folder(path, path.parent, what, "choose a path in a folder", "the folder ")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check that ``path`` is, or can be created as, a writable folder.

    Raises:
        ValueError: ``path`` is a file or lies under one.
        PermissionError: it cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; give a folder path")
    _check_writable_folder(path, path, what, "choose another path", "")
    return path


def _check_writable_folder(path: Path, folder: Path, what: str, fix: str, article: str) -> None:
    """Refuse ``path`` when the nearest existing ``folder`` (or its parent) is a file or cannot
    be written; ``fix`` and ``article`` word the two messages."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {path}: {folder} is a file, not a folder; {fix}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: {article}{folder} is not writable; "
                              "choose a folder you can write to")


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do about it."""
    name = err.filename if err.filename is not None else ""
    reason = err.strerror or str(err)
    hint = {
        "IsADirectoryError": "give a file path, not a folder",
        "NotADirectoryError": "a part of the path is a file, not a folder",
        "PermissionError": "fix its permissions, or choose a path you can read and write",
        "FileNotFoundError": "check the path",
        "FileExistsError": "choose another path or remove the old one",
    }.get(type(err).__name__, "check the path and free disk space")
    where = f" {name}" if name else ""
    return f"{reason}:{where} ({hint})" if where else f"{reason} ({hint})"
