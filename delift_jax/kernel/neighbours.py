"""Nearest neighbours by cosine similarity for the sparse top-k kernel: exact on the devices, or approximate (faiss).

Exact search (``exact_top_k``) never forms the n_q × n_c similarity matrix. Two paths, same result:

* one pool against itself (the sparse kernel's square case; ``symmetric``): the rows are cut into tiles of
  ``block``; each tile pair (a, b), a <= b, is multiplied once and its block serves rows a (candidates b) and,
  read transposed, rows b (candidates a): half the FLOPs. The pairs are split over the devices of a Mesh (axis
  "data"); each device keeps a running top-k of every row (n · k), and the devices' lists are merged at the end.
* queries against other candidates: query rows are split over the devices; every device walks its rows in tiles
  of ``query_tile`` and streams the (replicated) candidates in blocks of ``block``.

Either way each block is merged into a running top-k, running ← top_k(concat(running, block)), with lax.top_k,
jitted, inside lax loops — in two levels (``_merge``): the k column groups with the largest maxima hold the block's
top k, so only those are sorted (about 5× less top-k work than the whole block; profiled at d = 384, block 2048,
contended CPU: a plain top_k of the block cost 0.8× the block's matmul, the two-level merge 0.1×). Memory per
device: the candidates (n_c · d), the running lists (symmetric: n · 2k; general: n_q / D · 2k) and a few
block × block tiles — never n × n. Ties go to the lowest candidate index: lax.top_k keeps the lower position among
equal values, the running entries (earlier, lower-index blocks, already ordered) precede the block, whose
candidates ascend (the symmetric pair order keeps every row's blocks ascending, see ``_tile_pairs``), and the
devices' lists are merged by a two-key sort (value desc, index asc). Zeros are made +0.0 first (lax.top_k ranks
-0.0 below 0.0).

Determinism: a matrix product's rounding depends on how the library tiles it (block size, rows per device), so
plain float32 similarities differ in the last bits between tilings and near-ties can swap. The normalized rows are
therefore rounded to the grid 2^-11 first (``quantized``). Every product of two grid values is a multiple of
2^-22, and by Cauchy–Schwarz every partial sum of a dot product of (near) unit vectors stays below 2^24 such units,
so float32 represents every partial sum exactly: the similarity is the same bits in any summation order, and the
neighbours are identical for any block size, query tile, device count and path (tested bit-for-bit). The price is a
cosine error of at most 2·sqrt(d)·2^-12 (+ its square), 0.0096 at d = 384 in the worst case, about 2^-12 typically.

Approximate search (``approximate_top_k``) uses faiss-cpu (optional extra ``delift-jax[ann]``): HNSW over inner
products of the normalized vectors. Exact search costs 2·n_q·n_c·d FLOPs (8e14 at n = 1M, d = 384: seconds on
an accelerator, hours on a few CPU cores); HNSW answers in roughly O(n log n). Its recall@k against exact search
is measured by ``recall_at_k`` (scripts/bench_scale.py reports it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from delift_jax.errors import DataError

AXIS = "data"
DEFAULT_QUERY_TILE = 256
DEFAULT_BLOCK = 2048
SEARCHES = ("exact", "approximate")
GRID = 2048.0  # 2^11: products are multiples of 2^-22, exact in float32 (module docstring)


def _normalized(embeddings, what: str) -> np.ndarray:
    """float32 rows scaled to unit length (a zero row stays 0); bad shapes or values are one-line DataErrors."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise DataError(f"{what} embeddings must be a non-empty 2-D array (rows, width); got shape {x.shape}")
    if not all(np.isfinite(x[start:start + (1 << 15)]).all() for start in range(0, x.shape[0], 1 << 15)):
        raise DataError(f"{what} embeddings contain NaN or infinite values; recompute them")
    return quantized(x)


