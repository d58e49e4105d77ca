"""Gemma 2 and Gemma 3 (text) against Hugging Face PyTorch on tiny random models loaded through our HF path.

The configs make every Gemma feature matter at this size: soft-caps small enough that tanh bends, sequences longer
than the sliding window, query_pre_attn_scalar different from head_dim, a separate (and very different) RoPE base
for Gemma 3's sliding layers next to linearly scaled global layers. float32, atol 1e-5.
"""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from delift_jax.models import KVPrefix, extend_prefix, load_model
from delift_jax.models.weights import model_to_hf_tensors
from tiny import torch_logits

ATOL = 1e-5
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, head_dim=16,
             rms_norm_eps=1e-6, max_position_embeddings=4096, pad_token_id=None, eos_token_id=None, bos_token_id=None,
             attn_implementation="eager")
CASES = {
    # Layers sliding, full, sliding; untied head; both soft-caps active.
    "gemma2": ("Gemma2", dict(num_hidden_layers=3, num_key_value_heads=2, sliding_window=5, query_pre_attn_scalar=24,
                              attn_logit_softcapping=1.0, final_logit_softcapping=1.5, tie_word_embeddings=False)),
    # Layers sliding, sliding, full, sliding (pattern 3); q/k norms; local RoPE base 100 next to a global base
    # 10000 with linear scaling; multi-query attention with biases; tied head.
    "gemma3": ("Gemma3Text", dict(num_hidden_layers=4, num_key_value_heads=1, sliding_window=6,
                                  query_pre_attn_scalar=16, attention_bias=True, layer_types=None,
                                  sliding_window_pattern=3, rope_parameters={
                                      "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
}


def make_gemma(directory, kind: str, seed: int, scale: float = 0.1, **overrides):
    """Save a tiny random Gemma 2 / Gemma 3 text model in ``directory``; return the torch model.

    Every parameter is N(0, scale^2), norm weights included: Gemma stores them zero-centred (applied as 1 + w)."""
    import torch
    import transformers

    config_cls = getattr(transformers, f"{kind}Config")
    model_cls = getattr(transformers, f"{kind}ForCausalLM" if kind == "Gemma2" else "Gemma3ForCausalLM")
    model = model_cls(config_cls(**{**SMALL, **overrides})).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    model.save_pretrained(str(directory))
    return model


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens_bt, positions_bt, valid_bt, prefix):
    model = nnx.merge(graphdef, state)
    hidden_btd, (keys_lbtkh, values_lbtkh) = model(tokens_bt, positions_bt, valid_bt, prefix, stacked_kv=True)
    return model.logits(hidden_btd), keys_lbtkh, values_lbtkh


def forward(model, ids, positions=None, valid=None, prefix=None):
    """``(logits, keys_lbtkh, values_lbtkh)`` as numpy/jax arrays; compiled once per model structure and shape
    (the tests reuse few shapes: compilation is most of their time)."""
    graphdef, state = nnx.split(model)
    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
    valid = jnp.ones((b, t), bool) if valid is None else jnp.asarray(valid)
    logits, keys, values = _forward(graphdef, state, jnp.asarray(ids), positions, valid, prefix)
    return np.asarray(logits), keys, values


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(name, torch model, our model, config, ids [3, 23], valid, our full-forward logits, keys, values)."""
    kind, overrides = CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = make_gemma(directory, kind, seed=zlib.crc32(request.param.encode()) % 1000, **overrides)
    model, _, config = load_model(directory, with_tokenizer=False)
    ids = np.random.RandomState(1).randint(0, config.vocab_size, size=(3, 23))  # 23 tokens > window 5 / 6
    valid = np.ones_like(ids, dtype=bool)
    valid[1, 11:] = False  # row 1 is an 11-token sequence padded on the right
    logits, keys, values = forward(model, ids, valid=valid)
    return dict(name=request.param, torch=torch_model, model=model, config=config, ids=ids, valid=valid,
                logits=logits, keys=keys, values=values)


def test_config_reads_the_gemma_features(case):
    config = case["config"]
    assert config.scale_embeddings and config.norm_plus_one and config.sandwich_norms
    assert config.activation == "gelu_tanh"
    if case["name"] == "gemma2":
        assert config.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
        assert (config.attn_softcap, config.final_softcap, config.query_pre_attn_scalar) == (1.0, 1.5, 24.0)
        assert not config.qk_norm and not config.tie_word_embeddings and config.local_rope_theta is None
    else:
        assert config.layer_types == ("sliding_attention", "sliding_attention", "full_attention", "sliding_attention")
        assert config.qk_norm and config.tie_word_embeddings and config.local_rope_theta == 100.0
        assert config.rope_scaling.kind == "linear" and config.rope_scaling.factor == 4.0
        assert config.attn_softcap is None and config.final_softcap is None


def test_logits_match_torch_beyond_the_sliding_window(case):
    ids, ours = case["ids"], case["logits"]
    ref = torch_logits(case["torch"], ids)
    if case["config"].final_softcap is not None:
        assert np.abs(ref).max() > 0.5 * case["config"].final_softcap  # the cap bends these logits
    full_rows = [0, 2]
    np.testing.assert_allclose(ours[full_rows], ref[full_rows], atol=ATOL, rtol=0, err_msg=case["name"])


def test_right_padding_does_not_change_valid_positions(case):
    ref_short = torch_logits(case["torch"], case["ids"][1:2, :11])
    np.testing.assert_allclose(case["logits"][1, :11], ref_short[0], atol=ATOL, rtol=0)


def _per_layer(stacked_lbtkh):
    return tuple(stacked_lbtkh[i] for i in range(stacked_lbtkh.shape[0]))


def test_kv_prefix_chunks_match_torch(case):
    """After 9 tokens, two chunks of 6 through a growing KV prefix (the decoding path): the prefix holds keys
    outside the sliding window of later queries, which the sliding layers must ignore and the global ones not.
    The first chunk's prefix has 6 padding slots, so both chunks share one compiled shape."""
    model, ids = case["model"], case["ids"]
    ref = torch_logits(case["torch"], ids[:, :21])
    keys, values = _per_layer(case["keys"][:, :, :9]), _per_layer(case["values"][:, :, :9])
    prefix_9 = KVPrefix(keys, values, jnp.broadcast_to(jnp.arange(9), (3, 9)), jnp.ones((3, 9), bool))
    pad = lambda a: jnp.pad(a, ((0, 0), (0, 6), (0, 0), (0, 0)))
    padded = KVPrefix(tuple(map(pad, keys)), tuple(map(pad, values)), jnp.broadcast_to(jnp.arange(15), (3, 15)),
                      jnp.arange(15)[None].repeat(3, 0) < 9)
    positions_1 = jnp.broadcast_to(jnp.arange(9, 15), (3, 6))
    logits_1, keys_1, values_1 = forward(model, ids[:, 9:15], positions_1, prefix=padded)
    prefix_15 = extend_prefix(prefix_9, tuple(zip(_per_layer(keys_1), _per_layer(values_1))), positions_1,
                              jnp.ones((3, 6), bool))
    logits_2, _, _ = forward(model, ids[:, 15:21], positions_1 + 6, prefix=prefix_15)
    np.testing.assert_allclose(logits_1, ref[:, 9:15], atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits_2, ref[:, 15:21], atol=ATOL, rtol=0)


def test_shared_stacked_prefix_matches_torch(case):
    """The kernel engine's form: one prefix (batch 1, keys stacked over layers) shared by every row."""
    ids = case["ids"]
    prefix = KVPrefix(case["keys"][:, :1, :9], case["values"][:, :1, :9], jnp.arange(9)[None],
                      jnp.ones((3, 9), bool))
    ours, _, _ = forward(case["model"], ids[:, 9:15], jnp.broadcast_to(jnp.arange(9, 15), (3, 6)), prefix=prefix)
    full_ids = np.concatenate([np.repeat(ids[:1, :9], 3, axis=0), ids[:, 9:15]], axis=1)
    np.testing.assert_allclose(ours, torch_logits(case["torch"], full_ids)[:, 9:], atol=ATOL, rtol=0)


def test_unrolled_layers_compute_the_same(case):
    if case["name"] != "gemma3":
        pytest.skip("one case suffices: gemma3 has both layer kinds and both RoPEs")
    unrolled = nnx.clone(case["model"])
    unrolled.scan_layers = False
    logits, _, _ = forward(unrolled, case["ids"], valid=case["valid"])
    np.testing.assert_allclose(logits, case["logits"], atol=ATOL, rtol=0)


def test_export_tensors_equal_the_checkpoint(case):
    """Our HF-named export of the loaded model is the torch state dict (names, layouts, values)."""
    ours = model_to_hf_tensors(case["model"])
    ref = {k: v.numpy() for k, v in case["torch"].state_dict().items() if k != "lm_head.weight" or k in ours}
    assert sorted(ours) == sorted(ref)
    for name, value in ref.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_lora_targets_gemma_projections(case):
    """LoRA wraps Gemma's projections by name: identity at B = 0, and the merged model equals the adapted one."""
    from delift_jax.train import LoRAConfig, apply_lora, merged_copy
    from delift_jax.train.lora import lora_modules

    if case["name"] != "gemma3":
        pytest.skip("one case suffices: gemma3 has every Gemma module (q/k norms too)")
    ids, valid = case["ids"], case["valid"]
    lora = apply_lora(nnx.clone(case["model"]), LoRAConfig(rank=2, alpha=4.0), seed=1)
    assert len(lora_modules(lora)) == 7
    np.testing.assert_array_equal(forward(lora, ids, valid=valid)[0], case["logits"])
    rng = np.random.RandomState(2)  # numpy draws: no compilation per adapter shape
    for module in lora_modules(lora):
        module.lora_b.set_value(jnp.asarray(0.05 * rng.standard_normal(module.lora_b[...].shape), jnp.float32))
    adapted = forward(lora, ids, valid=valid)[0]
    assert np.abs(adapted - case["logits"]).max() > 1e-3
    np.testing.assert_allclose(forward(merged_copy(lora), ids, valid=valid)[0], adapted, atol=ATOL, rtol=0)


def test_exported_gemma_loads_in_transformers_and_back(case, tmp_path):
    """``export_hf`` writes a Gemma directory (config from ``gemma_hf_fields``) that transformers and our loader
    read back to the same logits."""
    import torch
    import transformers

    from delift_jax.train import export_hf

    directory = export_hf(case["model"], None, tmp_path / "export")
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                                                     attn_implementation="eager").eval()
    ids = case["ids"][:1]  # unpadded row
    np.testing.assert_allclose(torch_logits(torch_model, ids), case["logits"][:1], atol=ATOL, rtol=0)
    loaded, _, config = load_model(directory, with_tokenizer=False)
    assert config == case["config"]
    # Same weights, same shapes: the same program, so bit-identical logits.
    np.testing.assert_array_equal(forward(loaded, case["ids"], valid=case["valid"])[0], case["logits"])
