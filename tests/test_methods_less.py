"""LESS-style: vmapped per-example LoRA gradients equal a loop of jax.grad; seeded projection; target-closest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from delift_jax.data.records import Example
from delift_jax.methods import select
from delift_jax.methods.less import (DEFAULT_LORA, example_loss, gradient_features, less_scores, lora_copy,
                                     per_example_grads, project)
from delift_jax.train.data import encode_examples, make_batch
from delift_jax.train.lora import has_lora, lora_modules
from delift_jax.train.step import split_model

POOL = [Example("What is 2 plus 2?", " 4"), Example("Name a color:", " blue"),
        Example("Translate 'cat' to German.", " Katze"), Example("Write a short poem about the sea.",
                                                                " Waves roll in and out, the tide keeps time.")]
TARGET = Example("Compute 12 * 7", " 84")


@pytest.fixture(scope="module")
def lora_setup(tiny_llama):
    """A LoRA copy of the tiny model with non-zero B (so A's gradients are non-zero too), split for grads."""
    _, _, model, tok = tiny_llama
    lora = lora_copy(model, DEFAULT_LORA, seed=0)
    for i, module in enumerate(lora_modules(lora)):
        shape = module.lora_b[...].shape
        module.lora_b.set_value(0.05 * jax.random.normal(jax.random.PRNGKey(100 + i), shape))
    split, params, frozen = split_model(lora, nnx.LoRAParam)
    sequences = encode_examples(tok, POOL[:3], 128)
    batch = make_batch(sequences, np.array([0, 1, 2, -1]), 1, 4, 128)
    return split, params, frozen, {k: v[0] for k, v in batch.items()}, tok


def test_vmapped_grads_equal_a_loop_of_grads(lora_setup):
    split, params, frozen, batch, _ = lora_setup
    vmapped = per_example_grads(split, frozen, 512, params, batch)
    assert all(float(jnp.abs(v[:3]).max()) > 0 for v in vmapped.values())  # A and B both carry gradient
    one_grad = jax.jit(jax.grad(lambda p, row: example_loss(split, frozen, 512, p, row)))  # one example at a time
    for r in range(3):
        single = one_grad(params, {k: jnp.asarray(v[r]) for k, v in batch.items()})
        for name in params:
            np.testing.assert_allclose(np.asarray(vmapped[name][r]), np.asarray(single[name]), atol=1e-6, rtol=0)
    # the padding row (no scored tokens) contributes nothing
    assert all(float(jnp.abs(v[3]).max()) == 0 for v in vmapped.values())


def test_projection_is_seeded_and_equals_the_explicit_matrix():
    rng = np.random.default_rng(0)
    grads = {"b.w": jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32),
             "a.w": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)}
    dim = 16
    out = np.asarray(project(grads, jax.random.PRNGKey(7), dim))
    np.testing.assert_array_equal(out, np.asarray(project(grads, jax.random.PRNGKey(7), dim)))
    assert not np.allclose(out, np.asarray(project(grads, jax.random.PRNGKey(8), dim)))
    key = jax.random.PRNGKey(7)
    blocks = [np.asarray(jax.random.rademacher(jax.random.fold_in(key, l), (n, dim), jnp.float32))
              for l, n in enumerate([5, 12])]  # sorted names: "a.w" (5 values) then "b.w" (12)
    flat = np.concatenate([np.asarray(grads["a.w"]).reshape(2, -1), np.asarray(grads["b.w"]).reshape(2, -1)], 1)
    np.testing.assert_allclose(out, flat @ np.concatenate(blocks) / np.sqrt(dim), rtol=1e-5, atol=1e-5)
    assert set(np.unique(np.concatenate(blocks))) == {-1.0, 1.0}


def test_the_target_copy_is_chosen(tiny_llama):
    _, _, model, tok = tiny_llama
    pool = POOL[:2] + [TARGET] + POOL[2:]
    sel = select("less", pool=pool, budget=1, use_case="task", targets=[TARGET], model=model, tokenizer=tok,
                 seed=0, projection_dim=256, max_length=128)
    np.testing.assert_array_equal(sel.indices, [2])
    assert sel.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert sel.arrays["scores"].max() == sel.scores[0]
    assert not has_lora(model)  # the caller's model is untouched


def test_less_valid_deterministic_and_seeded(tiny_llama):
    _, _, model, tok = tiny_llama
    run = lambda seed: select("less", pool=POOL, budget=2, use_case="instruction", model=model, tokenizer=tok,
                              seed=seed, projection_dim=128, max_length=128)
    a, b, c = run(0), run(0), run(1)
    assert len(a.indices) == 2 and len(set(a.indices.tolist())) == 2 and a.indices.max() < len(POOL)
    assert a.info["target_source"] == "pool"
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.arrays["pool_features"], b.arrays["pool_features"])
    assert not np.allclose(a.arrays["pool_features"], c.arrays["pool_features"])
    np.testing.assert_allclose(np.linalg.norm(a.arrays["pool_features"], axis=1), 1.0, rtol=1e-5)


def test_features_do_not_depend_on_batching(tiny_llama):
    _, _, model, tok = tiny_llama
    one = gradient_features(model, tok, POOL, dim=64, max_length=128, batch_size=1)
    four = gradient_features(model, tok, POOL, dim=64, max_length=128, batch_size=4)
    np.testing.assert_allclose(one, four, atol=1e-5)


def test_score_aggregation():
    pool = np.array([[1.0, 0.0], [0.0, 1.0]])
    targets = np.array([[1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(less_scores(pool, targets, "mean"), [0.8, 0.4])
    np.testing.assert_allclose(less_scores(pool, targets, "max"), [1.0, 0.8])
