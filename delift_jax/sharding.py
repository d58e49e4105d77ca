"""Device meshes and how arrays are laid out on them: the one home for mesh construction and sharding rules.

Data parallelism (scoring, kernels, selection): work is cut into units whose contents and padded shapes depend
only on the data and the configuration (never on how many devices there are). A call runs one unit per device
under ``jax.shard_map``, so each device executes the same program on the same unit whatever the mesh size: 1, 3
or 4 devices give bit-identical results. Units are grouped by shape; a group short of a full mesh is padded.

Model parallelism (training): a ``(data, model)`` mesh and logical axis names on every parameter
(``PARAM_AXES``: ``embed``, ``heads``, ``mlp``, ``vocab``, ``layers``, ``rank``), mapped to mesh axes by rules
(``FSDP_TP_RULES``: ``embed`` over ``data`` is FSDP, ``heads``/``mlp``/``vocab`` over ``model`` is tensor
parallelism). A dimension that the mesh axis does not divide stays whole.
"""

from __future__ import annotations

import re
from itertools import groupby
from typing import Callable, Hashable, Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from delift_jax.errors import DeliftError

DATA_AXIS = "data"
MODEL_AXIS = "model"
Unit = TypeVar("Unit")


def data_mesh(devices: Sequence | None = None, *, all_processes: bool = False) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: this process's devices, or with
    ``all_processes`` every device of a multi-process run)."""
    if devices is None:
        devices = jax.devices() if all_processes else jax.local_devices()
    devices = list(devices)
    if not devices:
        raise DeliftError("no devices to build a mesh from")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def model_mesh(data: int, model: int, devices: Sequence | None = None) -> Mesh:
    """A ``(data, model)`` mesh of ``data * model`` devices (default: the first of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1 or data * model > len(devices):
        raise DeliftError(f"a mesh of data={data} x model={model} needs {data * model} devices; "
                          f"{len(devices)} are available")
    return Mesh(np.asarray(devices[:data * model]).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


def parse_mesh(text: str, devices: Sequence | None = None) -> Mesh:
    """A mesh from ``"data=4,model=2"`` (either axis may be left out: it defaults to 1)."""
    sizes = {DATA_AXIS: 1, MODEL_AXIS: 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in sizes or not value.isdigit():
            raise DeliftError(f"mesh {text!r}: write axes as data=N,model=M (got {part!r})")
        sizes[name] = int(value)
    return model_mesh(sizes[DATA_AXIS], sizes[MODEL_AXIS], devices)


# Logical axes per parameter, by dotted path. LoRA adapters wrap a projection: its frozen kernel is
# "<proj>.base.kernel", A is [layers, in, rank] and B [layers, rank, out].
PARAM_AXES: tuple[tuple[str, tuple], ...] = (
    (r"embed\.embedding", ("vocab", "embed")),
    (r"lm_head\.kernel", ("embed", "vocab")),
    (r"layers\.attn\.[qkv]_proj(\.base)?\.kernel", ("layers", "embed", "heads")),
    (r"layers\.attn\.[qkv]_proj(\.base)?\.bias", ("layers", "heads")),
    (r"layers\.attn\.o_proj(\.base)?\.kernel", ("layers", "heads", "embed")),
    (r"layers\.mlp\.(gate|up)_proj(\.base)?\.kernel", ("layers", "embed", "mlp")),
    (r"layers\.mlp\.(gate|up)_proj(\.base)?\.bias", ("layers", "mlp")),
    (r"layers\.mlp\.down_proj(\.base)?\.kernel", ("layers", "mlp", "embed")),
    (r"layers\.attn\.[qkvo]_proj\.lora_a|layers\.mlp\.(gate|up|down)_proj\.lora_a", ("layers", "embed", "rank")),
    (r"layers\.attn\.[qkv]_proj\.lora_b", ("layers", "rank", "heads")),
    (r"layers\.mlp\.(gate|up)_proj\.lora_b", ("layers", "rank", "mlp")),
    (r"layers\.(attn\.o_proj|mlp\.down_proj)\.lora_b", ("layers", "rank", "embed")),
)
# Logical axis -> mesh axis. FSDP: parameters split over "data" along their width; tensor parallelism: heads, MLP
# width and vocabulary split over "model". Norm scales, biases along "embed", ranks and the layer axis stay whole.
FSDP_TP_RULES: dict[str, str | None] = {"embed": DATA_AXIS, "heads": MODEL_AXIS, "mlp": MODEL_AXIS,
                                        "vocab": MODEL_AXIS, "layers": None, "rank": None}


def logical_axes(name: str, ndim: int) -> tuple | None:
    """The logical axes of the parameter at dotted path ``name`` (None: no rule, keep it whole)."""
    for pattern, axes in PARAM_AXES:
        if re.fullmatch(pattern, name) and len(axes) == ndim:
            return axes
    return None


def param_partition(mesh: Mesh, rules: dict[str, str | None] = FSDP_TP_RULES):
    """``(name, shape) -> PartitionSpec`` placing parameters by ``PARAM_AXES`` and ``rules`` on ``mesh``."""

    def spec(name: str, shape: tuple[int, ...]) -> PartitionSpec:
        axes = logical_axes(name, len(shape))
        if axes is None:
            return PartitionSpec()
        out = []
        for size, axis in zip(shape, axes):
            mesh_axis = rules.get(axis) if axis is not None else None
            fits = mesh_axis in mesh.shape and size % mesh.shape[mesh_axis] == 0 and mesh.shape[mesh_axis] > 1
            out.append(mesh_axis if fits else None)
        return PartitionSpec(*out)

    return spec


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
