"""Teacher-forced scoring against a plain PyTorch implementation of DESIGN §1.1-1.2 on a tiny random model."""

import jax
import numpy as np
import pytest
import torch

from delift_jax.data import DEFAULT_TEMPLATES
from delift_jax.data.tokenize import build_sequence, length_ladder
from delift_jax.errors import DataError
from examples import EXAMPLES
from delift_jax.sharding import data_mesh
from delift_jax.scoring import ScoringConfig, TeacherForcedScorer, no_example_sequences, score_examples



@pytest.fixture(scope="module")
def tiny(tiny_llama):
    _, torch_model, model, tokenizer = tiny_llama
    return torch_model, model, tokenizer


def reference_distances(torch_model, tokenizer, example, max_length=None, max_response_tokens=None):
    """The authors' procedure, written plainly: full sequence, full logits, float32 softmax, gather."""
    eos = tokenizer.eos_token_id
    context = tokenizer(DEFAULT_TEMPLATES.context_without_example(example), add_special_tokens=False)["input_ids"]
    response = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    scored = response + [eos]
    if max_response_tokens is not None and len(response) > max_response_tokens:
        scored = response[:max_response_tokens]
    if max_length is not None and len(context) + 1 + len(scored) > max_length:
        context = context[len(context) - (max_length - 1 - len(scored)):]
    ids = context + [eos] + scored
    with torch.no_grad():
        logits = torch_model(torch.tensor([ids])).logits[0].float()
    probs = torch.softmax(logits, dim=-1)
    start = len(context) + 1
    p = torch.stack([probs[t - 1, ids[t]] for t in range(start, len(ids))]).double()
    logp = torch.log(p)
    return float(torch.sqrt(torch.mean((1 - p) ** 2))), float(torch.mean(logp)), len(scored)


@pytest.mark.parametrize("max_length,max_response_tokens", [(None, None), (64, None), (None, 5)])
def test_distances_match_plain_torch(tiny, max_length, max_response_tokens):
    torch_model, model, tokenizer = tiny
    config = ScoringConfig(max_length=max_length or 512, max_response_tokens=max_response_tokens, batch_size=4)
    table = score_examples(model, tokenizer, EXAMPLES, config)
    for i, example in enumerate(EXAMPLES):
        rms, mean_logp, n_scored = reference_distances(torch_model, tokenizer, example, max_length,
                                                       max_response_tokens)
        assert table.n_scored[i] == n_scored
        assert abs(table.rms[i] - rms) < 1e-5, (i, table.rms[i], rms)
        assert abs(table.mean_logp[i] - mean_logp) < 1e-5, (i, table.mean_logp[i], mean_logp)
    if max_length == 64:
        assert table.n_truncated > 0  # the small max_length really truncated some contexts


def test_one_device_equals_four(tiny):
    _, model, tokenizer = tiny
    assert len(jax.devices()) == 4
    config = ScoringConfig(max_length=256, batch_size=3)
    one = score_examples(model, tokenizer, EXAMPLES, config, mesh=data_mesh(jax.devices()[:1]))
    four = score_examples(model, tokenizer, EXAMPLES, config, mesh=data_mesh(jax.devices()))
    np.testing.assert_allclose(one.rms, four.rms, atol=1e-6, rtol=0)
    np.testing.assert_allclose(one.mean_logp, four.mean_logp, atol=1e-6, rtol=0)


def test_one_compile_per_bucket(tiny):
    """chex.assert_max_traces: rescoring in the same buckets never traces again."""
    _, model, tokenizer = tiny
    config = ScoringConfig(max_length=256, batch_size=2)
    sequences = no_example_sequences(tokenizer, EXAMPLES, config)
    probe = TeacherForcedScorer(model, config)
    buckets = {(length, scored) for _, length, scored in probe.plan(sequences)}
    assert len(buckets) >= 2  # the test exercises more than one bucket
    scorer = TeacherForcedScorer(model, config, max_traces=len(buckets))
    first = scorer.logprobs(sequences)
    second = scorer.logprobs(list(reversed(sequences)))  # same buckets, other order
    for a, b in zip(first, reversed(second)):
        np.testing.assert_array_equal(a, b)


def test_scored_tokens_are_never_dropped():
    seq = build_sequence(list(range(10, 30)), [5, 6, 7], eos_id=2, max_length=8)
    assert seq.tokens.tolist() == [27, 28, 29, 2, 5, 6, 7, 2] and seq.n_scored == 4
    assert seq.context_dropped == 17
    with pytest.raises(DataError, match="do not fit max_length"):
        build_sequence([1, 2], list(range(10, 20)), eos_id=2, max_length=8)


def test_response_cap_scores_prefix_without_eos():
    seq = build_sequence([1, 2, 3], [5, 6, 7, 8], eos_id=2, max_response_tokens=2)
    assert seq.tokens.tolist() == [1, 2, 3, 2, 5, 6] and seq.n_scored == 2
    seq = build_sequence([1], [5], eos_id=2, max_response_tokens=2)  # ends within the cap: EOS scored
    assert seq.tokens.tolist() == [1, 2, 5, 2] and seq.n_scored == 2


def test_length_ladder():
    assert length_ladder(300) == (32, 48, 64, 96, 128, 192, 256, 300)
    assert length_ladder(64) == (32, 48, 64)


def test_prompt_information_matches_plain_torch(tiny):
    """Σ log p(response | prompt) − Σ log p(response | empty query) over the same capped response tokens, against
    the plain torch reference."""
    from delift_jax.data.records import Example
    from delift_jax.scoring.prompt_information import prompt_information

    torch_model, model, tokenizer = tiny
    config = ScoringConfig(max_length=512, max_response_tokens=5, batch_size=4)
    expected = []
    for example in EXAMPLES:
        _, with_prompt, n = reference_distances(torch_model, tokenizer, example, None, 5)
        _, alone, n_alone = reference_distances(torch_model, tokenizer, Example("", example.response), None, 5)
        assert n == n_alone
        expected.append(n * (with_prompt - alone))
    np.testing.assert_allclose(prompt_information(model, tokenizer, EXAMPLES, config), expected, atol=1e-4)
    with pytest.raises(DataError, match="no examples"):
        prompt_information(model, tokenizer, [], config)
