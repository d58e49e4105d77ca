"""Splits: disjoint and covering by construction, seeded, stable; exact duplicates never straddle two splits, so the
held-out split never enters selection."""

import numpy as np
import pytest

from delift_jax.data import Example, check_disjoint, split_examples, split_indices
from delift_jax.data.splits import shared_examples
from delift_jax.errors import DataError


def examples(n, duplicates=0):
    base = [Example(f"prompt {i}", f" response {i}") for i in range(n - duplicates)]
    return base + [base[i % len(base)] for i in range(duplicates)]


@pytest.mark.parametrize("n", [3, 10, 97, 1000])
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.9, 0.0, 0.1), (0.7, 0.3, 0.0)])
def test_disjoint_covering_and_sized(n, fractions):
    train, val, test = split_indices(n, fractions, seed=5)
    assert sorted(train + val + test) == list(range(n))
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    for part, fraction in ((val, fractions[1]), (test, fractions[2])):
        assert len(part) == (0 if fraction == 0 else max(1, round(fraction * n)))
        assert part == sorted(part)


def test_seeded_and_stable():
    data = examples(200)
    first = split_examples(data, seed=3)
    assert split_examples(data, seed=3) == first
    assert split_examples(list(data), (0.8, 0.1, 0.1), 3) == first
    assert split_examples(data, seed=4) != first
    # a fixed seed gives fixed indices on every machine (NumPy's PCG64 stream)
    expected = [int(i) for i in np.random.default_rng(3).permutation(200)]
    _, val, test = split_indices(200, seed=3)
    assert test == sorted(expected[:20]) and val == sorted(expected[20:40])
    # examples keep their original order inside each split
    train = first[0]
    assert [data.index(e) for e in train] == sorted(data.index(e) for e in train)


def test_exact_duplicates_never_straddle_splits():
    data = examples(300, duplicates=60)
    for seed in range(10):
        train, val, test = split_examples(data, (0.6, 0.2, 0.2), seed)
        assert len(train) + len(val) + len(test) == len(data)
        assert shared_examples(train, test) == [] and shared_examples(train, val) == []
        assert shared_examples(val, test) == []
        check_disjoint(train + val, test)
    # without grouping, plain index splits are still disjoint by index but copies may straddle
    straddles = 0
    for seed in range(10):
        train, _, test = split_examples(data, (0.6, 0.2, 0.2), seed, group_duplicates=False)
        straddles += bool(shared_examples(train, test))
    assert straddles > 0


def test_grouping_equals_index_split_without_duplicates():
    data = examples(150)
    assert split_examples(data, seed=9) == split_examples(data, seed=9, group_duplicates=False)


def test_check_disjoint_names_the_leak():
    pool, held = examples(20), [Example("new", " x"), Example("prompt 7", " response 7")]
    with pytest.raises(DataError, match=r"1 of 2 held-out examples also occur in the selection pool \(e.g. held-out "
                                        r"example 1\)"):
        check_disjoint(pool, held)


def test_bad_fractions():
    for fractions, match in [((0.8, 0.2), "must be \\(train, validation, test\\)"),
                             ((0.8, 0.3, 0.1), "must be non-negative and sum to 1"),
                             ((1.2, -0.1, -0.1), "must be non-negative")]:
        with pytest.raises(DataError, match=match):
            split_indices(10, fractions)
    with pytest.raises(DataError, match="2 examples are too few for split fractions"):
        split_indices(2, (0.8, 0.1, 0.1))
    with pytest.raises(DataError, match="3 group keys for 4 items"):
        split_indices(4, groups=[1, 2, 3])
