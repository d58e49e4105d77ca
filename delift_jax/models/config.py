"""Frozen configuration of a Llama-family decoder, built from a Hugging Face ``config.json`` (or GGUF metadata).

Every attribute of the HF config is either *used* (it shapes the computation), *inert* (it cannot change the
forward pass: bookkeeping, training-only or generation defaults) or *constrained* (accepted only at the value we
implement). Anything else is refused with an error naming the attribute, so a checkpoint whose semantics we do not
implement can never load silently and compute something different.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from delift_jax.errors import UnsupportedArchitectureError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "phi3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# Keys that never change the forward pass.
_INERT_KEYS = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "return_dict", "dtype", "torch_dtype",
    "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type", "initializer_range",
    "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "_name_or_path", "model_type",
    "output_attentions", "attention_dropout", "max_position_embeddings", "tokenizer_class", "prefix",
    "task_specific_params", "finetuning_task", "num_labels", "tf_legacy_loss", "use_bfloat16", "_attn_implementation",
    "_attn_implementation_autoset", "pruned_heads", "torchscript", "cross_attention_hidden_size",
    "add_cross_attention", "is_decoder", "tie_encoder_decoder", "sep_token_id", "decoder_start_token_id",
    "bad_words_ids", "begin_suppress_tokens", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "forced_bos_token_id",
    "forced_eos_token_id", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_scores", "remove_invalid_values",
    "repetition_penalty", "return_dict_in_generate", "suppress_tokens", "temperature", "top_k", "top_p",
    "typical_p", "output_router_logits", "quantization_config", "max_window_layers", "source_gguf_sha256",
})

# Keys that shape the model, per architecture.
_USED_KEYS = {
    "llama": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling",
              "attention_bias", "mlp_bias", "tie_word_embeddings", "hidden_act", "pretraining_tp"},
    "mistral": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "rope_theta",
                "rope_scaling", "tie_word_embeddings", "hidden_act", "sliding_window"},
    "qwen2": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling",
              "tie_word_embeddings", "hidden_act", "sliding_window", "use_sliding_window", "layer_types"},
    # Phi-3: fused qkv and gate_up projections (split when loading); resid/embd dropout act only in PyTorch
    # training; original_max_position_embeddings matters only to longrope, which is refused.
    "phi3": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling",
             "tie_word_embeddings", "hidden_act", "sliding_window", "resid_pdrop", "embd_pdrop",
             "original_max_position_embeddings", "partial_rotary_factor"},
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind``: ``linear`` (positions / factor) or ``llama3`` (Llama-3.1 band scaling)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and semantics of a Llama-family decoder-only transformer."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    model_type: str = "llama"
    eos_token_id: int | None = None
    bos_token_id: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UnsupportedArchitectureError(f"config field {name}={value!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedArchitectureError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise UnsupportedArchitectureError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitectureError(
                f"model_type {self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise UnsupportedArchitectureError(f"sliding_window={self.sliding_window} must be positive or null")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1: multi-head, num_heads: multi-query)."""
        return self.num_heads // self.num_kv_heads

    def param_count(self) -> int:
        """Number of parameters (for FLOP and memory estimates)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * per_layer + self.vocab_size * d + head + d

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any]) -> "ModelConfig":
        """Build from a HF ``config.json`` mapping; refuse attributes whose semantics are not implemented."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture model_type={model_type!r} (architectures={hf.get('architectures')}); "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        unknown = sorted(k for k in hf if k not in _INERT_KEYS and k not in _USED_KEYS[model_type])
        if unknown:
            raise UnsupportedArchitectureError(
                f"{model_type} config has attributes this package does not implement: {', '.join(unknown)}; "
                "remove them from config.json only if they do not change the forward pass")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedArchitectureError(f"hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
        if hf.get("pretraining_tp", 1) != 1:
            raise UnsupportedArchitectureError(f"pretraining_tp={hf['pretraining_tp']} is not supported (only 1)")

        sliding_window = None
        if model_type in ("mistral", "phi3"):
            sliding_window = hf.get("sliding_window")
        elif model_type == "qwen2" and hf.get("use_sliding_window", False):
            raise UnsupportedArchitectureError(
                "qwen2 use_sliding_window=true is not supported; set it to false (the released Qwen2 models do)")
        layer_types = hf.get("layer_types")
        if layer_types is not None and any(t != "full_attention" for t in layer_types):
            raise UnsupportedArchitectureError(f"layer_types other than full_attention are not supported: {layer_types}")

        rope_theta, rope_scaling = _parse_rope(hf)
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        attention_bias = bool(hf.get("attention_bias", False))
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            # Qwen2 always has q/k/v bias and no o bias; Llama's attention_bias covers all four projections.
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=attention_bias if model_type == "llama" else False,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=sliding_window,
            model_type=model_type,
            eos_token_id=eos,
            bos_token_id=hf.get("bos_token_id"),
        )


def _parse_rope(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """RoPE base and scaling from transformers 5 ``rope_parameters`` or the older ``rope_theta``/``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    if legacy and not params.get("rope_type"):
        params.update(legacy)
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    if partial != 1.0:
        raise UnsupportedArchitectureError(f"partial_rotary_factor={partial} is not supported (only 1.0)")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"unknown rope_scaling type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None
    factor = float(params.get("factor", 1.0))
    if not math.isfinite(factor) or factor <= 0:
        raise UnsupportedArchitectureError(f"rope scaling factor={factor} must be positive")
    if rope_type == "linear":
        return theta, RopeScaling(kind="linear", factor=factor)
    return theta, RopeScaling(
        kind="llama3",
        factor=factor,
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )
