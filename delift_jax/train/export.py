"""Export a (fine-tuned) model as a Hugging Face directory: config.json, model.safetensors, tokenizer files.

LoRA adapters are merged into the base kernels first (on a copy), so the directory holds a plain Llama-family
checkpoint that ``transformers.AutoModelForCausalLM.from_pretrained`` and our ``load_model`` both read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from delift_jax.atomic_io import atomic_directory
from delift_jax.models.config import GEMMA_MODEL_TYPES, ModelConfig, gemma_hf_fields
from delift_jax.models.weights import model_to_hf_tensors
from delift_jax.train.lora import has_lora, merge_lora

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}


def to_hf_config(config: ModelConfig, *, max_position_embeddings: int = 8192, dtype: str = "float32") -> dict:
    """A transformers ``config.json`` mapping for ``config`` (the inverse of ``ModelConfig.from_hf_config``)."""
    rope: dict = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_position_embeddings)
    out = {
        "model_type": config.model_type,
        "architectures": [_ARCHITECTURES[config.model_type]],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": max_position_embeddings,
        "eos_token_id": config.eos_token_id,
        "bos_token_id": config.bos_token_id,
        "dtype": dtype,
    }
    if config.model_type == "llama":
        if config.qkv_bias != config.o_bias:
            raise ValueError("llama's attention_bias covers q/k/v and o together; this config splits them")
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif config.model_type in GEMMA_MODEL_TYPES:  # GeGLU, soft-caps, layer kinds, two RoPEs: see gemma_hf_fields
        del out["hidden_act"]
        out.update(gemma_hf_fields(config))
    elif config.model_type in ("mistral", "phi3"):
        out["sliding_window"] = config.sliding_window
    else:  # qwen2: q/k/v bias is implied by the architecture
        out.update(use_sliding_window=False, sliding_window=None)
    return out


def merged_copy(model):
    """A plain ``CausalLM`` with any LoRA adapters folded in; ``model`` itself is left as it is."""
    return merge_lora(nnx.clone(model)) if has_lora(model) else model


def export_hf(model, tokenizer, directory: str | Path) -> Path:
    """Write ``model`` (adapters merged) and ``tokenizer`` to ``directory`` in Hugging Face format."""
    from safetensors.numpy import save_file

    directory = Path(directory).expanduser()
    plain = merged_copy(model)
    tensors = model_to_hf_tensors(plain)
    # safetensors' numpy writer knows no bfloat16: those are widened to float32 (lossless).
    tensors = {k: np.ascontiguousarray(v if v.dtype in (np.float32, np.float16) else v.astype(np.float32))
               for k, v in tensors.items()}
    dtype = str(next(iter(tensors.values())).dtype)
    config = to_hf_config(plain.config, dtype=dtype)
    with atomic_directory(directory) as staging:  # a crash mid-export leaves no half-written model directory
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
    return directory
