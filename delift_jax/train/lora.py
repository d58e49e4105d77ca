"""LoRA adapters on NNX linear layers: a frozen base kernel plus a trainable low-rank update.

    y = x W (+ b)  +  (dropout(x) A B) * alpha / r        A: [in, r] (seeded random), B: [r, out] (zeros)

A and B are ``nnx.LoRAParam`` variables (a subclass of ``nnx.Param``), so ``nnx.LoRAParam`` is the filter that
selects exactly the trainable state; the wrapped base layer keeps its ``nnx.Param`` kernel and bias. Because B
starts at zero, a freshly wrapped model computes exactly what the base model computes. ``merge_lora`` folds
``W + A B * alpha / r`` back into plain ``nnx.Linear`` layers (the layout ``model_to_hf_tensors`` expects).

The model's decoder layers are stacked (one module whose arrays carry a leading layer axis), so an adapter on
``layers.attn.q_proj`` holds A ``[layers, in, r]`` and B ``[layers, r, out]``; inside the layer scan each call
sees one layer's ``[in, r]`` and ``[r, out]``.

Dropout on the adapter input (as PEFT does) needs a key passed with the call (``dropout_key``: the model threads
a training step's key down to each adapter); without one the adapter is deterministic. No key is ever stored
on a module.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (the update is scaled by alpha / r), input dropout rate, target module names."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_TARGETS

    def __post_init__(self):
        from delift_jax.errors import DeliftError

        if self.rank < 1:
            raise DeliftError(f"LoRA rank={self.rank} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise DeliftError(f"LoRA dropout={self.dropout} must be in [0, 1)")
        unknown = sorted(set(self.targets) - set(ALL_TARGETS))
        if unknown or not self.targets:
            raise DeliftError(f"LoRA targets {unknown or '[]'} invalid; choose from {', '.join(ALL_TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nnx.Module):
    """A frozen ``nnx.Linear`` plus a trainable rank-r update (see the module docstring)."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, dropout: float, *, keys: jax.Array):
        """keys: one PRNG key per stacked layer (``[layers, 2]``), or a single key for an unstacked layer."""
        d_in, d_out = base.in_features, base.out_features
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.dropout_rate = dropout
        dtype = base.kernel[...].dtype
        leading = base.kernel[...].shape[:-2]  # (layers,) for a stacked layer
        # Kaiming-uniform(a=sqrt(5)) for A, zeros for B: PEFT's default initialisation.
        bound = 1.0 / math.sqrt(d_in)
        init_a = lambda key: jax.random.uniform(key, (d_in, rank), dtype, -bound, bound)
        self.lora_a = nnx.LoRAParam(jax.vmap(init_a)(keys) if leading else init_a(keys))
        self.lora_b = nnx.LoRAParam(jnp.zeros(leading + (rank, d_out), dtype))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        y = self.base(x)
        x_in = x
        if dropout_key is not None and self.dropout_rate > 0.0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - self.dropout_rate, x.shape)
            x_in = jnp.where(keep, x / (1.0 - self.dropout_rate), 0.0).astype(x.dtype)
        dtype = self.base.dtype or x.dtype
        update = (x_in.astype(dtype) @ self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
        return y + (update * self.scale).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        w = self.base.kernel[...]
        delta = jnp.einsum("...ir,...ro->...io", self.lora_a[...].astype(jnp.float32),
                           self.lora_b[...].astype(jnp.float32)) * self.scale
        return (w.astype(jnp.float32) + delta).astype(w.dtype)


def _target_parents(model):
    """(parent module, attribute name) of every projection a LoRA config can target: attention then MLP."""
    for name in ATTENTION_TARGETS:
        yield model.layers.attn, name
    for name in MLP_TARGETS:
        yield model.layers.mlp, name


def apply_lora(model, config: LoRAConfig, seed: int = 0):
    """Wrap the targeted ``nnx.Linear`` layers of ``model`` in place with ``LoRALinear``; return the model.

    A's initialisation is seeded: the adapter of layer l on target t (t indexes ``ALL_TARGETS``) uses
    ``fold_in(key(seed), l * len(ALL_TARGETS) + t)``.
    """
    root = jax.random.PRNGKey(seed)
    n_layers = model.config.num_layers
    for t, (parent, name) in enumerate(_target_parents(model)):
        layer = getattr(parent, name)
        if isinstance(layer, LoRALinear):
            raise ValueError("model already has LoRA adapters")
        if name in config.targets:
            index = jnp.arange(n_layers) * len(ALL_TARGETS) + t
            keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(index)
            setattr(parent, name, LoRALinear(layer, config.rank, config.alpha, config.dropout, keys=keys))
    return model


def lora_modules(model) -> list[LoRALinear]:
    return [getattr(parent, name) for parent, name in _target_parents(model)
            if isinstance(getattr(parent, name), LoRALinear)]


def has_lora(model) -> bool:
    return bool(lora_modules(model))


def merge_lora(model):
    """Fold every adapter into its base kernel, in place: the model becomes a plain ``CausalLM`` again."""
    for parent, name in _target_parents(model):
        module = getattr(parent, name)
        if isinstance(module, LoRALinear):
            base = module.base
            base.kernel.set_value(module.merged_kernel())
            setattr(parent, name, base)
    return model
