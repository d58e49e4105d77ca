"""Greedy maximizers for sparse kernels that carry a column index: O(degree) work per pick instead of O(n · k_nn).

Same contracts as optimizers.py (picks, gains, tie rule: lowest index among equal gains, early stop), different
bookkeeping, so that nothing per pick scales with n:

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
from delift_jax.select import optimizers as O
from delift_jax.select.objectives import Objective

DEFAULT_BLOCK = 1024


def _gains(objective: Objective, index: C.ColumnIndex, coverage, candidates, axis_name) -> jax.Array:
    gains = C.column_gains(index, coverage, objective.cap, candidates)
    if axis_name is not None:
        gains = lax.psum(gains, axis_name)
    if objective.bonus is not None:
        gains = gains + objective.bonus[candidates]
    return gains


def _commit(objective: Objective, index, loop: O._Loop, candidate, gain, stop_if_non_positive: bool) -> O._Loop:
    """optimizers._commit with the O(degree) cover of the column index."""
    stop = jnp.logical_and(stop_if_non_positive, gain <= 0)
    keep = jnp.logical_not(stop)
    return O._Loop(
        step=loop.step + keep.astype(jnp.int32),
        stopped=stop,
        coverage=C.column_cover(index, loop.coverage, objective.cap, candidate, enabled=keep),
        taken=loop.taken.at[candidate].set(jnp.logical_or(loop.taken[candidate], keep)),
        picks=loop.picks.at[loop.step].set(jnp.where(keep, candidate, -1)),
        gains=loop.gains.at[loop.step].set(jnp.where(keep, gain, 0.0)),
    )


def _best(bound, block_max, block: int):
    """(block b holding the first maximal bound, the first maximal candidate in it)."""
    b = jnp.argmax(block_max).astype(jnp.int32)
    within = jnp.argmax(lax.dynamic_slice_in_dim(bound, b * block, block)).astype(jnp.int32)
    return b, b * block + within


def _block_max(bound, b, block: int):
    return jnp.max(lax.dynamic_slice_in_dim(bound, b * block, block))


def lazy_greedy(objective: Objective, k: int, *, batch: int = O.DEFAULT_BATCH, block: int = DEFAULT_BLOCK,
                stop_if_non_positive: bool = False, axis_name=None) -> O.Selection:
    """Lazy greedy on a column-indexed sparse kernel (see the module docstring)."""
    index = C.local(objective.kernel.column_index)
    n = objective.n_candidates
    block = max(1, min(block, n))
    n_blocks = -(-n // block)
    batch = max(1, min(batch, block))
    start = O._start(objective, k)
    # bound[j] >= current gain of j (−inf once picked or past n); fresh_at[j] = the step bound[j] was computed at.
    first = G.all_gains(objective, start.coverage, axis_name=axis_name)
    bound = jnp.full((n_blocks * block,), -jnp.inf, jnp.float32).at[:n].set(first)
    block_max = jnp.max(bound.reshape(n_blocks, block), axis=1)
    fresh_at = jnp.zeros((n_blocks * block,), jnp.int32)

    def stale(state):
        loop, bound, fresh_at, block_max = state
        _, best = _best(bound, block_max, block)
        return fresh_at[best] != loop.step

    def refresh(state):
        loop, bound, fresh_at, block_max = state
        b, _ = _best(bound, block_max, block)
        old, top = lax.top_k(lax.dynamic_slice_in_dim(bound, b * block, block), batch)  # (value desc, index asc)
        top = b * block + top.astype(jnp.int32)
        fresh = _gains(objective, index, loop.coverage, jnp.minimum(top, n - 1), axis_name)
        fresh = jnp.where(old == -jnp.inf, -jnp.inf, fresh)  # picked or padding slots stay out
        bound = bound.at[top].set(fresh)
        fresh_at = fresh_at.at[top].set(loop.step)
        return loop, bound, fresh_at, block_max.at[b].set(_block_max(bound, b, block))

    def step(carry):
        loop, bound, fresh_at, block_max = lax.while_loop(stale, refresh, carry)
        b, best = _best(bound, block_max, block)
        loop = _commit(objective, index, loop, best, bound[best], stop_if_non_positive)
        bound = bound.at[best].set(-jnp.inf)
        return loop, bound, fresh_at, block_max.at[b].set(_block_max(bound, b, block))

    loop, *_ = lax.while_loop(O._running(k), step, (start, bound, fresh_at, block_max))
    return O._finish(loop)


def stochastic_greedy(objective: Objective, k: int, key, *, epsilon: float = O.DEFAULT_EPSILON,
                      stop_if_non_positive: bool = False, axis_name=None) -> O.Selection:
    """Stochastic greedy on a column-indexed sparse kernel, O(s · degree) per step (see the module docstring)."""
    index = C.local(objective.kernel.column_index)
    n = objective.n_candidates
    size = O.stochastic_sample_size(n, k, epsilon)
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
        # Swap-remove best from the unpicked prefix (a no-op when the early stop rejected it).
        last = n_left - 1
        here, moved = position[best], pool[last]
        picked = loop.taken[best]
        pool = pool.at[here].set(jnp.where(picked, moved, pool[here]))
        pool = pool.at[last].set(jnp.where(picked, best, pool[last]))
        position = position.at[moved].set(jnp.where(picked, here, position[moved]))
        position = position.at[best].set(jnp.where(picked, last, position[best]))
        return loop, pool, position

    loop, _, _ = lax.while_loop(O._running(k), step, (O._start(objective, k), pool, pool))
    return O._finish(loop)
