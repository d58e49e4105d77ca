"""Advisory file locks (``flock``) for a kernel store shared by several processes.

The operating system drops a process's locks when it ends, ``kill -9`` included, so a crashed holder never leaves a
lock behind: a lock is a lease that lasts exactly as long as its holder lives. Each ``FileLock`` opens its own file
description, so two holders in one process exclude each other as two processes do.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FileLock:
    """An exclusive lock on ``path`` (created empty if missing; never deleted, so no holder locks a stale inode)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, blocking: bool) -> bool:
        """Take the lock; without ``blocking``, return False at once when another holder has it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock object")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
