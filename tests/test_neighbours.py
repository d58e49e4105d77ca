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


def _reference(q, c, k, exclude_self=False):
    sims = N.quantized(q).astype(np.float64) @ N.quantized(c).astype(np.float64).T  # exact: multiples of 2^-22
    sims += 0.0  # -0.0 to 0.0, as the search reports zeros
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    indices = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # stable: ties to the lowest index
    return indices, np.take_along_axis(sims, indices, axis=1).astype(np.float32)


def _meshes():
    from jax.sharding import Mesh

    sizes = (1, 4) if len(jax.devices()) >= 4 else (1,)
    return [Mesh(np.array(jax.devices()[:m]), ("data",)) for m in sizes]


@pytest.mark.parametrize("exclude_self", [True, False])
def test_symmetric_search_of_one_pool_equals_the_reference_with_ties(exclude_self):
    base = clustered(37, d=24, seed=9)
    x = np.concatenate([base, base[:20], base[5:30]])  # exact ties across tiles, n = 82 (tiles do not divide it)
    expected = _reference(x, x, 10, exclude_self)
    for mesh in _meshes():
        for block in (82, 16, 7, 2048):
            indices, values = N.exact_top_k(x, x, 10, exclude_self=exclude_self, block=block, mesh=mesh)
            assert np.array_equal(indices, expected[0]), (mesh.size, block)
            assert np.array_equal(values, expected[1]), (mesh.size, block)


def test_symmetric_and_general_search_agree_bit_for_bit():
    x = clustered(150, d=40, seed=10)
    for exclude_self in (True, False):
        general = N.exact_top_k(x, x, 12, exclude_self=exclude_self, symmetric=False, query_tile=32, block=64)
        for mesh in _meshes():
            fast = N.exact_top_k(x, x, 12, exclude_self=exclude_self, block=64, mesh=mesh)
            assert np.array_equal(fast[0], general[0])
            assert np.array_equal(fast[1].view(np.uint32), general[1].view(np.uint32))
    with pytest.raises(DataError, match="one pool"):
        N.exact_top_k(x, x[::-1], 3, symmetric=True)


def test_signed_zero_similarities_tie_by_index_on_every_path():
    # Axis vectors +-e_i: most similarities are exactly 0 (ties everywhere), some with every product -0.0. XLA's CPU
    # dot sums them to 0.0; a backend that returns -0.0 is covered by the merge test below.
    eye = np.eye(6, dtype=np.float32)
    x = np.concatenate([eye, -eye, eye[::-1], -eye[::-1]])
    expected = _reference(x, x, 9, exclude_self=True)
    runs = [N.exact_top_k(x, x, 9, exclude_self=True, block=b, mesh=m) for m in _meshes() for b in (24, 8, 5)]
    runs.append(N.exact_top_k(x, x, 9, exclude_self=True, symmetric=False, query_tile=4, block=8))
    for indices, values in runs:
        assert np.array_equal(indices, expected[0])
        assert np.array_equal(values.view(np.uint32), expected[1].view(np.uint32))  # no -0.0 either


@pytest.mark.parametrize("transposed", [False, True])
def test_merge_ranks_negative_zero_as_zero_and_ties_by_index(transposed):
    import jax.numpy as jnp

    k, width = 4, 64  # width 64 at k 4: two-level merge (groups of 4)
    assert N._group_size(width, k) > 1
    sims = np.full((2, width), -1.0, np.float32)
    sims[:, [3, 9, 20, 40, 41]] = [-0.0, 0.0, -0.0, 0.0, 0.5]
    running = (jnp.asarray([[0.7, 0.0, -np.inf, -np.inf]] * 2, jnp.float32), jnp.asarray([[5, 6, 99, 99]] * 2))
    block = N._zeros(jnp.asarray(sims.T if transposed else sims))
    values, indices = N._merge(*running, block, 100 + jnp.arange(width), k, transposed)
    assert np.asarray(indices).tolist() == [[5, 141, 6, 103]] * 2  # zeros: running first, then lowest column
    assert not np.signbit(np.asarray(values)[:, 1:]).any()


def test_general_search_bit_identical_for_any_tiling_and_device_count():
    q, c = clustered(90, d=32, seed=11), clustered(170, d=32, seed=12)
    expected = _reference(q, c, 11)
    for mesh in _meshes():
        for tile, block in ((256, 2048), (7, 13), (16, 64)):
            indices, values = N.exact_top_k(q, c, 11, query_tile=tile, block=block, mesh=mesh)
            assert np.array_equal(indices, expected[0])
            assert np.array_equal(values, expected[1])


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


def test_symmetric_search_holds_o_n_k_state_not_n_by_n():
    from jax.sharding import Mesh

    n, d, k, tile = 4096, 16, 8, 128
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    search = N._symmetric_searcher(mesh, k, tile, n, n, True)
    n_tiles = n // tile
    pairs = jax.ShapeDtypeStruct((1, n_tiles * (n_tiles + 1) // 2, 3), np.int32)
    memory = search.lower(jax.ShapeDtypeStruct((n, d), np.float32), pairs).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    assert memory.temp_size_in_bytes < n * n * 4 // 16  # running lists (n x k) and a few tiles, not 64 MiB


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
