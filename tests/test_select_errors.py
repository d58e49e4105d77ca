"""Bad input: every problem ends in a one-line SelectionError that names it."""

from __future__ import annotations

import numpy as np
import pytest

from delift_jax import select as sel
from delift_jax.errors import SelectionError

K = np.random.default_rng(0).random((8, 8), dtype=np.float32)
Q = np.random.default_rng(1).random((8, 3), dtype=np.float32)


def raises(match, fn, *args, **kwargs):
    with pytest.raises(SelectionError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_kernel_shape_and_values():
    raises("must be 2-D", sel.facility_location, np.ones(5, np.float32))
    raises("must be 2-D", sel.facility_location, np.ones((2, 2, 2), np.float32))
    raises("empty", sel.facility_location, np.ones((0, 4), np.float32))
    bad = K.copy()
    bad[2, 3] = np.nan
    raises("non-finite", sel.facility_location, bad)
    bad[2, 3] = np.inf
    raises("non-finite", sel.fl_conditional_gain, bad, Q)


def test_companion_kernels_must_agree():
    raises("query kernel Q has 5 rows but kernel K has 8", sel.fl_mutual_information, K, Q[:5])
    raises("private kernel P has 5 rows", sel.fl_conditional_gain, K, Q[:5])
    raises("query kernel Q is empty", sel.fl_mutual_information, K, np.ones((8, 0), np.float32))
    raises("private kernel P is empty", sel.fl_conditional_gain, K, np.ones((8, 0), np.float32))
    raises("and a query kernel", sel.make_objective, "flmi", K)
    raises("and a private kernel", sel.make_objective, "flcg", K)
    raises("unknown objective", sel.make_objective, "graphcut", K)


def test_weights_must_be_non_negative():
    raises("eta", sel.fl_mutual_information, K, Q, eta=-0.1)
    raises("eta", sel.fl_variant_mutual_information, Q, eta=float("nan"))
    raises("nu", sel.fl_conditional_gain, K, Q, nu=-1)


def test_budget():
    objective = sel.facility_location(K)
    for budget in (0, -3, 9, 0.0, -0.5, 1.5, float("nan"), 0.05, "3", True, None):
        raises("budget", sel.maximize, objective, budget)
    assert sel.resolve_budget(0.3, 10) == 3 and sel.resolve_budget(1.0, 8) == 8 and sel.resolve_budget(8, 8) == 8


def test_optimizer_options_and_sets():
    objective = sel.facility_location(K)
    raises("unknown optimizer", sel.maximize, objective, 2, optimizer="greedy")
    raises("epsilon", sel.maximize, objective, 2, optimizer="stochastic", epsilon=1.5)
    raises("batch", sel.maximize, objective, 2, batch=0)
    raises(r"set indices must lie in \[0, 8\)", sel.evaluate, objective, [1, 8])
    assert sel.evaluate(objective, []) == 0.0


def test_sparse_kernel_checks():
    indices = np.array([[0, 1], [2, 3]], np.int32)
    values = np.ones((2, 2), np.float32)
    raises("same shape", sel.facility_location, sel.SparseKernel(indices, values[:, :1], 4))
    raises(r"lie in \[0, 3\)", sel.facility_location, sel.SparseKernel(indices, values, 3))
    raises("repeat within a row", sel.facility_location, sel.SparseKernel(np.array([[0, 0], [1, 2]]), values, 4))
    raises(">= 0", sel.facility_location, sel.SparseKernel(indices, -values, 4))
    raises("dense query kernel", sel.fl_variant_mutual_information, sel.SparseKernel(indices, values, 4))
