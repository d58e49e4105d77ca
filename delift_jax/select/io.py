"""Reading kernels from disk (oriented and on one scale for the objective) and writing selections atomically.

A kernel location is a ``.npy`` file or a directory holding ``kernel.npy`` (dense) or ``kernel_indices.npy`` +
``kernel_values.npy`` (sparse top-k) with ``manifest.json`` giving ``n_candidates``. A directory written by
``delift kernel`` (a *store*: its manifest has ``n_targets``, ``n_candidates``, ``square``) holds
U[target, candidate]: rows are the examples whose responses are predicted (``--targets``, or the pool when square),
columns the examples shown as the demonstration (the pool, ``--data``).

Orientation (DESIGN §1.3; rows are covered elements):

* K (``--kernel``): (n_pool, n_pool); a store is used as it is (U of the pool against itself).
* Q (``--query-kernel``): (n_pool, n_targets), Q[i, q] = the utility of pool example i as a demonstration for
  target q. A store from ``delift kernel --data POOL --targets T`` holds U[q, i], so Q = Uᵀ (done here).
* P (``--private-kernel``): (n_pool, n_existing), P[i, p] = the utility of existing example p as a demonstration
  for pool example i. A store from ``delift kernel --data EXISTING --targets POOL`` holds exactly that: P = U.

A store is oriented from its manifest: the DESIGN orientation when its pool side holds the pool (always, for a
square store), else the other one (the store then measures the other direction; a warning says so), else a
one-line error. "Holds the pool" compares data fingerprints where both K's pool and the store's side have one
(``stores.KernelSource.side_sha256``: a store of another pool is refused even at the same size, and a store of
two equal-sized sets is oriented right), else sizes (n_pool entries). Stores are checked as they are opened
(``select.stores``: manifest against arrays, checksums, distance). A plain ``.npy`` file (or a directory without a store manifest) must already be (n_pool, m); a
transposed one is refused with the fix. n_pool is the number of rows of K (for fl2mi: its columns; fl2mi without
``--kernel`` has no pool size to check a plain file against).

Scale: FL1MI caps K at η·max_q Q[i, q] and FLCG floors it at ν·max_p P[i, p], so K and Q / P must be in the same
units. ``delift kernel`` min-maxes each store on its own. ``plan_scale`` therefore re-normalizes min-maxed stores
jointly from their raw utilities (``utility_raw.npy`` / ``utility_raw_values.npy``): one (U − lo)/(hi − lo) with
lo, hi over the union of the kernels' raw utilities (K's diagonal left out when the store excluded it), as
``delift_jax.methods.delift`` does. Where that is impossible it says why, in one line.

Outputs are written to a temporary file in the same directory and renamed into place, so a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from delift_jax.atomic_io import atomic_save_json, atomic_save_npy
from delift_jax.errors import SelectionError
from delift_jax.kernel.normalize import Scale, apply_scale, fit_scale
from delift_jax.select.layout import DenseKernel
from delift_jax.select.sparse import SparseKernel
from delift_jax.select.stores import (DENSE_FILE, INDICES_FILE, MANIFEST_FILE, RAW_DENSE_FILE, RAW_VALUES_FILE,
                                      VALUES_FILE, KernelSource, check_indices, load_npy, open_kernel)

MINMAX = ("minmax", "clip_minmax")
ROLES = {"query": "query kernel Q", "private": "private kernel P"}
__all__ = ["KernelSource", "open_kernel", "kernel_shape", "load_kernel", "load_oriented", "plan_scale",
           "write_selection"]


def _n_candidates(source: KernelSource) -> int:
    try:
        return int(source.manifest["n_candidates"])
    except TypeError:
        raise SelectionError(f"sparse {source.label()} has no {MANIFEST_FILE} giving n_candidates") from None
    except (ValueError, KeyError) as exc:
        raise SelectionError(f"{source.path / MANIFEST_FILE} must be JSON with an integer n_candidates ({exc})") \
            from None


def kernel_shape(source: KernelSource) -> tuple[int, ...]:
    """The (n_rows, n_candidates) of the dense kernel ``source`` stands for, from headers only."""
    if source.path.is_file():
        return tuple(load_npy(source, None, source.what).shape)
    if not source.is_sparse:
        return tuple(load_npy(source, DENSE_FILE, source.what).shape)
    return (int(load_npy(source, INDICES_FILE, source.what).shape[0]), _n_candidates(source))


def _stored(source: KernelSource, scaling: Scale | None):
    """The normalized kernel: a (memory-mapped) dense array, or a SparseKernel of numpy arrays; with ``scaling``
    recomputed from the raw utilities."""
    path, what = source.path, source.what
    if path.is_file():
        return load_npy(source, None, what)
    if not source.is_sparse:
        if scaling is not None:
            return _rescaled(load_npy(source, RAW_DENSE_FILE, f"{what} raw utilities"), scaling,
                             source.exclude_diagonal)
        return load_npy(source, DENSE_FILE, what)
    indices = np.asarray(load_npy(source, INDICES_FILE, f"{what} indices"))
    check_indices(source, indices)
    n_candidates = _n_candidates(source)
    if scaling is not None:
        values = _rescaled(load_npy(source, RAW_VALUES_FILE, f"{what} raw utilities"), scaling,
                           source.exclude_diagonal, indices)
    else:
        values = np.asarray(load_npy(source, VALUES_FILE, f"{what} values"))
    return SparseKernel(indices, values, n_candidates)


def load_kernel(location, what: str = "kernel", *, candidate_major: bool = False, scaling: Scale | None = None):
    """Load K from ``location`` (.npy file or kernel directory) as stored, or re-normalized with ``scaling``.

    With ``candidate_major`` a dense kernel comes back as a DenseKernel (laid out as Kᵀ on the host, so only one
    n × n array reaches the device); otherwise as a numpy (n_rows, n_candidates) array.
    """
    source = location if isinstance(location, KernelSource) else open_kernel(location, what)
    kernel = _stored(source, scaling)
    if isinstance(kernel, SparseKernel):
        return kernel
    return _dense(kernel, candidate_major)


def _dense(array: np.ndarray, candidate_major: bool):
    if array.ndim != 2:
        raise SelectionError(f"kernel must be 2-D (n_rows, n_candidates), got shape {array.shape}")
    if not candidate_major:
        return np.asarray(array)
    keep = array.dtype == np.float32 or array.dtype.name == "bfloat16"  # float32/bfloat16 stay as stored
    return DenseKernel(np.ascontiguousarray(array.T, dtype=array.dtype if keep else np.float32))


# ---------------------------------------------------------------------------------------------------------------------
# Orientation of Q and P.


def load_oriented(source: KernelSource, role: str, n_pool: int | None, scaling: Scale | None = None,
                  pool_sha256: str | None = None):
    """Q (role "query") or P (role "private") with rows = the n_pool pool examples; see the module docstring.
    pool_sha256: the data fingerprint of K's pool, where known; a store's side that holds other examples is then no
    pool side whatever its size.

    Returns (kernel, how, warning): kernel a numpy (n_pool, m) array (or a SparseKernel from a hand-made sparse
    directory, taken as it is), how a short description of the orientation used, warning a line or None.
    """
    name = ROLES[role]
    kernel = _stored(source, scaling)
    if not source.is_store:
        shape = kernel.shape
        if len(shape) != 2:
            raise SelectionError(f"{name} {source.path} must be 2-D (n_pool, m), got shape {tuple(shape)}")
        if n_pool is not None and shape[0] != n_pool:
            columns, other = ("n_targets", "targets") if role == "query" else ("n_existing", "existing examples")
            hint = ("it looks transposed: save its transpose (np.save(path, np.load(path).T))" if shape[1] == n_pool
                    else "pass the kernel store written by `delift kernel`, which select orients itself")
            raise SelectionError(f"{name} {source.path} has shape {tuple(shape)} but must be ({n_pool}, {columns}) "
                                 f"with rows = the {n_pool} pool examples and columns = the {other}; {hint}")
        return (kernel if isinstance(kernel, SparseKernel) else np.asarray(kernel)), "as given (rows = pool)", None

    n_targets, n_candidates = int(source.manifest["n_targets"]), int(source.manifest["n_candidates"])
    if isinstance(kernel, SparseKernel):  # the pool may sit on the columns: densify (absent entries are 0)
        dense = np.zeros((n_targets, n_candidates), np.float32)
        np.put_along_axis(dense, np.asarray(kernel.indices, np.int64), np.asarray(kernel.values, np.float32), 1)
        kernel = dense
    kernel = np.asarray(kernel)
    transpose_first = role == "query"  # Q = Uᵀ (pool = columns of U); P = U (pool = rows of U)
    fits = _pool_sides(source, n_pool, pool_sha256)
    if fits[transpose_first]:
        transpose, warning = transpose_first, None
    elif fits[not transpose_first]:
        transpose, warning = not transpose_first, _other_direction(source, role)
    elif pool_sha256 is not None and n_pool in (n_targets, n_candidates):
        store = "--data POOL --targets TARGETS" if role == "query" else "--data EXISTING --targets POOL"
        raise SelectionError(
            f"{name} {source.path} was computed on other examples than the pool of --kernel: neither of its sides "
            f"({n_targets} targets, {n_candidates} candidates) holds the {n_pool} pool examples (same size, different "
            f"data fingerprints); recompute it on the same pool (--data, --limit and data options as K) with "
            f"`delift kernel {store}`")
    else:
        store = "--data POOL --targets TARGETS" if role == "query" else "--data EXISTING --targets POOL"
        raise SelectionError(
            f"{name} {source.path} is a kernel store of U ({n_targets} targets x {n_candidates} candidates): neither "
            f"Uᵀ ({n_candidates}, {n_targets}) nor U ({n_targets}, {n_candidates}) has the {n_pool} rows of the pool "
            f"(--kernel); recompute it on the same pool with `delift kernel {store}`")
    how = "store, transposed (Uᵀ)" if transpose else "store, as stored (U)"
    return (kernel.T if transpose else kernel), how, warning


def _pool_sides(source: KernelSource, n_pool: int | None, pool_sha256: str | None) -> dict[bool, bool]:
    """{transposed: whether that orientation puts the pool on the rows}: by data fingerprint where both the pool's
    and the side's are known, else by size (any size when n_pool is unknown)."""
    fits = {}
    for transposed, side, size in ((True, "candidates", source.manifest["n_candidates"]),
                                   (False, "targets", source.manifest["n_targets"])):
        known = source.side_sha256(side)
        fits[transposed] = (known == pool_sha256 if pool_sha256 is not None and known is not None
                            else n_pool is None or size == n_pool)
    return fits


