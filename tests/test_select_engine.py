"""Engine options: early stop, ties, bfloat16, column chunks, memory, tracing, sparse kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from delift_jax import select as sel
from delift_jax.select import gains as G


def random_kernel(n, m=None, seed=0):
    return np.random.default_rng(seed).random((n, m or n), dtype=np.float32)


@pytest.mark.parametrize("optimizer", sel.OPTIMIZERS)
def test_stop_if_non_positive_stops_once_saturated(optimizer):
    # Three distinct covering columns, everything else dominated: gains become 0 after three picks.
    kernel = np.zeros((6, 10), np.float32)
    kernel[0:2, 3] = 1.0
    kernel[2:4, 5] = 1.0
    kernel[4:6, 8] = 1.0
    kernel[:, 0] = 0.1
    objective = sel.facility_location(kernel)
    stopped = sel.maximize(objective, 8, optimizer=optimizer, stop_if_non_positive=True, epsilon=0.01)
    if optimizer != "stochastic":
        assert int(stopped.n_selected) == 3
        assert sorted(np.asarray(stopped.picks)[:3].tolist()) == [3, 5, 8]
    assert np.all(np.asarray(stopped.picks)[int(stopped.n_selected):] == -1)
    assert np.all(np.asarray(stopped.gains)[: int(stopped.n_selected)] > 0)
    full = sel.maximize(objective, 8, optimizer=optimizer)
    assert int(full.n_selected) == 8 and len(set(np.asarray(full.picks).tolist())) == 8


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_ties_go_to_the_lowest_index(optimizer):
    kernel = np.ones((4, 6), np.float32)  # every candidate covers everything: all first gains tie
    selection = sel.maximize(sel.facility_location(kernel), 3, optimizer=optimizer)
    assert np.asarray(selection.picks).tolist() == [0, 1, 2]
    assert np.asarray(selection.gains).tolist() == [4.0, 0.0, 0.0]


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_naive_and_lazy_agree_and_chunks_do_not_matter(optimizer):
    kernel = random_kernel(150, 170, seed=1)
    objective = sel.fl_conditional_gain(kernel, random_kernel(150, 4, seed=2), nu=0.5)
    reference = sel.maximize(objective, 50, optimizer="naive", chunk=10_000)
    for chunk, batch, rounds in ((7, 1, 0), (64, 5, 1), (256, 16, 8), (1000, 200, 2)):
        got = sel.maximize(objective, 50, optimizer=optimizer, chunk=chunk, batch=batch, rounds=rounds)
        assert np.array_equal(got.picks, reference.picks), (chunk, batch, rounds)
        np.testing.assert_allclose(got.gains, reference.gains, rtol=1e-5, atol=1e-5)


def test_bfloat16_kernel_selects_like_its_float32_copy():
    kernel = jnp.asarray(random_kernel(120, seed=3)).astype(jnp.bfloat16)
    low = sel.facility_location(kernel)
    assert low.kernel.dtype == jnp.bfloat16  # kept in bfloat16: half the memory traffic
    high = sel.facility_location(kernel.astype(jnp.float32))
    for optimizer in ("naive", "lazy"):
        a = sel.maximize(low, 40, optimizer=optimizer)
        b = sel.maximize(high, 40, optimizer=optimizer)
        assert np.array_equal(a.picks, b.picks)
        np.testing.assert_allclose(a.gains, b.gains, rtol=1e-5, atol=1e-4)


def test_full_pass_temporaries_stay_a_chunk_wide():
    n = 512
    objective = sel.facility_location(random_kernel(n, seed=4))
    coverage = jnp.zeros((n,), jnp.float32)
    compiled = jax.jit(lambda o, c: G.all_gains(o, c, chunk=64)).lower(objective, coverage).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("backend reports no memory analysis")
    assert analysis.temp_size_in_bytes <= 4 * 64 * n * 2  # at most a (chunk, n) block, far below n·n·4


def test_selector_compiles_once_per_shape():
    objective = sel.facility_location(random_kernel(60, seed=5))
    select = sel.build_selector(objective, 10, optimizer="lazy")
    assert sel.build_selector(objective, 10, optimizer="lazy") is select  # selectors are cached
    key = jax.random.key(0)
    select(objective, key)
    before = select._cache_size()
    select(sel.facility_location(random_kernel(60, seed=6)), key)
    assert select._cache_size() == before == 1


@pytest.mark.parametrize("name", ["fl", "flmi", "flcg"])
@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_sparse_kernel_selects_like_its_dense_equivalent(name, optimizer):
    rng = np.random.default_rng(8)
    n, k_nn = 90, 12
    sparse = sel.sparse_from_dense(rng.random((n, n), dtype=np.float32), k_nn)
    dense = np.asarray(sel.sparse_to_dense(sparse))
    other = rng.random((n, 3), dtype=np.float32)
    kwargs = dict(query_kernel=other, private_kernel=other, eta=0.6, nu=0.4)
    sparse_objective = sel.make_objective(name, sparse, **kwargs)
    dense_objective = sel.make_objective(name, dense, **kwargs)
    a = sel.maximize(sparse_objective, 30, optimizer=optimizer)
    b = sel.maximize(dense_objective, 30, optimizer="naive")
    np.testing.assert_allclose(np.cumsum(a.gains), np.cumsum(b.gains), rtol=1e-5, atol=1e-5)
    settled = int(np.argmax(np.asarray(b.gains) <= 1e-6)) if np.any(np.asarray(b.gains) <= 1e-6) else 30
    assert np.array_equal(np.asarray(a.picks)[:settled], np.asarray(b.picks)[:settled])
    picks = np.asarray(a.picks)
    for size in (0, 1, 7, 30):
        assert sel.evaluate(sparse_objective, picks[:size]) == pytest.approx(
            sel.evaluate(dense_objective, picks[:size]), rel=1e-5, abs=1e-5)


def test_sparse_stochastic_and_full_width_sparse():
    rng = np.random.default_rng(9)
    kernel = rng.random((50, 50), dtype=np.float32)
    full = sel.sparse_from_dense(kernel, 50)  # every entry listed: identical to dense
    a = sel.maximize(sel.facility_location(full), 15, optimizer="lazy")
    b = sel.maximize(sel.facility_location(kernel), 15, optimizer="lazy")
    assert np.array_equal(a.picks, b.picks)
    s = sel.maximize(sel.facility_location(sel.sparse_from_dense(kernel, 5)), 15, optimizer="stochastic", seed=1)
    assert len(set(np.asarray(s.picks).tolist())) == 15
