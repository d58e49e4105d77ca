"""Greedy maximizers for sparse kernels that carry a column index: O(degree) work per pick instead of O(n · k_nn).

Same contracts as optimizers.py (the loop state and Selection of greedy_loop.py; picks, gains, tie rule: lowest
index among equal gains, early stop), different bookkeeping, so that nothing per pick scales with n:

* ``lazy``: classic lazy greedy over stale upper bounds (gains only shrink as coverage grows). The bounds live in
  blocks of ``block`` candidates with an exact per-block maximum, so finding the best bound reads n / block block
  maxima and one block, not all n bounds. A step takes the block holding the first maximal bound; if that bound was
  computed at this step it is the exact greedy pick, otherwise the ``batch`` best bounds of the block are recomputed
  from their column lists (columns.py) and the step looks again. A pick raises the coverage of only the rows that
  list it. Candidates whose rows did not change keep exact bounds and are confirmed by one recomputation; the others
  sink as they are recomputed. Same picks as the dense path up to float rounding of the sums.
* ``stochastic``: each step draws s = ⌈(n/k)·ln(1/ε)⌉ candidates uniformly *with replacement* from the unpicked ones
  (a swap-remove pool keeps them in a prefix, so a draw costs O(s), not an O(n) shuffle) and takes the best of the
  sample (lowest index among tied maxima). Independent draws keep the (1 − 1/e − ε) guarantee of Mirzasoleiman et al.
  (2015), whose proof bounds the chance of missing the optimum by (1 − m/n)^s, exactly the with-replacement case.

With ``axis_name`` (rows sharded over a Mesh) each device sums its rows' share of a gain from its own column shard
and a ``psum`` completes it; every other piece of state is replicated and evolves identically on every device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from delift_jax.select import columns as C
from delift_jax.select import gains as G
from delift_jax.select import greedy_loop as L
from delift_jax.select.objectives import Objective

DEFAULT_BLOCK = 1024


def _gains(objective: Objective, index: C.ColumnIndex, coverage, candidates, axis_name, enabled=True) -> jax.Array:
    gains = C.column_gains(index, coverage, objective.cap, candidates, enabled)
    if axis_name is not None:
        gains = lax.psum(gains, axis_name)
    if objective.bonus is not None:
        gains = gains + objective.bonus[candidates]
    return gains


def _commit(objective: Objective, index, loop: L.Loop, candidate, gain, stop_if_non_positive: bool,
            settled=True) -> L.Loop:
    """Record ``candidate`` as the next pick, covering only the rows that list it (the column index), or stop when
    its gain is not positive and stopping is on; with ``settled`` False nothing changes."""
    stop = jnp.logical_and(settled, jnp.logical_and(stop_if_non_positive, gain <= 0))
    keep = jnp.logical_and(settled, jnp.logical_not(stop))
    coverage = C.column_cover(index, loop.coverage, objective.cap, candidate, enabled=keep)
    return L.commit(loop, candidate, gain, coverage, stop, keep)


def _put(array, where, value):
    return lax.dynamic_update_index_in_dim(array, jnp.reshape(value, (1,)).astype(array.dtype), where, 0)


def lazy_greedy(objective: Objective, k: int, *, batch: int = L.DEFAULT_BATCH, block: int = DEFAULT_BLOCK,
                stop_if_non_positive: bool = False, axis_name=None) -> L.Selection:
    """Lazy greedy on a column-indexed sparse kernel (see the module docstring)."""
    index = C.local(objective.kernel.column_index)
    n = objective.n_candidates
    block = max(1, min(block, n))
    n_blocks = -(-n // block)
    batch = max(1, min(batch, block))
    start = L.start(objective, k)
    # bound[j] >= current gain of j (−inf once picked or past n); fresh_at[j] = the step bound[j] was computed at.
    first = G.all_gains(objective, start.coverage, axis_name=axis_name)
    bound = jnp.full((n_blocks * block,), -jnp.inf, jnp.float32).at[:n].set(first)
    block_max = jnp.max(bound.reshape(n_blocks, block), axis=1)
    fresh_at = jnp.zeros((n_blocks * block,), jnp.int32)

    lane = jnp.arange(block, dtype=jnp.int32)

    # One flat loop: an iteration either confirms the best bound (a pick) or refreshes the best bounds of its
    # block. XLA keeps the carried n-sized arrays in place only if every read of them feeds their own update;
    # so all updates go through one block (dynamic_slice, edit, dynamic_update_slice), scalars are read from the
    # block by reductions (computed once, not re-read by each consumer), the pick's gain is the exact block
    # maximum, and the cover runs before the gains (a pick needs no gains, a refresh changes no coverage).
    def step(carry):
        loop, bound, fresh_at, block_max = carry
        b = jnp.argmax(block_max).astype(jnp.int32)  # the block holding the first maximal bound
        segment = lax.dynamic_slice_in_dim(bound, b * block, block)
        stamps = lax.dynamic_slice_in_dim(fresh_at, b * block, block)
        local = jnp.argmax(segment).astype(jnp.int32)
        settled = jnp.max(jnp.where(lane == local, stamps, -1)) == loop.step
        loop = _commit(objective, index, loop, b * block + local, block_max[b], stop_if_non_positive, settled)
        old, top = lax.top_k(segment, batch)  # (value desc, index asc)
        fresh = _gains(objective, index, loop.coverage, jnp.minimum(b * block + top, n - 1), axis_name,
                       enabled=jnp.logical_not(settled))
        fresh = jnp.where(old == -jnp.inf, -jnp.inf, fresh)  # picked or padding slots stay out
        segment = jnp.where(settled, jnp.where(lane == local, -jnp.inf, segment), segment.at[top].set(fresh))
        stamps = jnp.where(settled, stamps, stamps.at[top].set(loop.step))
        return (loop, lax.dynamic_update_slice_in_dim(bound, segment, b * block, 0),
                lax.dynamic_update_slice_in_dim(fresh_at, stamps, b * block, 0), block_max.at[b].set(jnp.max(segment)))

    loop, *_ = lax.while_loop(L.running(k), step, (start, bound, fresh_at, block_max))
    return L.finish(loop)


def stochastic_greedy(objective: Objective, k: int, key, *, epsilon: float = L.DEFAULT_EPSILON,
                      stop_if_non_positive: bool = False, axis_name=None) -> L.Selection:
    """Stochastic greedy on a column-indexed sparse kernel, O(s · degree) per step (see the module docstring)."""
    index = C.local(objective.kernel.column_index)
    n = objective.n_candidates
    size = L.stochastic_sample_size(n, k, epsilon)
    # pool[:n_left] holds the unpicked candidates; position[j] is j's position in pool.
    pool = jnp.arange(n, dtype=jnp.int32)

    def step(carry):
        loop, pool, position = carry
        n_left = n - loop.step
        draw = jax.random.randint(jax.random.fold_in(key, loop.step), (size,), 0, n_left, dtype=jnp.int32)
        sample = pool[draw]
        fresh = _gains(objective, index, loop.coverage, sample, axis_name)
        top = jnp.max(fresh)
        best = jnp.min(jnp.where(fresh == top, sample, n)).astype(jnp.int32)  # lowest index among tied maxima
        loop = _commit(objective, index, loop, best, top, stop_if_non_positive)
        # Swap-remove best from the unpicked prefix (after an early stop the loop ends, so the pool no longer matters).
        last = n_left - 1
        here, moved = position[best], pool[last]
        pool = _put(_put(pool, here, moved), last, best)
        position = _put(_put(position, moved, here), best, last)
        return loop, pool, position

    loop, _, _ = lax.while_loop(L.running(k), step, (L.start(objective, k), pool, jnp.argsort(pool)))
    return L.finish(loop)
