"""Row sharding over a Mesh: the same picks on 1 and 4 (simulated CPU) devices, dense and sparse, every optimizer."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from delift_jax import select as sel


@pytest.fixture(scope="module")
def meshes():
    devices = jax.devices()
    if len(devices) < 4:
        pytest.skip("needs 4 devices (tests/conftest.py simulates 4 CPU devices)")
    return sel.row_mesh(devices[:1]), sel.row_mesh(devices[:4])


@pytest.mark.parametrize("name", ["fl", "flmi", "fl2mi", "flcg"])
@pytest.mark.parametrize("optimizer", sel.OPTIMIZERS)
def test_same_picks_on_one_and_four_devices(meshes, name, optimizer):
    rng = np.random.default_rng(len(name))
    n_rows, n_candidates = 103, 90  # 103 rows: not a multiple of 4, so padding rows are exercised
    kernel = rng.random((n_rows, n_candidates), dtype=np.float32)
    other = rng.random((n_rows if name != "fl2mi" else n_candidates, 5), dtype=np.float32)
    objective = sel.make_objective(name, kernel, query_kernel=other, private_kernel=other, eta=0.7, nu=0.5)
    single = sel.maximize(objective, 25, optimizer=optimizer, seed=3)
    one, four = (sel.maximize(objective, 25, optimizer=optimizer, seed=3, mesh=mesh) for mesh in meshes)
    assert np.array_equal(one.picks, single.picks)
    assert np.array_equal(four.picks, single.picks)
    np.testing.assert_allclose(four.gains, single.gains, rtol=1e-5, atol=1e-5)


def test_sparse_kernel_sharded(meshes):
    rng = np.random.default_rng(5)
    sparse = sel.sparse_from_dense(rng.random((66, 70), dtype=np.float32), 9)
    objective = sel.facility_location(sparse)
    single = sel.maximize(objective, 20, optimizer="lazy")
    four = sel.maximize(objective, 20, optimizer="lazy", mesh=meshes[1])
    assert np.array_equal(four.picks, single.picks)


def test_kernel_really_is_split_by_rows(meshes):
    objective = sel.facility_location(np.ones((40, 30), np.float32))
    placed = sel.shard_rows(objective, meshes[1])
    shards = placed.kernel.columns.addressable_shards
    assert len(shards) == 4 and all(shard.data.shape == (30, 10) for shard in shards)  # Kᵀ: rows on axis 1
