"""Models: a Flax NNX decoder (Llama family, Phi-3, Gemma 2/3 text) and loaders for HF directories and GGUF files."""

from delift_jax.models.config import ModelConfig, RopeScaling
from delift_jax.models.llama import CausalLM, KVPrefix, extend_prefix, prefix_from_kv
from delift_jax.models.loading import DEFAULT_MODEL, default_model_path, load_model

__all__ = ["CausalLM", "KVPrefix", "ModelConfig", "RopeScaling", "DEFAULT_MODEL", "default_model_path",
           "extend_prefix", "load_model", "prefix_from_kv"]