def quantized(embeddings) -> np.ndarray:
    """Rows scaled to unit length and rounded to the grid 2^-11 (float32; see the module docstring for why)."""
    x = np.asarray(embeddings)
    out = np.empty(x.shape, np.float32)
    step = 1 << 15  # float64 in row slices: no n x d float64 temporaries at n = 1M
    for start in range(0, x.shape[0], step):
        rows = x[start:start + step].astype(np.float64)
        rows /= np.maximum(np.sqrt(np.sum(rows * rows, axis=1, keepdims=True)), 1e-12)
        out[start:start + step] = np.round(rows * GRID) / GRID
    return out


def _checked(queries, candidates, k: int, exclude_self: bool):
    c = _normalized(candidates, "candidate")
    q = c if queries is candidates else _normalized(queries, "query")  # one pool: one copy (1.5 GB at 1M x 384)
    if q.shape[1] != c.shape[1]:
        raise DataError(f"query and candidate embeddings differ in width ({q.shape[1]} vs {c.shape[1]})")
    if exclude_self and q.shape[0] != c.shape[0]:
        raise DataError(f"exclude_self needs one pool as queries and candidates; got {q.shape[0]} and {c.shape[0]}")
    if int(k) < 1:
        raise DataError(f"top-k must be >= 1, got {k}")
    return q, c, min(int(k), c.shape[0] - int(exclude_self))


def _group_size(width: int, k: int) -> int:
    """Columns per group for the two-level merge (a power of two near sqrt(width / k) dividing width; 1: none)."""
    group = 1
    while group * 2 <= (width / k) ** 0.5 and width % (group * 2) == 0:
        group *= 2
    return group if group > 1 and width // group >= k else 1


