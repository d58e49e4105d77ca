"""Batched KV-cache decoding: greedy, or sampled with temperature, top-p and min-p; seeded; stops at EOS.

One jitted program per (batch size, prompt bucket, max_new_tokens, greedy/sampled): the prompt batch is
right-padded and prefilled in one forward pass, whose keys/values go into fixed-size cache buffers
``[layers, b, t + max_new_tokens, k, h]``; then a ``lax.while_loop`` feeds one token per row per step at the
row's own position, writes its keys/values into the next slot with ``dynamic_update_slice`` and marks the slot
valid. Rows that have emitted EOS keep emitting EOS; the loop ends when every row is done or after
``max_new_tokens`` tokens.

Devices (``delift_jax.sharding``): a batch's rows are split over the ``"data"`` axis of a mesh (default
``sharding.current_mesh()``, so ``delift run --mesh`` reaches generation; the batch is padded with inactive rows to
a multiple of the data size); every data index decodes its rows, and all of them step until every row of the
batch is done (as on one device), so a step's collectives always find every device. On a ``(data, model)`` mesh
the parameters are placed by ``sharding.FSDP_TP_RULES`` and each slice runs tensor parallel over its ``model``
devices, its KV cache held split over the KV heads where ``model`` divides them (``sharding.constrain_kv``). A
row's tokens do not depend on the mesh: rows never interact, and the sampling settings and key travel with the row.

Prompts follow the training/scoring layout (DESIGN §1.1): ``context_ids + [eos]``; the model then generates the
response and stops at EOS. ``prompt_ids`` builds them, so training, scoring and generation share one template.

Sampling is reproducible and independent of batching: row ``i`` of the input draws from
``fold_in(fold_in(PRNGKey(seed), i), step)``, so the same example gets the same sample whatever batch it is in.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.records import Example
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.data.tokenize import bucket_for, encode_ids, eos_token_id, length_ladder
from delift_jax.errors import DataError
from delift_jax.models.llama import KVPrefix
from delift_jax.sharding import (DATA_AXIS, constrain_kv, current_mesh, data_size, per_device, place_params,
                                 sharded_program, split_rows)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to decode.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it and a token is sampled.
    top_p: keep the smallest set of most probable tokens whose probability reaches ``top_p`` (1: off).
    min_p: keep tokens whose probability is at least ``min_p`` times the most probable one's (0: off).
    max_new_tokens: at most this many generated tokens per prompt (EOS included).
    max_prompt_tokens: longer prompts lose context from the left (the query end and the separator are kept).
    batch_size: prompts per compiled call; seed: base of every row's sampling key.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 128
    max_prompt_tokens: int = 1024
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise DataError(f"temperature={self.temperature} must be >= 0 (0 is greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise DataError(f"top_p={self.top_p} must be in (0, 1]")
        if not 0 <= self.min_p < 1:
            raise DataError(f"min_p={self.min_p} must be in [0, 1)")
        if self.max_new_tokens < 1:
            raise DataError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.max_prompt_tokens < 1:
            raise DataError(f"max_prompt_tokens={self.max_prompt_tokens} must be at least 1")
        if self.batch_size < 1:
            raise DataError(f"batch_size={self.batch_size} must be at least 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """Generated token ids per prompt (input order), without the final EOS.

    stopped: True where the row emitted EOS within ``max_new_tokens``; n_truncated: prompts that lost context.
    """

    tokens: list
    stopped: np.ndarray
    n_truncated: int
    seconds: float

    @property
    def n_new_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens) + self.stopped.sum())


# ----------------------------------------------------------------------------------------------- token filters

def top_p_keep(logits_v: jax.Array, top_p) -> jax.Array:
    """Boolean mask of the nucleus: tokens whose probability is at least that of the least probable token of the
    smallest most-probable set reaching ``top_p`` (ties at the boundary are kept; the top token always is).
    Matches transformers' TopPLogitsWarper: a token is kept iff the mass strictly above it is below ``top_p``."""
    probs_v = jax.nn.softmax(logits_v.astype(jnp.float32), axis=-1)
    sorted_v = jnp.sort(probs_v, axis=-1)[..., ::-1]
    mass_above_v = jnp.cumsum(sorted_v, axis=-1) - sorted_v
    kept_sorted = mass_above_v < top_p
    cutoff = jnp.min(jnp.where(kept_sorted, sorted_v, jnp.inf), axis=-1, keepdims=True)
    return probs_v >= cutoff


