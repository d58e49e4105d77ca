"""The sparse top-k utility kernel: for every covered element (row), its k_nn best candidates and their utilities.

A dense kernel K has shape (n_rows, n_candidates); row i holds the utility of every candidate j for element i.
The sparse form keeps only k_nn entries per row:

    K[i, indices[i, t]] = values[i, t]     for t < k_nn,      K[i, j] = 0 everywhere else.

Missing entries count as 0 because kernels are min-max normalized to [0, 1], so 0 is the floor of the scale and an
absent utility can never raise coverage; values must therefore be >= 0. The indices of a row must be distinct
(a top-k of a dense row is); a row with fewer than k_nn real utilities pads with value 0 at unused columns.

The kernel module produces this format; the selection code consumes it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SparseKernel(NamedTuple):
    """Top-k kernel. ``indices``: int32[n_rows, k_nn] candidate columns; ``values``: float[n_rows, k_nn] utilities;
    ``n_candidates``: number of candidate columns of the dense kernel this stands for (static, not traced);
    ``column_index``: optional column index (columns.py) that lets greedy selection touch only the rows listing a
    candidate; attached by the selector, never needed to describe the kernel."""

    indices: jax.Array
    values: jax.Array
    n_candidates: int
    column_index: object = None

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the dense kernel this stands for: (n_rows, n_candidates)."""
        return (int(self.indices.shape[0]), int(self.n_candidates))

    @property
    def dtype(self):
        return self.values.dtype


# n_candidates is metadata: it fixes array shapes, so it must stay a Python int under jit rather than become a tracer.
jax.tree_util.register_pytree_node(
    SparseKernel,
    lambda k: ((k.indices, k.values, k.column_index), k.n_candidates),
    lambda n_candidates, children: SparseKernel(children[0], children[1], n_candidates, children[2]),
)


def sparse_from_dense(kernel, k_nn: int) -> SparseKernel:
    """Keep the k_nn largest utilities of every row of a dense kernel (ties: lowest column first)."""
    kernel = kernel.rows() if hasattr(kernel, "rows") else jnp.asarray(kernel)
    k_nn = min(int(k_nn), kernel.shape[1])
    values, indices = jax.lax.top_k(kernel, k_nn)
    return SparseKernel(indices.astype(jnp.int32), values, int(kernel.shape[1]))


def sparse_to_dense(kernel: SparseKernel) -> jax.Array:
    """The dense (n_rows, n_candidates) kernel a sparse one stands for: absent entries are 0."""
    n_rows, n_candidates = kernel.shape
    rows = jnp.broadcast_to(jnp.arange(n_rows)[:, None], kernel.indices.shape)
    dense = jnp.zeros((n_rows, n_candidates), kernel.values.dtype)
    return dense.at[rows, kernel.indices].max(kernel.values)


def row_max(kernel) -> jax.Array:
    """max_q K[i, q] for every row i, as float32, for a dense array or a SparseKernel (absent entries are 0)."""
    if isinstance(kernel, SparseKernel):
        best = jnp.max(kernel.values.astype(jnp.float32), axis=1)
        # A row that does not list every candidate has an implicit 0 somewhere.
        if kernel.indices.shape[1] < kernel.n_candidates:
            best = jnp.maximum(best, 0.0)
        return best
    return jnp.max(jnp.asarray(kernel).astype(jnp.float32), axis=1)


def is_sparse(kernel) -> bool:
    return isinstance(kernel, SparseKernel)


def as_numpy_sparse(kernel: SparseKernel) -> SparseKernel:
    """Host copy (numpy arrays) of a sparse kernel, for validation and file output."""
    return SparseKernel(np.asarray(kernel.indices), np.asarray(kernel.values), int(kernel.n_candidates))
