"""The pure training step: ``train_step(state, batch) -> (state, metrics)`` under ``jax.jit`` with donation.

The model is split once with an NNX filter into *trainable* parameters (``nnx.LoRAParam`` under LoRA, every
``nnx.Param`` under full fine-tuning), held as a flat ``{dotted path: array}`` dict, and *frozen* state (the base
weights), which is bound to the step as an argument that is never differentiated nor donated.

Loss: mean negative log-likelihood over the scored tokens only (the response and its final EOS; prompt tokens and
padding never contribute), weighted by tokens. A batch carries ``m`` micro-batches ``[m, b, ...]``; the step sums
per-token NLL gradients over them in a ``lax.scan`` and divides by the total number of scored tokens, so
4 micro-batches of 1 row equal one batch of 4 rows. Logits exist only at scored positions, ``logits_chunk`` rows
at a time and rematerialized in the backward pass, so no ``[b, t, vocab]`` array is ever built.

Shardings are explicit: ``make_train_step`` jits with ``in_shardings``/``out_shardings``. The batch's row axis
is split over the mesh axis ``"data"``; parameters, optimizer state and frozen weights follow ``param_sharding``
(replicated by default); XLA inserts the gradient all-reduce. Static settings (model structure, optimizer
settings, chunk size, dropout) are hashed by value, so equal settings share one compiled step across runs.

Adapter dropout: each micro-batch gets ``fold_in(fold_in(rng, step), micro-batch)`` as an explicit key argument
to the model call; nothing random is stored on a module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from delift_jax.scoring import target_logprobs
from delift_jax.sharding import DATA_AXIS, dotted_name

BATCH_FIELDS = ("tokens", "valid", "score_index", "score_target", "score_valid")


class TrainState(NamedTuple):
    """Everything a step changes (and a checkpoint holds): trainable params, optimizer state, step, base key."""

    params: dict
    opt_state: Any
    step: jax.Array
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class ModelSplit:
    """Static structure to rebuild the model from (trainable params dict, frozen state)."""

    graphdef: Any
    names: tuple[str, ...]
    treedef: Any
    shapes: tuple[tuple[tuple[int, ...], Any], ...]  # (shape, dtype) per name

    def merge(self, params: dict, frozen):
        trainable = jax.tree.unflatten(self.treedef, [params[name] for name in self.names])
        return nnx.merge(self.graphdef, trainable, frozen)


def split_model(model, trainable=nnx.Param) -> tuple[ModelSplit, dict, Any]:
    """``(split, params, frozen)``: ``params`` is a flat dict of the variables ``trainable`` selects."""
    graphdef, trainable_state, frozen = nnx.split(model, trainable, ...)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(trainable_state)
    names = tuple(dotted_name(path) for path, _ in leaves_with_path)
    if len(set(names)) != len(names):
        raise RuntimeError("duplicate parameter names after flattening")
    params = {name: leaf for name, (_, leaf) in zip(names, leaves_with_path)}
    shapes = tuple((tuple(leaf.shape), jnp.dtype(leaf.dtype)) for _, leaf in leaves_with_path)
    return ModelSplit(graphdef, names, treedef, shapes), params, frozen


def chunked_target_logprobs(model, hidden_brd, target_br, chunk: int):
    """log softmax(logits)[target] at ``[b, r]`` positions, ``chunk`` at a time, rematerialized for the backward."""
    return target_logprobs(model, hidden_brd, target_br, chunk, remat=True)


def nll_sum(model, batch: dict, logits_chunk: int, dropout_key: jax.Array | None = None
            ) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p over scored tokens, number of scored tokens) for one ``[b, ...]`` micro-batch."""
    hidden_btd, _ = model(batch["tokens"], valid_bt=batch["valid"], dropout_key=dropout_key)
    hidden_brd = jnp.take_along_axis(hidden_btd, batch["score_index"][..., None], axis=1)
    logp_br = chunked_target_logprobs(model, hidden_brd, batch["score_target"], logits_chunk)
    mask = batch["score_valid"]
    return -jnp.sum(jnp.where(mask, logp_br, 0.0)), jnp.sum(mask).astype(jnp.float32)