def min_p_keep(logits_v: jax.Array, min_p) -> jax.Array:
    """Boolean mask of tokens with probability >= ``min_p`` * (largest probability)."""
    probs_v = jax.nn.softmax(logits_v.astype(jnp.float32), axis=-1)
    return probs_v >= min_p * jnp.max(probs_v, axis=-1, keepdims=True)


def filter_logits(logits_bv: jax.Array, temperature, top_p, min_p) -> jax.Array:
    """Temperature-scaled logits with tokens outside the top-p nucleus or below min-p set to -inf."""
    scaled_bv = logits_bv.astype(jnp.float32) / temperature
    keep_bv = top_p_keep(scaled_bv, top_p) & min_p_keep(scaled_bv, min_p)
    return jnp.where(keep_bv, scaled_bv, -jnp.inf)


def choose_tokens(logits_bv, keys_b, step, greedy: bool, temperature, top_p, min_p) -> jax.Array:
    """Next token per row: argmax, or a sample from the filtered distribution with the row's key for ``step``.
    temperature / top_p / min_p: scalars, or ``[b, 1]`` per row."""
    if greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    filtered_bv = filter_logits(logits_bv, temperature, top_p, min_p)
    step_keys_b = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_b, step)
    return jax.vmap(jax.random.categorical)(step_keys_b, filtered_bv).astype(jnp.int32)


# ------------------------------------------------------------------------------------------ compiled decoding

_ROW_FIELDS = ("tokens", "lengths", "active", "key_data", "eos", "temperature", "top_p", "min_p")


def _decode(model, mesh, max_new: int, greedy: bool, tokens_bt, lengths_b, active_b, key_data_b, eos_b,
            temperature_b, top_p_b, min_p_b):
    """Decode ``max_new`` tokens after right-padded prompts. Returns ``[b, max_new]`` int32 (EOS after the end).

    Inactive rows (batch filler) count as done from the start, so they never hold the loop open. key_data_b: the
    rows' sampling keys (``jax.random.key_data``); eos_b and the sampling settings: one value per row."""
    b, t = tokens_bt.shape
    positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    valid_bt = positions_bt < lengths_b[:, None]
    hidden_btd, (keys, values) = model(tokens_bt, positions_bt, valid_bt, stacked_kv=True)  # [layers, b, t, k, h]
    last_bd = jnp.take_along_axis(hidden_btd, (lengths_b - 1)[:, None, None], axis=1)[:, 0]
    choose = functools.partial(choose_tokens, keys_b=jax.random.wrap_key_data(key_data_b), greedy=greedy,
                               temperature=temperature_b[:, None], top_p=top_p_b[:, None], min_p=min_p_b[:, None])
    hold = functools.partial(constrain_kv, mesh, model.config.num_kv_heads)  # split over KV heads on a model axis

    grow = lambda x, axis: jnp.concatenate([x, jnp.zeros(x.shape[:axis] + (max_new,) + x.shape[axis + 1:], x.dtype)],
                                           axis=axis)
    keys, values = hold(grow(keys, 2), grow(values, 2))
    cache_positions = jnp.concatenate([positions_bt, lengths_b[:, None] + jnp.arange(max_new, dtype=jnp.int32)], 1)
    cache_valid = grow(valid_bt, 1)

    first_b = jnp.where(active_b, choose(model.logits(last_bd), step=0), eos_b)
    out_bn = jnp.broadcast_to(eos_b[:, None], (b, max_new)).at[:, 0].set(first_b)
    done_b = first_b == eos_b
    carry = (jnp.int32(1), first_b, done_b, _all_rows_done(done_b), out_bn, keys, values, cache_valid)

    def cond(carry):
        i, _, _, finished, *_ = carry
        return (i < max_new) & ~finished

    def body(carry):
        i, token_b, done_b, _, out_bn, keys, values, cache_valid = carry
        slot = t + i - 1  # where the token fed now (the (i-1)-th generated one) is stored
        prefix = KVPrefix(keys, values, cache_positions, cache_valid)
        hidden_b1d, (step_k, step_v) = model(token_b[:, None], (lengths_b + i - 1)[:, None], None, prefix,
                                             stacked_kv=True)
        put = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), slot, axis=2)
        keys, values = hold(put(keys, step_k), put(values, step_v))
        cache_valid = jax.lax.dynamic_update_slice_in_dim(cache_valid, jnp.ones((b, 1), bool), slot, axis=1)
        next_b = jnp.where(done_b, eos_b, choose(model.logits(hidden_b1d[:, 0]), step=i))
        out_bn = jax.lax.dynamic_update_slice_in_dim(out_bn, next_b[:, None], i, axis=1)
        done_b = done_b | (next_b == eos_b)
        return i + 1, next_b, done_b, _all_rows_done(done_b), out_bn, keys, values, cache_valid

    return jax.lax.while_loop(cond, body, carry)[4]


