"""Oracle tests: naive and lazy greedy against submodlib's C++ greedy on random dense kernels, in [0, 1] and with
negative entries (raw utilities); flmi_paper (no submodlib function) against a plain numpy formula.

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
# Kernels with negative entries (raw utilities): every objective's maxima start at 0, as submodlib's do.
NEGATIVE_CASES = [
    ("fl", 30, 10, None, 30),
    ("fl", 90, 30, None, 31),
    ("flmi", 40, 12, 1.0, 32),
    ("flmi", 90, 30, 0.5, 33),
    ("fl2mi", 40, 12, 1.0, 34),
    ("fl2mi", 90, 27, 2.0, 35),
    ("flcg", 40, 12, 1.0, 36),
    ("flcg", 90, 30, 0.5, 37),
    ("flcg", 60, 20, 1.5, 38),
]


def random_problem(name, n, weight, seed, shift=0.0):
    """Random kernels in [-shift, 1 - shift]; a few targets/existing examples, as in DELIFT's task-specific and
    continual modes. shift > 0 gives negative entries (rows of P or Q whose maximum is below 0 among them)."""
    rng = np.random.default_rng(seed)
    kernel = rng.random((n, n), dtype=np.float32) - np.float32(shift)
    n_other = int(rng.integers(2, 9))
    other = rng.random((n, n_other), dtype=np.float32) - np.float32(shift)
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


@pytest.mark.parametrize("name,n,k,weight,seed,shift",
                         [c + (0.0,) for c in CASES] + [c + (0.6,) for c in NEGATIVE_CASES])
def test_greedy_matches_submodlib(name, n, k, weight, seed, shift):
    ours, ref = random_problem(name, n, weight, seed, shift)
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


@pytest.mark.parametrize("shift", [0.0, 0.6, 0.9])
@pytest.mark.parametrize("name,n,weight,seed", [("fl", 30, None, 0), ("flmi", 30, 0.7, 1), ("fl2mi", 30, 0.4, 2),
                                                ("flcg", 30, 0.6, 3)])
def test_evaluate_matches_submodlib_on_random_sets(name, n, weight, seed, shift):
    ours, ref = random_problem(name, n, weight, seed, shift)
    rng = np.random.default_rng(seed)
    for size in (0, 1, 3, 10, n):
        chosen = rng.choice(n, size, replace=False)
        assert sel.evaluate(ours, chosen) == pytest.approx(ref.evaluate(set(chosen.tolist())), rel=1e-5, abs=1e-5)


def paper_flmi_value(kernel, query, eta, chosen):
    """The paper's FLMI written out in float64: Σ_i max(0, max_{j∈A} K[i, j]) + η Σ_{j∈A} max(0, max_q Q[j, q])."""
    kernel, query = np.asarray(kernel, np.float64), np.asarray(query, np.float64)
    chosen = list(chosen)
    if not chosen:
        return 0.0
    cover = np.maximum(kernel[:, chosen].max(axis=1), 0.0).sum()
    return float(cover + eta * np.maximum(query[chosen].max(axis=1), 0.0).sum())


def paper_flmi_greedy(kernel, query, eta, k):
    """Greedy on paper_flmi_value by brute force (every candidate's value re-evaluated at every step)."""
    picks = []
    for _ in range(k):
        base = paper_flmi_value(kernel, query, eta, picks)
        gains = np.array([-np.inf if j in picks else paper_flmi_value(kernel, query, eta, picks + [j]) - base
                          for j in range(kernel.shape[1])])
        picks.append(int(np.argmax(gains)))
    return picks


@pytest.mark.parametrize("n,k,eta,seed,shift", [(20, 6, 1.0, 40, 0.0), (40, 15, 0.5, 41, 0.0), (30, 10, 3.0, 42, 0.6),
                                                (25, 24, 0.0, 43, 0.3), (35, 8, 10.0, 44, 0.6)])
def test_flmi_paper_matches_plain_formula(n, k, eta, seed, shift):
    rng = np.random.default_rng(seed)
    kernel = rng.random((n, n), dtype=np.float32) - np.float32(shift)
    query = rng.random((n, int(rng.integers(2, 7))), dtype=np.float32) - np.float32(shift)
    ours = sel.make_objective("flmi_paper", kernel, query_kernel=query, eta=eta)
    expected = paper_flmi_greedy(kernel, query, eta, k)
    expected_prefix = [paper_flmi_value(kernel, query, eta, expected[:t + 1]) for t in range(k)]
    for optimizer in ("naive", "lazy"):
        selection = sel.maximize(ours, k, optimizer=optimizer)
        picks = np.asarray(selection.picks)[:k]
        np.testing.assert_allclose(sel.prefix_values(ours, picks), expected_prefix, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.cumsum(np.asarray(selection.gains, np.float64)), expected_prefix,
                                   rtol=1e-5, atol=1e-4)
    for size in (0, 1, 4, n):
        chosen = rng.choice(n, size, replace=False)
        assert sel.evaluate(ours, chosen) == pytest.approx(paper_flmi_value(kernel, query, eta, chosen), rel=1e-5,
                                                           abs=1e-5)


def test_flmi_paper_is_fl_plus_modular_relevance():
    """η = 0 is facility location; a large η ranks the first picks by their best target utility."""
    rng = np.random.default_rng(5)
    kernel = rng.random((30, 30), dtype=np.float32)
    query = rng.random((30, 4), dtype=np.float32)
    fl = sel.maximize(sel.facility_location(kernel), 8, optimizer="naive")
    zero = sel.maximize(sel.fl_paper_mutual_information(kernel, query, eta=0.0), 8, optimizer="naive")
    assert np.asarray(zero.picks).tolist() == np.asarray(fl.picks).tolist()
    heavy = sel.maximize(sel.fl_paper_mutual_information(kernel, query, eta=1e4), 3, optimizer="naive")
    assert np.asarray(heavy.picks).tolist() == np.argsort(-query.max(axis=1), kind="stable")[:3].tolist()
