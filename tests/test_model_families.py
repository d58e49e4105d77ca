"""Family-specific configuration checks: what Phi-3 support accepts and what it refuses."""

import pytest

from delift_jax.errors import UnsupportedArchitectureError
from delift_jax.models.config import ModelConfig

PHI3 = {"model_type": "phi3", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "original_max_position_embeddings": 4096,
        "sliding_window": 2047, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 1.0}}


def test_phi3_config_is_read():
    config = ModelConfig.from_hf_config(PHI3)
    assert config.model_type == "phi3" and config.sliding_window == 2047 and config.head_dim == 16
    assert not config.qkv_bias and not config.mlp_bias


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                          "long_factor": [2.0] * 8}}, "longrope"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_phi3_refuses_what_it_does_not_implement(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message):
        ModelConfig.from_hf_config({**PHI3, **change})


# Gemma configs as published on the Hub (written by transformers 4.4x/4.5x: rope_theta, rope_local_base_freq,
# sliding_window_pattern, hidden_act next to hidden_activation, no layer_types).
GEMMA2_HUB = {"architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
              "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
              "eos_token_id": [1, 107], "final_logit_softcapping": 30.0, "head_dim": 256,
              "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
              "initializer_range": 0.02, "intermediate_size": 9216, "max_position_embeddings": 8192,
              "model_type": "gemma2", "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
              "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
              "sliding_window": 4096, "torch_dtype": "bfloat16", "transformers_version": "4.42.4", "use_cache": True,
              "vocab_size": 256000}
GEMMA3_HUB = {"architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
              "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
              "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
              "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
              "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
              "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
              "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
              "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
              "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": True,
              "vocab_size": 262144}


@pytest.mark.parametrize("hub, changes", [
    (GEMMA2_HUB, {}),
    (GEMMA3_HUB, {}),
    (GEMMA3_HUB, {"rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 4}),
    # transformers 5 leaves these out when they equal its defaults: tied head, Gemma 2's caps 30 and 50.
    ({k: v for k, v in GEMMA2_HUB.items() if k not in ("final_logit_softcapping", "attn_logit_softcapping")}, {}),
])
def test_gemma_hub_configs_read_as_transformers_reads_them(hub, changes):
    import transformers

    raw = {**hub, **changes}
    ours = ModelConfig.from_hf_config(raw)
    config_cls = transformers.Gemma2Config if raw["model_type"] == "gemma2" else transformers.Gemma3TextConfig
    theirs = config_cls(**{k: v for k, v in raw.items() if k != "model_type"})
    assert ours.layer_types == tuple(theirs.layer_types)
    assert (ours.attn_softcap, ours.final_softcap) == (theirs.attn_logit_softcapping, theirs.final_logit_softcapping)
    assert ours.query_pre_attn_scalar == theirs.query_pre_attn_scalar and ours.head_dim == theirs.head_dim
    assert ours.tie_word_embeddings == theirs.tie_word_embeddings is True
    assert ours.sliding_window == theirs.sliding_window and ours.eos_token_id == raw["eos_token_id"][0]
    rope = theirs.rope_parameters
    if raw["model_type"] == "gemma2":
        assert ours.rope_theta == rope["rope_theta"] and ours.rope_scaling is None
        assert not ours.qk_norm and ours.local_rope_theta is None
    else:
        assert ours.qk_norm and ours.local_rope_theta == rope["sliding_attention"]["rope_theta"]
        assert ours.rope_theta == rope["full_attention"]["rope_theta"]
        scaled = rope["full_attention"]["rope_type"] != "default"
        assert (ours.rope_scaling is not None) == scaled
        if scaled:
            assert (ours.rope_scaling.kind, ours.rope_scaling.factor) == ("linear", rope["full_attention"]["factor"])


@pytest.mark.parametrize("hub, change, message", [
    (GEMMA3_HUB, {"model_type": "gemma3"}, "multimodal Gemma 3"),
    (GEMMA3_HUB, {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    (GEMMA3_HUB, {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    (GEMMA2_HUB, {"hidden_activation": "gelu"}, "hidden_activation"),
    (GEMMA2_HUB, {"sliding_window": None}, "sliding_window is null"),
    (GEMMA2_HUB, {"layer_types": ["full_attention"] * 3}, "layer_types"),
    (GEMMA2_HUB, {"final_logit_softcapping": 0.0}, "final_softcap"),
    (GEMMA3_HUB, {"altup_num_inputs": 4}, "altup_num_inputs"),  # a Gemma 3n attribute
    (GEMMA3_HUB, {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}, "keyed by layer type"),
    (GEMMA3_HUB, {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
     "sliding layers"),
    (GEMMA3_HUB, {"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "yarn"),
])
def test_gemma_refuses_what_it_does_not_implement(hub, change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as caught:
        ModelConfig.from_hf_config({**hub, **change})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("hub, changes", [
    (GEMMA2_HUB, {"tie_word_embeddings": False, "attention_bias": True}),
    (GEMMA3_HUB, {"rope_scaling": {"rope_type": "linear", "factor": 8.0}, "final_logit_softcapping": 30.0}),
])
def test_gemma_export_fields_read_back_to_the_same_config(hub, changes):
    """gemma_hf_fields (for export) + the common attributes give back the config, in our reader and in HF's."""
    import transformers

    from delift_jax.models.config import gemma_hf_fields

    config = ModelConfig.from_hf_config({**hub, **changes})
    common = {k: hub[k] for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "num_key_value_heads", "eos_token_id", "bos_token_id")}
    written = {**common, **gemma_hf_fields(config)}
    assert ModelConfig.from_hf_config(written) == config
    config_cls = transformers.Gemma2Config if config.model_type == "gemma2" else transformers.Gemma3TextConfig
    theirs = config_cls(**{k: v for k, v in written.items() if k != "model_type"})
    assert tuple(theirs.layer_types) == config.layer_types and theirs.tie_word_embeddings == config.tie_word_embeddings
    assert theirs.rope_parameters == written["rope_parameters"]
