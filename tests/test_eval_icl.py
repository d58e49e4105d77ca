"""ICL evaluation: nearest demonstrations on hand-built embeddings, the documented prompt format, leakage guard."""

import numpy as np
import pytest

from delift_jax.data import DEFAULT_TEMPLATES, Example
from delift_jax.errors import DataError
from delift_jax.evaluate import icl


def test_nearest_on_hand_built_embeddings():
    angles = np.deg2rad([0, 10, 80, 20, 90, 45, 30, 170])  # pool on the unit circle, scaled (cosine ignores norm)
    pool = np.stack([np.cos(angles), np.sin(angles)], 1) * np.arange(1, 9)[:, None]
    test = np.array([[1.0, 0.0], [0.0, 2.0]])
    chosen = icl.nearest_demonstrations(test, pool, k=5)
    assert chosen[0].tolist() == [0, 1, 3, 6, 5]  # 0, 10, 20, 30, 45 degrees
    assert chosen[1].tolist() == [4, 2, 5, 6, 3]  # 90, 80, 45, 30, 20 degrees


def test_ties_prefer_lower_index_and_exclusion():
    pool = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert icl.nearest_demonstrations(np.array([[1.0, 0.0]]), pool, k=3).tolist() == [[0, 1, 3]]
    exclude = np.array([[True, False, False, False]])
    assert icl.nearest_demonstrations(np.array([[1.0, 0.0]]), pool, k=3, exclude_nm=exclude).tolist() == [[1, 3, 2]]
    with pytest.raises(DataError, match="only 3 usable"):
        icl.nearest_demonstrations(np.array([[1.0, 0.0]]), pool, k=4, exclude_nm=exclude)


def test_prompt_format_documented():
    target = Example("What is 2 + 2?", " 4")
    demos = [Example("P1", " R1"), Example("P2", " R2"), Example("P3", " R3")]  # most similar first
    expected = ("Instruction:\n" + icl.MULTI_EXAMPLE_INSTRUCTION + "\n\n\nExample:\nP3\n R3"
                "\n\n\nExample:\nP2\n R2\n\n\nExample:\nP1\n R1\n\n\nQuery:\nWhat is 2 + 2?\n")
    assert icl.icl_context(target, demos) == expected
    # One demonstration is exactly the authors' with-example context; none is the no-example context.
    assert icl.icl_context(target, demos[:1]) == DEFAULT_TEMPLATES.context_with_example(target, demos[0])
    assert icl.icl_context(target, []) == DEFAULT_TEMPLATES.context_without_example(target)


class StubEncoder:
    """Embeds a prompt by a fixed table of directions."""

    def __init__(self, table):
        self.table = table

    def encode(self, texts, progress=False):
        return np.array([self.table[t] for t in texts], np.float32)


def test_icl_contexts_with_stub_encoder_and_leakage_guard():
    table = {"q": [1, 0], "a": [1, 0.1], "b": [0, 1], "c": [1, 0.5], "q2": [0, 1]}
    pool = [Example("a", " A"), Example("b", " B"), Example("c", " C"), Example("q", " Q")]
    test = [Example("q", " Q"), Example("q2", " X")]
    contexts, chosen = icl.icl_contexts(StubEncoder(table), test, pool, k=2)
    # Test 0 equals pool[3] exactly: it is excluded although its embedding is identical.
    assert chosen.tolist() == [[0, 2], [1, 2]]
    assert contexts[0] == icl.icl_context(test[0], [pool[0], pool[2]])


def test_subset_from_indices_errors():
    pool = [Example(str(i), str(i)) for i in range(4)]
    assert icl.subset_from_indices(pool, np.array([2, 0])) == [pool[2], pool[0]]
    with pytest.raises(DataError, match="pool has 4"):
        icl.subset_from_indices(pool, [1, 4])
    with pytest.raises(DataError, match="repeat"):
        icl.subset_from_indices(pool, [1, 1])
    with pytest.raises(DataError, match="empty"):
        icl.subset_from_indices(pool, [])
    with pytest.raises(DataError, match="no test examples"):
        icl.icl_contexts(StubEncoder({}), [], pool)
