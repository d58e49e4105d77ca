"""The work plan of a kernel: which (target, candidate) pairs are scored, in which blocks, and where each lands.

Pure functions of the kernel's shape and (sparse mode) each target's neighbours. Memory is O(pairs): O(n·k) in the
sparse mode, with no n × n intermediate.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class KernelPlan:
    """pairs: ``[n_pairs, 2]`` int32 (target, candidate), sorted by candidate then target (a candidate's pairs are
    contiguous, so its demonstration runs once per block). blocks: ``[n_blocks, 2]`` int64 ``[start, end)`` ranges of
    ``pairs``. neighbours: ``[n_targets, k]`` candidates per target (sparse) or None (dense). slots: for each pair,
    its flat position in the final layout (``[n_targets, n_candidates]`` dense, ``[n_targets, k]`` sparse)."""

    n_targets: int
    n_candidates: int
    square: bool
    block_pairs: int
    pairs: np.ndarray
    blocks: np.ndarray
    slots: np.ndarray
    neighbours: np.ndarray | None

    @property
    def n_blocks(self) -> int:
        return int(len(self.blocks))

    @property
    def n_pairs(self) -> int:
        return int(len(self.pairs))

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the final per-pair arrays."""
        return (self.n_targets, self.n_candidates) if self.neighbours is None else tuple(self.neighbours.shape)

    def block_pairs_of(self, block: int) -> np.ndarray:
        start, end = self.blocks[block]
        return self.pairs[start:end]

    def block_size(self, block: int) -> int:
        start, end = self.blocks[block]
        return int(end - start)


def plan_pairs(n_targets: int, n_candidates: int, top_k: np.ndarray | None) -> np.ndarray:
    """``[n, 2]`` (target, candidate) pairs sorted by candidate, then target."""
    return _pairs_and_slots(n_targets, n_candidates, top_k)[0]


def _pairs_and_slots(n_targets: int, n_candidates: int, top_k: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if top_k is None:
        targets, candidates = np.meshgrid(np.arange(n_targets), np.arange(n_candidates), indexing="xy")
        pairs = np.stack([targets.ravel(), candidates.ravel()], axis=1).astype(np.int32)
        return pairs, pairs[:, 0].astype(np.int64) * n_candidates + pairs[:, 1]
    k = top_k.shape[1]
    row_major = np.stack([np.repeat(np.arange(n_targets, dtype=np.int32), k),
                          np.asarray(top_k, np.int32).ravel()], axis=1)
    # Row-major order is already by target: a stable sort by candidate gives (candidate, target) order. ``order``
    # holds the row-major position of each sorted pair.
    order = np.argsort(row_major[:, 1], kind="stable")
    return row_major[order], order.astype(np.int64)


def plan_blocks(pairs: np.ndarray, block_pairs: int) -> np.ndarray:
    """Contiguous ``[start, end)`` ranges (``[n_blocks, 2]`` int64) of about ``block_pairs`` pairs; a candidate's
    pairs stay together unless they alone exceed ``block_pairs``.

    Each candidate's run of pairs is cut into pieces of at most ``block_pairs``; a block takes whole pieces while
    they fit (greedy), so the Python loop runs once per block, not once per candidate."""
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    boundaries = np.flatnonzero(np.diff(pairs[:, 1])) + 1
    runs = np.diff(np.concatenate([[0], boundaries, [len(pairs)]]))
    full, rest = np.divmod(runs, block_pairs)
    n_pieces = full + (rest > 0)
    pieces = np.full(int(n_pieces.sum()), block_pairs, np.int64)
    last_piece = np.cumsum(n_pieces) - 1
    pieces[last_piece[rest > 0]] = rest[rest > 0]
    ends = np.concatenate([[0], np.cumsum(pieces)])
    blocks, piece = [], 0
    while piece < len(pieces):
        # The most whole pieces from ``piece`` on that fit in block_pairs (at least one: no piece exceeds it).
        after = max(int(np.searchsorted(ends, ends[piece] + block_pairs, side="right")) - 1, piece + 1)
        blocks.append((ends[piece], ends[after]))
        piece = after
    return np.asarray(blocks, np.int64).reshape(-1, 2)


def plan_kernel(n_targets: int, n_candidates: int, *, square: bool, block_pairs: int,
                neighbours: np.ndarray | None = None) -> KernelPlan:
    """The whole plan: every pair (dense) or each target's ``neighbours`` (sparse), cut into blocks."""
    if block_pairs < 1:
        raise ValueError(f"block_pairs must be at least 1; got {block_pairs}")
    if neighbours is not None:
        neighbours = np.asarray(neighbours, np.int32)
        if neighbours.ndim != 2 or neighbours.shape[0] != n_targets:
            raise ValueError(f"neighbours must be [{n_targets}, k]; got {neighbours.shape}")
    pairs, slots = _pairs_and_slots(n_targets, n_candidates, neighbours)
    blocks = plan_blocks(pairs, block_pairs)
    for array in (pairs, slots, blocks) + ((neighbours,) if neighbours is not None else ()):
        array.setflags(write=False)
    return KernelPlan(n_targets=n_targets, n_candidates=n_candidates, square=square, block_pairs=int(block_pairs),
                      pairs=pairs, blocks=blocks, slots=slots, neighbours=neighbours)
