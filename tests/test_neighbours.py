"""Blocked exact top-k by cosine: right neighbours, lowest-index ties, bit-identical for any tiling and device count,
no n × n temporary; approximate (faiss) search and its recall."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from delift_jax.errors import DataError
from delift_jax.kernel import neighbours as N


def clustered(n, d=24, clusters=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_exact_top_k_equals_a_float64_argsort_of_the_quantized_similarities():
    q, c = clustered(70, seed=1), clustered(130, seed=2)
    indices, values = N.exact_top_k(q, c, 9, query_tile=8, block=32)
    sims = N.quantized(q).astype(np.float64) @ N.quantized(c).astype(np.float64).T  # exact: multiples of 2^-22
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :9]  # stable: ties to the lowest index
    assert np.array_equal(indices, expected)
    assert np.array_equal(values, np.take_along_axis(sims, expected, axis=1).astype(np.float32))


def test_quantized_cosine_stays_within_its_documented_bound():
    q, c = clustered(50, d=384, seed=7), clustered(60, d=384, seed=8)
    exact = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float64)
    exact = exact @ (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float64).T
    quantized = N.quantized(q).astype(np.float64) @ N.quantized(c).astype(np.float64).T
    step = np.sqrt(384) * 2.0 ** -12
    assert np.max(np.abs(quantized - exact)) <= 2 * step + step ** 2


def test_ties_go_to_the_lowest_index():
    base = clustered(20, seed=3)
    c = np.concatenate([base, base, base])  # every candidate three times: exact ties at j, j + 20, j + 40
    indices, _ = N.exact_top_k(base, c, 3, query_tile=4, block=16)
    assert np.array_equal(indices, np.repeat(np.arange(20)[:, None], 3, axis=1) + np.array([0, 20, 40]))


def test_bit_identical_for_any_tiling_and_device_count():
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (tests/conftest.py simulates 4 CPU devices)")
    from jax.sharding import Mesh

    x = clustered(203, d=40, seed=4)
    one, four = (Mesh(np.array(jax.devices()[:m]), ("data",)) for m in (1, 4))
    runs = [N.exact_top_k(x, x, 12, exclude_self=True, query_tile=t, block=b, mesh=mesh)
            for mesh, t, b in [(one, 256, 2048), (one, 7, 13), (four, 16, 64), (four, 3, 203), (four, 64, 5)]]
    for indices, values in runs[1:]:
        assert np.array_equal(indices, runs[0][0])
        assert np.array_equal(values.view(np.uint32), runs[0][1].view(np.uint32))


def test_exclude_self_and_k_clamped_to_the_pool():
    x = clustered(10, seed=5)
    indices, _ = N.exact_top_k(x, x, 50, exclude_self=True)
    assert indices.shape == (10, 9)
    assert not np.any(indices == np.arange(10)[:, None])
    assert sorted(indices[0].tolist()) == list(range(1, 10))


def test_no_n_by_n_temporary():
    from jax.sharding import Mesh

    n, d = 2048, 16
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    search = N._searcher(mesh, 8, 32, 128, n, False)
    x = jax.ShapeDtypeStruct((n, d), np.float32)
    ids = jax.ShapeDtypeStruct((n,), np.int32)
    memory = search.lower(x, ids, x).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    assert memory.temp_size_in_bytes < n * n * 4 // 16  # a 32 x 128 tile plus running top-k, not 16 MiB


@pytest.mark.parametrize("bad, message", [
    (dict(queries=np.zeros((3, 4)), candidates=np.zeros((5, 3))), "differ in width"),
    (dict(queries=np.full((3, 4), np.nan), candidates=np.zeros((5, 4))), "NaN"),
    (dict(queries=np.zeros((0, 4)), candidates=np.zeros((5, 4))), "non-empty"),
    (dict(queries=np.zeros((3, 4)), candidates=np.zeros((5, 4)), exclude_self=True), "one pool"),
    (dict(queries=np.zeros((3, 4)), candidates=np.zeros((5, 4)), k=0), ">= 1"),
])
def test_bad_input_is_one_line_data_error(bad, message):
    kwargs = dict(k=2) | bad
    with pytest.raises(DataError, match=message):
        N.exact_top_k(**kwargs)


def test_approximate_search_recall_against_exact():
    pytest.importorskip("faiss")
    x = clustered(600, d=32, clusters=12, seed=6)
    exact, _ = N.exact_top_k(x, x, 16, exclude_self=True)
    approximate, values = N.approximate_top_k(x, x, 16, exclude_self=True)
    assert approximate.shape == (600, 16)
    assert not np.any(approximate == np.arange(600)[:, None])
    assert N.recall_at_k(approximate, exact) >= 0.95
    assert N.recall_at_k(exact, exact) == 1.0
    assert np.all(np.diff(values, axis=1) <= 1e-6)  # best first


def test_top_k_pairs_uses_the_blocked_search_and_encoder_embeddings_are_unit_rows():
    from delift_jax.data.records import Example
    from delift_jax.kernel.embeddings import encoder_embeddings, top_k_pairs

    examples = [Example("What is the capital of France?", " Paris."), Example("Capital city of France?", " Paris"),
                Example("Add 2 and 3.", " 5"), Example("What is 2 + 3?", " 5.")]
    emb = encoder_embeddings(examples)
    assert emb.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    pairs = top_k_pairs(emb, emb, 1, exclude_self=True)
    assert pairs[:, 0].tolist() == [1, 0, 3, 2]
    assert np.array_equal(pairs, N.exact_top_k(emb, emb, 1, exclude_self=True)[0])


def test_sparse_kernel_with_encoder_neighbours(tiny_llama):
    import dataclasses

    from delift_jax.data.records import Example
    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.kernel.embeddings import encoder_embeddings, top_k_pairs

    _, _, model, tok = tiny_llama
    pool = [Example(f"What is {i} plus {i}?", f" {2 * i}") for i in range(5)] + [
        Example("Name a color:", " blue"), Example("Name a colour:", " red")]
    config = KernelConfig(max_length=96, batch_size=4, top_k=2, neighbours="encoder")
    result = utility_kernel(model, tok, pool, None, config)
    emb = encoder_embeddings(pool)
    assert np.array_equal(result.indices, top_k_pairs(emb, emb, 2))
    with pytest.raises(DataError, match="neighbours"):
        KernelConfig(top_k=2, neighbours="bm25")
    assert KernelConfig().compute_fingerprint() == KernelConfig(neighbours="encoder").compute_fingerprint()
    assert config.compute_fingerprint() != dataclasses.replace(config, neighbours="model").compute_fingerprint()
