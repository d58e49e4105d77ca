"""Method options are frozen dataclasses, one per method, validated when built; the registry maps each name to
(function, options class); unknown keys are one-line errors naming the valid ones."""

import dataclasses

import numpy as np
import pytest

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.kernel import KernelConfig
from delift_jax.methods import (METHODS, DeftUcsOptions, DeliftOptions, DeliftSeOptions, LessOptions, MethodOptions,
                                NoOptions, SelectItOptions, method_options, select)

POOL = [Example(f"prompt {i}\n", f" response {i}") for i in range(12)]


def test_registry_maps_names_to_function_and_options_class():
    expected = {"delift": DeliftOptions, "delift_se": DeliftSeOptions, "random": NoOptions, "full": NoOptions,
                "initial": NoOptions, "deft_ucs": DeftUcsOptions, "selectit": SelectItOptions, "less": LessOptions}
    assert {name: method.options for name, method in METHODS.items()} == expected
    for method in METHODS.values():
        assert callable(method.function) and issubclass(method.options, MethodOptions)
        assert method.options.__dataclass_params__.frozen


@pytest.mark.parametrize("name, values, fragment", [
    ("delift", {"scale": "zscore"}, "delift: scale 'zscore' is unknown; choose one of minmax, clip, clip_minmax"),
    ("delift", {"optimizer": "fast"}, "delift: optimizer 'fast' is unknown"),
    ("delift", {"max_pairs": 0}, "delift: max_pairs must be at least 1"),
    ("delift_se", {"similarity": "dot"}, "delift_se: similarity 'dot' is unknown"),
    ("deft_ucs", {"n_clusters": 0}, "deft_ucs: n_clusters must be at least 1"),
    ("deft_ucs", {"easy_fraction": 1.5}, "easy_fraction"),
    ("selectit", {"token_score": "median"}, "selectit: token_score 'median' is unknown"),
    ("selectit", {"prompts": ()}, "at least one rating prompt"),
    ("less", {"aggregate": "sum"}, "less: aggregate 'sum' is unknown; choose one of mean, max"),
    ("less", {"projection_dim": 0}, "less: projection_dim must be at least 1"),
    ("random", {"eta": 1.0}, "random: unknown option(s) eta; valid options: none"),
    ("delift", {"etta": 1.0}, "delift: unknown option(s) etta; valid options: eta, exclude_diagonal,"),
])
def test_bad_options_fail_when_built(name, values, fragment):
    with pytest.raises(DataError) as info:
        method_options(name, values)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_options_are_frozen_and_built_from_mappings():
    options = method_options("DELIFT", {"eta": 0.5, "kernel_config": {"max_length": 64}})
    assert options == DeliftOptions(eta=0.5, kernel_config=KernelConfig(max_length=64))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.eta = 1.0
    assert method_options("delift", options, nu=2.0) == dataclasses.replace(options, nu=2.0)
    with pytest.raises(DataError, match="expected DeliftOptions"):
        method_options("delift", LessOptions())


def test_select_takes_an_options_object_or_keywords():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(len(POOL), 4))
    by_object = select("deft_ucs", pool=POOL, budget=4, options=DeftUcsOptions(n_clusters=2, embeddings=embeddings))
    by_keywords = select("deft_ucs", pool=POOL, budget=4, n_clusters=2, embeddings=embeddings)
    np.testing.assert_array_equal(by_object.indices, by_keywords.indices)
    assert by_object.info["n_clusters"] == 2
