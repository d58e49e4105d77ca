"""The method registry and the trivial baselines (Random, Full, Initial): signature, errors, seeding."""

import numpy as np
import pytest

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.methods import METHODS, Selection, canonical_name, select
from delift_jax.methods.baselines import RANDOM_STREAM

POOL = [Example(f"prompt {i}\n", f" response {i}") for i in range(40)]


def test_registry_names():
    assert set(METHODS) == {"delift", "delift_se", "random", "full", "initial", "deft_ucs", "selectit", "less"}
    assert canonical_name("DELIFT (SE)") == "delift_se"
    assert canonical_name("DEFT-UCS") == "deft_ucs"
    assert canonical_name("LESS-style") == "less"
    assert canonical_name("Full data") == "full"


def test_unknown_method_is_one_line_data_error_listing_names():
    with pytest.raises(DataError) as info:
        select("kmeans-magic", pool=POOL, budget=3)
    message = str(info.value)
    assert "\n" not in message and "kmeans-magic" in message
    for name in METHODS:
        assert name in message


def test_random_is_a_seeded_permutation_prefix():
    a = select("random", pool=POOL, budget=10, seed=3)
    b = select("random", pool=POOL, budget=10, seed=3)
    c = select("random", pool=POOL, budget=10, seed=4)
    small = select("random", pool=POOL, budget=4, seed=3)
    assert isinstance(a, Selection)
    assert a.indices.dtype == np.int64 and len(a.indices) == 10 and len(set(a.indices.tolist())) == 10
    assert a.indices.min() >= 0 and a.indices.max() < len(POOL)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    np.testing.assert_array_equal(small.indices, a.indices[:4])
    np.testing.assert_array_equal(a.indices, np.random.default_rng([3, RANDOM_STREAM]).permutation(len(POOL))[:10])


def test_random_draws_from_its_own_stream_not_the_splits():
    """The splits permute with default_rng(seed); Random's picks must not be a prefix of that same permutation
    (issue 23.4a: with one stream, Random's order was exactly the order that had cut the pool)."""
    for seed in range(5):
        for n in (10, len(POOL)):
            picks = select("random", pool=POOL[:n], budget=4, seed=seed).indices
            assert not np.array_equal(picks, np.random.default_rng(seed).permutation(n)[:4])


def test_fraction_budget():
    assert len(select("random", pool=POOL, budget=0.25, seed=0).indices) == 10


def test_full_and_initial():
    full = select("Full data", pool=POOL, budget=5)
    np.testing.assert_array_equal(full.indices, np.arange(len(POOL)))
    assert full.info["fine_tune"] is True
    initial = select("initial", pool=POOL)
    assert initial.indices.shape == (0,) and initial.info["fine_tune"] is False
    assert initial.subset(POOL) == []


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(use_case="task"), "targets"),
    (dict(use_case="continual"), "existing"),
    (dict(use_case="pretraining"), "use_case"),
    (dict(budget=0), "budget"),
    (dict(budget=41), "budget"),
    (dict(budget=None), "budget"),
    (dict(colour="red"), "unknown option"),
])
def test_input_errors(kwargs, fragment):
    settings = dict(pool=POOL, budget=3, seed=0)
    settings.update(kwargs)
    with pytest.raises(DataError, match=fragment):
        select("random", **settings)


def test_empty_pool():
    with pytest.raises(DataError, match="empty"):
        select("full", pool=[])


@pytest.mark.parametrize("name", ["delift", "selectit", "less"])
def test_model_methods_need_a_model(name):
    with pytest.raises(DataError, match="model"):
        select(name, pool=POOL, budget=3)


def test_selection_refuses_repeats():
    with pytest.raises(ValueError):
        Selection(np.array([1, 1]), None, {})
