"""Device meshes and how arrays are laid out on them: the one home for mesh construction and sharding rules.

Data parallelism (scoring, kernels, selection): work is cut into units whose contents and padded shapes depend
only on the data and the configuration (never on how many devices there are). A call runs one unit per device
under ``jax.shard_map``, so each device executes the same program on the same unit whatever the mesh size: 1, 3
or 4 devices give bit-identical results. Units are grouped by shape; a group short of a full mesh is padded.

Model parallelism (training, scoring, the kernel's pair engine): a ``(data, model)`` mesh and logical axis names on
every parameter (``PARAM_AXES``: ``embed``, ``heads``, ``mlp``, ``vocab``, ``layers``, ``rank``), mapped to mesh
axes by rules (``FSDP_TP_RULES``: ``embed`` over ``data`` is FSDP, ``heads``/``mlp``/``vocab`` over ``model`` is
tensor parallelism). A dimension that the mesh axis does not divide stays whole. Inference (``per_device``) is
manual over ``"data"`` only: each group of ``model`` devices runs one unit, and the compiler splits that unit's
program over the group (tensor parallel); parameters stored split over ``"data"`` (FSDP) are gathered on entry.
So results do not depend on the ``data`` size, and with ``model=1`` they equal the 1-D data mesh's exactly.
"""

from __future__ import annotations

import collections
import contextlib
import re
from functools import partial
from itertools import groupby
from typing import Callable, Hashable, Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from delift_jax.errors import DeliftError, UsageError

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


_CURRENT: list[Mesh] = []


@contextlib.contextmanager
def inference_mesh(mesh: Mesh | None):
    """Within the block, scoring and the kernel's pair engine run on ``mesh`` when their caller names none (how
    ``delift run --mesh`` reaches the kernels and NLL scoring of every method). None: no change."""
    if mesh is not None:
        _CURRENT.append(mesh)
    try:
        yield mesh
    finally:
        if mesh is not None:
            _CURRENT.remove(mesh)


def current_mesh() -> Mesh:
    """The innermost ``inference_mesh``, else a data mesh over this process's devices."""
    return _CURRENT[-1] if _CURRENT else data_mesh()


def model_mesh(data: int, model: int, devices: Sequence | None = None) -> Mesh:
    """A ``(data, model)`` mesh of ``data * model`` devices (default: the first of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1:
        raise DeliftError(f"a mesh of data={data} x model={model}: axis sizes must be at least 1")
    if data * model > len(devices):
        raise DeliftError(f"a mesh of data={data} x model={model} needs {data * model} devices; "
                          f"{len(devices)} are available")
    return Mesh(np.asarray(devices[:data * model]).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


def parse_mesh(text: str, devices: Sequence | None = None) -> Mesh:
    """A mesh from ``"data=4,model=2"`` (either axis may be left out: it defaults to 1; each axis at most once,
    sizes at least 1)."""
    sizes = {DATA_AXIS: 1, MODEL_AXIS: 1}
    given: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in sizes or not value.isdigit():
            raise DeliftError(f"mesh {text!r}: write axes as data=N,model=M (got {part!r})")
        if name in given:  # a repeated axis would silently keep only its last size
            raise DeliftError(f"mesh {text!r}: axis {name} is given twice; name each axis once, e.g. data=2,model=2")
        if int(value) < 1:
            raise DeliftError(f"mesh {text!r}: axis sizes must be at least 1 (got {part!r}); leave an axis out for "
                              "size 1")
        given.add(name)
        sizes[name] = int(value)
    return model_mesh(sizes[DATA_AXIS], sizes[MODEL_AXIS], devices)


def mesh_option(text: str, devices: Sequence | None = None) -> Mesh:
    """The mesh of a ``--mesh data=D,model=M`` option: well formed, and D*M equal to the number of ``devices``
    (default: this process's), so that no device is silently left idle."""
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = parse_mesh(text, devices)
    if mesh.size != len(devices):
        raise UsageError(f"--mesh {text}: data x model = {mesh.size} devices, but this process has {len(devices)}; "
                         f"choose sizes whose product is {len(devices)}")
    return mesh


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


def dotted_name(path) -> str:
    """``layers.attn.q_proj.kernel`` for a pytree path into a model's state (NNX ``value`` keys dropped)."""
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        if name != "value":
            parts.append(str(name))
    return ".".join(parts)


def has_model_axis(mesh: Mesh) -> bool:
    return MODEL_AXIS in mesh.axis_names


def data_size(mesh: Mesh) -> int:
    """Devices along ``"data"``: the units (batches, pair units) one call runs side by side."""
    return mesh.shape[DATA_AXIS]


def param_shardings(tree, mesh: Mesh, rules: dict[str, str | None] = FSDP_TP_RULES):
    """A ``NamedSharding`` per leaf of a model state: by ``PARAM_AXES`` and ``rules`` on a mesh with a
    ``"model"`` axis, replicated on a data mesh."""
    if not has_model_axis(mesh):
        return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)
    spec = param_partition(mesh, rules)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec(dotted_name(path), tuple(leaf.shape))), tree)


