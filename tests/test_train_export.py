"""Export: the merged model as a Hugging Face directory that transformers and our loader read, same logits."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from delift_jax.models import load_model
from delift_jax.train import LoRAConfig, TrainConfig, export_hf, finetune, to_hf_config
from delift_jax.train.lora import lora_modules
from examples import EXAMPLES
from tiny import torch_logits

ATOL = 1e-5
LORA_SMALL = TrainConfig(method="lora", lora=LoRAConfig(4, 8.0, dropout=0.1), learning_rate=1e-2,
                         schedule="constant", weight_decay=0.1, batch_size=2, max_length=128, pad_to_max_length=True,
                         max_steps=6, save_every=2)


def _ours(model, ids):
    hidden, _ = model(jnp.asarray(ids))
    return np.asarray(model.logits(hidden))


@pytest.fixture(scope="module")
def trained(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    result = finetune(model, tokenizer, EXAMPLES, dataclasses.replace(LORA_SMALL, max_steps=3))
    assert lora_modules(result.model)
    return result.model, tokenizer


def test_exported_lora_model_loads_in_transformers_with_same_logits(trained, tmp_path):
    model, tokenizer = trained
    directory = export_hf(model, tokenizer, tmp_path / "export")
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    ids = np.random.RandomState(0).randint(0, model.config.vocab_size, size=(2, 21))
    ours = _ours(model, ids)  # the LoRA model itself (adapters not merged)
    np.testing.assert_allclose(torch_logits(torch_model, ids), ours, atol=ATOL, rtol=0)
    # And back through our loader (config whitelist, key table), with the tokenizer.
    loaded, loaded_tokenizer, config = load_model(directory)
    assert config == model.config
    np.testing.assert_allclose(_ours(loaded, ids), ours, atol=ATOL, rtol=0)
    assert loaded_tokenizer("Query: cat")["input_ids"] == tokenizer("Query: cat")["input_ids"]


@pytest.mark.parametrize("overrides", [
    dict(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True),
    dict(model_type="llama", qkv_bias=True, o_bias=True, mlp_bias=True),
    dict(model_type="mistral", sliding_window=7),
])
def test_hf_config_round_trips(tiny_llama, overrides):
    _, _, model, _ = tiny_llama
    config = dataclasses.replace(model.config, **overrides)
    hf = to_hf_config(config)
    from delift_jax.models.config import ModelConfig

    assert ModelConfig.from_hf_config(json.loads(json.dumps(hf))) == config
    transformers.AutoConfig.for_model(**hf)  # transformers accepts it too
