"""Load a Hugging Face model directory: config.json, model.safetensors (or a sharded index), tokenizer files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp

from delift_jax.errors import CorruptCheckpointError, ModelLoadError, TokenizerMismatchError, WeightMappingError
from delift_jax.models.config import ModelConfig
from delift_jax.models.llama import CausalLM
from delift_jax.models.weights import model_from_hf_tensors

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def read_hf_config(directory: Path) -> ModelConfig:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{directory} has no config.json; point --model at a Hugging Face model directory "
                             "or a .gguf file")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc})") from None
    return ModelConfig.from_hf_config(raw)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a directory: the single file, or every shard named in the index."""
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    index_path = directory / SHARD_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
            raise CorruptCheckpointError(f"{index_path} is not a valid safetensors index ({exc})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CorruptCheckpointError(f"{index_path} names shards that are missing: {', '.join(missing)}")
        return [directory / s for s in shards]
    raise ModelLoadError(f"{directory} has no {SINGLE_FILE} or {SHARD_INDEX} (only safetensors weights are read)")


def read_safetensors(files: list[Path]) -> dict:
    """All tensors of the files as arrays; a name present in two files is an error."""
    from safetensors import SafetensorError, safe_open

    tensors: dict = {}
    shard_of: dict[str, str] = {}
    for path in files:
        try:
            # framework="flax" reads bfloat16 too (numpy has no bfloat16).
            with safe_open(str(path), framework="flax") as handle:
                for name in handle.keys():
                    if name in tensors:
                        raise WeightMappingError(f"{path.parent}: tensor {name!r} appears in more than one shard "
                                                 f"({shard_of[name]} and {path.name})")
                    tensors[name] = handle.get_tensor(name)
                    shard_of[name] = path.name
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path} is truncated or not a safetensors file ({exc})") from None
    return tensors


def load_tokenizer(directory: Path, **kwargs):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {directory} ({str(exc).splitlines()[0]}); "
                             "save one there with tokenizer.save_pretrained()") from None


def check_vocab(tokenizer, config: ModelConfig, source: str) -> None:
    if len(tokenizer) > config.vocab_size:
        raise TokenizerMismatchError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {config.vocab_size}; "
            "use the tokenizer that belongs to these weights")


def load_hf_directory(directory: Path, *, dtype=jnp.float32, param_dtype=jnp.float32,
                      with_tokenizer: bool = True) -> tuple[CausalLM, object, ModelConfig]:
    config = read_hf_config(directory)
    tensors = read_safetensors(weight_files(directory))
    model = model_from_hf_tensors(config, tensors, dtype=dtype, param_dtype=param_dtype, source=str(directory))
    tokenizer = None
    if with_tokenizer:
        tokenizer = load_tokenizer(directory)
        check_vocab(tokenizer, config, str(directory))
    return model, tokenizer, config
