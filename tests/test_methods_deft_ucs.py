"""DEFT-UCS: dataset indices (not positions inside a cluster), the easy/hard rule, quotas, seeded k-means."""

import numpy as np
import pytest

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.methods import select
from delift_jax.methods.deft_ucs import cluster_quotas
from delift_jax.methods.kmeans import kmeans

# Two clusters whose centroids are exactly (10, 0) and (0, 10); distances to the centroid in the comments.
CLUSTER_A = [(10.1, 0), (9.9, 0), (11, 0), (9, 0), (10, 3), (10, -3)]  # 0.1 0.1 1 1 3 3
CLUSTER_B = [(0.2, 10), (-0.2, 10), (0, 12), (0, 8)]  # 0.2 0.2 2 2
POINTS = np.array(CLUSTER_A + CLUSTER_B, dtype=np.float64)


def _run(embeddings, budget, **options):
    pool = [Example(f"p{i}", f" r{i}") for i in range(len(embeddings))]
    return select("deft_ucs", pool=pool, budget=budget, seed=0, embeddings=embeddings, n_clusters=2, **options)


@pytest.mark.parametrize("alpha, expected_a, expected_b", [
    (0.5, [0, 4], [6, 8]),   # one nearest (easy) then one farthest (hard) per cluster; ties to the lower index
    (0.0, [4, 5], [8, 9]),   # hard sampling: the two farthest
    (1.0, [0, 1], [6, 7]),   # easy sampling: the two nearest
])
def test_easy_hard_rule_on_two_clusters(alpha, expected_a, expected_b):
    sel = _run(POINTS, 4, easy_fraction=alpha)
    assert sel.info["cluster_quotas"] in ([2, 2],)
    assert sorted(sel.indices.tolist()) == sorted(expected_a + expected_b)
    distances = np.linalg.norm(POINTS - np.where(np.arange(10)[:, None] < 6, [10, 0], [0, 10]), axis=1)
    np.testing.assert_allclose(sel.scores, distances[sel.indices])


def test_returns_dataset_indices_not_cluster_positions():
    perm = np.random.default_rng(1).permutation(len(POINTS))  # interleave the clusters in dataset order
    shuffled = POINTS[perm]
    sel = _run(shuffled, 4, easy_fraction=0.0)
    chosen_points = {tuple(p) for p in shuffled[sel.indices]}
    assert chosen_points == {(10, 3), (10, -3), (0, 12), (0, 8)}  # the farthest of each cluster
    # cluster-local positions of those points would be 4, 5, 2, 3: the returned ones are the dataset rows
    where = {tuple(p): i for i, p in enumerate(shuffled)}
    assert sorted(sel.indices.tolist()) == sorted(where[p] for p in chosen_points)
    assert sorted(sel.indices.tolist()) != [2, 3, 4, 5]


def test_budget_is_met_exactly_and_quotas_water_fill():
    np.testing.assert_array_equal(cluster_quotas(np.array([1, 5, 5]), 7), [1, 3, 3])
    np.testing.assert_array_equal(cluster_quotas(np.array([4, 4]), 3), [2, 1])
    np.testing.assert_array_equal(cluster_quotas(np.array([2, 9, 3]), 14), [2, 9, 3])
    rng = np.random.default_rng(0)
    e = rng.normal(size=(37, 5))
    for budget in (1, 5, 13, 37):
        sel = select(
            "deft_ucs", pool=[Example(str(i), "") for i in range(37)], budget=budget, seed=0, embeddings=e,
            n_clusters=4, easy_fraction=0.3)
        assert len(sel.indices) == budget and len(set(sel.indices.tolist())) == budget
        assert sel.indices.min() >= 0 and sel.indices.max() < 37
        assert sum(sel.info["cluster_quotas"]) == budget


def test_seeded():
    e = np.random.default_rng(0).uniform(size=(60, 3))
    pool = [Example(str(i), "") for i in range(60)]
    run = lambda seed: select("deft_ucs", pool=pool, budget=12, seed=seed, embeddings=e, n_clusters=6, n_init=1,
                              easy_fraction=0.5).indices.tolist()
    assert run(0) == run(0)
    assert len({tuple(run(s)) for s in range(5)}) > 1  # k-means++ starts depend on the seed


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, size=(20, 2)) for c in ([0, 0], [5, 5], [0, 5])])
    labels, centroids = kmeans(x, 3, seed=0)
    for block in range(3):
        assert len(set(labels[block * 20:(block + 1) * 20].tolist())) == 1
    assert len(set(labels.tolist())) == 3
    with pytest.raises(DataError):
        kmeans(x, 61)


def test_bad_options():
    with pytest.raises(DataError, match="easy_fraction"):
        _run(POINTS, 4, easy_fraction=1.5)
    with pytest.raises(DataError, match="embeddings"):
        select("deft_ucs", pool=[Example(str(i), "") for i in range(10)], budget=4, embeddings=POINTS[:5])


def test_random_base_set_then_ucs_on_the_rest():
    e = np.random.default_rng(0).normal(size=(40, 4))
    pool = [Example(str(i), "") for i in range(40)]
    sel = select("deft_ucs", pool=pool, budget=10, seed=3, embeddings=e, n_clusters=3, base_fraction=0.4)
    base = np.random.default_rng([3, 1]).permutation(40)[:4]
    np.testing.assert_array_equal(sel.indices[:4], base)                     # D_base: the seeded random draw
    assert len(set(sel.indices.tolist())) == 10 and sel.info["n_base"] == 4   # UCS adds 6 others, none repeated
    assert sum(sel.info["cluster_quotas"]) == 6
    # the default is UCS alone
    plain = select("deft_ucs", pool=pool, budget=10, seed=3, embeddings=e, n_clusters=3)
    assert plain.info["n_base"] == 0 and sum(plain.info["cluster_quotas"]) == 10
    with pytest.raises(DataError, match="base_fraction"):
        select("deft_ucs", pool=pool, budget=10, embeddings=e, base_fraction=1.5)
