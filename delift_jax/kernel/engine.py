"""Score (target, candidate) pairs with prefix reuse, packed into large units sharded over the devices of a mesh.

Work is packed by ``kernel.packing``: a unit carries the demonstrations of one or more candidates in a prefix
row and thousands of continuation tokens packed several to a row. One jitted program per unit shape runs the
demonstrations, keeps their keys/values on the device, runs every continuation against its own candidate's
keys/values (each row gathers the window of the prefix row that holds its demonstration, so a token attends to
one demonstration, not to every demonstration of the unit) and projects onto the vocabulary only at scored
positions. Each device runs one unit per call under ``shard_map`` over the mesh axis ``"data"``; calls are
dispatched asynchronously and the next call is prepared while the current one runs. On a ``(data, model)`` mesh
the parameters are split by ``sharding.FSDP_TP_RULES`` and each unit runs tensor parallel over its ``model``
devices, its demonstrations' keys/values held split over the KV heads (``sharding.kv_spec``).

The unit size (continuation tokens per device per call) comes from ``KernelConfig.tokens_per_call`` or, when
that is None, from the device's free memory (a fixed size on CPUs, which report none). Every unit of a row
length shares one shape (``packing``), so a run compiles one program per row length it uses.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.tokenize import ScoredSequence
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.packing import Item, PackingSizes, Unit, UnitShape, pack_units
from delift_jax.kernel.pairs import PairSequences
from delift_jax.models.llama import KVPrefix
from delift_jax.scoring import mean_log_prob, rms_distance, target_logprobs
from delift_jax.sharding import (calls_by_shape, constrain_kv, current_mesh, data_size, per_device, place_params,
                                 sharded_program, split_rows)

# On CPUs the unit size barely changes the speed per token slot (bench_kernel's 384 pairs, quiet 2-core EPYC:
# 1024 / 2048 / 4096 tokens ran 330 / 329 / 339 slots/s), but a candidate's demonstration is computed once per
# unit holding its rows: 2,036 / 1,018 / 509 demonstration tokens there. 2048 keeps activations small.
CPU_TOKENS_PER_CALL = 2048
MAX_TOKENS_PER_CALL = 65536
MEMORY_FRACTION = 0.4         # of the free device memory, for one call's activations
_UNIT_FIELDS = ("prefix_tokens", "prefix_positions", "prefix_segments", "tokens", "positions", "segments",
                "row_window", "score_index", "score_target")


def _one_unit(model, mesh, chunk, prefix_tokens_p, prefix_positions_p, prefix_segments_p, tokens_bt,
              positions_bt, segments_bt, row_window_bw, score_index_s, score_target_s):
    """log p of the unit's scored tokens ``[s]``: demonstrations first, then the continuations attending to them."""
    _, (keys, values) = model(prefix_tokens_p[None], positions_bt=prefix_positions_p[None],
                              valid_bt=prefix_segments_p[None] > 0, segments_bt=prefix_segments_p[None],
                              stacked_kv=True)
    keys, values = constrain_kv(mesh, model.config.num_kv_heads, keys, values)
    # Each row attends to its own candidate's demonstration only, gathered from the prefix row layer by layer
    # (KVPrefix.window). Attending to the whole prefix row under a mask cost every token every demonstration of
    # the unit.
    window_bw = jnp.maximum(row_window_bw, 0)
    prefix = KVPrefix(keys=keys, values=values, positions=jnp.take(prefix_positions_p, window_bw),
                      valid=row_window_bw >= 0, window=window_bw)
    hidden_btd, _ = model(tokens_bt, positions_bt=positions_bt, valid_bt=segments_bt > 0, segments_bt=segments_bt,
                          prefix=prefix, stacked_kv=True)
    b, t, d = hidden_btd.shape
    hidden_sd = jnp.take(hidden_btd.reshape(b * t, d), score_index_s, axis=0)
    return target_logprobs(model, hidden_sd[None], score_target_s[None], chunk)[0]


