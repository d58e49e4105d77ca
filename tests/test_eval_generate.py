"""KV-cache generation: equals step-by-step full forward passes and transformers' greedy generate; EOS, limits,
seeded sampling, and the top-p / min-p filters against transformers' logits warpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from delift_jax.data import DEFAULT_TEMPLATES
from delift_jax.errors import DataError
from delift_jax.evaluate.generate import (GenerationConfig, choose_tokens, generate_ids, generate_responses,
                                          min_p_keep, prompt_ids, top_p_keep)
from examples import EXAMPLES

MAX_NEW = 10


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    _, _, _, tokenizer = tiny_llama
    out = [prompt_ids(tokenizer, DEFAULT_TEMPLATES.context_without_example(ex)) for ex in EXAMPLES[:5]]
    assert len({len(p) for p in out}) > 2, "prompts should be ragged"
    return out


@pytest.fixture(scope="module")
def greedy_out(tiny_llama, prompts):
    _, _, model, tokenizer = tiny_llama
    config = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=3, max_prompt_tokens=128)
    return generate_ids(model, prompts, config, tokenizer.eos_token_id)


@nnx.jit
def _full_forward_logits(model, tokens_1t):
    hidden, _ = model(tokens_1t)
    return model.logits(hidden[0])


def reference_greedy(model, prompt, eos_id, max_new, buffer=96):
    """Argmax of a full forward pass (no cache) over the whole sequence, one token at a time. The sequence sits
    at the start of a fixed buffer (one compilation); causal attention makes the tokens after it irrelevant."""
    tokens = list(prompt)
    out = []
    for _ in range(max_new):
        padded = np.zeros((1, buffer), np.int32)
        padded[0, :len(tokens)] = tokens
        token = int(np.argmax(np.asarray(_full_forward_logits(model, jnp.asarray(padded)))[len(tokens) - 1]))
        if token == eos_id:
            break
        out.append(token)
        tokens.append(token)
    return out


def test_cached_greedy_equals_full_forward_argmax(tiny_llama, prompts, greedy_out):
    _, _, model, tokenizer = tiny_llama
    assert sum(len(t) for t in greedy_out.tokens) >= 3 * len(prompts), "the comparison would be vacuous"
    for i, prompt in enumerate(prompts):
        expected = reference_greedy(model, prompt, tokenizer.eos_token_id, MAX_NEW)
        assert greedy_out.tokens[i].tolist() == expected, f"prompt {i}"


def test_greedy_equals_transformers_generate(tiny_llama, prompts, greedy_out):
    _, torch_model, _, tokenizer = tiny_llama
    eos = tokenizer.eos_token_id
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            mask = torch.ones(1, len(prompt), dtype=torch.long)
            full = torch_model.generate(torch.tensor([prompt]), attention_mask=mask, do_sample=False,
                                        max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=eos)
        new = full[0, len(prompt):].tolist()
        if eos in new:
            new = new[:new.index(eos)]
        assert greedy_out.tokens[i].tolist() == new, f"prompt {i}"


def test_stops_at_eos_per_row(tiny_llama, prompts, greedy_out):
    _, _, model, _ = tiny_llama
    # Declare the token row 0 generates third to be "EOS": every row must stop at its first occurrence of it.
    fake_eos = int(greedy_out.tokens[0][2])
    config = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=3, max_prompt_tokens=128)
    stopped = generate_ids(model, prompts, config, fake_eos)
    assert stopped.stopped[0] and len(stopped.tokens[0]) <= 2
    for i, full in enumerate(greedy_out.tokens):
        full = full.tolist()
        cut = full.index(fake_eos) if fake_eos in full else len(full)
        assert stopped.tokens[i].tolist() == full[:cut]
        assert bool(stopped.stopped[i]) == (fake_eos in full)


def test_max_new_tokens_respected(tiny_llama, prompts, greedy_out):
    _, _, model, tokenizer = tiny_llama
    short = generate_ids(model, prompts, GenerationConfig(max_new_tokens=3, batch_size=8, max_prompt_tokens=128),
                         tokenizer.eos_token_id)
    for i in range(len(prompts)):
        assert len(short.tokens[i]) <= 3
        assert short.tokens[i].tolist() == greedy_out.tokens[i].tolist()[:3]


def test_sampling_seeded_and_batch_independent(tiny_llama, prompts):
    _, _, model, tokenizer = tiny_llama
    eos = tokenizer.eos_token_id
    base = dict(temperature=1.5, top_p=0.95, min_p=0.01, max_new_tokens=8, max_prompt_tokens=128)
    a = generate_ids(model, prompts, GenerationConfig(seed=1, batch_size=4, **base), eos)
    b = generate_ids(model, prompts, GenerationConfig(seed=1, batch_size=2, **base), eos)
    c = generate_ids(model, prompts, GenerationConfig(seed=2, batch_size=4, **base), eos)
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
    assert [t.tolist() for t in a.tokens] != [t.tolist() for t in c.tokens]


def test_text_rim_and_truncation(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    config = GenerationConfig(max_new_tokens=4, batch_size=2, max_prompt_tokens=8)
    texts, result = generate_responses(model, tokenizer, EXAMPLES[:3], config)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert result.n_truncated == 3
    assert texts[0] == tokenizer.decode(result.tokens[0].tolist(), skip_special_tokens=True)


PROBS = np.array([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("top_p, kept", [(0.4, [0]), (0.7, [0, 1]), (0.85, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_known_distribution(top_p, kept):
    mask = np.asarray(top_p_keep(jnp.log(jnp.asarray(PROBS, jnp.float32)), top_p))
    assert np.flatnonzero(mask).tolist() == kept


@pytest.mark.parametrize("min_p, kept", [(0.0, [0, 1, 2, 3]), (0.2, [0, 1, 2]), (0.5, [0, 1]), (0.9, [0])])
def test_min_p_known_distribution(min_p, kept):
    mask = np.asarray(min_p_keep(jnp.log(jnp.asarray(PROBS, jnp.float32)), min_p))
    assert np.flatnonzero(mask).tolist() == kept


def test_filters_match_transformers_warpers():
    from transformers.generation.logits_process import MinPLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(6, 50)).astype(np.float32) * 2
    for top_p in (0.3, 0.6, 0.9):
        theirs = TopPLogitsWarper(top_p)(None, torch.tensor(logits)).numpy() > -np.inf
        np.testing.assert_array_equal(np.asarray(top_p_keep(jnp.asarray(logits), top_p)), theirs)
    for min_p in (0.05, 0.2, 0.5):
        theirs = MinPLogitsWarper(min_p)(None, torch.tensor(logits)).numpy() > -np.inf
        np.testing.assert_array_equal(np.asarray(min_p_keep(jnp.asarray(logits), min_p)), theirs)


def test_sampled_frequencies_follow_filtered_distribution():
    n = 4000
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, 4))
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(0), jnp.arange(n, dtype=jnp.uint32))
    picks = np.asarray(choose_tokens(logits, keys, 0, False, jnp.float32(1.0), jnp.float32(0.7), jnp.float32(0.0)))
    freq = np.bincount(picks, minlength=4) / n
    assert freq[2] == 0 and freq[3] == 0
    np.testing.assert_allclose(freq[:2], [0.625, 0.375], atol=0.03)


@pytest.mark.parametrize("field, value", [("temperature", -1.0), ("top_p", 0.0), ("min_p", 1.0),
                                          ("max_new_tokens", 0), ("batch_size", 0)])
def test_bad_generation_config(field, value):
    with pytest.raises(DataError, match=field):
        GenerationConfig(**{field: value})


def test_no_prompts(tiny_llama):
    _, _, model, _ = tiny_llama
    with pytest.raises(DataError, match="no prompts"):
        generate_ids(model, [], GenerationConfig(), 0)
