"""Batched KV-cache decoding: greedy, or sampled with temperature, top-p and min-p; seeded; stops at EOS.

One jitted program per (batch size, prompt bucket, max_new_tokens, greedy/sampled): the prompt batch is
right-padded and prefilled in one forward pass, whose keys/values go into fixed-size cache buffers
``[b, t + max_new_tokens, k, h]`` per layer; then a ``lax.while_loop`` feeds one token per row per step at the
row's own position, writes its keys/values into the next slot with ``dynamic_update_slice`` and marks the slot
valid. Rows that have emitted EOS keep emitting EOS; the loop ends when every row is done or after
``max_new_tokens`` tokens.

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

from delift_jax.data.records import Example
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.data.tokenize import bucket_for, encode_ids, eos_token_id, length_ladder
from delift_jax.errors import DataError
from delift_jax.models.llama import KVPrefix


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
    """Next token per row: argmax, or a sample from the filtered distribution with the row's key for ``step``."""
    if greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    filtered_bv = filter_logits(logits_bv, temperature, top_p, min_p)
    step_keys_b = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_b, step)
    return jax.vmap(jax.random.categorical)(step_keys_b, filtered_bv).astype(jnp.int32)


# ------------------------------------------------------------------------------------------ compiled decoding

@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _decode(graphdef, max_new: int, greedy: bool, state, tokens_bt, lengths_b, active_b, keys_b, eos_id,
            temperature, top_p, min_p):
    """Decode ``max_new`` tokens after right-padded prompts. Returns ``[b, max_new]`` int32 (EOS after the end).

    Inactive rows (batch filler) count as done from the start, so they never hold the loop open."""
    model = nnx.merge(graphdef, state)
    b, t = tokens_bt.shape
    positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    valid_bt = positions_bt < lengths_b[:, None]
    hidden_btd, (keys, values) = model(tokens_bt, positions_bt, valid_bt, stacked_kv=True)  # [layers, b, t, k, h]
    last_bd = jnp.take_along_axis(hidden_btd, (lengths_b - 1)[:, None, None], axis=1)[:, 0]
    choose = functools.partial(choose_tokens, keys_b=keys_b, greedy=greedy, temperature=temperature,
                               top_p=top_p, min_p=min_p)

    grow = lambda x, axis: jnp.concatenate([x, jnp.zeros(x.shape[:axis] + (max_new,) + x.shape[axis + 1:], x.dtype)],
                                           axis=axis)
    keys, values = grow(keys, 2), grow(values, 2)
    cache_positions = jnp.concatenate([positions_bt, lengths_b[:, None] + jnp.arange(max_new, dtype=jnp.int32)], 1)
    cache_valid = grow(valid_bt, 1)

    first_b = jnp.where(active_b, choose(model.logits(last_bd), step=0), eos_id)
    out_bn = jnp.full((b, max_new), eos_id, jnp.int32).at[:, 0].set(first_b)
    carry = (jnp.int32(1), first_b, first_b == eos_id, out_bn, keys, values, cache_valid)

    def cond(carry):
        i, _, done_b, *_ = carry
        return (i < max_new) & ~jnp.all(done_b)

    def body(carry):
        i, token_b, done_b, out_bn, keys, values, cache_valid = carry
        slot = t + i - 1  # where the token fed now (the (i-1)-th generated one) is stored
        prefix = KVPrefix(keys, values, cache_positions, cache_valid)
        hidden_b1d, (step_k, step_v) = model(token_b[:, None], (lengths_b + i - 1)[:, None], None, prefix,
                                             stacked_kv=True)
        put = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), slot, axis=2)
        keys, values = put(keys, step_k), put(values, step_v)
        cache_valid = jax.lax.dynamic_update_slice_in_dim(cache_valid, jnp.ones((b, 1), bool), slot, axis=1)
        next_b = jnp.where(done_b, eos_id, choose(model.logits(hidden_b1d[:, 0]), step=i))
        out_bn = jax.lax.dynamic_update_slice_in_dim(out_bn, next_b[:, None], i, axis=1)
        return i + 1, next_b, done_b | (next_b == eos_id), out_bn, keys, values, cache_valid

    return jax.lax.while_loop(cond, body, carry)[3]


def decode_batch(model, prompts_bt: np.ndarray, lengths_b: np.ndarray, config: GenerationConfig, eos_id: int,
                 row_ids_b: np.ndarray | None = None, active_b: np.ndarray | None = None) -> np.ndarray:
    """Raw decoding of one right-padded batch: ``[b, max_new_tokens]`` int32 (EOS-filled after each row's EOS).

    row_ids_b: the rows' sampling identities (default ``arange(b)``); active_b: False for filler rows.
    """
    graphdef, state = nnx.split(model)
    b = prompts_bt.shape[0]
    row_ids_b = np.arange(b) if row_ids_b is None else np.asarray(row_ids_b)
    active_b = np.ones(b, bool) if active_b is None else np.asarray(active_b, bool)
    base = jax.random.key(config.seed)
    keys_b = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, jnp.asarray(row_ids_b, jnp.uint32))
    out = _decode(graphdef, config.max_new_tokens, config.greedy, state, jnp.asarray(prompts_bt, jnp.int32),
                  jnp.asarray(lengths_b, jnp.int32), jnp.asarray(active_b), keys_b, jnp.int32(eos_id),
                  jnp.float32(config.temperature or 1.0), jnp.float32(config.top_p), jnp.float32(config.min_p))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------------- the rim

def generate_ids(model, prompts: Sequence[Sequence[int]], config: GenerationConfig, eos_id: int, *,
                 progress: bool = False) -> GenerationResult:
    """Generate after each prompt (token ids, already ending with the separator EOS).

    Prompts are sorted by length and batched ``config.batch_size`` at a time, each batch padded to a bucket of
    the length ladder (few compilations); short batches are filled with one-token dummy rows.
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
        out_bn = decode_batch(model, batch_bt, lengths_b, config, eos_id, row_ids, active_b)
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
                       progress: bool = False) -> tuple[list[str], GenerationResult]:
    """Generated response texts for ``examples`` (no-example template), or for explicit ``contexts`` (e.g. ICL)."""
    if contexts is None:
        if not examples:
            raise DataError("no examples to generate responses for")
        contexts = [templates.context_without_example(ex) for ex in examples]
    result = generate_ids(model, [prompt_ids(tokenizer, c) for c in contexts], config, eos_token_id(tokenizer),
                          progress=progress)
    texts = [tokenizer.decode(t.tolist(), skip_special_tokens=True) for t in result.tokens]
    return texts, result


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="prompt", desc="generating", disable=not enabled)