def _unit_logprobs(graphdef, mesh, chunk, state, *unit_arrays):
    """``[units, s]`` log-probabilities, one unit per device (leading axis split over ``"data"``)."""

    def on_device(state, *local):
        model = nnx.merge(graphdef, state)
        return _one_unit(model, mesh, chunk, *(a[0] for a in local))[None]

    return per_device(on_device, mesh, n_replicated=1)(state, *unit_arrays)


_UNIT_LOGPROBS = jax.jit(_unit_logprobs, static_argnums=(0, 1, 2))  # for lowering by hand (scripts/bench_compile.py)


def tokens_per_call_for(model_config, mesh: Mesh, dtype) -> int:
    """Continuation tokens per device per call that fit in ``MEMORY_FRACTION`` of the free memory of the mesh's
    first device (a power of two; ``CPU_TOKENS_PER_CALL`` where the device reports no memory)."""
    device = mesh.devices.flat[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = None
    if not stats or "bytes_limit" not in stats:
        return CPU_TOKENS_PER_CALL
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    n = max(1024, int(free * MEMORY_FRACTION / activation_bytes_per_token(model_config, dtype)))
    return min(MAX_TOKENS_PER_CALL, 1 << (n.bit_length() - 1))


def activation_bytes_per_token(config, dtype, attended: int = 2048) -> int:
    """Peak bytes one continuation token needs inside a layer: hidden states, projections, MLP, and float32
    attention scores/probabilities over ``attended`` keys (row plus prefix)."""
    item = jnp.dtype(dtype).itemsize
    heads = config.num_heads + 2 * config.num_kv_heads
    dense = item * (6 * config.hidden_size + 2 * heads * config.head_dim + 3 * config.intermediate_size)
    return dense + 4 * 3 * config.num_heads * attended


class StageTimes:
    """Wall-clock seconds per stage of the engine (host packing, transfer, dispatch with or without compilation,
    waiting for the devices), calls made, and tokens: real continuation and demonstration tokens against the
    padded slots computed."""

    def __init__(self):
        self.seconds: collections.Counter = collections.Counter()
        self.tokens: collections.Counter = collections.Counter()
        self.calls = 0
        self.shapes: set = set()

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def count(self, units: Sequence[Unit]) -> None:
        for unit in units:
            self.tokens["continuation"] += int(np.count_nonzero(unit.segments))
            self.tokens["demonstration"] += int(np.count_nonzero(unit.prefix_segments))
            self.tokens["computed slots"] += unit.shape.rows * unit.shape.length + unit.shape.prefix

    def top(self, n: int = 6) -> list[tuple[str, float]]:
        return [(name, round(value, 3)) for name, value in self.seconds.most_common(n)]


_RECORDERS: list[StageTimes] = []


@contextlib.contextmanager
def recording_stages():
    """Collect the stage times of every ``PairScorer`` call made inside the block (benchmarks use it)."""
    times = StageTimes()
    _RECORDERS.append(times)
    try:
        yield times
    finally:
        _RECORDERS.remove(times)


class PairScorer:
    """Computes d(i | example j) for lists of pairs: RMS of (1 - p) and mean log p over i's scored tokens.

    Units depend only on the pairs and ``tokens_per_unit`` (never on the number of devices), so results are
    identical for any number of devices.
    """

    def __init__(self, model, config: KernelConfig, *, mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh or current_mesh()
        self.graphdef, state = nnx.split(model)
        self.state = place_params(state, self.mesh)  # replicated on a data mesh, split by the rules otherwise
        self._program = sharded_program(_unit_logprobs, (self.graphdef, self.mesh, config.logits_chunk), self.mesh,
                                        self.state, len(_UNIT_FIELDS))
        tokens = config.tokens_per_call or tokens_per_call_for(model.config, self.mesh, model.dtype)
        self.sizes = PackingSizes(tokens_per_unit=tokens, max_length=config.max_length)
        self.profile = StageTimes()

    def _add(self, stage: str, seconds: float) -> None:
        for times in [self.profile, *_RECORDERS]:
            times.add(stage, seconds)

    def score(self, pairs: np.ndarray, seqs: PairSequences, full: dict[tuple[int, int], ScoredSequence],
              on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rms, mean_logp) for each row (target, candidate) of ``pairs``, in order. ``full``: the pairs that
        cannot reuse their candidate's prefix, with their own sequences (see ``pairs.full_sequences_for``)."""
        items = []
        for r, (i, j) in enumerate(pairs):
            sequence = full.get((int(i), int(j)))
            if sequence is None:
                cont = seqs.continuations[i]
                items.append(Item(r, int(j), cont.tokens, cont.n_scored))
            else:
                items.append(Item(r, None, sequence.tokens, sequence.n_scored))
        logps = self.logprobs(items, seqs.prefixes, on_progress)
        rms = np.array([rms_distance(np.exp(lp)) for lp in logps])
        logp = np.array([mean_log_prob(lp) for lp in logps])
        return rms, logp

    def score_sequences(self, sequences: Sequence[ScoredSequence]) -> list[np.ndarray]:
        """log p of every scored token of stand-alone sequences (no demonstration), in input order."""
        return self.logprobs([Item(k, None, s.tokens, s.n_scored) for k, s in enumerate(sequences)], [])

    def logprobs(self, items: Sequence[Item], prefixes: Sequence[np.ndarray],
                 on_progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """float32 log p of each item's scored tokens, indexed by ``Item.key`` (keys 0..len(items)-1)."""
        started = time.perf_counter()
        units = pack_units(items, prefixes, self.sizes)
        self._add("pack units (host)", time.perf_counter() - started)
        for times in [self.profile, *_RECORDERS]:
            times.count(units)
        out: list[np.ndarray | None] = [None] * len(items)
        pending: collections.deque = collections.deque()
        for shape, call_units in calls_by_shape(units, lambda unit: unit.shape, data_size(self.mesh)):
            pending.append((call_units, self._dispatch(shape, call_units)))
            if len(pending) > 1:  # the device already has the next call queued while this one is read back
                self._collect(*pending.popleft(), out, on_progress)
        while pending:
            self._collect(*pending.popleft(), out, on_progress)
        return out

    def _dispatch(self, shape: UnitShape, call_units: list[Unit]) -> jax.Array:
        """Stack the call's units (empty units fill the mesh), put them on the devices, start the call."""
        started = time.perf_counter()
        empty = _empty_unit(shape)
        fill = data_size(self.mesh) - len(call_units)
        stacked = [np.stack([getattr(u, f) for u in call_units] + [getattr(empty, f)] * fill) for f in _UNIT_FIELDS]
        arrays = [split_rows(a, self.mesh) for a in stacked]
        self._add("stack + transfer (host)", time.perf_counter() - started)
        started = time.perf_counter()
        result = self._program(self.state, *arrays)
        stage = "dispatch" if shape in self.profile.shapes else "dispatch, first call of a shape (may compile)"
        self._add(stage, time.perf_counter() - started)
        for times in [self.profile, *_RECORDERS]:
            times.shapes.add(shape)
            times.calls += 1
        return result

    def _collect(self, call_units: list[Unit], result: jax.Array, out: list, on_progress) -> None:
        started = time.perf_counter()
        result = np.asarray(result)
        self._add("device compute (waiting for results)", time.perf_counter() - started)
        for u, unit in enumerate(call_units):
            for key, slot, n in unit.placed:
                out[key] = result[u, slot:slot + n].astype(np.float32)
        if on_progress:
            on_progress(sum(len(unit.placed) for unit in call_units))


def _empty_unit(shape: UnitShape) -> Unit:
    zeros = lambda *dims: np.zeros(dims, np.int32)
    return Unit(shape, zeros(shape.prefix), zeros(shape.prefix), zeros(shape.prefix),
                zeros(shape.rows, shape.length), zeros(shape.rows, shape.length), zeros(shape.rows, shape.length),
                np.full((shape.rows, shape.window), -1, np.int32), zeros(shape.scored), zeros(shape.scored), ())
