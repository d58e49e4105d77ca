"""``assemble``: per-pair block distances into the final layout, and the raw utility U from them. Pure: the only
writes go into the output buffers a caller passes (memory-mapped files, for kernels larger than memory)."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping

import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel.normalize import utilities
from delift_jax.kernel.plan import KernelPlan

CHUNK_ELEMENTS = 1 << 22  # entries per row chunk when streaming over the final arrays


@dataclasses.dataclass(frozen=True, eq=False)
class WithExample:
    """d(i | example j) in the final layout (``plan.shape``): RMS of (1 - p) and mean log p."""

    rms: np.ndarray
    logp: np.ndarray


def assemble(plan: KernelPlan, blocks: Iterable[tuple[int, Mapping[str, np.ndarray]]],
             out: WithExample | None = None) -> WithExample:
    """Scatter every block's (pairs, rms, logp) to its pairs' slots. Each block must hold exactly its planned pairs
    and every block must come once. ``out``: buffers of ``plan.shape`` to fill (default: new arrays)."""
    if out is None:
        out = WithExample(np.full(plan.shape, np.nan), np.full(plan.shape, np.nan))
    seen = np.zeros(plan.n_blocks, bool)
    for index, block in blocks:
        if not np.array_equal(block["pairs"], plan.block_pairs_of(index)):
            raise DataError(f"stored block {index} holds other pairs than planned; delete the store and rerun")
        start, end = plan.blocks[index]
        slots = plan.slots[start:end]
        out.rms.reshape(-1)[slots] = block["rms"]
        out.logp.reshape(-1)[slots] = block["logp"]
        seen[index] = True
    if not seen.all():
        raise DataError(f"{int((~seen).sum())} of {plan.n_blocks} blocks are missing; rerun to compute them")
    return out


def row_chunks(n_rows: int, n_columns: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(n_columns, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def raw_utility(no_example: Mapping[str, np.ndarray], with_example: WithExample, distance: str,
                rows: slice = slice(None)) -> np.ndarray:
    """U (float64) for the targets ``rows``: rms: d(i | none) - d(i | j); pmi: mean log p(i | j) - log p(i | none)."""
    return utilities(no_example["rms"][rows], np.asarray(with_example.rms[rows]), no_example["logp"][rows],
                     np.asarray(with_example.logp[rows]), distance)


def diagonal_mask(plan: KernelPlan, rows: slice) -> np.ndarray:
    """True where a cell of ``rows`` is an example used as its own demonstration."""
    targets = np.arange(plan.n_targets)[rows][:, None]
    columns = np.arange(plan.n_candidates)[None, :] if plan.neighbours is None else plan.neighbours[rows]
    return columns == targets
