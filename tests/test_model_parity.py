"""Logit parity with Hugging Face PyTorch on tiny random models loaded through our HF path (float32)."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from delift_jax.models import extend_prefix, load_model, prefix_from_kv
from tiny import make_hf_model, torch_logits

ATOL = 1e-5

CASES = {
    "llama-mha": ("llama", dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama-gqa-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mqa": ("llama", dict(num_attention_heads=4, num_key_value_heads=1)),
    "llama-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama3-rope-scaling": ("llama", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "llama-linear-rope": ("llama", dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                         "factor": 2.0})),
    "qwen2-bias": ("qwen2", dict(num_key_value_heads=2)),
    "mistral": ("mistral", dict(sliding_window=None)),
    "mistral-sliding-window": ("mistral", dict(sliding_window=5)),
    "phi3": ("phi3", dict(num_key_value_heads=2)),
    "phi3-sliding-window": ("phi3", dict(num_key_value_heads=4, sliding_window=6)),
}
# Padding and KV-prefix decoding run the same code for every case except through the attention's head grouping
# (MHA / GQA / MQA) and the sliding-window masks, which read the prefix's positions. Biases act per token and RoPE
# frequencies are fixed at trace time (llama3 / linear scaling included), so those cases, and the families that
# only load differently (qwen2, mistral and phi3 without a window), are checked by test_logits_match_torch.
DECODING_CASES = ["llama-gqa-tied", "llama-mha", "llama-mqa", "mistral-sliding-window", "phi3-sliding-window"]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    kind, overrides = CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = make_hf_model(directory, kind, seed=zlib.crc32(request.param.encode()) % 1000, **overrides)
    model, _, config = load_model(directory, with_tokenizer=False)
    return request.param, torch_model, model, config


def test_logits_match_torch(case):
    name, torch_model, model, config = case
    ids = np.random.RandomState(1).randint(0, config.vocab_size, size=(3, 23))
    hidden, _ = model(jnp.asarray(ids))
    ours = np.asarray(model.logits(hidden))
    ref = torch_logits(torch_model, ids)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("case", DECODING_CASES, indirect=True)
def test_right_padding_does_not_change_valid_positions(case):
    _, torch_model, model, config = case
    ids = np.random.RandomState(2).randint(0, config.vocab_size, size=(2, 17))
    valid = np.ones_like(ids, dtype=bool)
    valid[1, 11:] = False  # row 1 is a shorter sequence padded on the right
    hidden, _ = model(jnp.asarray(ids), valid_bt=jnp.asarray(valid))
    ours = np.asarray(model.logits(hidden))
    ref_short = torch_logits(torch_model, ids[1:2, :11])
    np.testing.assert_allclose(ours[1, :11], ref_short[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", DECODING_CASES, indirect=True)
def test_kv_prefix_decoding_equals_full_forward(case):
    """Prefill 9 tokens, then feed the rest one at a time through a growing KV prefix."""
    _, _, model, config = case
    ids = jnp.asarray(np.random.RandomState(3).randint(0, config.vocab_size, size=(2, 15)))
    full_hidden, _ = model(ids)
    full = np.asarray(model.logits(full_hidden))

    prompt_len = 9
    positions = jnp.broadcast_to(jnp.arange(prompt_len), (2, prompt_len))
    hidden, kv = model(ids[:, :prompt_len])
    prefix = prefix_from_kv(kv, positions, jnp.ones((2, prompt_len), bool))
    steps = [np.asarray(model.logits(hidden))]
    for t in range(prompt_len, ids.shape[1]):
        pos = jnp.full((2, 1), t, jnp.int32)
        hidden, kv = model(ids[:, t:t + 1], positions_bt=pos, prefix=prefix)
        prefix = extend_prefix(prefix, kv, pos, jnp.ones((2, 1), bool))
        steps.append(np.asarray(model.logits(hidden)))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", DECODING_CASES, indirect=True)
def test_shared_prefix_broadcast_equals_full_forward(case):
    """One prefix (batch 1) shared by several continuations equals running each full sequence."""
    _, _, model, config = case
    rng = np.random.RandomState(4)
    prefix_ids = rng.randint(0, config.vocab_size, size=(1, 7))
    continuations = rng.randint(0, config.vocab_size, size=(3, 6))
    hidden, kv = model(jnp.asarray(prefix_ids))
    prefix = prefix_from_kv(kv, jnp.arange(7)[None], jnp.ones((1, 7), bool))
    cont_hidden, _ = model(jnp.asarray(continuations), prefix=prefix)
    ours = np.asarray(model.logits(cont_hidden))
    full_ids = np.concatenate([np.repeat(prefix_ids, 3, axis=0), continuations], axis=1)
    full_hidden, _ = model(jnp.asarray(full_ids))
    np.testing.assert_allclose(ours, np.asarray(model.logits(full_hidden))[:, 7:], atol=ATOL, rtol=0)
