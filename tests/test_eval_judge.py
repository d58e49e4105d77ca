"""Prometheus-style judge: prompt format, score parsing on crafted outputs, forced scoring against torch, and an
end-to-end run on the tiny model (labelled as a small-judge approximation)."""

import numpy as np
import pytest
import torch

from delift_jax.errors import DataError
from delift_jax.evaluate import judge


@pytest.mark.parametrize("text, score", [
    ("The response is accurate and complete. [RESULT] 4", 4),
    ("Feedback: fine.\n[Result]: (3)", 3),
    ("Close to the reference. [RESULT] 5/5", 5),
    ("It misses the point. [RESULT] 2.", 2),
    ("[RESULT]1", 1),
    ("First try [RESULT] 2, on reflection [RESULT] 5", 5),
    ("Overall, I give it a score of 3.", 3),
    ("Score: 4/5", 4),
    ("[RESULT] 4.5", None),
    ("[RESULT] 7", None),
    ("score of 10", None),
    ("A: 1983\n\n###Reference Answer (Score 5):\nAbsolutely", None),  # an echoed prompt heading is no score
    ("Score 5: The response is correct, complete", None),  # nor is an echoed rubric line
    ("The response is good.", None),
    ("", None),
])
def test_parse_score(text, score):
    assert judge.parse_score(text) == score


def test_prompt_has_all_parts():
    prompt = judge.judge_prompt("Name a color.", " Blue.", "Blue is a color.")
    assert "###The instruction to evaluate:\nName a color.\n" in prompt
    assert "###Response to evaluate:\nBlue.\n" in prompt
    assert "###Reference Answer (Score 5):\nBlue is a color.\n" in prompt
    assert "Score 1:" in prompt and "Score 5:" in prompt
    assert prompt.endswith("###Feedback: ")


def test_forced_scores_match_torch(tiny_llama):
    _, torch_model, model, tokenizer = tiny_llama
    candidates = judge.score_token_ids(tokenizer)
    assert candidates is not None
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, len(tokenizer), size=n).tolist() for n in (5, 17, 9)]
    ours = judge.forced_scores(model, sequences, candidates, batch_size=2, max_length=64)
    for seq, score in zip(sequences, ours):
        with torch.no_grad():
            logits = torch_model(torch.tensor([seq])).logits[0, -1]
        assert score == int(torch.argmax(logits[candidates])) + 1


def test_end_to_end_on_tiny_model(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    config = judge.JudgeConfig(max_new_tokens=6, batch_size=2, max_prompt_tokens=512)
    result = judge.judge_responses(model, tokenizer, ["Name a color.", "Compute 12 * 7."], [" Blue.", "84"],
                                   ["Blue is a color.", "84"], config)
    assert result.label == "small-judge approximation"
    assert len(result.feedback) == 2
    # A random tiny model writes no "[RESULT] n": every score is forced, reported as such, and within 1..5.
    assert result.n_parse_failures == 2 and result.forced.all()
    assert set(result.scores.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    summary = result.summary()
    assert summary["judge_parse_failures"] == 2 and summary["judge_label"] == judge.JUDGE_LABEL

    unforced = judge.judge_responses(model, tokenizer, ["Name a color."], [" Blue."], ["Blue."],
                                     judge.JudgeConfig(max_new_tokens=6, batch_size=2, max_prompt_tokens=512,
                                                       force_score=False))
    assert np.isnan(unforced.scores).all() and not unforced.forced.any()


def test_judge_input_errors(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    with pytest.raises(DataError, match="no responses"):
        judge.judge_responses(model, tokenizer, [], [], [])
    with pytest.raises(DataError, match="differ in length"):
        judge.judge_responses(model, tokenizer, ["a"], ["b", "c"], ["d"])
