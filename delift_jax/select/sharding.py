"""Row sharding of an objective over a device Mesh.

The kernel K is split by rows (covered elements) over the mesh axis ``"data"`` (for the candidate-major Kᵀ of a
dense kernel that is its second axis): each device holds n_rows / D rows of
K together with their floor, cap and coverage; candidates (columns) and the modular bonus are replicated. Inside
``jax.shard_map`` each device sums its rows' contributions to a gain and a ``psum`` over "data" completes it, so all
devices see identical gains and make identical picks. Only gains (n_candidates floats) cross devices per pass.

Rows are padded to a multiple of the device count with K = 0, floor = 0 and cap = 0: such a row adds
max(min(0, 0) − 0, 0) = 0 to every gain, so padding never changes a pick or a value.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from delift_jax.errors import SelectionError
from delift_jax.sharding import data_mesh
from delift_jax.select import columns as C
from delift_jax.select.layout import DenseKernel
from delift_jax.select.objectives import Objective
from delift_jax.select.sparse import SparseKernel

AXIS = "data"


def row_mesh(devices=None) -> Mesh:
    """A 1-D Mesh over ``devices`` (default: all of jax.devices()) with the axis name "data"."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise SelectionError("no devices to build a mesh from")
    return data_mesh(devices)


def pad_rows(objective: Objective, multiple: int) -> Objective:
    """Append zero rows so that n_rows is a multiple of ``multiple`` (padding rows contribute nothing)."""
    extra = (-objective.n_rows) % multiple
    if extra == 0:
        return objective

    def pad(x, value=0):
        return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1), constant_values=value)

    kernel = objective.kernel
    if isinstance(kernel, SparseKernel):
        # Distinct indices per padding row with value 0, so the row stays a valid top-k row.
        k_nn = kernel.indices.shape[1]
        filler = jnp.broadcast_to(jnp.arange(k_nn, dtype=jnp.int32), (extra, k_nn))
        kernel = SparseKernel(jnp.concatenate([kernel.indices, filler]), pad(kernel.values), kernel.n_candidates,
                              kernel.column_index)  # the caller rebuilds the column index for the padded rows
    else:
        kernel = DenseKernel(jnp.pad(kernel.columns, [(0, 0), (0, extra)]))
    cap = None if objective.cap is None else pad(objective.cap)
    return Objective(kernel, pad(objective.floor), cap, objective.bonus, objective.name)


def objective_specs(objective: Objective) -> Objective:
    """PartitionSpecs with the same tree structure as ``objective``: row arrays split over "data"."""
    kernel = objective.kernel
    if isinstance(kernel, SparseKernel):
        index = kernel.column_index
        index_spec = None if index is None else C.ColumnIndex(P(AXIS), P(AXIS), P(AXIS), index.width)
        kernel_spec = SparseKernel(P(AXIS, None), P(AXIS, None), kernel.n_candidates, index_spec)
    else:
        kernel_spec = DenseKernel(P(None, AXIS))  # candidate-major: the covered rows are the second axis of Kᵀ
    return Objective(
        kernel_spec,
        P(AXIS),
        None if objective.cap is None else P(AXIS),
        None if objective.bonus is None else P(),
        objective.name,
    )


def shard_rows(objective: Objective, mesh: Mesh) -> Objective:
    """Pad to the mesh size and place the row arrays of ``objective`` split over the mesh's "data" axis."""
    objective = pad_rows(objective, mesh.shape[AXIS])
    objective = index_columns(objective, mesh.shape[AXIS])
    specs = objective_specs(objective)
    return jax.tree.map(lambda spec, x: jax.device_put(x, NamedSharding(mesh, spec)), specs, objective,
                        is_leaf=lambda node: isinstance(node, P))


def index_columns(objective: Objective, shards: int = 1) -> Objective:
    """Attach a column index (columns.py) to a sparse kernel, one shard per ``shards`` equal row blocks, so greedy
    selection does O(degree) work per pick. Left out (the kernel scanned row-major as before) for dense kernels and
    when some floor is negative: there a row not listing a pick still rises to its implicit 0, which the index
    cannot see."""
    kernel = objective.kernel
    if not isinstance(kernel, SparseKernel) or float(jnp.min(objective.floor)) < 0:
        return objective
    width = None if kernel.column_index is None else kernel.column_index.width
    index = C.build_column_index(kernel.indices, kernel.values, kernel.n_candidates, shards=shards, width=width)
    return dataclasses.replace(objective, kernel=kernel._replace(column_index=index))
