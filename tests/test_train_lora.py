"""LoRA: identity at B = 0, merge equals the adapted model, only adapter parameters train, optimizer chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from delift_jax.errors import DeliftError
from delift_jax.train import LoRAConfig, TrainConfig, apply_lora, finetune, merged_copy
from delift_jax.train.lora import lora_modules
from delift_jax.train.optim import decays, learning_rate_schedule, make_optimizer
from examples import EXAMPLES

ATOL = 1e-5


def _logits(model, ids):
    hidden, _ = model(jnp.asarray(ids))
    return np.asarray(model.logits(hidden))


def _flat_params(model):
    _, state = nnx.split(model)
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _ids(config, seed=0):
    return np.random.RandomState(seed).randint(0, config.vocab_size, size=(2, 19))


def test_fresh_adapters_leave_logits_unchanged(tiny_llama):
    _, _, model, _ = tiny_llama
    lora = apply_lora(nnx.clone(model), LoRAConfig(rank=4, alpha=8.0), seed=3)
    modules = lora_modules(lora)  # one adapter per target, stacked over the layers
    assert len(modules) == 7 and all(m.lora_a[...].shape[0] == model.config.num_layers for m in modules)
    ids = _ids(model.config)
    np.testing.assert_array_equal(_logits(lora, ids), _logits(model, ids))


def test_merged_model_equals_adapted_model(tiny_llama):
    _, _, model, _ = tiny_llama
    lora = apply_lora(nnx.clone(model), LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj")))
    key = jax.random.PRNGKey(1)
    for i, module in enumerate(lora_modules(lora)):
        module.lora_b.set_value(0.05 * jax.random.normal(jax.random.fold_in(key, i), module.lora_b[...].shape))
    ids = _ids(model.config, 1)
    adapted = _logits(lora, ids)
    assert np.abs(adapted - _logits(model, ids)).max() > 1e-2  # the adapters really change the function
    merged = merged_copy(lora)
    assert not lora_modules(merged) and lora_modules(lora)  # the copy is plain, the original keeps its adapters
    np.testing.assert_allclose(_logits(merged, ids), adapted, atol=ATOL, rtol=0)
    # Reference for one projection of layer 0 (parameters are stacked over layers): W + A B * alpha / r.
    m = lora.layers.attn.q_proj
    want = np.asarray(m.base.kernel[0]) + np.asarray(m.lora_a[0]) @ np.asarray(m.lora_b[0]) * 2.0
    np.testing.assert_allclose(np.asarray(merged.layers.attn.q_proj.kernel[0]), want, atol=1e-6)


def test_adapter_init_is_seeded(tiny_llama):
    _, _, model, _ = tiny_llama
    a = apply_lora(nnx.clone(model), LoRAConfig(rank=2), seed=5)
    b = apply_lora(nnx.clone(model), LoRAConfig(rank=2), seed=5)
    c = apply_lora(nnx.clone(model), LoRAConfig(rank=2), seed=6)
    ka = np.asarray(a.layers.mlp.up_proj.lora_a[1])  # layer 1 of the stacked adapter
    np.testing.assert_array_equal(ka, np.asarray(b.layers.mlp.up_proj.lora_a[1]))
    assert not np.array_equal(ka, np.asarray(c.layers.mlp.up_proj.lora_a[1]))
    assert not np.array_equal(ka, np.asarray(a.layers.mlp.up_proj.lora_a[0]))  # each layer has its own A


def test_only_lora_parameters_change(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    before = _flat_params(model)
    config = TrainConfig(method="lora", lora=LoRAConfig(4, 8.0, dropout=0.1), learning_rate=1e-2,
                         schedule="constant", weight_decay=0.1, batch_size=2, max_length=128, pad_to_max_length=True,
                         max_steps=4, save_every=2)  # the settings of test_train_loop's LORA_SMALL (one compile)
    result = finetune(model, tokenizer, EXAMPLES, config)
    after = _flat_params(result.model)
    base = {k: v for k, v in after.items() if "lora_" not in k}
    adapters = {k: v for k, v in after.items() if "lora_" in k}
    assert len(adapters) == 2 * 7  # A and B per target, each stacked over the layers
    for name, value in base.items():
        original = name.replace(".base.", ".")
        np.testing.assert_array_equal(value, before[original], err_msg=name)
    assert all(np.abs(v).max() > 0 for k, v in adapters.items() if k.endswith("lora_b"))
    np.testing.assert_array_equal(_flat_params(model)["layers.attn.q_proj.kernel"],
                                  before["layers.attn.q_proj.kernel"])  # the caller's model is untouched


def test_weight_decay_mask_and_schedules():
    assert decays("layers.attn.q_proj.kernel") and decays("layers.mlp.up_proj.lora_b")
    assert decays("lm_head.kernel")
    for name in ("embed.embedding", "norm.scale", "layers.input_norm.scale", "layers.attn.q_proj.bias"):
        assert not decays(name), name
    cosine = learning_rate_schedule(1.0, 10, warmup_steps=2, kind="cosine", final_lr_ratio=0.1)
    np.testing.assert_allclose([float(cosine(s)) for s in (0, 1, 2, 6, 10)],
                               [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1], atol=1e-6)
    constant = learning_rate_schedule(1.0, 10, warmup_steps=4, kind="constant")
    np.testing.assert_allclose([float(constant(s)) for s in (0, 2, 4, 9)], [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    with pytest.raises(DeliftError):
        learning_rate_schedule(1.0, 10, kind="linear")


def test_optimizer_matches_reference_adamw_with_clipping():
    """One step of our chain on known gradients equals a hand-written clip + AdamW (decay only on kernels)."""
    params = {"w.kernel": jnp.array([[1.0, -2.0]]), "n.scale": jnp.array([0.5, 0.5])}
    grads = {"w.kernel": jnp.array([[3.0, 4.0]]), "n.scale": jnp.array([0.0, 12.0])}
    opt = make_optimizer(0.1, 10, schedule="constant", weight_decay=0.5, max_grad_norm=6.5)
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    scale = 6.5 / 13.0  # global norm sqrt(9 + 16 + 144) = 13
    for name, decay in (("w.kernel", 0.5), ("n.scale", 0.0)):
        g = np.asarray(grads[name]) * scale
        m, v = 0.1 * g, 0.001 * g * g
        step = (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8) + decay * np.asarray(params[name])
        np.testing.assert_allclose(np.asarray(new[name]), np.asarray(params[name]) - 0.1 * step, atol=1e-6)
