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
