"""Flax NNX decoder-only transformer: the Llama family (Llama 2/3, Mistral, Qwen2, SmolLM/SmolLM2), Phi-3 and
Gemma 2/3 (text).

Gemma's differences are configuration switches on the same modules (``ModelConfig``): GeGLU, (1 + w) RMSNorm,
scaled embeddings, extra norms on the attention and MLP outputs, q/k norms, attention and final logit
soft-capping, and layers alternating between sliding-window (local) and full (global) attention, each kind with
its own RoPE. The layers stay one stacked module under ``lax.scan``: a layer's kind is scanned over as a flag that
selects its mask and RoPE tables, so one layer body still serves every depth.

The model is stateless with respect to its key/value cache: a call returns the keys (already rotated) and values
it computed, and a later call can attend to them through a ``KVPrefix``. The same mechanism serves decoding
(grow the prefix one token at a time) and DELIFT's prefix reuse (compute a demonstration's keys once, attend to
them from a whole batch of continuations without copying them per row).

Shape suffixes: b batch, t query tokens, s key tokens, p prefix tokens, d model width, k key/value heads,
g query heads per key/value head, h head dim, f MLP width, v vocabulary.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.models.config import ModelConfig

_MASKED = float(np.finfo(np.float32).min)


class KVPrefix(NamedTuple):
    """Keys and values of earlier tokens, one entry per layer.

    ``keys``/``values``: tuples of ``[b or 1, p, k, h]`` arrays (RoPE already applied to keys), or the same
    stacked over layers as one ``[layers, b or 1, p, k, h]`` array. A leading batch dimension of 1 is shared by
    every row of the batch that attends to it. ``positions``: ``[b or 1, p]`` int32;
    ``valid``: ``[b or 1, p]`` bool (False for padding).

    ``window`` (optional, ``[b, w]`` int32): row ``r`` attends only to the shared (batch 1) prefix's slots
    ``window[r]``, gathered layer by layer (so one layer's ``[b, w]`` copy exists at a time); ``positions`` and
    ``valid`` are then given per window slot, ``[b, w]``. Rows sharing one prefix of several sequences each see
    only their own, at the cost of their window instead of the whole prefix.
    """

    keys: tuple
    values: tuple
    positions: jax.Array
    valid: jax.Array
    window: jax.Array | None = None

    @property
    def length(self) -> int:
        return self.positions.shape[1]


def rope_inverse_frequencies(config: ModelConfig, *, local: bool = False) -> np.ndarray:
    """Inverse frequencies ``[h/2]`` in float32, with linear or Llama-3 scaling, computed as transformers does.

    local: for the sliding-window layers of a model that gives them their own RoPE (Gemma 3: base
    ``local_rope_theta``, never scaled); other models use one RoPE for every layer."""
    dim = config.head_dim
    theta, scaling = config.rope_theta, config.rope_scaling
    if local and config.local_rope_theta is not None:
        theta, scaling = config.local_rope_theta, None
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = np.reciprocal(np.float32(theta) ** exponents).astype(np.float32)
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    # Arithmetic is float32 with `scalar / array` as `reciprocal(array) * scalar`, the order torch uses, so the
    # frequencies agree with transformers to within one float32 ulp (pow differs by libm).
    f32 = np.float32
    old_len = f32(scaling.original_max_position_embeddings)
    low, high, factor = f32(scaling.low_freq_factor), f32(scaling.high_freq_factor), f32(scaling.factor)
    low_wavelen = old_len / low
    high_wavelen = old_len / high
    wavelen = np.reciprocal(inv_freq) * f32(2 * math.pi)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (np.reciprocal(wavelen) * old_len - low) / (high - low)
    smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions_bt: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin ``[b, t, h]`` (float32) of position * frequency, computed once per call for all layers."""
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
    return jnp.cos(angles_bth), jnp.sin(angles_bth)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """Rotate pairs (i, i + h/2) by position * frequency ("rotate half" layout, as in HF checkpoints)."""
    x = x_btnh.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]).astype(x_btnh.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(x / cap)``: bounds x to (-cap, cap), nearly the identity for |x| << cap (Gemma 2)."""
    return x if cap is None else jnp.tanh(x / cap) * cap


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, normalized in float32.

    Llama casts the normalized value back before scaling by ``scale``. With ``plus_one`` (Gemma) the stored scale
    is zero-centred and ``1 + scale`` multiplies in float32 before the cast, as the reference does; in float32
    the two orders agree, in bfloat16 they round differently.
    """

    def __init__(self, dim: int, eps: float, *, plus_one: bool = False, param_dtype=jnp.float32):
        self.scale = nnx.Param((jnp.zeros if plus_one else jnp.ones)((dim,), dtype=param_dtype))
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.plus_one:
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def _norm(config: ModelConfig, dim: int, param_dtype) -> RMSNorm:
    return RMSNorm(dim, config.rms_norm_eps, plus_one=config.norm_plus_one, param_dtype=param_dtype)


def _linear(d_in, d_out, bias, dtype, param_dtype, rngs):
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _project(linear, x, dropout_key, index: int):
    """Apply a projection; a wrapped one (a LoRA adapter) also gets its own fold of the dropout key."""
    if dropout_key is None or isinstance(linear, nnx.Linear):
        return linear(x)
    return linear(x, dropout_key=jax.random.fold_in(dropout_key, index))


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, h = config.hidden_size, config.head_dim
        self.config = config
        self.q_proj = _linear(d, config.num_heads * h, config.qkv_bias, dtype, param_dtype, rngs)
        self.k_proj = _linear(d, config.num_kv_heads * h, config.qkv_bias, dtype, param_dtype, rngs)
        self.v_proj = _linear(d, config.num_kv_heads * h, config.qkv_bias, dtype, param_dtype, rngs)
        self.o_proj = _linear(config.num_heads * h, d, config.o_bias, dtype, param_dtype, rngs)
        # Gemma 3 normalizes each head's queries and keys (shared weights over heads) before RoPE.
        self.q_norm = _norm(config, h, param_dtype) if config.qk_norm else None
        self.k_norm = _norm(config, h, param_dtype) if config.qk_norm else None

    def __call__(self, x_btd, rope, mask_bts, prefix_kv=None, prefix_mask_btp=None, dropout_key=None):
        """rope: this layer's ``(cos_bth, sin_bth)``; mask_bts / prefix_mask_btp: its (windowed) masks."""
        cfg = self.config
        b, t, _ = x_btd.shape
        q_btnh = _project(self.q_proj, x_btd, dropout_key, 0).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k_btkh = _project(self.k_proj, x_btd, dropout_key, 1).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v_btkh = _project(self.v_proj, x_btd, dropout_key, 2).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        q_btnh = apply_rope(q_btnh, *rope)
        k_btkh = apply_rope(k_btkh, *rope)
        n_kv, group, head_dim = cfg.num_kv_heads, cfg.group_size, cfg.head_dim
        # Queries of a KV head's group stacked along time, [b, kv, group * t, h], and keys/values [b, kv, s, h]:
        # each score and output product is then one plain batched matmul per (row, KV head). The grouped
        # five-axis einsums XLA otherwise emits on CPU ran ~3x slower (8 x 256 tokens, 9 heads over 3 KV heads).
        q_bkmh = q_btnh.reshape(b, t, n_kv, group, head_dim).transpose(0, 2, 3, 1, 4).reshape(
            b, n_kv, group * t, head_dim)
        k_bksh, v_bksh = k_btkh.transpose(0, 2, 1, 3), v_btkh.transpose(0, 2, 1, 3)
        if cfg.query_pre_attn_scalar is None:
            scale = cfg.head_dim ** -0.5
        else:  # Gemma scales by a configured width, which differs from head_dim in some sizes
            scale = cfg.query_pre_attn_scalar ** -0.5
        by_group = lambda mask_bts_: jnp.tile(mask_bts_, (1, group, 1))[:, None]  # [b, 1, group * t, s]

        scores_bkms = softcap(jnp.einsum("bkmh,bksh->bkms", q_bkmh, k_bksh,
                                         preferred_element_type=jnp.float32) * scale, cfg.attn_softcap)
        scores_bkms = jnp.where(by_group(mask_bts), scores_bkms, _MASKED)
        if prefix_kv is not None:
            prefix_k, prefix_v = prefix_kv
            shared = prefix_k.shape[0] == 1 and b != 1  # one prefix for every row: no batch axis
            spec = "kph" if shared else "bkph"
            prefix_k, prefix_v = (x[0].transpose(1, 0, 2) if shared else x.transpose(0, 2, 1, 3)
                                  for x in (prefix_k, prefix_v))
            scores_bkmp = softcap(jnp.einsum(f"bkmh,{spec}->bkmp", q_bkmh, prefix_k,
                                             preferred_element_type=jnp.float32) * scale, cfg.attn_softcap)
            scores_bkmp = jnp.where(by_group(prefix_mask_btp), scores_bkmp, _MASKED)
            p = scores_bkmp.shape[-1]
            probs = jax.nn.softmax(jnp.concatenate([scores_bkmp, scores_bkms], axis=-1), axis=-1)
            probs = probs.astype(v_btkh.dtype)
            out_bkmh = (jnp.einsum(f"bkmp,{spec}->bkmh", probs[..., :p], prefix_v)
                        + jnp.einsum("bkms,bksh->bkmh", probs[..., p:], v_bksh))
        else:
            probs = jax.nn.softmax(scores_bkms, axis=-1).astype(v_btkh.dtype)
            out_bkmh = jnp.einsum("bkms,bksh->bkmh", probs, v_bksh)
        out_btkgh = out_bkmh.reshape(b, n_kv, group, t, head_dim).transpose(0, 3, 1, 2, 4)
        out_btd = _project(self.o_proj, out_btkgh.reshape(b, t, cfg.num_heads * cfg.head_dim).astype(x_btd.dtype),
                           dropout_key, 3)
        return out_btd, (k_btkh, v_btkh)


# Gate activations: SwiGLU (Llama family) and GeGLU with tanh-approximated GELU (Gemma).
_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = _linear(d, f, config.mlp_bias, dtype, param_dtype, rngs)
        self.up_proj = _linear(d, f, config.mlp_bias, dtype, param_dtype, rngs)
        self.down_proj = _linear(f, d, config.mlp_bias, dtype, param_dtype, rngs)
        self.activation = config.activation

    def __call__(self, x_btd, dropout_key=None):
        gate = _project(self.gate_proj, x_btd, dropout_key, 0)
        up = _project(self.up_proj, x_btd, dropout_key, 1)
        return _project(self.down_proj, _ACTIVATIONS[self.activation](gate) * up, dropout_key, 2)


class DecoderLayer(nnx.Module):
    """Pre-norm residual block. ``post_attn_norm`` is always the norm in front of the MLP. With
    ``sandwich_norms`` (Gemma 2/3) the attention and MLP outputs are normed again before their residual adds
    (``attn_out_norm``, ``mlp_out_norm``; HF calls the first ``post_attention_layernorm``)."""

    def __init__(self, config: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.input_norm = _norm(config, config.hidden_size, param_dtype)
        self.attn = Attention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attn_norm = _norm(config, config.hidden_size, param_dtype)
        self.mlp = MLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_out_norm = _norm(config, config.hidden_size, param_dtype) if config.sandwich_norms else None
        self.mlp_out_norm = _norm(config, config.hidden_size, param_dtype) if config.sandwich_norms else None

    def __call__(self, x_btd, rope, mask_bts, prefix_kv=None, prefix_mask_btp=None, dropout_key=None):
        attn_key, mlp_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
        attn_btd, kv = self.attn(self.input_norm(x_btd), rope, mask_bts, prefix_kv, prefix_mask_btp, attn_key)
        if self.attn_out_norm is not None:
            attn_btd = self.attn_out_norm(attn_btd)
        x_btd = x_btd + attn_btd
        mlp_btd = self.mlp(self.post_attn_norm(x_btd), mlp_key)
        if self.mlp_out_norm is not None:
            mlp_btd = self.mlp_out_norm(mlp_btd)
        return x_btd + mlp_btd, kv


def stack_modules(modules: list) -> nnx.Module:
    """One module of the same structure whose every array has a new leading axis indexing ``modules``."""
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.state(m) for m in modules]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


class CausalLM(nnx.Module):
    """Decoder-only causal language model (Llama family, Phi-3, Gemma 2/3).

    ``__call__`` returns final (normed) hidden states and the per-layer keys/values; ``logits`` projects hidden
    states onto the vocabulary in float32. Keeping the two apart lets scoring project only the positions it needs.

    The decoder layers are one ``DecoderLayer`` whose parameters are stacked along a leading layer axis
    (``layers.attn.q_proj.kernel``: ``[layers, d, n*h]``) and run under ``jax.lax.scan``, so a program compiles
    one layer body whatever the depth. ``scan_layers = False`` runs the same parameters as an unrolled loop.
    ``remat_layers = True`` recomputes each layer's activations in the backward pass instead of storing them.
    """

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 scan_layers: bool = True, remat_layers: bool = False):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        self.remat_layers = remat_layers
        self.embed = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
        self.layers = stack_modules([DecoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                     for _ in range(config.num_layers)])
        self.norm = _norm(config, config.hidden_size, param_dtype)
        self.lm_head = None if config.tie_word_embeddings else _linear(
            config.hidden_size, config.vocab_size, False, dtype, param_dtype, rngs)

    def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array | None = None,
                 valid_bt: jax.Array | None = None, prefix: KVPrefix | None = None, *,
                 dropout_key: jax.Array | None = None, stacked_kv: bool = False,
                 segments_bt: jax.Array | None = None):
        """Run the decoder over ``tokens_bt``.

        positions_bt: absolute positions (default ``prefix.length + arange(t)``, or ``arange(t)``).
        valid_bt: False marks padding keys (default all True). Attention inside the block is causal by index.
        prefix: earlier keys/values every token may attend to (all of them precede the block).
        dropout_key: randomness for layers that use it (LoRA adapter dropout in training); None: deterministic.
        segments_bt: int ids of sequences packed into one row; a token attends only to earlier tokens of its own
            segment (None: one sequence per row).
        Returns ``(hidden_btd, kv)``: ``kv`` is a tuple of per-layer ``(keys, values)``, or with ``stacked_kv``
        one ``(keys_lbtkh, values_lbtkh)`` pair stacked over layers (what a ``KVPrefix`` may hold directly).
        """
        b, t = tokens_bt.shape
        if positions_bt is None:
            start = 0 if prefix is None else prefix.length
            positions_bt = jnp.broadcast_to(jnp.arange(start, start + t, dtype=jnp.int32), (b, t))
        if valid_bt is None:
            valid_bt = jnp.ones((b, t), dtype=bool)
        mask_bts = self._block_mask(positions_bt, valid_bt)
        if segments_bt is not None:
            mask_bts = mask_bts & (segments_bt[:, :, None] == segments_bt[:, None, :])
        prefix_mask_btp = None if prefix is None else jnp.broadcast_to(prefix.valid[:, None, :],
                                                                       (b, t, prefix.length))
        x_btd, (keys_lbtkh, values_lbtkh) = self._run_layers(self._embed(tokens_bt), positions_bt, mask_bts, prefix,
                                                             prefix_mask_btp, dropout_key)
        if stacked_kv:
            return self.norm(x_btd), (keys_lbtkh, values_lbtkh)
        kv = tuple((keys_lbtkh[i], values_lbtkh[i]) for i in range(self.config.num_layers))
        return self.norm(x_btd), kv

    def _embed(self, tokens_bt):
        x_btd = self.embed(tokens_bt)
        if not self.config.scale_embeddings:
            return x_btd
        # sqrt(d) is rounded to the weights' dtype first, as in the reference (in bfloat16 sqrt(3072) is 55.5).
        scale = jnp.asarray(math.sqrt(self.config.hidden_size), self.embed.param_dtype)
        return x_btd * scale.astype(x_btd.dtype)

    def _attention_inputs(self, sliding: bool, positions_bt, mask_bts, prefix, prefix_mask_btp):
        """``(rope, mask_bts, prefix_mask_btp)`` for the full-attention (``sliding=False``) or sliding layers."""
        rope = rope_tables(positions_bt, rope_inverse_frequencies(self.config, local=sliding))  # trace-time freqs
        window = self.config.sliding_window if sliding else None
        if window is None:
            return rope, mask_bts, prefix_mask_btp
        near = lambda key_positions: (positions_bt[:, :, None] - key_positions[:, None, :]) < window
        return rope, mask_bts & near(positions_bt), None if prefix is None else prefix_mask_btp & near(prefix.positions)

    def _run_layers(self, x_btd, positions_bt, mask_bts, prefix, prefix_mask_btp, dropout_key):
        """The decoder stack: ``(x_btd, (keys_lbtkh, values_lbtkh))``."""
        n_layers = self.config.num_layers
        graphdef, state = nnx.split(self.layers)
        prefix_kv = None if prefix is None else (_stacked(prefix.keys), _stacked(prefix.values))
        layer_keys = None if dropout_key is None else jax.vmap(
            lambda i: jax.random.fold_in(dropout_key, i))(jnp.arange(n_layers))
        # Masks and RoPE tables of each kind of layer present, built once per call, not once per layer.
        sliding_l = self.config.sliding_layers
        inputs = {kind: self._attention_inputs(kind, positions_bt, mask_bts, prefix, prefix_mask_btp)
                  for kind in sorted(set(sliding_l))}
        # Mixed kinds (Gemma): a per-layer flag, scanned over with the parameters, picks the layer's inputs.
        layer_sliding = jnp.asarray(sliding_l) if len(inputs) == 2 else None

        def body(x_btd, xs):
            layer_state, layer_prefix, layer_key, is_sliding = xs
            layer = nnx.merge(graphdef, layer_state)
            if is_sliding is None:
                rope, mask, prefix_mask = inputs[sliding_l[0]]
            else:
                rope, mask, prefix_mask = jax.tree.map(lambda s, f: jnp.where(is_sliding, s, f), inputs[True],
                                                       inputs[False])
            if layer_prefix is not None and prefix.window is not None:
                layer_prefix = tuple(jnp.take(kv[0], prefix.window, axis=0) for kv in layer_prefix)
            return layer(x_btd, rope, mask, layer_prefix, prefix_mask, layer_key)

        if self.remat_layers:
            body = jax.checkpoint(body, prevent_cse=False)
        xs = (state, prefix_kv, layer_keys, layer_sliding)
        if self.scan_layers:
            return jax.lax.scan(body, x_btd, xs)
        kv = []
        for i in range(n_layers):
            x_btd, layer_kv = body(x_btd, jax.tree.map(lambda a: a[i], xs))
            kv.append(layer_kv)
        return x_btd, jax.tree.map(lambda *a: jnp.stack(a), *kv)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Vocabulary logits in float32 for any ``[..., d]`` hidden states (soft-capped where the model is)."""
        if self.lm_head is None:
            table_vd = self.embed.embedding[...]
            logits = jnp.einsum("...d,vd->...v", hidden, table_vd.astype(hidden.dtype),
                                preferred_element_type=jnp.float32)
        else:
            logits = self.lm_head(hidden).astype(jnp.float32)
        return softcap(logits, self.config.final_softcap)

    def _block_mask(self, positions_bt, valid_bt):
        """Causal by index, valid keys only; sliding windows are applied per layer kind."""
        t = positions_bt.shape[1]
        causal_ts = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
        return causal_ts[None] & valid_bt[:, None, :]


def _stacked(per_layer) -> jax.Array:
    """A prefix's keys or values as one ``[layers, b, p, k, h]`` array (they may come stacked already)."""
    return per_layer if isinstance(per_layer, jax.Array) else jnp.stack(per_layer)


def prefix_from_kv(kv: tuple, positions_bt: jax.Array, valid_bt: jax.Array) -> KVPrefix:
    """Turn the ``kv`` a call returned into a prefix that a later call can attend to."""
    return KVPrefix(keys=tuple(k for k, _ in kv), values=tuple(v for _, v in kv),
                    positions=positions_bt.astype(jnp.int32), valid=valid_bt)


def extend_prefix(prefix: KVPrefix | None, kv: tuple, positions_bt: jax.Array, valid_bt: jax.Array) -> KVPrefix:
    """Append a call's keys/values to ``prefix`` (used by step-by-step decoding)."""
    new = prefix_from_kv(kv, positions_bt, valid_bt)
    if prefix is None:
        return new
    cat = lambda a, b: jnp.concatenate([jnp.broadcast_to(a, (b.shape[0],) + a.shape[1:]), b], axis=1)
    return KVPrefix(keys=tuple(cat(a, b) for a, b in zip(prefix.keys, new.keys)),
                    values=tuple(cat(a, b) for a, b in zip(prefix.values, new.values)),
                    positions=cat(prefix.positions, new.positions), valid=cat(prefix.valid, new.valid))
