"""The held-out test split and selection never share a question: same prompt (case- and whitespace-folded) means
the same question, whatever the response."""

import pytest

from delift_jax.data.records import Example
from delift_jax.data.splits import SplitError, check_disjoint, prompt_key
from delift_jax.pipeline.inputs import Source
from delift_jax.pipeline.splits import drop_shared as _drop_shared, split_source as _split


def _source(examples):
    return Source("mem", list(examples), None, None, "builtin")


def test_same_question_with_another_response_is_dropped_from_selection():
    test = [Example("What is the capital of France?", "Paris")]
    pool = _source([Example("what is the  capital of France?", "It is Paris."),   # the same question
                    Example("What is the capital of Spain?", "Madrid")])
    kept, dropped = _drop_shared([0, 1], pool, test, "pool")
    assert kept == [1] and dropped == 1
    with pytest.raises(SplitError, match="held-out test"):
        check_disjoint(pool.examples, test, what="held-out test", key=prompt_key)
    check_disjoint(pool.examples, test, what="held-out test")  # the exact-copy check alone would let it through


def test_one_question_lands_in_one_split():
    examples = []
    for q in range(20):
        examples += [Example(f"Question {q}?", "a"), Example(f"question {q}? ", "another answer")]
    for seed in range(5):
        train, validation, test = _split(_source(examples), (0.6, 0.2, 0.2), seed, "data")
        parts = [{prompt_key(examples[i]) for i in part} for part in (train, validation, test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(train + validation + test) == list(range(40))