def _all_rows_done(done_b) -> jax.Array:
    """Whether every row of the whole batch is done, on every ``"data"`` index alike. Each index holds a slice of
    the rows, but all of them must run the same number of steps: on a ``(data, model)`` mesh a step's collectives
    (tensor parallelism) can span every device, and devices that left the loop early would never join them (seen on
    the CPU: a collective-permute of the sampled path waited for all 4 devices of a (2, 2) mesh and aborted)."""
    return jax.lax.pmin(jnp.all(done_b).astype(jnp.int32), DATA_AXIS) > 0


def _decode_rows(graphdef, mesh, max_new: int, greedy: bool, state, *rows):
    """``[b, max_new]``: each ``"data"`` index decodes its slice of the rows (``_ROW_FIELDS``)."""

    def on_device(state, *local):
        return _decode(nnx.merge(graphdef, state), mesh, max_new, greedy, *local)

    return per_device(on_device, mesh, n_replicated=1)(state, *rows)


class BatchDecoder:
    """Decodes right-padded prompt batches with ``model`` placed on ``mesh`` (default ``sharding.current_mesh()``):
    replicated on a data mesh, split by ``sharding.FSDP_TP_RULES`` on a ``(data, model)`` mesh. Place once, decode
    many batches; one compiled program per batch shape, shared with every decoder of the same model and mesh."""

    def __init__(self, model, config: GenerationConfig, *, mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh or current_mesh()
        self.graphdef, state = nnx.split(model)
        self.state = place_params(state, self.mesh)
        self._program = sharded_program(_decode_rows, (self.graphdef, self.mesh, config.max_new_tokens,
                                                       config.greedy), self.mesh, self.state, len(_ROW_FIELDS))

    def row_arrays(self, prompts_bt: np.ndarray, lengths_b: np.ndarray, eos_id: int,
                   row_ids_b: np.ndarray | None = None, active_b: np.ndarray | None = None) -> list[np.ndarray]:
        """The program's row arrays (``_ROW_FIELDS``, on the host), padded to a multiple of the data size with
        inactive one-token rows."""
        config = self.config
        b = prompts_bt.shape[0]
        n = b + (-b % data_size(self.mesh))
        row_ids_b = np.arange(b) if row_ids_b is None else np.asarray(row_ids_b)
        keys_b = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(config.seed),
                                                                 jnp.asarray(row_ids_b, jnp.uint32))

        def padded(values, fill, dtype):
            values = np.asarray(values, dtype)
            return np.concatenate([values, np.full((n - b,) + values.shape[1:], fill, dtype)])

        return [padded(prompts_bt, eos_id, np.int32), padded(lengths_b, 1, np.int32),
                padded(np.ones(b, bool) if active_b is None else active_b, False, bool),
                padded(jax.random.key_data(keys_b), 0, np.uint32), np.full(n, eos_id, np.int32),
                np.full(n, config.temperature or 1.0, np.float32), np.full(n, config.top_p, np.float32),
                np.full(n, config.min_p, np.float32)]

    def decode(self, prompts_bt: np.ndarray, lengths_b: np.ndarray, eos_id: int, row_ids_b: np.ndarray | None = None,
               active_b: np.ndarray | None = None) -> np.ndarray:
        """``[b, max_new_tokens]`` int32 for one right-padded batch (EOS-filled after each row's EOS).

        row_ids_b: the rows' sampling identities (default ``arange(b)``); active_b: False for filler rows."""
        rows = self.row_arrays(prompts_bt, lengths_b, eos_id, row_ids_b, active_b)
        out = self._program(self.state, *(split_rows(a, self.mesh) for a in rows))
        return np.asarray(out)[:prompts_bt.shape[0]]


