"""Marginal gains and coverage updates of the saturated facility-location form (see objectives.py):

    gain_j(c) = Σ_i max(min(K[i, j], cap_i) − c_i, 0) + bonus_j,        cover(c, j)_i = max(c_i, min(K[i, j], cap_i)).

The functions work on the rows a device holds. With ``axis_name`` set (inside ``jax.shard_map`` over a Mesh whose
rows are split on that axis) the per-row sum is completed with a ``psum``, so every device sees the same gains and
makes the same pick; coverage stays local to the rows.

Memory: a dense kernel is held candidate-major (layout.py). The full pass walks it in chunks of ``chunk`` candidates
(column chunks of K, contiguous row blocks of Kᵀ), so the largest temporary is (chunk, n_rows), never a second
n × n array. bfloat16 kernels are upcast per chunk; gains accumulate in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from delift_jax.select.objectives import Objective
from delift_jax.select.sparse import SparseKernel

DEFAULT_CHUNK = 256


def _candidate_gains(block, coverage, cap):
    """Σ_i max(min(block[b, i], cap_i) − c_i, 0) for every candidate b of a (B, n_rows) block of Kᵀ, in float32."""
    block = block.astype(jnp.float32)
    if cap is not None:
        block = jnp.minimum(block, cap[None, :])
    return jnp.sum(jnp.maximum(block - coverage[None, :], 0.0), axis=1)


def _reduce(value, axis_name):
    return value if axis_name is None else lax.psum(value, axis_name)


def all_gains(objective: Objective, coverage, *, chunk: int = DEFAULT_CHUNK, axis_name=None) -> jax.Array:
    """gain_j(c) for every candidate j: float32[n_candidates]."""
    kernel = objective.kernel
    if isinstance(kernel, SparseKernel):
        values = kernel.values.astype(jnp.float32)
        if objective.cap is not None:
            values = jnp.minimum(values, objective.cap[:, None])
        contribution = jnp.maximum(values - coverage[:, None], 0.0)
        gains = jax.ops.segment_sum(contribution.reshape(-1), kernel.indices.reshape(-1),
                                    num_segments=kernel.n_candidates)
    else:
        columns = kernel.columns
        n_candidates = columns.shape[0]
        width = min(chunk, n_candidates)
        n_chunks = -(-n_candidates // width)
        if n_chunks == 1:
            gains = _candidate_gains(columns, coverage, objective.cap)
        else:
            def one_chunk(c, gains):
                # The last chunk is shifted back to stay in bounds; the overlap recomputes identical values.
                start = jnp.minimum(c * width, n_candidates - width)
                block = lax.dynamic_slice_in_dim(columns, start, width, axis=0)
                return lax.dynamic_update_slice_in_dim(gains, _candidate_gains(block, coverage, objective.cap), start, 0)

            gains = lax.fori_loop(0, n_chunks, one_chunk, jnp.zeros((n_candidates,), jnp.float32))
    gains = _reduce(gains, axis_name)
    if objective.bonus is not None:
        gains = gains + objective.bonus
    return gains


def gains_at(objective: Objective, coverage, candidates, *, chunk: int = DEFAULT_CHUNK, axis_name=None) -> jax.Array:
    """gain_j(c) for the candidates listed in ``candidates`` (int32[B]): float32[B].

    Dense: gathers only those B candidates (B contiguous rows of Kᵀ). Sparse: a row-major top-k kernel has no column index, so this is a full
    pass followed by a gather (O(n_rows · k_nn), which is what a sparse full pass costs anyway).
    """
    kernel = objective.kernel
    if isinstance(kernel, SparseKernel):
        return all_gains(objective, coverage, chunk=chunk, axis_name=axis_name)[candidates]
    gains = _reduce(_candidate_gains(jnp.take(kernel.columns, candidates, axis=0), coverage, objective.cap), axis_name)
    if objective.bonus is not None:
        gains = gains + objective.bonus[candidates]
    return gains


def cover(objective: Objective, coverage, candidate) -> jax.Array:
    """Coverage after adding ``candidate``: c_i ← max(c_i, min(K[i, candidate], cap_i)) on the local rows."""
    kernel = objective.kernel
    if isinstance(kernel, SparseKernel):
        hit = kernel.indices == candidate
        column = jnp.max(jnp.where(hit, kernel.values.astype(jnp.float32), -jnp.inf), axis=1)
        # Rows that do not list the candidate hold the implicit utility 0.
        column = jnp.where(jnp.any(hit, axis=1), column, 0.0)
    else:
        column = lax.dynamic_index_in_dim(kernel.columns, candidate, axis=0, keepdims=False).astype(jnp.float32)
    if objective.cap is not None:
        column = jnp.minimum(column, objective.cap)
    return jnp.maximum(coverage, column)
