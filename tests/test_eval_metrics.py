"""Metrics: ROUGE on fixed strings (hand-computed and rouge-score), NLL/perplexity against a plain torch
computation, accuracy on hand-made cases, embedding similarity."""

import numpy as np
import pytest
import torch

from delift_jax.data import DEFAULT_TEMPLATES
from delift_jax.errors import DataError
from delift_jax.evaluate import metrics
from delift_jax.scoring import ScoringConfig
from examples import EXAMPLES


def test_rouge_hand_computed():
    preds = ["the cat sat on the mat", "mat the on cat", "nothing in common"]
    refs = ["the cat is on the mat", "the cat on mat", "the cat on mat"]
    scores = metrics.rouge_scores(preds, refs)
    np.testing.assert_allclose(scores["rouge1"], [5 / 6, 1.0, 0.0])
    # LCS: "the cat on the mat" (5 of 6); "the ... on" or "the cat" (2 of 4): F = 0.5.
    np.testing.assert_allclose(scores["rougeL"], [5 / 6, 0.5, 0.0])


def test_rouge_equals_rouge_score_directly():
    from rouge_score import rouge_scorer

    preds = ["Paris is the capital of France.", "Waves roll in; the tide keeps time.", "2, 3, 5 and 7"]
    refs = ["The capital of France is Paris.", "The tide keeps time as waves roll.", "2, 3, 5"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    ours = metrics.rouge_scores(preds, refs, use_stemmer=True)
    for i, (p, r) in enumerate(zip(preds, refs)):
        direct = scorer.score(r, p)
        assert ours["rouge1"][i] == direct["rouge1"].fmeasure
        assert ours["rougeL"][i] == direct["rougeL"].fmeasure


def test_response_nll_matches_plain_torch(tiny_llama):
    _, torch_model, model, tokenizer = tiny_llama
    examples = EXAMPLES[:4]
    contexts = [DEFAULT_TEMPLATES.context_without_example(ex) for ex in examples]
    responses = [ex.response for ex in examples]
    result = metrics.response_nll(model, tokenizer, contexts, responses, ScoringConfig(max_length=256, batch_size=2))

    eos = tokenizer.eos_token_id
    total, count, per_example = 0.0, 0, []
    for c, r in zip(contexts, responses):
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([c_ids + [eos] + r_ids + [eos]])
        with torch.no_grad():
            logp = torch.log_softmax(torch_model(ids).logits[0].double(), -1)
        first = len(c_ids) + 1
        targets = ids[0, first:]
        picked = logp[first - 1:-1].gather(1, targets[:, None])[:, 0]
        total -= picked.sum().item()
        count += len(targets)
        per_example.append(-picked.mean().item())
    np.testing.assert_allclose(result.nll, total / count, rtol=1e-5)
    np.testing.assert_allclose(result.perplexity, np.exp(total / count), rtol=1e-5)
    np.testing.assert_allclose(result.per_example, per_example, rtol=1e-5)
    assert result.n_tokens.sum() == count and result.n_truncated == 0


def test_nll_from_logprobs_token_weighted():
    nll, per_example, counts = metrics.nll_from_logprobs([np.log([0.5, 0.5]), np.log([0.25])])
    assert counts.tolist() == [2, 1]
    np.testing.assert_allclose(per_example, [np.log(2), np.log(4)])
    np.testing.assert_allclose(nll, (2 * np.log(2) + np.log(4)) / 3)


@pytest.mark.parametrize("prediction, reference, correct", [
    ("Paris", "paris.", True),
    ("The Eiffel Tower", "eiffel tower", True),
    ("Paris, France", "Paris", False),
    ("B", "B", True),
    ("(C) 42", "C", True),
    ("The answer is D.", "D", True),
    ("Answer: a", "A", False),  # lower-case "a" is an article, not a choice
    ("A cat sat.", "A", False),
    ("B) because ...", "(B)", True),
    ("I think it is 12", "B", True),  # option text, with options below
])
def test_answer_correct(prediction, reference, correct):
    options = {"A": "7", "B": "12", "C": "42", "D": "84"}
    assert metrics.answer_correct(prediction, reference, options) is correct


def test_accuracy_scores_and_contains():
    scores = metrics.accuracy_scores(["It is Paris.", "Berlin", "C"], ["Paris", "Berlin", "B"])
    assert scores["accuracy"].tolist() == [0.0, 1.0, 0.0]
    assert scores["contains"].tolist() == [1.0, 1.0, 0.0]
    assert metrics.summarize(scores) == {"accuracy": pytest.approx(1 / 3), "contains": pytest.approx(2 / 3)}


def test_summarize_skips_nan():
    assert metrics.summarize({"judge": np.array([1.0, np.nan, 5.0])}) == {"judge": 3.0}


def test_embedding_similarity_with_stub_encoder():
    class Stub:
        def encode(self, texts, progress=False):
            table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}
            return np.array([table[t] for t in texts], np.float32)

    np.testing.assert_allclose(metrics.embedding_similarity(Stub(), ["a", "a", "c"], ["a", "b", "a"]),
                               [1.0, 0.0, 0.6], atol=1e-7)


def test_empty_and_mismatched_inputs():
    with pytest.raises(DataError, match="no predictions"):
        metrics.rouge_scores([], [])
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        metrics.accuracy_scores(["a", "b"], ["a"])
