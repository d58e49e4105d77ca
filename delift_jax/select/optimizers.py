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

The loop state, :class:`Selection` and the shared settings live in greedy_loop.py; sparse kernels with a column
index are handed to sparse_greedy.py, which needs nothing from here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from delift_jax.select import gains as G
from delift_jax.select import greedy_loop as L
from delift_jax.select import sparse_greedy
from delift_jax.select.greedy_loop import (DEFAULT_BATCH, DEFAULT_EPSILON, DEFAULT_ROUNDS, Selection,
                                           stochastic_sample_size)
from delift_jax.select.objectives import Objective
from delift_jax.select.sparse import SparseKernel

OPTIMIZERS = ("naive", "lazy", "stochastic")


def _column_indexed(objective: Objective) -> bool:
    return isinstance(objective.kernel, SparseKernel) and objective.kernel.column_index is not None


def _commit(objective: Objective, loop: L.Loop, candidate, gain, stop_if_non_positive: bool) -> L.Loop:
    """Record ``candidate`` as the next pick, or stop instead when its gain is not positive and stopping is on."""
    stop = jnp.logical_and(stop_if_non_positive, gain <= 0)
    keep = jnp.logical_not(stop)
    coverage = jnp.where(keep, G.cover(objective, loop.coverage, candidate), loop.coverage)
    return L.commit(loop, candidate, gain, coverage, stop, keep)


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

    (loop,) = lax.while_loop(L.running(k), step, (L.start(objective, k),))
    return L.finish(loop)


def lazy_greedy(objective: Objective, k: int, *, batch: int = DEFAULT_BATCH, rounds: int = DEFAULT_ROUNDS,
                stop_if_non_positive: bool = False, chunk: int = G.DEFAULT_CHUNK, axis_name=None) -> Selection:
    """Block-lazy greedy: stale upper bounds, the top ``batch`` re-evaluated at once, a full pass after ``rounds``.

    A sparse kernel with a column index takes the O(degree)-per-pick lazy greedy of sparse_greedy.py instead."""
    if _column_indexed(objective):
        return sparse_greedy.lazy_greedy(objective, k, batch=batch, stop_if_non_positive=stop_if_non_positive,
                                         axis_name=axis_name)
    n = objective.n_candidates
    batch = max(1, min(batch, n))
    start = L.start(objective, k)
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

    loop, _, _ = lax.while_loop(L.running(k), step, (start, bound, fresh_at))
    return L.finish(loop)


def stochastic_greedy(objective: Objective, k: int, key, *, epsilon: float = DEFAULT_EPSILON,
                      stop_if_non_positive: bool = False, chunk: int = G.DEFAULT_CHUNK, axis_name=None) -> Selection:
    """Stochastic greedy: the best of a fresh uniform sample of the unpicked candidates at every step.

    A sparse kernel with a column index takes the O(s · degree)-per-step variant of sparse_greedy.py instead."""
    if _column_indexed(objective):
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

    (loop,) = lax.while_loop(L.running(k), step, (L.start(objective, k),))
    return L.finish(loop)
