"""Tiny random Hugging Face models and a tiny tokenizer, saved with save_pretrained, for parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CORPUS = [
    "Instruction: Please generate a response to the following query.",
    "Use the following example as a guide to answer the query in the same format and style.",
    "Query: What is the capital of France? The capital of France is Paris.",
    "Example: Translate 'cat' to German. Katze. Summarize the text in one sentence.",
    "Write a short poem about the sea. Waves roll in and out, the tide keeps time.",
    "List three prime numbers: 2, 3, 5. Compute 12 * 7 = 84. Name a color: blue.",
    # Whitespace runs as in the templates, so merges across "response \n\n\nQuery" seams exist.
    "84 \n\n\nQuery:\n 84 \n\n\nQuery:\n time \n\n\nExample:\n sea \n\n\nQuery:\n",
]
EOS = "<|eos|>"


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on a fixed corpus (deterministic), with an EOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def randomize_(torch_model, seed: int = 0, scale: float = 0.1) -> None:
    """Overwrite every parameter (biases and norm scales included) with seeded random values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in torch_model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * scale
            param.copy_(1.0 + noise if name.endswith("norm.weight") else noise)


def make_hf_model(directory: Path, kind: str = "llama", seed: int = 0, tokenizer=None, **overrides):
    """Save a tiny random model of ``kind`` (llama | qwen2 | mistral | phi3) in ``directory``; return the torch
    model."""
    import torch
    import transformers

    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
               "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
               "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM)}
    config_cls, model_cls = classes[kind]
    settings = dict(vocab_size=tokenizer.vocab_size + 8 if tokenizer is not None else 128, hidden_size=64,
                    intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=4096, rms_norm_eps=1e-5)
    if kind == "phi3":  # its defaults name token ids of the 32k Phi-3 vocabulary
        settings.update(eos_token_id=None, bos_token_id=None, pad_token_id=None)
    if tokenizer is not None:
        settings.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings)).eval()
    randomize_(model, seed)
    model.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return model


def torch_logits(torch_model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch_model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()
