"""Data parallelism over a one-axis device mesh, with results independent of the device count.

Work is cut into units whose contents and padded shapes depend only on the data and the configuration (never on
how many devices there are). A call runs one unit per device under ``jax.shard_map``, so each device executes the
same program on the same unit whatever the mesh size: 1, 3 or 4 devices give bit-identical results. Units are
grouped by shape; a group short of a full mesh is padded with empty units.
"""

from __future__ import annotations

from itertools import groupby
from typing import Callable, Hashable, Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
Unit = TypeVar("Unit")


def data_mesh(devices: Sequence | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: all devices of this process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def split_rows(array: np.ndarray, mesh: Mesh) -> jax.Array:
    return jax.device_put(array, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def per_device(fn: Callable, mesh: Mesh, n_replicated: int) -> Callable:
    """``fn`` under ``shard_map``: its first ``n_replicated`` arguments are replicated, the others (and the
    output) split along their leading axis, one slice per device."""

    def wrapped(*args):
        specs = tuple(PartitionSpec() if i < n_replicated else PartitionSpec(DATA_AXIS) for i in range(len(args)))
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(DATA_AXIS))(*args)

    return wrapped


def calls_by_shape(units: Sequence[Unit], shape_of: Callable[[Unit], Hashable],
                   n_devices: int) -> list[tuple[Hashable, list[Unit]]]:
    """Group consecutive units of equal shape into calls of at most ``n_devices`` units each."""
    calls = []
    for shape, same in groupby(units, key=shape_of):
        same = list(same)
        for start in range(0, len(same), n_devices):
            calls.append((shape, same[start:start + n_devices]))
    return calls