def _train_step(split: ModelSplit, optimizer, logits_chunk: int, dropout: bool, frozen, state: TrainState,
                batch: dict):
    step_key = jax.random.fold_in(state.rng, state.step)
    m = batch["tokens"].shape[0]

    def micro(carry, xs):
        grad_acc, loss_acc, tok_acc = carry
        index, micro_batch = xs

        def loss_fn(params):
            model = split.merge(params, frozen)
            key = jax.random.fold_in(step_key, index) if dropout else None
            return nll_sum(model, micro_batch, logits_chunk, key)

        (total, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_acc = jax.tree.map(jnp.add, grad_acc, grads)
        return (grad_acc, loss_acc + total, tok_acc + count), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grad_sum, loss_sum, n_tokens), _ = jax.lax.scan(micro, init, (jnp.arange(m), batch))
    denom = jnp.maximum(n_tokens, 1.0)
    grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grad_sum)
    loss = loss_sum / denom
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    new_state = TrainState(jax.tree.map(keep, params, state.params), jax.tree.map(keep, opt_state, state.opt_state),
                           state.step + ok.astype(state.step.dtype), state.rng)
    metrics = {"loss": loss, "tokens": n_tokens, "grad_norm": grad_norm, "finite": ok}
    return new_state, metrics


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """``step(state, batch) -> (state, metrics)``: the jitted step with its static settings and frozen weights
    bound (state donated).

    ``jitted`` is the ``jax.jit`` function of ``(*static, frozen, state, batch)``; ``lower`` lowers it for
    inspection (``.compile().memory_analysis()``, ``.as_text()``) without running it.
    """

    jitted: Any
    static: tuple
    frozen: Any

    def __call__(self, state: TrainState, batch: dict):
        return self.jitted(*self.static, self.frozen, state, batch)

    def lower(self, state: TrainState, batch: dict):
        return self.jitted.lower(*self.static, self.frozen, state, batch)


def make_train_step(split: ModelSplit, optimizer, frozen, mesh: Mesh, *, logits_chunk: int = 512,
                    dropout: bool = False, param_spec: Callable | None = None) -> TrainStep:
    """The jitted train step with explicit shardings; ``state`` is donated.

    A step whose loss or gradient norm is not finite leaves ``state`` unchanged and reports ``finite=False``.
    optimizer: anything with optax's ``init``/``update``; a value-hashable one (``make_optimizer``'s) lets equal
    settings reuse one compilation. param_spec: ``(dotted name, shape) -> PartitionSpec`` for parameters, their
    optimizer moments and the frozen weights (default: replicated; see ``delift_jax.sharding``).
    """
    frozen_sharding = tree_shardings(frozen, mesh, param_spec)
    frozen = jax.tree.map(_place, frozen, frozen_sharding)
    state_sharding = tree_shardings(abstract_state(split, optimizer), mesh, param_spec)
    batch_sharding = {k: NamedSharding(mesh, PartitionSpec(None, DATA_AXIS)) for k in BATCH_FIELDS}
    jitted = jax.jit(_train_step, static_argnums=(0, 1, 2, 3), donate_argnums=(5,),
                     in_shardings=(frozen_sharding, state_sharding, batch_sharding),
                     out_shardings=(state_sharding, NamedSharding(mesh, PartitionSpec())))
    return TrainStep(jitted, (split, optimizer, logits_chunk, dropout), frozen)


def _place(leaf, sharding):
    """An array moved to ``sharding``; a shape-only leaf (an abstract model, for lowering) just gets it."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    return jax.device_put(leaf, sharding)


def abstract_state(split: ModelSplit, optimizer) -> TrainState:
    """The ``TrainState`` a step takes, as shapes and dtypes only (nothing is computed)."""
    params = {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype) in zip(split.names, split.shapes)}
    return jax.eval_shape(lambda p: TrainState(p, optimizer.init(p), jnp.zeros((), jnp.int32),
                                               jax.random.PRNGKey(0)), params)


def tree_shardings(tree, mesh: Mesh, param_spec: Callable | None = None):
    """A ``NamedSharding`` per leaf of ``tree``. A leaf reached through a parameter's dotted name (a params dict
    entry, its optimizer moments, a frozen weight) gets ``param_spec(name, shape)``; every other leaf (step,
    key, counters) is replicated."""

    def sharding(path, leaf):
        if param_spec is None or not hasattr(leaf, "shape"):
            return NamedSharding(mesh, PartitionSpec())
        named = [k.key for k in path if isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str)
                 and "." in k.key]
        return NamedSharding(mesh, param_spec(named[-1] if named else dotted_name(path), tuple(leaf.shape)))

    return jax.tree_util.tree_map_with_path(sharding, tree)


def init_state(params: dict, optimizer, seed: int, mesh: Mesh, param_spec: Callable | None = None) -> TrainState:
    """A fresh ``TrainState`` (step 0, key ``PRNGKey(seed)``), holding copies of ``params``, placed on ``mesh``."""
    params = jax.tree.map(jnp.array, params)  # own buffers: donation must never delete the caller's arrays
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), jax.random.PRNGKey(seed))
    return jax.device_put(state, tree_shardings(state, mesh, param_spec))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place ``[m, b, ...]`` host arrays with rows (axis 1) split over the ``"data"`` axis."""
    sharding = NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))
    return {k: jax.device_put(np.asarray(batch[k]), sharding) for k in BATCH_FIELDS}


def _eval_nll(split: ModelSplit, logits_chunk: int, frozen, params, batch):
    model = split.merge(params, frozen)
    totals = jax.lax.map(lambda mb: nll_sum(model, mb, logits_chunk), batch)
    return jnp.sum(totals[0]), jnp.sum(totals[1])


eval_nll = jax.jit(_eval_nll, static_argnums=(0, 1))
"""(sum of NLL, scored tokens) of a ``[m, b, ...]`` batch, without any update (for evaluation and tests)."""
