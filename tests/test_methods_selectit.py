"""SelectIT: the paper's token- and sentence-level formulas, TOP-k (not bottom), rating probabilities."""

import jax
import numpy as np
import pytest

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.methods import select
from delift_jax.methods.selectit import (rating_distributions, rating_sequences, rating_token_ids,
                                         sentence_level_scores, token_level_scores)


def test_token_level_formula():
    # S_base = 3; Σ|P'_i − P'_3| = .3 + .2 + 0 + .2 + .3 = 1; S_token = 3 · 1 / 4
    assert token_level_scores(np.array([0.1, 0.2, 0.4, 0.2, 0.1])) == pytest.approx(0.75)
    assert token_level_scores(np.array([2.0, 4, 8, 4, 2])) == pytest.approx(0.75)  # renormalized first
    assert token_level_scores(np.array([0, 0, 0, 0, 1.0])) == pytest.approx(5.0)  # certain 5: 5 · 4 / 4
    assert token_level_scores(np.full(5, 0.2)) == pytest.approx(0.0)  # no preference: no confidence
    assert token_level_scores(np.array([0.1, 0.2, 0.4, 0.2, 0.1]), "expected") == pytest.approx(3.0)
    with pytest.raises(DataError):
        token_level_scores(np.zeros(5))


def test_sentence_level_formula():
    # mean 2, population std 1: 2 / (1 + 0.2 · 1)
    assert sentence_level_scores(np.array([[1.0, 3.0]]))[0] == pytest.approx(2 / 1.2)
    assert sentence_level_scores(np.array([[1.0, 3.0]]), alpha=0.0)[0] == pytest.approx(2.0)
    assert sentence_level_scores(np.array([[2.0, 2.0, 2.0]]))[0] == pytest.approx(2.0)


def test_keeps_the_top_k_with_stub_distributions():
    certain = lambda r: np.eye(5)[r - 1]  # S_token = r exactly
    dist = np.stack([
        [certain(1), certain(1)],  # S_sent 1
        [certain(5), certain(5)],  # 5
        [certain(3), certain(3)],  # 3
        [certain(5), certain(1)],  # mean 3, std 2: 3 / 1.4 ≈ 2.14
        [certain(4), certain(4)],  # 4
    ])
    pool = [Example(str(i), "") for i in range(5)]
    sel = select("selectit", pool=pool, budget=2, distributions=dist)
    np.testing.assert_array_equal(sel.indices, [1, 4])  # the two highest, highest first
    np.testing.assert_allclose(sel.scores, [5.0, 4.0])
    sel3 = select("selectit", pool=pool, budget=3, distributions=dist)
    np.testing.assert_array_equal(sel3.indices, [1, 4, 2])  # 3 beats the disagreeing 3/1.4
    assert sel.info["keep"] == "top"


POOL = [Example("What is 2 plus 2?", " 4"), Example("Name a color:", " blue"),
        Example("Translate 'cat' to German.", " Katze"), Example("Write a short poem about the sea.",
                                                                " Waves roll in and out.")]


def test_rating_probabilities_match_a_plain_forward(tiny_llama):
    _, _, model, tok = tiny_llama
    prompts = ("Rate it from 1 to 5.", "Score this pair, 1 to 5.")
    dist, truncated = rating_distributions(model, tok, POOL, prompts, max_length=256, batch_size=3)
    assert dist.shape == (4, 2, 5) and truncated == 0
    np.testing.assert_allclose(dist.sum(-1), 1.0, rtol=1e-6)
    sequences, _ = rating_sequences(tok, POOL, prompts, 256)
    ids, mask = rating_token_ids(tok)
    for row in (0, 5):  # (example 0, prompt 0) and (example 2, prompt 1)
        hidden, _ = model(np.asarray(sequences[row], np.int32)[None])
        probs = np.asarray(jax.nn.softmax(model.logits(hidden[:, -1])[0]), np.float64)
        p = np.array([probs[ids[k][mask[k]]].sum() for k in range(5)])
        np.testing.assert_allclose(dist.reshape(-1, 5)[row], p / p.sum(), rtol=1e-5, atol=1e-7)


def test_selectit_on_the_tiny_model(tiny_llama):
    _, _, model, tok = tiny_llama
    run = lambda: select("selectit", pool=POOL, budget=2, model=model, tokenizer=tok, seed=0, max_length=256)
    sel = run()
    assert len(sel.indices) == 2 and len(set(sel.indices.tolist())) == 2
    assert sel.info["n_prompts"] == 5
    scores = sel.arrays["sentence_scores"]
    np.testing.assert_array_equal(sel.indices, np.argsort(-scores, kind="stable")[:2])
    assert scores[sel.indices].min() >= np.delete(scores, sel.indices).max()
    np.testing.assert_array_equal(run().indices, sel.indices)


def test_truncation_keeps_the_cue(tiny_llama):
    _, _, _, tok = tiny_llama
    long = [Example("word " * 300, " answer")]
    sequences, truncated = rating_sequences(tok, long, ("Rate 1 to 5.",), 64)
    assert truncated == 1 and len(sequences[0]) <= 64
    assert tok.decode(sequences[0]).endswith("Score (1-5):")
