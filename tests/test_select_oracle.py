"""Oracle tests: naive and lazy greedy against submodlib's C++ greedy on random dense kernels.

For every kernel: the same objective value at every greedy prefix (from the gains and from ``evaluate``), and the
same picks up to the first step whose top two gains are closer than float32 rounding can separate (a tie).
"""

from __future__ import annotations

import numpy as np
import pytest

submodlib = pytest.importorskip("submodlib")

from delift_jax import select as sel  # noqa: E402

# submodlib itself imports a scipy namespace that is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# (objective, n, k, weight, seed): 24 random kernels over several sizes, budgets and η/ν.
CASES = [
    ("fl", 12, 5, None, 0),
    ("fl", 40, 12, None, 1),
    ("fl", 97, 30, None, 2),
    ("fl", 150, 60, None, 3),
    ("fl", 64, 63, None, 4),
    ("fl", 200, 20, None, 5),
    ("flmi", 30, 10, 1.0, 6),
    ("flmi", 80, 25, 0.5, 7),
    ("flmi", 120, 40, 2.0, 8),
    ("flmi", 50, 15, 0.0, 9),
    ("flmi", 150, 45, 1.0, 10),
    ("fl2mi", 30, 9, 1.0, 11),
    ("fl2mi", 90, 27, 0.3, 12),
    ("fl2mi", 140, 40, 2.0, 13),
    ("fl2mi", 60, 18, 0.0, 14),
    ("flcg", 30, 10, 1.0, 15),
    ("flcg", 80, 24, 0.5, 16),
    ("flcg", 120, 36, 0.2, 17),
    ("flcg", 60, 20, 0.0, 18),
    ("flcg", 150, 30, 1.0, 19),
    ("fl", 25, 24, None, 20),
    ("flmi", 100, 30, 1.5, 21),
    ("flcg", 100, 30, 1.5, 22),
    ("fl2mi", 100, 30, 1.0, 23),
]


def random_problem(name, n, weight, seed):
    """Random kernels in [0, 1]; a few targets/existing examples, as in DELIFT's task-specific and continual modes."""
    rng = np.random.default_rng(seed)
    kernel = rng.random((n, n), dtype=np.float32)
    n_other = int(rng.integers(2, 9))
    other = rng.random((n, n_other), dtype=np.float32)
    if name == "fl":
        ours = sel.facility_location(kernel)
        ref = submodlib.FacilityLocationFunction(n=n, mode="dense", sijs=kernel, separate_rep=False)
    elif name == "flmi":
        ours = sel.fl_mutual_information(kernel, other, eta=weight)
        ref = submodlib.FacilityLocationMutualInformationFunction(
            n=n, num_queries=n_other, data_sijs=kernel, query_sijs=other, magnificationEta=weight)
    elif name == "fl2mi":
        ours = sel.fl_variant_mutual_information(other, eta=weight)
        ref = submodlib.FacilityLocationVariantMutualInformationFunction(
            n=n, num_queries=n_other, query_sijs=other, queryDiversityEta=weight)
    else:
        ours = sel.fl_conditional_gain(kernel, other, nu=weight)
        ref = submodlib.FacilityLocationConditionalGainFunction(
            n=n, num_privates=n_other, data_sijs=kernel, private_sijs=other, privacyHardness=weight)
    return ours, ref


def reference_greedy(objective, k):
    """Plain float64 numpy greedy on the same saturated FL form; also returns the gap between the top two gains."""
    kernel = np.asarray(sel.sparse_to_dense(objective.kernel) if isinstance(objective.kernel, sel.SparseKernel)
                        else objective.kernel.rows(), np.float64)
    if objective.cap is not None:
        kernel = np.minimum(kernel, np.asarray(objective.cap, np.float64)[:, None])
    bonus = np.zeros(kernel.shape[1]) if objective.bonus is None else np.asarray(objective.bonus, np.float64)
    coverage = np.asarray(objective.floor, np.float64).copy()
    taken = np.zeros(kernel.shape[1], bool)
    picks, gaps = [], []
    for _ in range(k):
        gains = np.maximum(kernel - coverage[:, None], 0).sum(0) + bonus
        gains[taken] = -np.inf
        order = np.argsort(-gains, kind="stable")
        picks.append(int(order[0]))
        gaps.append(gains[order[0]] - gains[order[1]] if len(order) > 1 else np.inf)
        taken[order[0]] = True
        coverage = np.maximum(coverage, kernel[:, order[0]])
    return picks, np.array(gaps)


def agreeing_prefix(gaps, tol=1e-4):
    """Number of leading steps without a (near-)tie, where every exact greedy must make the same pick."""
    ties = np.flatnonzero(gaps < tol)
    return int(ties[0]) if ties.size else len(gaps)


@pytest.mark.parametrize("name,n,k,weight,seed", CASES)
def test_greedy_matches_submodlib(name, n, k, weight, seed):
    ours, ref = random_problem(name, n, weight, seed)
    ref_naive = ref.maximize(budget=k, optimizer="NaiveGreedy", stopIfZeroGain=False, stopIfNegativeGain=False,
                             verbose=False, show_progress=False)
    ref_lazy = ref.maximize(budget=k, optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False,
                            verbose=False, show_progress=False)
    ref_prefix = np.cumsum([gain for _, gain in ref_naive])
    np.testing.assert_allclose(np.cumsum([gain for _, gain in ref_lazy]), ref_prefix, rtol=1e-5, atol=1e-5)
    expected_picks, gaps = reference_greedy(ours, k)
    settled = agreeing_prefix(gaps)

    for optimizer in ("naive", "lazy"):
        selection = sel.maximize(ours, k, optimizer=optimizer)
        picks = np.asarray(selection.picks)
        assert int(selection.n_selected) == k and len(set(picks.tolist())) == k
        # Same objective value as submodlib's greedy at every prefix: from our gains and from evaluate().
        np.testing.assert_allclose(np.cumsum(np.asarray(selection.gains, np.float64)), ref_prefix,
                                   rtol=1e-5, atol=1e-4, err_msg=f"{optimizer} gains")
        np.testing.assert_allclose(sel.prefix_values(ours, picks), ref_prefix, rtol=1e-5, atol=1e-4,
                                   err_msg=f"{optimizer} evaluate")
        # Same picks where there are no ties (submodlib's own order among ties is its hash-set order).
        assert picks[:settled].tolist() == [p for p, _ in ref_naive][:settled], optimizer
        assert picks[:settled].tolist() == expected_picks[:settled], optimizer


@pytest.mark.parametrize("name,n,weight,seed", [("fl", 30, None, 0), ("flmi", 30, 0.7, 1), ("fl2mi", 30, 0.4, 2),
                                                ("flcg", 30, 0.6, 3)])
def test_evaluate_matches_submodlib_on_random_sets(name, n, weight, seed):
    ours, ref = random_problem(name, n, weight, seed)
    rng = np.random.default_rng(seed)
    for size in (0, 1, 3, 10, n):
        chosen = rng.choice(n, size, replace=False)
        assert sel.evaluate(ours, chosen) == pytest.approx(ref.evaluate(set(chosen.tolist())), rel=1e-5, abs=1e-5)