def _other_direction(source: KernelSource, role: str) -> str:
    if role == "query":
        return (f"query kernel Q {source.path} has the pool as its rows (made with --targets POOL), so it measures "
                "each target as a demonstration for the pool and is used as is; Q means each pool example as a "
                "demonstration for the targets: recompute with `delift kernel --data POOL --targets TARGETS`")
    return (f"private kernel P {source.path} has the pool as its columns (made with --data POOL), so it measures each "
            "pool example as a demonstration for the existing data and is used transposed; P means each existing "
            "example as a demonstration for the pool: recompute with `delift kernel --data EXISTING --targets POOL`")


# ---------------------------------------------------------------------------------------------------------------------
# One scale for K and Q / P.


def plan_scale(sources: list[KernelSource], mode: str = "common") -> tuple[list[Scale | None], str | None]:
    """How to put kernels compared directly on one scale: (a Scale or None per source, a warning line or None).

    Stores of different distances (derived from what they hold: ``stores.derived_distance``) are refused in either
    mode: no scale, joint or stored, puts log-probability gains and probability-distance gains in one unit.
    mode "common" re-normalizes min-maxed stores jointly from their raw utilities (all of them, on one formula,
    unless every store's own range already is the common one); "stored" keeps them (with a warning if they were
    min-maxed separately).
    """
    keep: list[Scale | None] = [None] * len(sources)
    if len({s.path.resolve() for s in sources}) < 2:
        return keep, None
    _check_distances(sources)
    methods = [s.normalization for s in sources]
    if not any(m in MINMAX for m in methods):
        if all(s.is_store for s in sources) and len(set(methods)) > 1:
            return keep, _mixed(sources)
        return keep, None  # the same pointwise map (none / exp) everywhere, or plain arrays: nothing known to fix
    fix = "recompute them with `delift kernel --normalization none` (raw utilities share one scale)"
    plain = [s for s in sources if not s.is_store]
    if plain:
        return keep, (f"{', '.join(s.label() for s in plain)} has no kernel-store manifest, so it cannot be put on "
                      f"one scale with the separately min-max-normalized {_names(s for s in sources if s.is_store)}; "
                      f"pass the stores of `delift kernel` for both or {fix}")
    if len(set(methods)) > 1:
        return keep, _mixed(sources)
    separately = f"{_names(sources)} were min-max normalized separately, so their values are not on one scale"
    if mode == "stored":
        return keep, f"{separately} (--scale stored); drop --scale stored to min-max them jointly, or {fix}"
    raws = []
    for source in sources:
        name = RAW_VALUES_FILE if source.is_sparse else RAW_DENSE_FILE
        if not (source.path / name).exists():
            return keep, f"{separately} and {source.path} has no {name} to re-normalize from; {fix}"
        indices = np.asarray(load_npy(source, INDICES_FILE, source.what)) if source.is_sparse else None
        raws.append((load_npy(source, name, f"{source.what} raw utilities"), indices))
    method = methods[0]
    fits = [_fit(raw, method, s.exclude_diagonal, indices) for s, (raw, indices) in zip(sources, raws)]
    joint = Scale(method, min(f.low for f in fits), max(f.high for f in fits))
    if all(f == joint for f in fits):
        return keep, None
    return [joint] * len(sources), None


