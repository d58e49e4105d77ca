"""Atomic file writes: a file appears whole or not at all, whatever crash or kill -9 happens meanwhile.

Write to a temporary file in the same directory, flush and fsync it, rename it over the target (atomic on POSIX),
then fsync the directory so the rename itself survives a power loss. A failed write (a full disk, an I/O error)
removes its temporary file and re-raises, leaving the earlier file (if any) as it was.

Directories are replaced the same way (``atomic_directory``); a process killed while filling one leaves a hidden
staging directory ``.<name>.<random>.tmp`` beside it, which the next ``atomic_directory`` of the same path
removes. Arrays are written without pickle (``allow_pickle=False``): object arrays are refused, never pickled.
Files and directories get the modes a plain ``open()`` / ``mkdir()`` would give them under the process's umask
(``tempfile`` alone would make them private: 0600 / 0700).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def umask() -> int:
    """This process's file-mode creation mask, read from /proc where it can be (``os.umask`` can only be read by
    setting it, which another thread could observe); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_file(directory: str | os.PathLike, name: str) -> tuple[int, str]:
    """(fd, path) of a new hidden ``.<name>.<random>.tmp`` in ``directory``, with the mode an ``open()`` of a new
    file would get (0666 less the umask): ``mkstemp`` makes it 0600, and the rename would keep that."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def temporary_directory(directory: str | os.PathLike, name: str, suffix: str = ".tmp") -> Path:
    """A new hidden ``.<name>.<random><suffix>`` directory in ``directory``, mode 0777 less the umask (``mkdtemp``
    makes it 0700, and a renamed staging directory would keep that)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=directory))
    os.chmod(staging, 0o777 & ~umask())
    return staging


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_durably(handle, data, path)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None or str(exc.filename) == tmp:  # name the file the caller asked for, not the temp
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _write_durably(handle, data: bytes, target: Path) -> None:
    """Write, flush and fsync ``data`` into the temporary file for ``target`` (one function, so tests can inject
    ENOSPC / EIO here)."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def staging_leftovers(path: str | os.PathLike) -> list[Path]:
    """Hidden staging and retired directories ``atomic_directory(path)`` leaves when a process dies inside it."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name.startswith(f".{path.name}.")
                  and p.name.endswith((".tmp", ".old")))


def remove_staging_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove what ``staging_leftovers`` finds (an earlier crash's partial copy); returns the removed paths."""
    removed = staging_leftovers(path)
    for leftover in removed:
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a fresh sibling directory to fill; on success it replaces ``path`` (an earlier directory there is
    removed only then), on any failure it is deleted: ``path`` holds the old complete contents or the new ones,
    never a partial mix. Staging directories of earlier crashes on the same path are removed first (one writer per
    output path is assumed, as everywhere in this package)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_staging_leftovers(path)
    staging = temporary_directory(path.parent, path.name)
    try:
        yield staging
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_json(path: str | os.PathLike, payload: dict, **dumps_options) -> Path:
    options = {"indent": 2, "sort_keys": True, **dumps_options}
    return atomic_write_text(path, json.dumps(payload, **options) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())
