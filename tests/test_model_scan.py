"""Scanned layers: the stacked decoder under lax.scan computes what the same parameters compute unrolled, with and
without rematerialization, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.models.config import ModelConfig
from delift_jax.models.llama import CausalLM

CONFIG = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2,
                     head_dim=8)


def _loss_and_grad(model, tokens):
    graphdef, params = nnx.split(model)

    def loss(params):
        m = nnx.merge(graphdef, params)
        hidden, _ = m(tokens)
        return jnp.mean(jax.nn.log_softmax(m.logits(hidden))[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


def test_scan_unrolled_and_remat_agree():
    model = CausalLM(CONFIG, rngs=nnx.Rngs(0))
    assert model.layers.attn.q_proj.kernel[...].shape == (3, 32, 32)  # one stacked layer module
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 96, size=(2, 11)))
    reference_loss, reference_grad = _loss_and_grad(model, tokens)
    for scan, remat in ((False, False), (True, True), (False, True)):
        model.scan_layers, model.remat_layers = scan, remat
        loss, grad = _loss_and_grad(model, tokens)
        np.testing.assert_allclose(float(loss), float(reference_loss), atol=1e-6, rtol=0)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(reference_grad)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_stacked_kv_and_per_layer_kv_are_the_same():
    model = CausalLM(CONFIG, rngs=nnx.Rngs(1))
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, 96, size=(2, 7)))
    _, per_layer = model(tokens)
    _, (keys, values) = model(tokens, stacked_kv=True)
    assert len(per_layer) == 3 and keys.shape == (3, 2, 7, 2, 8)
    for i, (k, v) in enumerate(per_layer):
        np.testing.assert_array_equal(np.asarray(k), np.asarray(keys[i]))
        np.testing.assert_array_equal(np.asarray(v), np.asarray(values[i]))
