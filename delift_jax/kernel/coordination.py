"""Several processes on one kernel store: who takes which blocks, how one waits for another, how a failure is told.

Under ``jax.distributed`` process ``p`` of ``n`` first takes the blocks ``b`` with ``b % n == p``, then helps with
any block nobody has claimed; process 0 waits for the rest, then assembles. Independent processes started on the
same store (each process 0 of 1) share the work the same way through the blocks' claims.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from delift_jax.errors import DataError
from delift_jax.kernel.store import KernelStore

POLL_SECONDS = 0.5


def process_share(n_blocks: int, process: int, n_processes: int) -> list[int]:
    """The block order of ``process``: its own share first, then the others' (taken only if still unclaimed)."""
    own = [b for b in range(n_blocks) if b % n_processes == process]
    return own + [b for b in range(n_blocks) if b % n_processes != process]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, store: KernelStore | None = None,
             since: float = 0.0) -> None:
    """Poll ``condition``; give up at the timeout or as soon as another process reports (after the wall-clock time
    ``since``) a failure in ``store``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        check_failures(store, since, what)
        if time.monotonic() > deadline:
            raise DataError(f"timed out after {timeout_s:.0f} s waiting for {what}; rerun to resume")
        time.sleep(POLL_SECONDS)


def check_failures(store: KernelStore | None, since: float, what: str) -> None:
    """Raise if another process reported a failure in ``store`` at or after ``since``."""
    failed = store.failures(since) if store is not None else []
    if failed:
        raise DataError(f"stopped waiting for {what}: {failed[0]} (fix it and rerun every process to resume)")


def report_failure(store: KernelStore, process: int, exc: BaseException) -> None:
    """Leave a report that stops the other processes' waiting at once (they would otherwise wait until timeout)."""
    store.save_text(f"failed_process_{process}.txt", f"{type(exc).__name__}: {exc}")


def log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