def _merge(values, indices, sims, columns, k: int, transposed: bool = False):
    """The running top-k (values, indices [r, k]) merged with a block of similarities sims [r, c] ([c, r] when
    ``transposed``: the block of the other orientation, read in place rather than transposed).

    columns [c]: the block's candidate ids, ascending and above every id in the running lists, so that position
    order is index order and lax.top_k's tie rule (lower position first) is the lowest-index rule. sims holds no
    -0.0 (lax.top_k ranks -0.0 below 0.0; ``_masked`` and ``_zeros`` turn them into 0.0).

    Two levels, exact: the block's columns form groups of g; the k groups with the largest maxima (ties: lowest
    group) hold the block's top k — any element outside them is beaten by the k group maxima, each larger, or equal
    with a lower index. Those k groups are gathered in ascending column order and merged with the running entries,
    so lax.top_k sorts r·(c/g + k·g + k) values instead of r·(c + k) (g ≈ sqrt(c / k): about 5× fewer).
    """
    c = sims.shape[0] if transposed else sims.shape[1]
    r = values.shape[0]
    group = _group_size(c, k)
    if group == 1:
        sims = sims.T if transposed else sims
        columns = jnp.broadcast_to(columns, sims.shape)
    elif transposed:  # sims [c, r]: groups of g candidate rows
        grouped = sims.reshape(c // group, group, r)
        _, best = lax.top_k(jnp.max(grouped, axis=1).T, k)
        best = jnp.sort(best, axis=1)  # ascending groups: ascending columns
        sims = grouped[best[:, :, None], jnp.arange(group)[None, None, :], jnp.arange(r)[:, None, None]]
        sims = sims.reshape(r, k * group)
        columns = columns.reshape(c // group, group)[best].reshape(r, k * group)
    else:
        grouped = sims.reshape(r, c // group, group)
        _, best = lax.top_k(jnp.max(grouped, axis=2), k)
        best = jnp.sort(best, axis=1)
        sims = jnp.take_along_axis(grouped, best[:, :, None], axis=1).reshape(r, k * group)
        columns = columns.reshape(c // group, group)[best].reshape(r, k * group)
    values, position = lax.top_k(jnp.concatenate([values, sims], axis=1), k)
    return values, jnp.take_along_axis(jnp.concatenate([indices, columns], axis=1), position, axis=1)


def _zeros(sims):
    """-0.0 to 0.0 (a dot product of grid vectors can be -0.0; lax.top_k would rank it below 0.0)."""
    return jnp.where(sims == 0, 0.0, sims)


def _masked(sims, rows, columns, n_candidates: int, exclude_self: bool):
    """Padding columns (and a row's own column) to -inf; -0.0 to +0.0 so every ordering agrees on zeros."""
    out = columns[None, :] >= n_candidates
    if exclude_self:
        out = out | (columns[None, :] == rows[:, None])
    return jnp.where(out, -jnp.inf, _zeros(sims))


def _tile_top_k(tile_qd, ids_q, candidates_cd, k: int, block: int, n_candidates: int, exclude_self: bool):
    """Running top-k of one query tile against all candidate blocks: (values [q, k], indices [q, k])."""
    n_blocks = candidates_cd.shape[0] // block

    def merge(b, running):
        block_cd = lax.dynamic_slice_in_dim(candidates_cd, b * block, block)
        sims = jnp.dot(tile_qd, block_cd.T, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
        column = b * block + jnp.arange(block, dtype=jnp.int32)
        return _merge(*running, _masked(sims, ids_q, column, n_candidates, exclude_self), column, k)

    start = (jnp.full((tile_qd.shape[0], k), -jnp.inf, jnp.float32),
             jnp.full((tile_qd.shape[0], k), n_candidates, jnp.int32))
    # Under shard_map the running top-k differs per device ("varying"), like the query rows it belongs to.
    start = jax.tree.map(lambda x: lax.pcast(x, AXIS, to="varying"), start)
    return lax.fori_loop(0, n_blocks, merge, start)


@functools.lru_cache(maxsize=16)
def _searcher(mesh: Mesh, k: int, query_tile: int, block: int, n_candidates: int, exclude_self: bool):
    """Queries against other candidates: query rows split over the devices, candidates streamed in blocks."""
    def per_device(queries_qd, ids_q, candidates_cd):
        tiles = queries_qd.reshape(-1, query_tile, queries_qd.shape[1])
        tile_ids = ids_q.reshape(-1, query_tile)
        values, indices = lax.map(
            lambda t: _tile_top_k(t[0], t[1], candidates_cd, k, block, n_candidates, exclude_self),
            (tiles, tile_ids))
        return values.reshape(-1, k), indices.reshape(-1, k)

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()), out_specs=(P(AXIS), P(AXIS)))
    return jax.jit(sharded)


def _tile_pairs(n_tiles: int, n_devices: int) -> np.ndarray:
    """The tile pairs (a, b), a <= b, in the order a, then b ascending, cut into n_devices equal runs.

    int32[n_devices, per_device, 3]: (a, b, live); padding entries (0, 0, 0) change nothing. In this order every
    row tile receives its candidate tiles in ascending order (tiles a < r while the outer loop is at a, then r, r+1,
    ... while it is at r), on every device: the condition ``_merge`` needs for the lowest-index tie rule.
    """
    a, b = np.triu_indices(n_tiles)
    per_device = -(-len(a) // n_devices)
    pairs = np.zeros((n_devices * per_device, 3), np.int32)
    pairs[:len(a)] = np.stack([a, b, np.ones_like(a)], axis=1)
    return pairs.reshape(n_devices, per_device, 3)


@functools.lru_cache(maxsize=16)
def _symmetric_searcher(mesh: Mesh, k: int, tile: int, n: int, n_rows: int, exclude_self: bool):
    """One pool against itself: each tile pair (a, b), a <= b, is multiplied once and serves rows a (candidates b)
    and rows b (candidates a, the transposed tile): half the FLOPs of the general search.

    The pairs are split over the devices; each keeps a running top-k for all n_rows rows (O(n·k)), and the
    devices' lists are then exchanged (all_to_all: every device gets its share of rows from all) and merged by
    (value desc, index asc) with a two-key sort. The exact top-k under that order is unique, so the result is the
    same bits for any device count and tile size.
    """
    n_devices = mesh.size

    def per_device(x_nd, pairs):
        pairs = pairs.reshape(-1, 3)
        iota = jnp.arange(tile, dtype=jnp.int32)
        start = (jnp.full((n_rows, k), -jnp.inf, jnp.float32), jnp.full((n_rows, k), n, jnp.int32))
        start = jax.tree.map(lambda x: lax.pcast(x, AXIS, to="varying"), start)

        def update(state, first, sims, columns, live, transposed=False):
            values, indices = state
            old = lax.dynamic_slice_in_dim(values, first, tile), lax.dynamic_slice_in_dim(indices, first, tile)
            merged = _merge(*old, sims, columns, k, transposed)
            merged = [jnp.where(live, new, was) for new, was in zip(merged, old)]  # a dead update changes nothing
            return (lax.dynamic_update_slice_in_dim(values, merged[0], first, 0),
                    lax.dynamic_update_slice_in_dim(indices, merged[1], first, 0))

        def step(p, state):
            a, b, live = pairs[p, 0] * tile, pairs[p, 1] * tile, pairs[p, 2] > 0
            x_a, x_b = lax.dynamic_slice_in_dim(x_nd, a, tile), lax.dynamic_slice_in_dim(x_nd, b, tile)
            sims = jnp.dot(x_a, x_b.T, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
            rows_a, rows_b = a + iota, b + iota
            state = update(state, a, _masked(sims, rows_a, rows_b, n, exclude_self), rows_b, live)
            # Rows b against candidates a, unless a == b (the same cells again). Tile a < b holds no padding
            # and no row's own column: nothing to mask.
            return update(state, b, _zeros(sims), rows_a, live & (a != b), transposed=True)

        values, indices = lax.fori_loop(0, pairs.shape[0], step, start)
        if n_devices > 1:
            values = lax.all_to_all(values, AXIS, 0, 1, tiled=True)  # [n_rows / D, D·k]: my rows, all devices
            indices = lax.all_to_all(indices, AXIS, 0, 1, tiled=True)
            negated, indices = lax.sort((-values, indices), dimension=1, num_keys=2)
            values, indices = -negated[:, :k], indices[:, :k]
        return values, indices

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(AXIS), P(AXIS)))
    return jax.jit(sharded)


def exact_top_k(queries, candidates, k: int, *, exclude_self: bool = False, query_tile: int = DEFAULT_QUERY_TILE,
                block: int = DEFAULT_BLOCK, mesh: Mesh | None = None,
                symmetric: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, its ``k`` most cosine-similar candidate rows (ties: lowest index), exactly.

    Returns (indices int32[n_q, k], similarities float32[n_q, k]), best first. exclude_self: queries and
    candidates are the same pool and query i never gets candidate i. k is clamped to the candidates available.
    mesh: a 1-D Mesh with axis "data" (default: this process's devices) over which the work is split.
    symmetric: search one pool against itself with each tile pair multiplied once (tiles of ``block`` rows;
    query_tile unused); default: whenever queries and candidates are the same rows. Same result either way.
    """
    q, c, k = _checked(queries, candidates, k, exclude_self)
    if query_tile < 1 or block < 1:
        raise DataError(f"query_tile and block must be >= 1, got {query_tile} and {block}")
    same = q is c or (q.shape == c.shape and np.array_equal(q, c))
    if symmetric is None:
        symmetric = same
    elif symmetric and not same:
        raise DataError("symmetric search needs one pool as queries and candidates")
    # This process's devices only: under jax.distributed one process searches while the others wait for its result.
    mesh = mesh or Mesh(np.array(jax.local_devices()), (AXIS,))
    if symmetric:
        return _exact_symmetric(c, k, bool(exclude_self), block, mesh)
    n_q, n_c = q.shape[0], c.shape[0]
    block = min(block, n_c)
    query_tile = min(query_tile, -(-n_q // mesh.size))
    q_rows = -(-n_q // (mesh.size * query_tile)) * mesh.size * query_tile
    c_rows = -(-n_c // block) * block
    q_pad = np.zeros((q_rows, q.shape[1]), np.float32)
    q_pad[:n_q] = q
    ids = np.full((q_rows,), -1, np.int32)
    ids[:n_q] = np.arange(n_q, dtype=np.int32)
    c_pad = np.zeros((c_rows, c.shape[1]), np.float32)
    c_pad[:n_c] = c
    search = _searcher(mesh, k, query_tile, block, n_c, bool(exclude_self))
    rows = NamedSharding(mesh, P(AXIS))
    values, indices = search(jax.device_put(q_pad, rows), jax.device_put(ids, rows),
                             jax.device_put(c_pad, NamedSharding(mesh, P())))
    return np.asarray(indices)[:n_q].astype(np.int32), np.asarray(values)[:n_q]


def _exact_symmetric(x: np.ndarray, k: int, exclude_self: bool, block: int, mesh: Mesh):
    n = x.shape[0]
    tile = min(block, n)
    n_tiles = -(-n // tile)
    n_rows = -(-n_tiles * tile // mesh.size) * mesh.size  # the all_to_all splits the rows evenly
    x_pad = np.zeros((n_rows, x.shape[1]), np.float32)  # n_rows >= n_tiles * tile: every tile slice is in range
    x_pad[:n] = x
    search = _symmetric_searcher(mesh, k, tile, n, n_rows, exclude_self)
    values, indices = search(jax.device_put(x_pad, NamedSharding(mesh, P())),
                             jax.device_put(_tile_pairs(n_tiles, mesh.size), NamedSharding(mesh, P(AXIS))))
    return np.asarray(indices)[:n].astype(np.int32), np.asarray(values)[:n]


def approximate_top_k(queries, candidates, k: int, *, exclude_self: bool = False, hnsw_m: int = 16,
                      ef_construction: int = 80, ef_search: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k by cosine with a faiss HNSW index (optional dependency faiss-cpu).

    Same contract as ``exact_top_k`` (ties are faiss's, not guaranteed lowest-index). Vectors are stored as float16
    (lossless for the 2^-11 grid; index ≈ n·(2d + 8·M) bytes). ef_search trades speed for
    recall; measure it with ``recall_at_k``. The defaults (M 16, efConstruction 80, efSearch 64) were the fastest
    of three settings tried on 20k clustered 384-d vectors, at recall@16 0.9995 (M 32 / 200 / 128: 3x slower).
    """
    try:
        import faiss
    except ImportError:
        raise DataError("approximate neighbour search needs faiss-cpu: pip install 'delift-jax[ann]' "
                        "(or use exact search)") from None
    q, c, k = _checked(queries, candidates, k, exclude_self)
    # float16 storage: half of IndexHNSWFlat's n·d·4 bytes (0.77 GB less at 1M x 384) and lossless here, since every
    # value on the 2^-11 grid within [-1, 1] is a float16 (11 significant bits): the same inner products.
    index = faiss.IndexHNSWSQ(c.shape[1], faiss.ScalarQuantizer.QT_fp16, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
    index.train(c[:1])  # nothing to fit for float16; faiss asks for the call
    index.hnsw.efConstruction = int(ef_construction)
    index.add(c)
    index.hnsw.efSearch = max(int(ef_search), k + 1)
    values, indices = index.search(q, k + int(exclude_self))
    if exclude_self:
        values, indices = _drop_self(values, indices, k)
    return indices.astype(np.int32), values.astype(np.float32)


def _drop_self(values, indices, k: int):
    """Remove each query's own index from k + 1 results (or the last one when it was not found)."""
    own = indices == np.arange(indices.shape[0])[:, None]
    own[~own.any(axis=1), -1] = True
    keep = ~own
    return values[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approximate ∩ exact| / k (k = the exact lists' width)."""
    approximate, exact = np.asarray(approximate), np.asarray(exact)
    if approximate.shape[0] != exact.shape[0]:
        raise DataError(f"recall needs the same queries: {approximate.shape[0]} vs {exact.shape[0]} rows")
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact))
    return hits / float(exact.size)


def top_k(queries, candidates, k: int, *, exclude_self: bool = False, search: str = "exact",
          mesh: Mesh | None = None) -> np.ndarray:
    """Neighbour indices int32[n_q, k] by ``search`` ("exact" on the devices or "approximate" with faiss)."""
    if search == "exact":
        return exact_top_k(queries, candidates, k, exclude_self=exclude_self, mesh=mesh)[0]
    if search == "approximate":
        return approximate_top_k(queries, candidates, k, exclude_self=exclude_self)[0]
    raise DataError(f"unknown neighbour search {search!r}; choose one of {', '.join(SEARCHES)}")
