"""Load a llama.cpp GGUF file: dequantize, undo the converter's Q/K row permutation, rename to HF layout.

GGUF stores a matrix with shape ``[in, out]`` in its metadata; the ``gguf`` package dequantizes it into the
row-major ``[out, in]`` array Hugging Face uses. llama.cpp's converter interleaves the two rotary halves of each
q/k head (it serves an interleaved-RoPE kernel); the inverse regroups rows ``(head, pair, 2) -> (head, 2, pair)``.

Dequantizing takes seconds, so the result is cached as an ordinary HF directory (safetensors, config.json,
tokenizer) keyed by the file's SHA-256; later loads read the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from delift_jax.errors import CorruptCheckpointError, ModelLoadError, UnsupportedArchitectureError

SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K",
                          "Q8_K", "Q2_K", "Q3_K")

# GGUF tensor name -> HF tensor name.
GGUF_KEY_TABLE: tuple[tuple[str, str], ...] = (
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_q\.(weight|bias)", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"blk\.(\d+)\.attn_k\.(weight|bias)", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"blk\.(\d+)\.attn_v\.(weight|bias)", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_gate\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", r"model.layers.\1.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", r"model.layers.\1.mlp.down_proj.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
)
_IGNORED = (r"rope_freqs\.weight",)  # llama3 GGUFs store the scaled frequencies; we recompute them from metadata


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _open_reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct/IndexError, numpy errors on damaged files
        raise CorruptCheckpointError(f"{path} is truncated or not a GGUF file ({type(exc).__name__}: {exc})") from None


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def hf_config_from_gguf(reader, path: Path) -> dict:
    """An HF-style config dict from GGUF metadata (validated afterwards by ``ModelConfig.from_hf_config``)."""
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise UnsupportedArchitectureError(f"{path}: GGUF architecture {arch!r} is not supported; supported: llama, qwen2")
    get = lambda key, default=None: _field(reader, f"{arch}.{key}", default)
    n_heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = get("vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    config = {
        "model_type": arch,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": int(get("rope.dimension_count", hidden // n_heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))},
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "max_position_embeddings": int(get("context_length", 2048)),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }
    scaling_type = get("rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise UnsupportedArchitectureError(f"{path}: GGUF rope scaling {scaling_type!r} is not supported")
        config["rope_parameters"].update(rope_type="linear", factor=float(get("rope.scaling.factor")))
    if arch == "llama" and any(n.endswith("attn_output.bias") for n in tensor_names):
        config["attention_bias"] = True
    return config


def unpermute_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows (head, pair, 2) -> (head, 2, pair)."""
    rows = weight.shape[0]
    head_dim = rows // n_heads
    rest = weight.shape[1:]
    return weight.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def read_gguf_tensors(reader, config: dict, path: Path) -> dict[str, np.ndarray]:
    """All tensors, dequantized to float32, renamed to HF names, in HF layout."""
    import gguf

    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        if any(re.fullmatch(p, tensor.name) for p in _IGNORED):
            continue
        hf_name = None
        for pattern, template in GGUF_KEY_TABLE:
            match = re.fullmatch(pattern, tensor.name)
            if match:
                hf_name = match.expand(template)
                break
        if hf_name is None:
            raise UnsupportedArchitectureError(f"{path}: GGUF tensor {tensor.name!r} has no counterpart in this model")
        type_name = tensor.tensor_type.name
        if type_name not in SUPPORTED_TENSOR_TYPES:
            raise UnsupportedArchitectureError(
                f"{path}: tensor {tensor.name!r} uses quantization {type_name}; supported: {', '.join(SUPPORTED_TENSOR_TYPES)}")
        try:
            array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except Exception as exc:
            raise CorruptCheckpointError(f"{path}: cannot dequantize {tensor.name!r} ({exc})") from None
        expected = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims innermost first
        array = array.reshape(expected) if array.size == np.prod(expected) else array
        if config["model_type"] == "llama":
            if re.fullmatch(r"blk\.\d+\.attn_q\.(weight|bias)", tensor.name):
                array = unpermute_rotary_rows(array, config["num_attention_heads"])
            elif re.fullmatch(r"blk\.\d+\.attn_k\.(weight|bias)", tensor.name):
                array = unpermute_rotary_rows(array, config["num_key_value_heads"])
        tensors[hf_name] = array
    return tensors


def gguf_cache_dir(digest: str) -> Path:
    root = Path(os.environ.get("DELIFT_CACHE", Path.home() / ".cache" / "delift_jax"))
    return root / "gguf" / digest[:24]


def convert_gguf_to_hf_directory(path: Path, out_dir: Path | None = None) -> Path:
    """Write the GGUF model as an HF directory (safetensors + config.json + tokenizer); return the directory.

    The directory appears atomically (written to a temporary sibling, then renamed), so an interrupted
    conversion never leaves a half-written cache behind.
    """
    from safetensors.numpy import save_file

    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    digest = file_sha256(path)
    target = out_dir or gguf_cache_dir(digest)
    if (target / "config.json").is_file():
        return target
    reader = _open_reader(path)
    config = hf_config_from_gguf(reader, path)
    tensors = read_gguf_tensors(reader, config, path)
    tokenizer = load_gguf_tokenizer(path)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"source_sha256": digest})
        tokenizer.save_pretrained(str(staging))
        _drop_tokens_not_in_file(staging / "tokenizer.json", reader)
        config["source_gguf_sha256"] = digest
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _drop_tokens_not_in_file(tokenizer_json: Path, reader) -> None:
    """Remove added tokens whose id lies past the file's vocabulary.

    transformers builds a byte-level GGUF tokenizer with ``GPT2Tokenizer``, whose default unk token
    ``<|endoftext|>`` is appended as a new id when the vocabulary lacks it (e.g. Llama-3 vocabularies). That id has
    no embedding row: it would fail ``check_vocab`` or, if text contained it, index past the embedding table.
    """
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None or not tokenizer_json.is_file():
        return
    n_tokens = len(field.data)
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    kept = [t for t in data.get("added_tokens", []) if t["id"] < n_tokens]
    if len(kept) != len(data.get("added_tokens", [])):
        data["added_tokens"] = kept
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def load_gguf_tokenizer(path: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                             trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot build a tokenizer from {path} ({str(exc).splitlines()[0]})") from None
