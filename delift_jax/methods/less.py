"""LESS-style selection (Xia et al., 2024): LoRA gradient features, random projection, cosine to the targets.

For example z, g(z) = ∇_θ ℓ(z; θ) with θ the LoRA parameters and ℓ the mean NLL over z's response tokens and
final EOS (the training loss, ``train.step.nll_sum`` on the training template). Per-example gradients come from
``jax.vmap(jax.grad(ℓ))`` over the rows of a padded batch (padding rows and tokens never contribute).

    feature φ(z) = Π g(z) / ‖Π g(z)‖,   Π ∈ R^{d x |θ|} with entries ±1/√d (Rademacher), seeded
    score(z)     = mean_{z'∈T} φ(z) · φ(z')          (LESS: the mean cosine over a target set; "max" optional)

Π is never materialized whole: the block for LoRA tensor l (tensors in sorted name order) is drawn from
``fold_in(PRNGKey(seed), l)`` inside the jitted step, so the projection is a function of (seed, model
structure, d) only. Keep the k highest scores (ties: lower index).

Target set T: ``task`` → the targets (the paper's validation examples of the target task). ``instruction`` and
``continual`` → ``targets`` when given, else the pool itself; the mean cosine to the pool ranks an example by
the alignment of its gradient with the pool's mean gradient direction (φ(z) · mean φ).

Differences from the paper (documented, deliberate):
* LESS warms up LoRA on 5% of the data and sums scores over checkpoints weighted by the learning rate, with
  Adam-preconditioned training gradients. Here the gradient is taken at the given model once with plain (SGD)
  gradients. If ``model`` already has LoRA adapters (e.g. a warmed-up run), those are used; otherwise fresh
  adapters are applied to a copy of the model (the caller's model is never changed). Fresh adapters have B = 0,
  so the gradient with respect to A is exactly zero and only B's gradient carries information.
* Default LoRA: rank 8, alpha 16, attention projections q/k/v/o (the paper: rank 128 on the same modules), and
  d = 1024 (the paper: 8192) to keep CPU cost low; both are options.

Options: ``LessOptions``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.errors import DataError
from delift_jax.methods.base import (MethodOptions, MethodSelection, budget_count, check_at_least, check_choice,
                                     check_inputs, need_model, top_k)
from delift_jax.train.data import encode_examples, make_batch
from delift_jax.train.lora import ATTENTION_TARGETS, LoRAConfig, apply_lora, has_lora
from delift_jax.train.step import nll_sum, split_model

DEFAULT_LORA = LoRAConfig(rank=8, alpha=16.0, dropout=0.0, targets=ATTENTION_TARGETS)
DEFAULT_DIM = 1024
AGGREGATES = ("mean", "max")
ROW_FIELDS = ("tokens", "valid", "score_index", "score_target", "score_valid")


@dataclasses.dataclass(frozen=True)
class LessOptions(MethodOptions):
    """lora_config: the adapters whose gradients are the features (used when the model has none); projection_dim:
    d; aggregate: mean | max cosine to the target set; max_length, batch_size, logits_chunk: of the gradient passes."""

    lora_config: LoRAConfig = DEFAULT_LORA
    projection_dim: int = DEFAULT_DIM
    aggregate: str = "mean"
    max_length: int = 1024
    batch_size: int = 8
    logits_chunk: int = 512

    def __post_init__(self):
        if not isinstance(self.lora_config, LoRAConfig):
            raise DataError(f"less: lora_config must be a LoRAConfig, got {type(self.lora_config).__name__}")
        check_at_least("less", "projection_dim", self.projection_dim)
        check_choice("less", "aggregate", self.aggregate, AGGREGATES)
        for name in ("max_length", "batch_size", "logits_chunk"):
            check_at_least("less", name, getattr(self, name))


def lora_copy(model, config: LoRAConfig = DEFAULT_LORA, seed: int = 0):
    """The model itself if it already has LoRA adapters, else a copy with fresh adapters (A seeded, B = 0)."""
    if has_lora(model):
        return model
    return apply_lora(nnx.merge(*nnx.split(model)), config, seed=seed)


def example_loss(split, frozen, logits_chunk: int, params: dict, row: dict) -> jax.Array:
    """Mean NLL of one example's scored tokens; ``row`` holds one unbatched row of a padded batch."""
    model = split.merge(params, frozen)
    total, count = nll_sum(model, {name: row[name][None] for name in ROW_FIELDS}, logits_chunk)
    return total / jnp.maximum(count, 1.0)


