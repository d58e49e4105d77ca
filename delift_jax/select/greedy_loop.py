"""What every greedy maximizer shares, dense (optimizers.py) or sparse (sparse_greedy.py): the state carried
through its ``lax`` loop, how a pick is recorded, when the loop runs, the :class:`Selection` it returns, and the
settings both variants read (default batch and ε, the stochastic sample size).

Its own home so that data flows one way: ``greedy_loop ← sparse_greedy ← optimizers``. How coverage grows with a
pick differs between the two (a dense cover over every row, or an O(degree) cover from a column index), so callers
compute the new coverage and :func:`commit` only records it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from delift_jax.errors import SelectionError
from delift_jax.select.objectives import Objective

DEFAULT_BATCH = 16
DEFAULT_ROUNDS = 8
DEFAULT_EPSILON = 0.01


class Selection(NamedTuple):
    """picks: int32[k] candidate indices in pick order (−1 after an early stop); gains: float32[k] marginal gain of
    each pick (0 after an early stop); n_selected: int32 scalar, the number of real picks."""

    picks: jax.Array
    gains: jax.Array
    n_selected: jax.Array


class Loop(NamedTuple):
    """State shared by every greedy loop."""

    step: jax.Array  # picks made so far
    stopped: jax.Array  # bool: early stop triggered
    coverage: jax.Array  # float32[n_local_rows]
    taken: jax.Array  # bool[n_candidates]
    picks: jax.Array
    gains: jax.Array


def start(objective: Objective, k: int) -> Loop:
    return Loop(
        step=jnp.int32(0),
        stopped=jnp.bool_(False),
        coverage=objective.floor.astype(jnp.float32),
        taken=jnp.zeros((objective.n_candidates,), bool),
        picks=jnp.full((k,), -1, jnp.int32),
        gains=jnp.zeros((k,), jnp.float32),
    )


def commit(loop: Loop, candidate, gain, coverage, stop, keep) -> Loop:
    """Record ``candidate`` (with ``gain`` and the ``coverage`` it leads to) as the next pick when ``keep``; set the
    early-stop flag to ``stop``. With ``keep`` False only the flag changes: the slot written holds −1 and 0, which
    unwritten slots hold already."""
    return Loop(
        step=loop.step + keep.astype(jnp.int32),
        stopped=stop,
        coverage=coverage,
        taken=loop.taken.at[candidate].set(jnp.logical_or(loop.taken[candidate], keep)),
        picks=loop.picks.at[loop.step].set(jnp.where(keep, candidate, -1)),
        gains=loop.gains.at[loop.step].set(jnp.where(keep, gain, 0.0)),
    )


def running(k: int):
    """The ``lax.while_loop`` condition of a loop whose carry starts with a :class:`Loop`."""
    return lambda carry: jnp.logical_and(carry[0].step < k, jnp.logical_not(carry[0].stopped))


def finish(loop: Loop) -> Selection:
    return Selection(loop.picks, loop.gains, loop.step)


def stochastic_sample_size(n_candidates: int, k: int, epsilon: float) -> int:
    """s = ⌈(n/k)·ln(1/ε)⌉, clipped to [1, n]."""
    if not (0.0 < epsilon < 1.0):
        raise SelectionError(f"epsilon must lie in (0, 1) for stochastic greedy, got {epsilon}")
    return int(min(n_candidates, max(1, math.ceil(n_candidates / k * math.log(1.0 / epsilon)))))