def _check_distances(sources: list[KernelSource]) -> None:
    """Utilities of different distances (pmi: log-probability gains; rms: probability-distance gains) are not in
    one unit, so no joint scale makes them comparable: one line naming both distances and the fix."""
    known = [s for s in sources if s.distance is not None]
    if len({s.distance for s in known}) < 2:
        return
    first, other = known[0], next(s for s in known if s.distance != known[0].distance)
    raise SelectionError(
        f"{first.label()} was computed with --distance {first.distance} and {other.label()} with --distance "
        f"{other.distance}: their utilities are in different units, which no --scale (common or stored) puts on "
        f"one scale; rerun one of "
        f"them with --distance {first.distance} or --distance {other.distance} (`delift kernel` with the same "
        "--out reuses its computed pairs)")


def _names(sources) -> str:
    return " and ".join(s.label() for s in sources)


def _mixed(sources) -> str:
    methods = ", ".join(f"{s.what}: {s.normalization}" for s in sources)
    return (f"the kernels compared directly were normalized differently ({methods}), so they are not on one scale; "
            "recompute them with one `delift kernel --normalization` (none keeps raw utilities on one scale)")


def _row_blocks(array: np.ndarray):
    step = max(1, (1 << 22) // max(1, array.shape[1]))
    for start in range(0, array.shape[0], step):
        yield start, np.asarray(array[start:start + step], dtype=np.float64)


def _diagonal(start: int, shape: tuple[int, int], indices: np.ndarray | None) -> np.ndarray:
    """Mask of the entries of rows start.. that sit on K's diagonal (column index == row index)."""
    rows = np.arange(start, start + shape[0])[:, None]
    columns = np.arange(shape[1])[None, :] if indices is None else indices[start:start + shape[0]]
    return columns == rows


def _fit(raw: np.ndarray, method: str, exclude_diagonal: bool, indices: np.ndarray | None) -> Scale:
    """The scale the store's normalization took its statistics from, fitted block by block over the raw utilities."""
    chunks = ((block, _diagonal(start, block.shape, indices) if exclude_diagonal else None)
              for start, block in _row_blocks(raw))
    return fit_scale(chunks, method)


def _rescaled(raw: np.ndarray, scale: Scale, exclude_diagonal: bool, indices: np.ndarray | None = None):
    """float32 ``kernel.normalize.apply_scale`` of the raw utilities, block by block; the excluded diagonal is 0."""
    out = np.empty(raw.shape, np.float32)
    for start, block in _row_blocks(raw):
        ignore = _diagonal(start, block.shape, indices) if exclude_diagonal else None
        out[start:start + len(block)] = apply_scale(block, scale, ignore)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Writing a selection.


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_save_npy(path, array)


def save_json(path: Path, payload: dict) -> None:
    atomic_save_json(path, payload)


def write_selection(out_dir: str | os.PathLike, picks: np.ndarray, gains: np.ndarray, summary: dict) -> dict:
    """Write ``picks.npy`` (int32, in pick order), ``gains.npy`` (float32) and ``summary.json``; return the paths.

    The summary is written last, so its presence means the selection is complete.
    """
    out = Path(out_dir)
    paths = {"picks": out / "picks.npy", "gains": out / "gains.npy", "summary": out / "summary.json"}
    save_npy(paths["picks"], np.asarray(picks, np.int32))
    save_npy(paths["gains"], np.asarray(gains, np.float32))
    save_json(paths["summary"], summary)
    return {name: str(path) for name, path in paths.items()}
