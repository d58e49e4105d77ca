"""Fill an abstractly built ``CausalLM`` from named tensors in Hugging Face layout.

A declarative table maps every HF tensor name to one model parameter path, with the layout change it needs.
Every tensor's shape is checked against the abstract model; unmapped, missing and duplicate keys are hard errors.
The model is never randomly initialized: ``nnx.eval_shape`` builds it without memory, the checkpoint fills it.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.errors import CorruptCheckpointError, WeightMappingError
from delift_jax.models.config import ModelConfig
from delift_jax.models.llama import CausalLM

# (HF name pattern, model path template, transpose). HF linear weights are [out, in]; nnx.Linear kernels [in, out].
HF_KEY_TABLE: tuple[tuple[str, str, bool], ...] = (
    (r"model\.embed_tokens\.weight", "embed.embedding", False),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", r"layers.\1.attn.\2_proj.kernel", True),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.bias", r"layers.\1.attn.\2_proj.bias", False),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"layers.\1.mlp.\2_proj.kernel", True),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.bias", r"layers.\1.mlp.\2_proj.bias", False),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"layers.\1.input_norm.scale", False),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.post_attn_norm.scale", False),
    (r"model\.norm\.weight", "norm.scale", False),
    (r"lm_head\.weight", "lm_head.kernel", True),
)
# Buffers some checkpoints carry that hold no parameters.
_IGNORED_KEYS = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


def map_hf_name(name: str, config: ModelConfig) -> tuple[str, bool] | None:
    """Model path and transpose flag for an HF tensor name; None if the tensor is intentionally ignored."""
    if any(re.fullmatch(p, name) for p in _IGNORED_KEYS):
        return None
    if name == "lm_head.weight" and config.tie_word_embeddings:
        return None  # tied: the head is the embedding table; some exports still write a copy
    for pattern, template, transpose in HF_KEY_TABLE:
        match = re.fullmatch(pattern, name)
        if match:
            return match.expand(template), transpose
    raise WeightMappingError(f"checkpoint tensor {name!r} maps to no model parameter; is this a Llama-family model?")


def abstract_model(config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32) -> CausalLM:
    """The model's structure with shape/dtype placeholders instead of arrays (no memory, no random init)."""
    return nnx.eval_shape(lambda: CausalLM(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def _path_string(path: Iterable) -> str:
    return ".".join(str(p) for p in path)


def model_from_hf_tensors(config: ModelConfig, tensors: Mapping[str, object], *, dtype=jnp.float32,
                          param_dtype=jnp.float32, source: str = "checkpoint") -> CausalLM:
    """Build a ``CausalLM`` whose parameters come from ``tensors`` (HF names, HF layouts, array-likes)."""
    graphdef, abstract_state = nnx.split(abstract_model(config, dtype=dtype, param_dtype=param_dtype))
    flat = nnx.to_flat_state(abstract_state)
    expected = {_path_string(path): var for path, var in flat}

    filled: dict[str, jax.Array] = {}
    origin: dict[str, str] = {}
    for name, value in tensors.items():
        mapped = map_hf_name(name, config)
        if mapped is None:
            continue
        path, transpose = mapped
        if path not in expected:
            raise WeightMappingError(f"{source}: tensor {name!r} maps to {path!r}, which this config's model lacks "
                                     "(check attention_bias / mlp_bias / tie_word_embeddings in config.json)")
        if path in filled:
            raise WeightMappingError(f"{source}: tensors {origin[path]!r} and {name!r} both map to {path!r}")
        array = np.asarray(value) if not isinstance(value, jax.Array) else value
        if transpose:
            array = array.T
        want = tuple(expected[path].get_value().shape)
        if tuple(array.shape) != want:
            raise CorruptCheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(array.shape)}, expected {want} for {path!r} "
                "(config.json and weights disagree)")
        filled[path] = jnp.asarray(array, dtype=param_dtype)
        origin[path] = name

    missing = sorted(set(expected) - set(filled))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightMappingError(f"{source}: no checkpoint tensor for model parameters {shown}")

    for path, var in flat:
        var.set_value(filled[_path_string(path)])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def model_to_hf_tensors(model: CausalLM) -> dict[str, np.ndarray]:
    """The inverse mapping: HF-named float arrays in HF layout (for export and for caching)."""
    _, state = nnx.split(model)
    by_path = {_path_string(path): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}
    out = {}
    cfg = model.config
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if cfg.tie_word_embeddings else ["lm_head.weight"])
    for i in range(cfg.num_layers):
        names += [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"]
        names += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        names += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
        names += [f"model.layers.{i}.self_attn.{p}_proj.bias" for p in "qkv" if cfg.qkv_bias]
        names += [f"model.layers.{i}.self_attn.o_proj.bias"] if cfg.o_bias else []
        names += [f"model.layers.{i}.mlp.{p}_proj.bias" for p in ("gate", "up", "down") if cfg.mlp_bias]
    for name in names:
        path, transpose = map_hf_name(name, cfg)
        array = by_path[path]
        out[name] = np.ascontiguousarray(array.T if transpose else array)
    return out
