"""Frozen configuration of a decoder (Llama family, Phi-3, Gemma 2/3), built from a Hugging Face ``config.json``
(or GGUF metadata).

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

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "phi3", "gemma2", "gemma3_text")
GEMMA_MODEL_TYPES = ("gemma2", "gemma3_text")
LAYER_TYPES = ("full_attention", "sliding_attention")
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
    "cache_implementation",
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
    # Gemma 2: (1 + w) RMSNorm, GeGLU, scaled embeddings, sandwich norms, soft-capping, alternating local/global
    # layers. HF reads the activation from hidden_activation only; hidden_act, which Hub configs also carry, is
    # ignored there and here.
    "gemma2": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling",
               "tie_word_embeddings", "hidden_activation", "hidden_act", "attention_bias", "query_pre_attn_scalar",
               "sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
               "use_bidirectional_attention"},
    # Gemma 3 text: Gemma 2 plus q/k norms and a separate RoPE base for the sliding layers; older configs give the
    # layer pattern as sliding_window_pattern instead of layer_types.
    "gemma3_text": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "rope_theta",
                    "rope_scaling", "rope_local_base_freq", "tie_word_embeddings", "hidden_activation",
                    "hidden_act", "attention_bias", "query_pre_attn_scalar", "sliding_window", "layer_types",
                    "sliding_window_pattern", "_sliding_window_pattern", "final_logit_softcapping",
                    "attn_logit_softcapping", "use_bidirectional_attention"},
}

# Values HF's config classes give Gemma attributes that a config.json leaves out (they differ from Llama's:
# a missing tie_word_embeddings means tied, a missing final_logit_softcapping means 30 in Gemma 2).
_GEMMA_DEFAULTS = {
    "gemma2": {"head_dim": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "query_pre_attn_scalar": 256,
               "sliding_window": 4096, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
               "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 10000.0, "sliding_window_pattern": 2},
    "gemma3_text": {"head_dim": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                    "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": None,
                    "attn_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh",
                    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6},
}
# HF activation names -> ours. gelu_pytorch_tanh is GELU with the tanh approximation (Gemma's GeGLU gate).
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


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
    # Gemma-style options; the defaults are the Llama computation.
    activation: str = "silu"                 # MLP gate: silu (SwiGLU) or gelu_tanh (GeGLU)
    norm_plus_one: bool = False              # RMSNorm weights stored zero-centred, applied as (1 + w)
    sandwich_norms: bool = False             # extra norms on the attention and MLP outputs before each residual add
    qk_norm: bool = False                    # RMSNorm over head_dim on queries and keys, before RoPE
    scale_embeddings: bool = False           # embeddings multiplied by sqrt(hidden_size)
    query_pre_attn_scalar: float | None = None  # attention scores scaled by this ** -0.5 (None: head_dim ** -0.5)
    attn_softcap: float | None = None        # scores -> cap * tanh(scores / cap) before masking
    final_softcap: float | None = None       # logits -> cap * tanh(logits / cap)
    # Per layer "full_attention" or "sliding_attention" (the latter use sliding_window); None: every layer uses
    # sliding_window when it is set (Mistral, Phi-3).
    layer_types: tuple[str, ...] | None = None
    local_rope_theta: float | None = None    # RoPE base of sliding layers, unscaled (None: same RoPE as the others)

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
        if self.activation not in _ACTIVATIONS.values():
            raise UnsupportedArchitectureError(f"activation={self.activation!r} must be one of "
                                               f"{', '.join(_ACTIVATIONS.values())}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers or any(t not in LAYER_TYPES for t in self.layer_types):
                raise UnsupportedArchitectureError(
                    f"layer_types={list(self.layer_types)} must name one of {', '.join(LAYER_TYPES)} for each of "
                    f"the {self.num_layers} layers")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise UnsupportedArchitectureError("layer_types has sliding_attention layers but sliding_window is "
                                                   "null; give the window size")
        for name in ("query_pre_attn_scalar", "attn_softcap", "final_softcap", "local_rope_theta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UnsupportedArchitectureError(f"config field {name}={value!r} must be positive or null")

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer: whether its attention is restricted to the last ``sliding_window`` positions."""
        if self.layer_types is None:
            return (self.sliding_window is not None,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1: multi-head, num_heads: multi-query)."""
        return self.num_heads // self.num_kv_heads

    def param_count(self) -> int:
        """Number of parameters (for FLOP and memory estimates)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        per_layer = attn + 3 * d * f + (4 if self.sandwich_norms else 2) * d + (2 * hd if self.qk_norm else 0)
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * per_layer + self.vocab_size * d + head + d

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any]) -> "ModelConfig":
        """Build from a HF ``config.json`` mapping; refuse attributes whose semantics are not implemented."""
        model_type = hf.get("model_type")
        if model_type == "gemma3":
            raise UnsupportedArchitectureError(
                "model_type 'gemma3' is the multimodal Gemma 3 (Gemma3ForConditionalGeneration); only text-only "
                "checkpoints are supported: model_type 'gemma3_text' (Gemma3ForCausalLM, e.g. gemma-3-1b)")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture model_type={model_type!r} (architectures={hf.get('architectures')}); "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        unknown = sorted(k for k in hf if k not in _INERT_KEYS and k not in _USED_KEYS[model_type])
        if unknown:
            raise UnsupportedArchitectureError(
                f"{model_type} config has attributes this package does not implement: {', '.join(unknown)}; "
                "remove them from config.json only if they do not change the forward pass")
        if hf.get("pretraining_tp", 1) != 1:
            raise UnsupportedArchitectureError(f"pretraining_tp={hf['pretraining_tp']} is not supported (only 1)")
        num_heads = hf["num_attention_heads"]
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        common = dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
                      num_heads=num_heads, num_kv_heads=hf.get("num_key_value_heads") or num_heads,
                      model_type=model_type, eos_token_id=eos, bos_token_id=hf.get("bos_token_id"))
        if model_type in GEMMA_MODEL_TYPES:
            return cls(**common, **_gemma_fields(hf, model_type))

        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedArchitectureError(f"hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
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
        attention_bias = bool(hf.get("attention_bias", False))
        return cls(
            **common,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            # Qwen2 always has q/k/v bias and no o bias; Llama's attention_bias covers all four projections.
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=attention_bias if model_type == "llama" else False,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=sliding_window,
        )


def _gemma_fields(hf: Mapping[str, Any], model_type: str) -> dict:
    """The ``ModelConfig`` fields of a Gemma 2 / Gemma 3 text config, with HF's defaults for absent keys."""
    defaults = _GEMMA_DEFAULTS[model_type]
    get = lambda key: hf[key] if key in hf else defaults[key]  # an explicit null (no soft-capping) stays null
    activation = get("hidden_activation")
    if activation != "gelu_pytorch_tanh":
        raise UnsupportedArchitectureError(
            f"{model_type} hidden_activation={activation!r} is not supported (only 'gelu_pytorch_tanh')")
    if hf.get("use_bidirectional_attention"):
        raise UnsupportedArchitectureError(
            f"{model_type} use_bidirectional_attention=true (an encoder-style model) is not supported; only causal "
            "attention is")
    attn_softcap = get("attn_logit_softcapping")
    if model_type == "gemma3_text" and attn_softcap is not None:
        raise UnsupportedArchitectureError(
            f"gemma3_text attn_logit_softcapping={attn_softcap} is not supported: transformers' Gemma 3 ignores it, "
            "so what the checkpoint expects is unclear; set it to null (the released Gemma 3 models do)")
    n_layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types")
    if layer_types is None:
        # Older configs: every pattern-th layer is global, the others sliding (transformers reads only the public
        # sliding_window_pattern key; _sliding_window_pattern is its own bookkeeping).
        pattern = hf.get("sliding_window_pattern", defaults["sliding_window_pattern"])
        if not isinstance(pattern, int) or pattern <= 0:
            raise UnsupportedArchitectureError(f"sliding_window_pattern={pattern!r} must be a positive integer")
        layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    if model_type == "gemma2":
        (rope_theta, rope_scaling), local_theta = _parse_rope(hf), None
    else:
        rope_theta, rope_scaling, local_theta = _gemma3_rope(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    final_softcap = get("final_logit_softcapping")
    return dict(
        head_dim=int(get("head_dim")), rms_norm_eps=float(get("rms_norm_eps")), rope_theta=rope_theta,
        rope_scaling=rope_scaling, qkv_bias=attention_bias, o_bias=attention_bias,
        tie_word_embeddings=bool(get("tie_word_embeddings")), sliding_window=get("sliding_window"),
        activation=_ACTIVATIONS[activation], norm_plus_one=True, sandwich_norms=True,
        qk_norm=model_type == "gemma3_text", scale_embeddings=True,
        query_pre_attn_scalar=float(get("query_pre_attn_scalar")),
        attn_softcap=None if attn_softcap is None else float(attn_softcap),
        final_softcap=None if final_softcap is None else float(final_softcap),
        layer_types=tuple(layer_types), local_rope_theta=local_theta)


def _gemma3_rope(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None, float]:
    """Gemma 3's two RoPEs: ``(global theta, global scaling, local theta)``.

    transformers 5 writes ``rope_parameters`` keyed by layer type; older configs give the global base as
    ``rope_theta`` (scaled by ``rope_scaling``) and the sliding layers' base as ``rope_local_base_freq``.
    """
    defaults = _GEMMA_DEFAULTS["gemma3_text"]
    nested = hf.get("rope_parameters") or {}
    stray = sorted(set(nested) - set(LAYER_TYPES))
    if stray:
        raise UnsupportedArchitectureError(
            f"gemma3_text rope_parameters must be keyed by layer type ({', '.join(LAYER_TYPES)}); found "
            f"{', '.join(stray)}")
    full = dict(nested.get("full_attention") or {})
    full.update(hf.get("rope_scaling") or {})  # as transformers does: a legacy rope_scaling scales global layers
    full.setdefault("rope_theta", hf.get("rope_theta", defaults["rope_theta"]))
    local = dict(nested.get("sliding_attention") or {})
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", defaults["rope_local_base_freq"]))
    theta, scaling = _parse_rope({"rope_parameters": full})
    local_theta, local_scaling = _parse_rope({"rope_parameters": local})
    if local_scaling is not None:
        raise UnsupportedArchitectureError(
            "gemma3_text RoPE scaling on sliding layers (rope_parameters.sliding_attention) is not supported; the "
            "released Gemma 3 models scale only the global layers")
    return theta, scaling, local_theta


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


def rope_parameters_dict(theta: float, scaling: RopeScaling | None) -> dict:
    """A transformers 5 ``rope_parameters`` entry for one RoPE (what ``_parse_rope`` reads back)."""
    out: dict = {"rope_type": "default", "rope_theta": theta}
    if scaling is not None:
        out.update(rope_type=scaling.kind, factor=scaling.factor)
        if scaling.kind == "llama3":
            out.update(low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
                       original_max_position_embeddings=scaling.original_max_position_embeddings)
    return out


def gemma_hf_fields(config: ModelConfig) -> dict:
    """The ``config.json`` attributes of a Gemma 2 / Gemma 3 text ``config`` beyond the common ones (model_type,
    vocabulary, widths, layer and head counts, token ids), for export: ``ModelConfig.from_hf_config`` reads the
    union back to ``config``. Every Gemma-specific value is written, so no reader falls back on its defaults."""
    if config.model_type not in GEMMA_MODEL_TYPES:
        raise ValueError(f"gemma_hf_fields: {config.model_type} is not a Gemma model type")
    if config.model_type == "gemma2":
        rope = rope_parameters_dict(config.rope_theta, config.rope_scaling)
    else:
        rope = {"full_attention": rope_parameters_dict(config.rope_theta, config.rope_scaling),
                "sliding_attention": rope_parameters_dict(config.local_rope_theta, None)}
    scalar = float(config.query_pre_attn_scalar)
    scalar = int(scalar) if scalar.is_integer() else scalar  # transformers' strict config class wants an int
    return {"head_dim": config.head_dim, "rms_norm_eps": config.rms_norm_eps,
            "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": config.tie_word_embeddings,
            "attention_bias": config.qkv_bias, "query_pre_attn_scalar": scalar,
            "sliding_window": config.sliding_window, "layer_types": list(config.layer_types),
            "final_logit_softcapping": config.final_softcap, "attn_logit_softcapping": config.attn_softcap,
            "use_bidirectional_attention": False,
            "rope_parameters": rope}
