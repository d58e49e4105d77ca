"""The column index of a sparse top-k kernel: for every candidate, the rows that list it (CSC offsets).

A SparseKernel is row-major: row i lists its k_nn best candidates. Greedy selection also needs the other
orientation: the gain of candidate j sums over the rows that list j, and picking j raises the coverage of exactly
those rows. With the column index both cost O(degree of j) instead of a scan of all n_rows · k_nn entries:

    entries of column j  =  rows[offsets[j] : offsets[j + 1]],  values[offsets[j] : offsets[j + 1]]

(rows ascending within a column). ``lax`` needs static shapes, so a column is read in chunks of ``width`` entries:
a column no longer than ``width`` (the common case: the mean degree is k_nn for a square kernel) is one padded
chunk; a hub candidate listed by many rows takes a ``lax.while_loop`` over ceil(degree / width) chunks — the
overflow path, whose cost is proportional to the hub's degree and is paid only when the hub is read.

Row sharding: the index is built per shard of rows (``shards`` equal row blocks, local row numbers), stacked on a
leading shard axis that a Mesh splits like the rows. Inside ``jax.shard_map`` each device reads its own shard
(leading axis of length 1) and the partial gains are summed with a ``psum`` by the caller.

Rows that do not list j hold the implicit utility 0 (sparse.py). Coverage never falls below 0 on this path (the
caller checks floor >= 0), so such rows neither gain from j nor change when j is picked.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEFAULT_WIDTH = 32


class ColumnIndex(NamedTuple):
    """CSC index of a sparse kernel, one per row shard. ``offsets``: int32[S, n_candidates + 1]; ``rows``:
    int32[S, nnz] local row of each entry, grouped by column; ``values``: float[S, nnz] its utility (padding: row
    0, value 0, beyond the column's end); ``width``: chunk length (static)."""

    offsets: jax.Array
    rows: jax.Array
    values: jax.Array
    width: int


jax.tree_util.register_pytree_node(
    ColumnIndex,
    lambda c: ((c.offsets, c.rows, c.values), c.width),
    lambda width, children: ColumnIndex(*children, width),
)


def default_width(n_rows: int, k_nn: int, n_candidates: int) -> int:
    """The smallest power of two >= the mean column degree, within [8, 128]."""
    mean_degree = max(1.0, n_rows * k_nn / max(1, n_candidates))
    return int(min(128, max(8, 1 << int(np.ceil(np.log2(mean_degree))))))


def build_column_index(indices, values, n_candidates: int, *, shards: int = 1, width: int | None = None) -> ColumnIndex:
    """Column index of the sparse kernel (``indices``, ``values``: [n_rows, k_nn]) split into ``shards`` equal row
    blocks (n_rows must be a multiple of ``shards``). Host-side, O(n_rows · k_nn log) once per selection."""
    indices = np.asarray(indices)
    values = np.asarray(values)
    n_rows, k_nn = indices.shape
    if n_rows % shards:
        raise ValueError(f"{n_rows} rows do not split into {shards} equal shards")
    width = int(width or default_width(n_rows, k_nn, n_candidates))
    per_shard = n_rows // shards
    offsets, rows, vals = [], [], []
    for s in range(shards):
        flat = indices[s * per_shard:(s + 1) * per_shard].reshape(-1).astype(np.int64)
        order = _stable_order(flat)  # stable: rows ascending within each column
        counts = np.bincount(flat, minlength=n_candidates)
        offsets.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        rows.append((order // k_nn).astype(np.int32))
        vals.append(values[s * per_shard:(s + 1) * per_shard].reshape(-1)[order])
    return ColumnIndex(jnp.asarray(np.stack(offsets)), jnp.asarray(np.stack(rows)),
                       jnp.asarray(np.stack(vals)), width)


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """np.argsort(keys, kind="stable") for keys in [0, 2^32), as two 16-bit radix passes (numpy sorts 16-bit keys
    by radix in linear time; a comparison sort of n·k_nn keys took longer)."""
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if keys.size and keys.max() >= 1 << 16:
        order = order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]
    return order


def local(index: ColumnIndex) -> ColumnIndex:
    """This device's shard (the leading shard axis has length 1 inside shard_map or without a mesh)."""
    return ColumnIndex(index.offsets[0], index.rows[0], index.values[0], index.width)


def _chunk(index: ColumnIndex, start, count, c):
    """Entries c·width … (c+1)·width − 1 of the columns starting at ``start`` (int32[B]) with ``count`` entries:
    (rows, values, mask), each [B, width]; positions past a column's end are masked."""
    lane = c * index.width + jnp.arange(index.width, dtype=jnp.int32)
    position = start[:, None] + lane[None, :]
    mask = lane[None, :] < count[:, None]
    last = index.rows.shape[0] - 1
    position = jnp.clip(position, 0, last)
    return index.rows[position], index.values[position].astype(jnp.float32), mask


def _extent(index: ColumnIndex, candidates):
    start = index.offsets[candidates]
    return start, index.offsets[candidates + 1] - start


def column_gains(index: ColumnIndex, coverage, cap, candidates, enabled=True) -> jax.Array:
    """Σ over the local rows i listing j of max(min(K[i, j], cap_i) − c_i, 0), for each j in ``candidates``
    (int32[B]): float32[B]. Work: B · ceil(max degree / width) · width; none (zeros) when ``enabled`` is False."""
    start, count = _extent(index, candidates)
    n_chunks = jnp.where(enabled, (jnp.max(count) + index.width - 1) // index.width, 0)

    def body(state):
        c, total = state
        rows, vals, mask = _chunk(index, start, count, c)
        if cap is not None:
            vals = jnp.minimum(vals, cap[rows])
        contribution = jnp.where(mask, jnp.maximum(vals - coverage[rows], 0.0), 0.0)
        return c + 1, total + jnp.sum(contribution, axis=1)

    # Zeros derived from the shard's own offsets: under shard_map the sum is per device ("varying"), like them.
    _, total = lax.while_loop(lambda s: s[0] < n_chunks, body, (jnp.int32(0), (count * 0).astype(jnp.float32)))
    return total


def column_cover(index: ColumnIndex, coverage, cap, candidate, enabled=True) -> jax.Array:
    """Coverage after picking ``candidate``: only the local rows listing it change (c_i ← max(c_i, min(K, cap))).
    ``enabled`` False leaves coverage as it is without an O(n_rows) select."""
    start, count = _extent(index, jnp.reshape(candidate, (1,)))
    n_chunks = jnp.where(enabled, (count[0] + index.width - 1) // index.width, 0)
    n_rows = coverage.shape[0]

    def body(state):
        c, coverage = state
        rows, vals, mask = _chunk(index, start, count, c)
        rows, vals, mask = rows[0], vals[0], mask[0]
        if cap is not None:
            vals = jnp.minimum(vals, cap[rows])
        # Masked lanes point past the last row and are dropped; a row occurs once per column, so no collisions.
        return c + 1, coverage.at[jnp.where(mask, rows, n_rows)].max(vals, mode="drop")

    _, coverage = lax.while_loop(lambda s: s[0] < n_chunks, body, (jnp.int32(0), coverage))
    return coverage