def decode_batch(model, prompts_bt: np.ndarray, lengths_b: np.ndarray, config: GenerationConfig, eos_id: int,
                 row_ids_b: np.ndarray | None = None, active_b: np.ndarray | None = None, *,
                 mesh: Mesh | None = None) -> np.ndarray:
    """Raw decoding of one right-padded batch: ``[b, max_new_tokens]`` int32 (EOS-filled after each row's EOS).

    row_ids_b: the rows' sampling identities (default ``arange(b)``); active_b: False for filler rows; mesh: see
    ``BatchDecoder`` (several batches: build one decoder, so the parameters are placed once).
    """
    return BatchDecoder(model, config, mesh=mesh).decode(prompts_bt, lengths_b, eos_id, row_ids_b, active_b)


# ---------------------------------------------------------------------------------------------------- the rim

def generate_ids(model, prompts: Sequence[Sequence[int]], config: GenerationConfig, eos_id: int, *,
                 progress: bool = False, mesh: Mesh | None = None) -> GenerationResult:
    """Generate after each prompt (token ids, already ending with the separator EOS).

    Prompts are sorted by length and batched ``config.batch_size`` at a time, each batch padded to a bucket of
    the length ladder (few compilations); short batches are filled with one-token dummy rows. mesh: where to
    decode (default ``sharding.current_mesh()``; see ``BatchDecoder``).
    """
    if not prompts:
        raise DataError("no prompts to generate from")
    prompts = [list(p) for p in prompts]
    n_truncated = 0
    for i, p in enumerate(prompts):
        if not p:
            raise DataError(f"prompt {i} is empty; a prompt needs at least the separator EOS")
        if len(p) > config.max_prompt_tokens:
            prompts[i] = p[len(p) - config.max_prompt_tokens:]
            n_truncated += 1
    ladder = length_ladder(config.max_prompt_tokens)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    size = config.batch_size
    tokens: list = [None] * len(prompts)
    stopped = np.zeros(len(prompts), bool)
    decoder = BatchDecoder(model, config, mesh=mesh)
    bar = _progress_bar(len(prompts), progress)
    start = time.perf_counter()
    for first in range(0, len(order), size):
        rows = order[first:first + size]
        length = bucket_for(max(len(prompts[i]) for i in rows), ladder)
        batch_bt = np.full((size, length), eos_id, np.int32)
        lengths_b = np.ones(size, np.int32)
        row_ids = np.zeros(size, np.int64)
        active_b = np.arange(size) < len(rows)
        for r, i in enumerate(rows):
            batch_bt[r, :len(prompts[i])] = prompts[i]
            lengths_b[r] = len(prompts[i])
            row_ids[r] = i
        out_bn = decoder.decode(batch_bt, lengths_b, eos_id, row_ids, active_b)
        for r, i in enumerate(rows):
            ends = np.flatnonzero(out_bn[r] == eos_id)
            stopped[i] = ends.size > 0
            tokens[i] = out_bn[r, :ends[0] if ends.size else config.max_new_tokens].copy()
        bar.update(len(rows))
    bar.close()
    return GenerationResult(tokens=tokens, stopped=stopped, n_truncated=n_truncated,
                            seconds=time.perf_counter() - start)


def prompt_ids(tokenizer, context: str) -> list[int]:
    """The generation prompt of the training/scoring layout: ``context_ids + [eos]`` (no BOS)."""
    return encode_ids(tokenizer, context) + [eos_token_id(tokenizer)]


def generate_responses(model, tokenizer, examples: Sequence[Example], config: GenerationConfig = GenerationConfig(),
                       *, templates: Templates = DEFAULT_TEMPLATES, contexts: Sequence[str] | None = None,
                       progress: bool = False, mesh: Mesh | None = None) -> tuple[list[str], GenerationResult]:
    """Generated response texts for ``examples`` (no-example template), or for explicit ``contexts`` (e.g. ICL).
    mesh: where to decode (default ``sharding.current_mesh()``)."""
    if contexts is None:
        if not examples:
            raise DataError("no examples to generate responses for")
        contexts = [templates.context_without_example(ex) for ex in examples]
    result = generate_ids(model, [prompt_ids(tokenizer, c) for c in contexts], config, eos_token_id(tokenizer),
                          progress=progress, mesh=mesh)
    texts = [tokenizer.decode(t.tolist(), skip_special_tokens=True) for t in result.tokens]
    return texts, result


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="prompt", desc="generating", disable=not enabled)