def place_params(tree, mesh: Mesh, rules: dict[str, str | None] = FSDP_TP_RULES):
    """A model state on ``mesh``: replicated on a data mesh, split by the rules on a ``(data, model)`` mesh."""
    return jax.device_put(tree, param_shardings(tree, mesh, rules))


def kv_spec(mesh: Mesh, kv_heads: int) -> PartitionSpec:
    """Stacked keys/values ``[layers, b, t, kv_heads, head_dim]`` inside a unit's program: the KV-head axis over
    ``"model"`` (as ``heads`` is in the projections) when ``model`` divides it, else whole."""
    model = mesh.shape.get(MODEL_AXIS, 1)
    heads = MODEL_AXIS if model > 1 and kv_heads % model == 0 else None
    return PartitionSpec(None, None, None, heads, None)


def constrain_kv(mesh: Mesh, kv_heads: int, *arrays):
    """``arrays`` (stacked keys/values) held with ``kv_spec``; unchanged on a mesh without a ``"model"`` axis.
    For use inside ``per_device`` (the ``"data"`` axis is manual there, ``"model"`` automatic)."""
    spec = kv_spec(mesh, kv_heads)
    if spec[3] is None:
        return arrays
    current = jax.sharding.get_abstract_mesh()  # inside shard_map: this mesh with "data" marked manual
    target = NamedSharding(mesh if current.empty else current, spec)
    return tuple(jax.lax.with_sharding_constraint(a, target) for a in arrays)


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def split_rows(array: np.ndarray, mesh: Mesh) -> jax.Array:
    return jax.device_put(array, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def per_device(fn: Callable, mesh: Mesh, n_replicated: int) -> Callable:
    """``fn`` under ``shard_map``, manual over ``"data"``: its first ``n_replicated`` arguments are replicated
    along ``"data"``, the others (and the output) split along their leading axis, one slice per data index. On a
    ``(data, model)`` mesh the ``"model"`` axis stays automatic: the compiler splits each slice's program over it
    following the arguments' shardings (tensor parallelism)."""

    def wrapped(*args):
        specs = tuple(PartitionSpec() if i < n_replicated else PartitionSpec(DATA_AXIS) for i in range(len(args)))
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(DATA_AXIS),
                             axis_names=frozenset({DATA_AXIS}))(*args)

    return wrapped


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_MAX_PROGRAMS = 64  # least recently used beyond this are dropped: a long notebook would otherwise keep every model


def sharded_program(fn: Callable, static: tuple, mesh: Mesh, state, n_split: int) -> Callable:
    """``jax.jit`` of ``fn(*static, state, *split)`` with explicit shardings: ``state`` as it is placed (see
    ``place_params``), the ``n_split`` arrays and the output split over ``"data"`` along their leading axis.
    One program per (fn, static, mesh, state layout), shared by every caller, so compilations are shared too."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(lambda a: a.sharding, state))
    key = (fn, static, mesh, treedef, tuple(leaves), n_split)
    if key not in _PROGRAMS:
        rows = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
        _PROGRAMS[key] = jax.jit(partial(fn, *static), in_shardings=(jax.tree.unflatten(treedef, leaves),)
                                 + (rows,) * n_split, out_shardings=rows)
        if len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]


def calls_by_shape(units: Sequence[Unit], shape_of: Callable[[Unit], Hashable],
                   n_devices: int) -> list[tuple[Hashable, list[Unit]]]:
    """Group consecutive units of equal shape into calls of at most ``n_devices`` units each."""
    calls = []
    for shape, same in groupby(units, key=shape_of):
        same = list(same)
        for start in range(0, len(same), n_devices):
            calls.append((shape, same[start:start + n_devices]))
    return calls