@functools.partial(jax.jit, static_argnums=(0, 2))
def per_example_grads(split, frozen, logits_chunk: int, params: dict, batch: dict) -> dict:
    """{name: [b, ...]}: the gradient of each row's mean NLL, by ``jax.vmap(jax.grad(...))`` over the rows."""
    grad = jax.grad(lambda p, row: example_loss(split, frozen, logits_chunk, p, row))
    return jax.vmap(grad, in_axes=(None, 0))(params, {name: batch[name] for name in ROW_FIELDS})


def project(grads: dict, key: jax.Array, dim: int) -> jax.Array:
    """Σ_l g_l Π_l: [b, dim] from per-example gradients {name: [b, ...]}; Π_l Rademacher ±1/√dim from
    ``fold_in(key, l)`` with l the position of the name in sorted order."""
    out = None
    for l, name in enumerate(sorted(grads)):
        g = grads[name].reshape(grads[name].shape[0], -1).astype(jnp.float32)
        block = jax.random.rademacher(jax.random.fold_in(key, l), (g.shape[1], dim), jnp.float32)
        part = g @ block
        out = part if out is None else out + part
    return out / math.sqrt(dim)


@functools.partial(jax.jit, static_argnums=(0, 2, 5))
def _features(split, frozen, logits_chunk: int, params: dict, batch: dict, dim: int, key: jax.Array):
    projected = project(per_example_grads(split, frozen, logits_chunk, params, batch), key, dim)
    return projected / jnp.maximum(jnp.linalg.norm(projected, axis=1, keepdims=True), 1e-12)


def gradient_features(model, tokenizer, examples, *, seed: int = 0, dim: int = DEFAULT_DIM,
                      lora_config: LoRAConfig = DEFAULT_LORA, max_length: int = 1024, batch_size: int = 8,
                      logits_chunk: int = 512) -> np.ndarray:
    """Unit-norm projected LoRA-gradient features ``[len(examples), dim]`` (see the module docstring)."""
    model = lora_copy(model, lora_config, seed)
    split, params, frozen = split_model(model, nnx.LoRAParam)
    sequences = encode_examples(tokenizer, list(examples), max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    key = jax.random.PRNGKey(int(seed))
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    out = np.zeros((len(sequences), dim), np.float32)
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        step_rows = np.full(batch_size, -1, np.int64)
        step_rows[:len(rows)] = rows
        batch = make_batch(sequences, step_rows, 1, batch_size, max_length, pad_id)
        batch = {name: value[0] for name, value in batch.items()}
        feats = np.asarray(_features(split, frozen, logits_chunk, params, batch, int(dim), key))
        out[rows] = feats[:len(rows)]
    if not np.all(np.isfinite(out)):
        raise DataError("less: non-finite gradient features (try float32 compute)")
    return out


def less_scores(pool_features: np.ndarray, target_features: np.ndarray, aggregate: str = "mean") -> np.ndarray:
    """Per pool example: the mean (LESS) or max cosine to the target features (rows are unit norm)."""
    cos = np.asarray(pool_features, np.float64) @ np.asarray(target_features, np.float64).T
    if aggregate == "mean":
        return cos.mean(1)
    if aggregate == "max":
        return cos.max(1)
    raise DataError(f"less: aggregate {aggregate!r} is unknown; choose mean or max")


def less_selection(*, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                   tokenizer=None, seed: int = 0, options: LessOptions = LessOptions()) -> MethodSelection:
    check_inputs("less", pool, use_case, targets, existing)
    need_model("less", model, tokenizer)
    k = budget_count(budget, len(pool), "less")
    settings = dict(seed=seed, dim=int(options.projection_dim), lora_config=options.lora_config,
                    max_length=int(options.max_length), batch_size=int(options.batch_size),
                    logits_chunk=int(options.logits_chunk))
    pool_features = gradient_features(model, tokenizer, pool, **settings)
    target_source = "targets" if targets else "pool"
    target_features = gradient_features(model, tokenizer, targets, **settings) if targets else pool_features
    scores = less_scores(pool_features, target_features, options.aggregate)
    indices = top_k(scores, k)
    info = {"method": "less", "budget": k, "use_case": use_case, "seed": int(seed),
            "projection_dim": int(options.projection_dim), "aggregate": options.aggregate,
            "target_source": target_source, "lora_rank": options.lora_config.rank,
            "lora_targets": list(options.lora_config.targets), "reused_model_lora": bool(has_lora(model)),
            "fine_tune": True}
    return MethodSelection(indices, scores[indices], info,
                           {"scores": scores, "pool_features": pool_features, "target_features": target_features})
