"""Greedy maximizers that run entirely inside ``jax.lax`` loops (jittable end to end; the budget k is static).

All three return a :class:`Selection`: the picks in order, the marginal gain of each pick, and how many were made.

* ``naive``: every step computes all marginal gains in one vectorized (column-chunked) pass and takes the masked
  argmax.
* ``lazy``: block-lazy greedy. Each candidate keeps an upper bound on its gain (its last computed gain; gains only
  shrink as coverage grows, by submodularity). A step re-evaluates the ``batch`` candidates with the highest bounds
  in one gather; when the best bound overall belongs to a candidate evaluated in this step, that candidate is the
  exact greedy pick. After ``rounds`` unsuccessful batches it falls back to one full pass, which settles the step.
  It makes the same picks as ``naive`` (up to float rounding between the two ways of summing). The defaults
  (batch 16, 8 rounds) keep each re-evaluation small, which suits CPUs; on accelerators a larger batch costs
  almost nothing extra.
* ``stochastic``: each step draws s = ⌈(n/k)·ln(1/ε)⌉ candidates uniformly without replacement from those not yet
  picked (seeded, reproducible) and takes the best of the sample (Mirzasoleiman et al., 2015): (1 − 1/e − ε) of the
  optimum in expectation.

Tie rule (deterministic): among candidates with equal maximal gain the lowest column index wins. ``naive`` uses
``argmax`` (first maximum); ``lazy`` orders bounds by (value desc, index asc), so a tied candidate with a lower
index and a stale bound is re-evaluated before a pick is accepted; ``stochastic`` takes the lowest index among the
tied members of its sample.

By default exactly k picks are made. With ``stop_if_non_positive`` the loop stops before the first pick whose gain
is ≤ 0; the remaining slots of ``picks`` hold −1 and their gains 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from delift_jax.errors import SelectionError
from delift_jax.select import gains as G
from delift_jax.select.objectives import Objective
from delift_jax.select.sparse import SparseKernel

OPTIMIZERS = ("naive", "lazy", "stochastic")
DEFAULT_BATCH = 16
DEFAULT_ROUNDS = 8
DEFAULT_EPSILON = 0.01


class Selection(NamedTuple):
    """picks: int32[k] candidate indices in pick order (−1 after an early stop); gains: float32[k] marginal gain of
    each pick (0 after an early stop); n_selected: int32 scalar, the number of real picks."""

    picks: jax.Array
    gains: jax.Array
    n_selected: jax.Array


class _Loop(NamedTuple):
    """State shared by every greedy loop."""

    step: jax.Array  # picks made so far
    stopped: jax.Array  # bool: early stop triggered
    coverage: jax.Array  # float32[n_local_rows]
    taken: jax.Array  # bool[n_candidates]
    picks: jax.Array
    gains: jax.Array


def _column_indexed(objective: Objective) -> bool:
    return isinstance(objective.kernel, SparseKernel) and objective.kernel.column_index is not None


def _start(objective: Objective, k: int) -> _Loop:
    return _Loop(
        step=jnp.int32(0),
        stopped=jnp.bool_(False),
        coverage=objective.floor.astype(jnp.float32),
        taken=jnp.zeros((objective.n_candidates,), bool),
        picks=jnp.full((k,), -1, jnp.int32),
        gains=jnp.zeros((k,), jnp.float32),
    )


def _commit(objective: Objective, loop: _Loop, candidate, gain, stop_if_non_positive: bool) -> _Loop:
    """Record ``candidate`` as the next pick, or stop instead when its gain is not positive and stopping is on."""
    stop = jnp.logical_and(stop_if_non_positive, gain <= 0)
    keep = jnp.logical_not(stop)
    return _Loop(
        step=loop.step + keep.astype(jnp.int32),
        stopped=stop,
        coverage=jnp.where(keep, G.cover(objective, loop.coverage, candidate), loop.coverage),
        taken=loop.taken.at[candidate].set(jnp.logical_or(loop.taken[candidate], keep)),
        picks=loop.picks.at[loop.step].set(jnp.where(keep, candidate, -1)),
        gains=loop.gains.at[loop.step].set(jnp.where(keep, gain, 0.0)),
    )


def _running(k: int):
    return lambda carry: jnp.logical_and(carry[0].step < k, jnp.logical_not(carry[0].stopped))


def _finish(loop: _Loop) -> Selection:
    return Selection(loop.picks, loop.gains, loop.step)


# ---------------------------------------------------------------------------------------------------------------------


def naive_greedy(objective: Objective, k: int, *, stop_if_non_positive: bool = False, chunk: int = G.DEFAULT_CHUNK,
                 axis_name=None) -> Selection:
    """Greedy with a full vectorized gain pass per step."""

    def step(carry):
        (loop,) = carry
        gains = G.all_gains(objective, loop.coverage, chunk=chunk, axis_name=axis_name)
        gains = jnp.where(loop.taken, -jnp.inf, gains)
        best = jnp.argmax(gains).astype(jnp.int32)  # first maximum: lowest index among ties
        return (_commit(objective, loop, best, gains[best], stop_if_non_positive),)

    (loop,) = lax.while_loop(_running(k), step, (_start(objective, k),))
    return _finish(loop)


def lazy_greedy(objective: Objective, k: int, *, batch: int = DEFAULT_BATCH, rounds: int = DEFAULT_ROUNDS,
                stop_if_non_positive: bool = False, chunk: int = G.DEFAULT_CHUNK, axis_name=None) -> Selection:
    """Block-lazy greedy: stale upper bounds, the top ``batch`` re-evaluated at once, a full pass after ``rounds``.

    A sparse kernel with a column index takes the O(degree)-per-pick lazy greedy of sparse_greedy.py instead."""
    if _column_indexed(objective):
        from delift_jax.select import sparse_greedy

        return sparse_greedy.lazy_greedy(objective, k, batch=batch, stop_if_non_positive=stop_if_non_positive,
                                         axis_name=axis_name)
    n = objective.n_candidates
    batch = max(1, min(batch, n))
    start = _start(objective, k)
    # bound[j] ≥ current gain of j (−inf once picked); fresh_at[j] = the step at which bound[j] was computed.
    bound = G.all_gains(objective, start.coverage, chunk=chunk, axis_name=axis_name)
    fresh_at = jnp.zeros((n,), jnp.int32)

    def settled(bound, fresh_at, step):
        # The first maximum orders bounds by (value desc, index asc): if it is fresh, no other candidate can beat it
        # nor tie it with a lower index, because every other gain is ≤ its bound.
        return fresh_at[jnp.argmax(bound)] == step

    def refine(state):
        loop, bound, fresh_at, tries = state

        def batch_pass(_):
            _, top = lax.top_k(bound, batch)
            fresh = G.gains_at(objective, loop.coverage, top, chunk=chunk, axis_name=axis_name)
            fresh = jnp.where(loop.taken[top], -jnp.inf, fresh)
            return bound.at[top].set(fresh), fresh_at.at[top].set(loop.step)

        def full_pass(_):
            fresh = G.all_gains(objective, loop.coverage, chunk=chunk, axis_name=axis_name)
            return jnp.where(loop.taken, -jnp.inf, fresh), jnp.full_like(fresh_at, loop.step)

        bound, fresh_at = lax.cond(tries < rounds, batch_pass, full_pass, None)
        return loop, bound, fresh_at, tries + 1

    def step(carry):
        loop, bound, fresh_at = carry
        loop, bound, fresh_at, _ = lax.while_loop(
            lambda s: jnp.logical_not(settled(s[1], s[2], s[0].step)), refine, (loop, bound, fresh_at, jnp.int32(0))
        )
        best = jnp.argmax(bound).astype(jnp.int32)
        gain = bound[best]
        loop = _commit(objective, loop, best, gain, stop_if_non_positive)
        return loop, bound.at[best].set(-jnp.inf), fresh_at

    loop, _, _ = lax.while_loop(_running(k), step, (start, bound, fresh_at))
    return _finish(loop)


def stochastic_sample_size(n_candidates: int, k: int, epsilon: float) -> int:
    """s = ⌈(n/k)·ln(1/ε)⌉, clipped to [1, n]."""
    if not (0.0 < epsilon < 1.0):
        raise SelectionError(f"epsilon must lie in (0, 1) for stochastic greedy, got {epsilon}")
    return int(min(n_candidates, max(1, math.ceil(n_candidates / k * math.log(1.0 / epsilon)))))


def stochastic_greedy(objective: Objective, k: int, key, *, epsilon: float = DEFAULT_EPSILON,
                      stop_if_non_positive: bool = False, chunk: int = G.DEFAULT_CHUNK, axis_name=None) -> Selection:
    """Stochastic greedy: the best of a fresh uniform sample of the unpicked candidates at every step.

    A sparse kernel with a column index takes the O(s · degree)-per-step variant of sparse_greedy.py instead."""
    if _column_indexed(objective):
        from delift_jax.select import sparse_greedy

        return sparse_greedy.stochastic_greedy(objective, k, key, epsilon=epsilon,
                                               stop_if_non_positive=stop_if_non_positive, axis_name=axis_name)
    n = objective.n_candidates
    size = stochastic_sample_size(n, k, epsilon)

    def step(carry):
        (loop,) = carry
        # Uniform sampling without replacement: the `size` largest of i.i.d. uniform priorities among unpicked ones.
        priority = jax.random.uniform(jax.random.fold_in(key, loop.step), (n,))
        _, sample = lax.top_k(jnp.where(loop.taken, -1.0, priority), size)
        fresh = G.gains_at(objective, loop.coverage, sample, chunk=chunk, axis_name=axis_name)
        fresh = jnp.where(loop.taken[sample], -jnp.inf, fresh)
        top = jnp.max(fresh)
        best = jnp.min(jnp.where(fresh == top, sample, n)).astype(jnp.int32)  # lowest index among tied maxima
        return (_commit(objective, loop, best, top, stop_if_non_positive),)

    (loop,) = lax.while_loop(_running(k), step, (_start(objective, k),))
    return _finish(loop)
