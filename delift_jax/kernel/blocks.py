"""``compute_blocks``: score the planned pairs block by block into the store, resumably.

The only stage that writes blocks. A block already in the store (and verified) is skipped; a block is computed only
under its claim, so two processes on one store never both compute it; blocks another process holds are waited for
and taken over if that process stops without finishing them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Protocol

import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel.coordination import POLL_SECONDS, check_failures, log, process_share, report_failure
from delift_jax.kernel.plan import KernelPlan
from delift_jax.kernel.store import KernelStore


@dataclasses.dataclass(frozen=True)
class BlockScores:
    """Distances of one block's pairs, in plan order; n_full / n_truncated: pairs that could not reuse their
    candidate's prefix / whose context was truncated to fit."""

    rms: np.ndarray
    logp: np.ndarray
    n_full: int = 0
    n_truncated: int = 0


class BlockScorer(Protocol):
    def __call__(self, pairs: np.ndarray, on_progress: Callable[[int], None]) -> BlockScores: ...


@dataclasses.dataclass(frozen=True)
class Coordination:
    """This process's place among the processes sharing a store. wait_for_others: wait for blocks other processes
    hold (process 0, which assembles); since: wall-clock start of this run (older failure reports are ignored)."""

    process: int = 0
    n_processes: int = 1
    wait_for_others: bool = True
    timeout_s: float = 24 * 3600.0
    since: float = 0.0


@dataclasses.dataclass
class BlockRunStats:
    pairs_computed: int = 0
    n_full: int = 0
    n_truncated: int = 0
    seconds: float = 0.0


def compute_blocks(plan: KernelPlan, scorer: BlockScorer, store: KernelStore, *,
                   coordination: Coordination = Coordination(), progress: bool = False) -> BlockRunStats:
    """Compute every block of ``plan`` missing from ``store`` that this process can claim (see the module doc)."""
    stats = BlockRunStats()
    finished = store.verified_blocks(log)
    order = [b for b in process_share(plan.n_blocks, coordination.process, coordination.n_processes)
             if b not in finished]
    bar = _pair_bar(sum(plan.block_size(b) for b in order), progress)
    started = time.perf_counter()
    try:
        held = [b for b in order if not _try_block(plan, scorer, store, b, stats, bar)]
        if held and coordination.wait_for_others:
            _wait_for_held(plan, scorer, store, held, stats, bar, coordination)
    except Exception as exc:
        if coordination.n_processes > 1:
            report_failure(store, coordination.process, exc)
        raise
    finally:
        bar.close()  # before any message about the interruption or failure is printed
    stats.seconds = time.perf_counter() - started
    return stats


def _try_block(plan: KernelPlan, scorer: BlockScorer, store: KernelStore, block: int, stats: BlockRunStats,
               bar) -> bool:
    """Compute ``block`` if this process can claim it; True when it is finished (now or by another process),
    False when another process holds it."""
    with store.claim(block) as claimed:
        if not claimed:
            _shrink(bar, plan.block_size(block))
            return False
        if store.has_block(block):  # finished by another process since the store was listed
            _shrink(bar, plan.block_size(block))
            return True
        pairs = plan.block_pairs_of(block)
        scores = scorer(pairs, bar.update)
        check_finite(scores.logp, f"block {block}")
        store.write_block(block, pairs, scores.rms, scores.logp)
    stats.pairs_computed += len(pairs)
    stats.n_full += scores.n_full
    stats.n_truncated += scores.n_truncated
    return True


def _wait_for_held(plan, scorer, store: KernelStore, held: list[int], stats: BlockRunStats, bar,
                   coordination: Coordination) -> None:
    log(f"{len(held)} blocks are claimed by another process working on {store.directory}; waiting for them "
        "(a block whose process stops unfinished is taken over)")
    deadline = time.monotonic() + coordination.timeout_s
    while held:
        check_failures(store, coordination.since, "the blocks of other processes")
        if time.monotonic() > deadline:
            raise DataError(f"timed out after {coordination.timeout_s:.0f} s waiting for the blocks of other "
                            "processes; rerun to resume")
        time.sleep(POLL_SECONDS)
        held = [b for b in held if not store.has_block(b) and not _take_over(plan, scorer, store, b, stats, bar)]


def _take_over(plan, scorer, store: KernelStore, block: int, stats: BlockRunStats, bar) -> bool:
    bar.total += plan.block_size(block)
    return _try_block(plan, scorer, store, block, stats, bar)


def _shrink(bar, n: int) -> None:
    bar.total -= n
    bar.refresh()


def check_finite(values: np.ndarray, what: str) -> None:
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        raise DataError(f"{bad} non-finite scores in {what}; nothing was saved for it (try float32 compute)")


def _pair_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pair", desc="kernel", disable=not enabled, smoothing=0.05)
