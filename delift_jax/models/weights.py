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
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", r"layers.\1.attn.\2_norm.scale", False),
    (r"model\.norm\.weight", "norm.scale", False),
    (r"lm_head\.weight", "lm_head.kernel", True),
)
# Models with sandwich norms (Gemma 2/3), looked up before HF_KEY_TABLE: there post_attention_layernorm normalizes
# the attention output (our attn_out_norm), and pre_feedforward_layernorm is the norm in front of the MLP (our
# post_attn_norm, which is what Llama's post_attention_layernorm is).
SANDWICH_KEY_TABLE: tuple[tuple[str, str, bool], ...] = (
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.attn_out_norm.scale", False),
    (r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.weight", r"layers.\1.post_attn_norm.scale", False),
    (r"model\.layers\.(\d+)\.post_feedforward_layernorm\.weight", r"layers.\1.mlp_out_norm.scale", False),
)
# Buffers some checkpoints carry that hold no parameters.
_IGNORED_KEYS = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


_LAYER_PATH = re.compile(r"layers\.(\d+)\.(.+)")


def map_hf_name(name: str, config: ModelConfig) -> tuple[str, bool] | None:
    """Model path and transpose flag for an HF tensor name; None if the tensor is intentionally ignored.

    Per-layer tensors map to a path with the layer index (``layers.3.attn.q_proj.kernel``), which names row 3 of
    the stacked parameter ``layers.attn.q_proj.kernel`` (see ``stacked_slot``)."""
    if any(re.fullmatch(p, name) for p in _IGNORED_KEYS):
        return None
    if name == "lm_head.weight" and config.tie_word_embeddings:
        return None  # tied: the head is the embedding table; some exports still write a copy
    table = SANDWICH_KEY_TABLE + HF_KEY_TABLE if config.sandwich_norms else HF_KEY_TABLE
    for pattern, template, transpose in table:
        match = re.fullmatch(pattern, name)
        if match:
            return match.expand(template), transpose
    raise WeightMappingError(f"checkpoint tensor {name!r} maps to no model parameter of a {config.model_type} model; "
                             "do config.json and the weights belong together?")


def stacked_slot(path: str) -> tuple[str, int | None]:
    """``layers.3.attn.q_proj.kernel`` -> (``layers.attn.q_proj.kernel``, 3); other paths -> (path, None)."""
    match = _LAYER_PATH.fullmatch(path)
    return (f"layers.{match.group(2)}", int(match.group(1))) if match else (path, None)


def abstract_model(config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32) -> CausalLM:
    """The model's structure with shape/dtype placeholders instead of arrays (no memory, no random init)."""
    return nnx.eval_shape(lambda: CausalLM(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def _path_string(path: Iterable) -> str:
    return ".".join(str(p) for p in path)


def _stack_root(name: str, stacked: tuple[str, ...]) -> str | None:
    return next((root for root in stacked if name.startswith(root + ".")), None)


def expected_slots(abstract_state, stacked: tuple[str, ...] = ("layers",)) -> dict[str, tuple[int, ...]]:
    """Every parameter slot a checkpoint must fill, by path, with its shape. Parameters under a ``stacked`` root
    carry a leading layer axis: each layer is its own slot (``layers.3.attn.q_proj.kernel``)."""
    slots = {}
    for path, var in nnx.to_flat_state(abstract_state):
        name, shape = _path_string(path), tuple(var.get_value().shape)
        root = _stack_root(name, stacked)
        if root is None:
            slots[name] = shape
            continue
        for i in range(shape[0]):
            slots[f"{root}.{i}.{name[len(root) + 1:]}"] = shape[1:]
    return slots


def fill_slots(tensors: Mapping[str, object], map_name, expected: Mapping[str, tuple[int, ...]], dtype,
               source: str, hint: str) -> dict[str, jax.Array]:
    """``{slot path: array}`` from named tensors: ``map_name(name) -> (path, transpose) | None``.

    Hard errors: a tensor mapping to no slot, two tensors for one slot, a shape that differs, a slot left empty.
    """
    filled: dict[str, jax.Array] = {}
    origin: dict[str, str] = {}
    for name, value in tensors.items():
        mapped = map_name(name)
        if mapped is None:
            continue
        path, transpose = mapped
        if path not in expected:
            raise WeightMappingError(f"{source}: tensor {name!r} maps to {path!r}, which this config's model lacks "
                                     f"({hint})")
        if path in filled:
            raise WeightMappingError(f"{source}: tensors {origin[path]!r} and {name!r} both map to {path!r}")
        array = np.asarray(value) if not isinstance(value, jax.Array) else value
        if transpose:
            array = array.T
        if tuple(array.shape) != expected[path]:
            raise CorruptCheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(array.shape)}, expected {expected[path]} for {path!r} "
                "(config.json and weights disagree)")
        filled[path] = jnp.asarray(array, dtype=dtype)
        origin[path] = name
    missing = sorted(set(expected) - set(filled))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightMappingError(f"{source}: no checkpoint tensor for model parameters {shown}")
    return filled


def merge_slots(graphdef, abstract_state, filled: dict[str, jax.Array], stacked: tuple[str, ...] = ("layers",)):
    """The module ``graphdef`` with every parameter taken from ``filled`` (stacked parameters layer by layer).
    ``filled`` is emptied on the way, so no second copy of the weights outlives the call."""
    flat = nnx.to_flat_state(abstract_state)
    for path, var in flat:
        name = _path_string(path)
        root = _stack_root(name, stacked)
        if root is None:
            var.set_value(filled.pop(name))
            continue
        rows = [filled.pop(f"{root}.{i}.{name[len(root) + 1:]}") for i in range(var.get_value().shape[0])]
        var.set_value(jnp.stack(rows))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


_FUSED = re.compile(r"model\.layers\.(\d+)\.(self_attn\.qkv_proj|mlp\.gate_up_proj)\.weight")


def split_fused(tensors: Mapping[str, object], config: ModelConfig) -> dict[str, object]:
    """Phi-3's fused ``qkv_proj`` ([q; k; v] rows) and ``gate_up_proj`` ([gate; up] rows) as separate HF tensors."""
    q_rows, kv_rows = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    out: dict[str, object] = {}
    for name, value in tensors.items():
        match = _FUSED.fullmatch(name)
        if match is None:
            out[name] = value
            continue
        layer, kind = match.groups()
        sizes = (q_rows, kv_rows, kv_rows) if kind.endswith("qkv_proj") else (config.intermediate_size,) * 2
        parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") if kind.endswith("qkv_proj") \
            else ("mlp.gate_proj", "mlp.up_proj")
        array = np.asarray(value) if not isinstance(value, jax.Array) else value
        if array.shape[0] != sum(sizes):
            raise CorruptCheckpointError(f"tensor {name!r} has {array.shape[0]} rows, expected {sum(sizes)} "
                                         "(config.json and weights disagree)")
        for part, start, size in zip(parts, np.cumsum((0,) + sizes[:-1]), sizes):
            out[f"model.layers.{layer}.{part}.weight"] = array[int(start):int(start) + size]
    return out


def fuse_for_export(tensors: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """The inverse of ``split_fused``: Phi-3 checkpoints hold fused qkv and gate_up projections."""
    out = dict(tensors)
    for i in range(config.num_layers):
        head = f"model.layers.{i}."
        out[head + "self_attn.qkv_proj.weight"] = np.concatenate(
            [out.pop(f"{head}self_attn.{p}_proj.weight") for p in "qkv"])
        out[head + "mlp.gate_up_proj.weight"] = np.concatenate(
            [out.pop(f"{head}mlp.{p}_proj.weight") for p in ("gate", "up")])
    return out


def model_from_hf_tensors(config: ModelConfig, tensors: Mapping[str, object], *, dtype=jnp.float32,
                          param_dtype=jnp.float32, source: str = "checkpoint") -> CausalLM:
    """Build a ``CausalLM`` whose parameters come from ``tensors`` (HF names, HF layouts, array-likes)."""
    if config.model_type == "phi3":
        tensors = split_fused(tensors, config)
    graphdef, abstract_state = nnx.split(abstract_model(config, dtype=dtype, param_dtype=param_dtype))
    filled = fill_slots(tensors, lambda name: map_hf_name(name, config), expected_slots(abstract_state),
                        param_dtype, source, "check attention_bias / mlp_bias / tie_word_embeddings in config.json")
    return merge_slots(graphdef, abstract_state, filled)


def hf_tensor_names(config: ModelConfig) -> list[str]:
    """Every HF tensor name of a checkpoint of ``config``, in a fixed order."""
    cfg = config
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if cfg.tie_word_embeddings else ["lm_head.weight"])
    for i in range(cfg.num_layers):
        names += [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"]
        names += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        names += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
        names += [f"model.layers.{i}.{p}_feedforward_layernorm.weight" for p in ("pre", "post")
                  if cfg.sandwich_norms]
        names += [f"model.layers.{i}.self_attn.{p}_norm.weight" for p in "qk" if cfg.qk_norm]
        names += [f"model.layers.{i}.self_attn.{p}_proj.bias" for p in "qkv" if cfg.qkv_bias]
        names += [f"model.layers.{i}.self_attn.o_proj.bias"] if cfg.o_bias else []
        names += [f"model.layers.{i}.mlp.{p}_proj.bias" for p in ("gate", "up", "down") if cfg.mlp_bias]
    return names


def model_to_hf_tensors(model: CausalLM) -> dict[str, np.ndarray]:
    """The inverse mapping: HF-named float arrays in HF layout (for export and for caching)."""
    _, state = nnx.split(model)
    by_path = {_path_string(path): var.get_value() for path, var in nnx.to_flat_state(state)}
    out = {}
    for name in hf_tensor_names(model.config):
        path, transpose = map_hf_name(name, model.config)
        stacked, layer = stacked_slot(path)
        array = np.asarray(by_path[stacked] if layer is None else by_path[stacked][layer])
        out[name] = np.ascontiguousarray(array.T if transpose else array)
    return fuse_for_export(out, model.config) if model.config.model_type == "phi3" else out
