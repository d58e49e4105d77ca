"""The entry point: resolve the budget, build a jitted (optionally row-sharded) selector, run it.

    selection = maximize(objective, 0.3, optimizer="lazy")            # k = int(0.3 · n_candidates) picks
    selection = maximize(objective, 100, optimizer="stochastic", seed=0, mesh=row_mesh())

A float budget is a fraction of the candidates, k = int(fraction · n); an int budget is the count k itself
(``delift_jax.budget.resolve_budget``).
Selectors are cached per (optimizer, k, options, mesh), so repeated calls with same-shaped inputs do not recompile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from delift_jax.budget import resolve_budget
from delift_jax.errors import SelectionError
from delift_jax.select import gains as G
from delift_jax.select import greedy_loop as L
from delift_jax.select import optimizers as O
from delift_jax.select import sharding as S
from delift_jax.select.objectives import Objective


def _run(optimizer: str, k: int, options: tuple, axis_name):
    settings = dict(options)
    stop = settings.pop("stop_if_non_positive")
    chunk = settings.pop("chunk")

    def select(objective: Objective, key) -> L.Selection:
        if optimizer == "naive":
            return O.naive_greedy(objective, k, stop_if_non_positive=stop, chunk=chunk, axis_name=axis_name)
        if optimizer == "lazy":
            return O.lazy_greedy(objective, k, batch=settings["batch"], rounds=settings["rounds"],
                                 stop_if_non_positive=stop, chunk=chunk, axis_name=axis_name)
        return O.stochastic_greedy(objective, k, key, epsilon=settings["epsilon"], stop_if_non_positive=stop,
                                   chunk=chunk, axis_name=axis_name)

    return select


@functools.lru_cache(maxsize=64)
def _selector(optimizer: str, k: int, options: tuple, mesh: Mesh | None, specs_key):
    if mesh is None:
        return jax.jit(_run(optimizer, k, options, None))
    select = _run(optimizer, k, options, S.AXIS)
    objective_specs = specs_key
    sharded = jax.shard_map(select, mesh=mesh, in_specs=(objective_specs, P()), out_specs=P())
    return jax.jit(sharded)


def build_selector(objective: Objective, budget, *, optimizer: str = "lazy", epsilon: float = L.DEFAULT_EPSILON,
                   batch: int = L.DEFAULT_BATCH, rounds: int = L.DEFAULT_ROUNDS, stop_if_non_positive: bool = False,
                   chunk: int = G.DEFAULT_CHUNK, mesh: Mesh | None = None):
    """A jitted ``select(objective, key) -> Selection`` for objectives shaped like ``objective``.

    With a mesh, the objective passed to ``select`` must already be laid out by ``sharding.shard_rows``.
    Exposed so that compile time can be measured apart from run time (``select.lower(obj, key).compile()``).
    """
    if optimizer not in O.OPTIMIZERS:
        raise SelectionError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(O.OPTIMIZERS)}")
    if int(batch) < 1 or int(rounds) < 0 or int(chunk) < 1:
        raise SelectionError(f"batch and chunk must be >= 1 and rounds >= 0, got {batch}, {chunk}, {rounds}")
    k = resolve_budget(budget, objective.n_candidates)
    if optimizer == "stochastic":
        L.stochastic_sample_size(objective.n_candidates, k, epsilon)  # validates epsilon
    options = (("batch", int(batch)), ("chunk", int(chunk)), ("epsilon", float(epsilon)), ("rounds", int(rounds)),
               ("stop_if_non_positive", bool(stop_if_non_positive)))
    specs = None if mesh is None else S.objective_specs(objective)
    return _selector(optimizer, k, options, mesh, specs)


def maximize(objective: Objective, budget, *, optimizer: str = "lazy", seed: int = 0,
             epsilon: float = L.DEFAULT_EPSILON, batch: int = L.DEFAULT_BATCH, rounds: int = L.DEFAULT_ROUNDS,
             stop_if_non_positive: bool = False, chunk: int = G.DEFAULT_CHUNK, mesh: Mesh | None = None) -> L.Selection:
    """Greedy maximization of ``objective`` under a cardinality budget; see optimizers.py for the algorithms.

    optimizer: "naive" | "lazy" | "stochastic"; seed: PRNG seed (stochastic only); epsilon: stochastic sample
    parameter; batch/rounds: block-lazy settings; chunk: column chunk of a dense full pass; mesh: a 1-D Mesh with
    axis "data" to shard the kernel rows over (``sharding.row_mesh()``).
    Returns Selection(picks int32[k], gains float32[k], n_selected).
    """
    if mesh is not None:
        if S.AXIS not in mesh.shape or len(mesh.shape) != 1:
            raise SelectionError(f"mesh must be 1-D with the axis name {S.AXIS!r}, got axes {tuple(mesh.shape)}")
        objective = S.shard_rows(objective, mesh)
    else:
        objective = S.index_columns(objective)  # sparse kernels: O(degree) work per pick (columns.py)
    select = build_selector(objective, budget, optimizer=optimizer, epsilon=epsilon, batch=batch, rounds=rounds,
                            stop_if_non_positive=stop_if_non_positive, chunk=chunk, mesh=mesh)
    return select(objective, jax.random.key(int(seed)))


def objective_value(selection: L.Selection) -> float:
    """f(picks) = the sum of the greedy marginal gains."""
    return float(jnp.sum(selection.gains))
