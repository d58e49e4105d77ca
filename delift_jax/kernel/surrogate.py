"""The utility surrogate (DESIGN §2.4): exact U on a fixed sample of pairs, a small network for every other pair.

Pure functions, no file I/O (the store side is ``kernel/surrogate_run.py``):

* ``sample_pairs``: a stratified sample of a fixed number of (target, candidate) pairs on a seeded set of target
  rows: each sampled row's own cell (square kernels: a quarter of the sample, about one per row; the diagonal
  dominates U and the objectives, so it is measured, not predicted), pairs of a row with its nearest candidates by
  embedding cosine (where the large utilities are, and in the sparse mode the pairs the objective reads) and
  uniformly random pairs (the rest of the range). Rows are sampled, not pairs, because every row with an exact pair
  costs one more forward pass (d(i | no example)); about ``per_row`` pairs share each row. A fifth of the rows is
  held out: the network never trains on them, so the held-out scores say how well it predicts rows it has not seen,
  which is what it does for almost every row.
  A floor stratum (``floor_share``, off by default) first spends part of the sample on the nearest candidates of
  rows beyond the sampled ones, for objectives that read every row's maximum (measured for FLCG's P: it raises
  P's held-out R² and not the objective, docs/surrogate.md).
* ``PairFeatures``: per-example tables (embeddings reduced by PCA and whitened, unit embeddings, token counts); the
  features of a pair, ``[z_i, z_j, z_i * z_j, |z_i - z_j|, s_i, s_j, cos(e_i, e_j), [i = j]]``, are gathered inside
  jitted code, so predicting n·k (or n²) pairs never holds a feature matrix larger than one chunk.
* ``fit_surrogate``: an NNX multilayer perceptron trained by Optax (AdamW, full batch, ``eval_every`` steps per
  jitted ``lax.scan``) with early stopping on the held-out pairs, then ``predict`` for any pairs.
* ``r2_score`` and ``spearman``: the held-out scores every run reports.

The network follows NN-CIFT (Agarwal et al., arXiv 2502.09969: a small MLP on the embeddings of both examples of a
pair, trained on a small block of computed utilities); the features are the ones DESIGN §2.4 names.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from delift_jax.errors import DataError

STRATA = ("diagonal", "neighbour", "random", "floor")
PREDICT_CHUNK = 1 << 14  # pairs per jitted prediction call
# The ridge baseline may read the length scalars. Measured (3 sample seeds, 5% exact pairs): on the 120-example
# TruthfulQA kernel the objective kept with / without them was fl 0.952 / 0.943, fl2mi 0.970 / 0.956, flcg 0.857 /
# 0.703; on the known-answer task kernel (sources of different lengths) the target precision was 0.685 / 0.787
# (docs/surrogate.md). With ``surrogate_net.BASELINE_CHOICE`` (the default) each run keeps them only when they
# lower the held-out loss; this flag is what the baseline with them reads.
BASE_SCALARS = True


# ---------------------------------------------------------------------------------------------------------------------
# The exact sample.


@dataclasses.dataclass(frozen=True, eq=False)
class PairSample:
    """pairs: int32 [m, 2] (target, candidate), sorted by candidate then target (the plan's order: a candidate's
    demonstration is computed once per block). stratum: int8 [m], an index into ``STRATA``. held_out: bool [m]."""

    pairs: np.ndarray
    stratum: np.ndarray
    held_out: np.ndarray

    def __len__(self) -> int:
        return int(len(self.pairs))


def sample_pairs(n_targets: int, n_candidates: int, n_pairs: int, near: np.ndarray, *, diagonal: bool,
                 seed: int = 0, per_row: int = 4, neighbour_share: float = 0.5, diagonal_share: float = 0.25,
                 held_out_share: float = 0.2, floor_share: float = 0.0, floor_k: int = 1) -> PairSample:
    """A stratified sample of ``min(n_pairs, n_targets * n_candidates)`` distinct pairs (see the module docstring).

    near: [n_targets, k] each target's candidates by similarity (the sparse mode's neighbours, or the nearest few
    of a dense kernel), nearest first. diagonal: the kernel is square and its diagonal is among the pairs the
    objective reads. floor_share: a share of the sample spent first (after the diagonal) on the ``floor_k`` nearest
    candidates of rows beyond the sampled ones (stratum "floor"), as many rows as it buys (every row when it buys
    them all; rows not otherwise sampled first, in a seeded order): where a row's maximum over the candidates most
    likely is, for objectives that read every row's maximum (FLCG's floors max_p P[i, p]). Each such row costs one
    more pass without an example. Held-out rows are drawn among the sampled rows only (a floor-only row trains).
    """
    total = n_targets * n_candidates
    n_pairs = int(min(n_pairs, total))
    if n_pairs < 1:
        raise DataError(f"the surrogate needs at least one exact pair; got {n_pairs}")
    rng = np.random.default_rng(seed)
    n_rows = min(n_targets, max(math.ceil(n_pairs / per_row), math.ceil(n_pairs / n_candidates), 1))
    rows = np.sort(rng.choice(n_targets, n_rows, replace=False))
    chosen: dict[int, int] = {}  # flat key -> stratum, in insertion order

    def add(targets, candidates, stratum: int, limit: int) -> None:
        for key in (np.asarray(targets, np.int64) * n_candidates + np.asarray(candidates, np.int64)).tolist():
            if len(chosen) >= limit:
                return
            chosen.setdefault(key, stratum)

    if diagonal:
        own = rows[rows < n_candidates]
        picks = own[rng.permutation(len(own))][:round(diagonal_share * n_pairs)]
        add(picks, picks, 0, n_pairs)
    near = np.asarray(near, np.int64)
    if floor_share > 0 and near.size:
        floor_rng = np.random.default_rng([seed, 1])  # its own stream: floor_share=0 leaves the sample as it was
        others = np.setdiff1d(np.arange(n_targets), rows)
        order = np.concatenate([floor_rng.permutation(others), floor_rng.permutation(rows)])
        width = max(1, min(int(floor_k), near.shape[1]))
        add(np.repeat(order, width), near[order, :width].ravel(), 3,
            min(n_pairs, len(chosen) + round(floor_share * n_pairs)))
    if near.size:
        flat = np.stack([np.repeat(rows, near.shape[1]), near[rows].ravel()], axis=1)
        flat = flat[rng.permutation(len(flat))]
        add(flat[:, 0], flat[:, 1], 1, min(n_pairs, len(chosen) + round(neighbour_share * n_pairs)))
    _fill_random(chosen, rows, n_targets, n_candidates, n_pairs, rng)
    keys = np.fromiter(chosen.keys(), np.int64, len(chosen))
    strata = np.fromiter(chosen.values(), np.int8, len(chosen))
    pairs = np.stack([keys // n_candidates, keys % n_candidates], axis=1).astype(np.int32)
    held = _held_out(pairs, rng, held_out_share, np.unique(pairs[strata != 3, 0]) if (strata == 3).any() else None)
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))
    return PairSample(pairs[order], strata[order], held[order])


def _fill_random(chosen: dict, rows: np.ndarray, n_targets: int, n_candidates: int, n_pairs: int, rng) -> None:
    """Uniform random pairs on the sampled rows until ``n_pairs`` are chosen (all rows if those run out)."""
    if n_pairs - len(chosen) > len(rows) * n_candidates - len(chosen):
        rows = np.arange(n_targets)
    space = len(rows) * n_candidates
    if space <= 4 * n_pairs:  # small: enumerate the free pairs and draw without replacement
        keys = (rows[:, None].astype(np.int64) * n_candidates + np.arange(n_candidates)[None, :]).ravel()
        free = keys[~np.isin(keys, np.fromiter(chosen.keys(), np.int64, len(chosen)))]
        for key in rng.permutation(free)[:n_pairs - len(chosen)].tolist():
            chosen[key] = 2
        return
    while len(chosen) < n_pairs:  # large: rejection sampling (at most a quarter of the space is taken)
        need = n_pairs - len(chosen)
        draws = rows[rng.integers(len(rows), size=2 * need)].astype(np.int64) * n_candidates + rng.integers(
            n_candidates, size=2 * need)
        for key in draws.tolist():
            if len(chosen) >= n_pairs:
                break
            chosen.setdefault(key, 2)


def _held_out(pairs: np.ndarray, rng, share: float, rows: np.ndarray | None = None) -> np.ndarray:
    """Held-out pairs: a ``share`` of the ``rows`` (default: every row of ``pairs``; with floor pairs, the rows of the
    other strata) when there are 5 or more, at least one, else a share of the pairs; empty when fewer than 4 pairs
    (too few to hold any out)."""
    held = np.zeros(len(pairs), bool)
    if len(pairs) < 4:
        return held
    rows = np.unique(pairs[:, 0]) if rows is None else rows
    if len(rows) >= 5:
        out = rng.choice(rows, max(1, round(share * len(rows))), replace=False)
        held[np.isin(pairs[:, 0], out)] = True
    else:
        held[rng.choice(len(pairs), max(1, round(share * len(pairs))), replace=False)] = True
    return held


# ---------------------------------------------------------------------------------------------------------------------
# Pair features.


@dataclasses.dataclass(frozen=True, eq=False)
class PairFeatures:
    """Per-example tables for the rows (targets) and columns (candidates): ``*_z`` the embeddings reduced by PCA and
    whitened [n, dim], ``*_unit`` the unit embeddings [n, d] (for the cosine), ``*_scalars`` [n, s] (log lengths).
    square: rows and columns are one pool (one set of tables). self_index: [n_targets] int32, the candidate that is
    the target's own example (-1: none), for the feature [i = j]."""

    target_z: np.ndarray
    candidate_z: np.ndarray
    target_unit: np.ndarray
    candidate_unit: np.ndarray
    target_scalars: np.ndarray
    candidate_scalars: np.ndarray
    square: bool
    self_index: np.ndarray

    @property
    def width(self) -> int:
        return 4 * self.target_z.shape[1] + self.target_scalars.shape[1] + self.candidate_scalars.shape[1] + 2

    @property
    def base_width(self) -> int:
        """The last features the ridge baseline reads (``surrogate_net``): the cosine and the self flag, and with
        ``BASE_SCALARS`` the length scalars before them."""
        return 2 + (self.target_scalars.shape[1] + self.candidate_scalars.shape[1] if BASE_SCALARS else 0)

    def tables(self) -> tuple:
        return tuple(jnp.asarray(a) for a in (self.target_z, self.candidate_z, self.target_unit,
                                              self.candidate_unit, self.target_scalars, self.candidate_scalars,
                                              self.self_index))


def length_scalars(examples) -> np.ndarray:
    """[n, 2] float32: log(1 + characters) of each example's prompt and response (cheap; no tokenizer)."""
    return np.log1p(np.array([[len(e.prompt), len(e.response)] for e in examples], np.float64)).astype(np.float32)


def pair_features(target_embeddings: np.ndarray, candidate_embeddings: np.ndarray, target_scalars: np.ndarray,
                  candidate_scalars: np.ndarray, *, square: bool, dim: int = 32,
                  self_index: np.ndarray | None = None) -> PairFeatures:
    """The per-example tables; PCA is fitted on the unit embeddings of every row and column (unsupervised, so it
    uses all examples, not only the sampled ones). self_index: default i for a square kernel, else none."""
    t_unit, c_unit = _unit(target_embeddings), _unit(candidate_embeddings)
    if t_unit.shape[1] != c_unit.shape[1]:
        raise DataError(f"target and candidate embeddings differ in width ({t_unit.shape[1]} vs {c_unit.shape[1]})")
    union = t_unit if square else np.concatenate([t_unit, c_unit])
    mean, components, scale = _pca(union, dim)
    reduce = lambda x: (((x - mean) @ components) / scale).astype(np.float32)
    t_z = reduce(t_unit)
    if self_index is None:
        self_index = np.arange(len(t_unit)) if square else np.full(len(t_unit), -1)
    return PairFeatures(t_z, t_z if square else reduce(c_unit), t_unit, c_unit,
                        np.asarray(target_scalars, np.float32), np.asarray(candidate_scalars, np.float32), square,
                        np.asarray(self_index, np.int32))


def _unit(embeddings) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise DataError(f"surrogate embeddings must be a finite 2-D array; got shape {x.shape}")
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [d], components [d, r], scale [r]) of the top r = min(dim, d, n - 1) principal directions (float64
    covariance, accumulated in row chunks; each direction's sign fixed so that its largest entry is positive)."""
    n, d = x.shape
    mean = x.astype(np.float64).mean(axis=0)
    cov = np.zeros((d, d))
    for start in range(0, n, 1 << 15):
        block = x[start:start + (1 << 15)].astype(np.float64) - mean
        cov += block.T @ block
    eigenvalues, vectors = np.linalg.eigh(cov / max(n - 1, 1))
    r = max(1, min(dim, d, n - 1))
    top = np.argsort(eigenvalues)[::-1][:r]
    vectors = vectors[:, top]
    vectors *= np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(r)])
    return mean, vectors, np.sqrt(np.maximum(eigenvalues[top], 1e-12))


def gather_features(tables: tuple, rows, columns):
    """[m, width] features of the pairs (rows[m], columns[m]) from ``PairFeatures.tables()`` (jittable)."""
    t_z, c_z, t_unit, c_unit, t_s, c_s, self_index = tables
    zi, zj = t_z[rows], c_z[columns]
    cosine = jnp.sum(t_unit[rows] * c_unit[columns], axis=1, keepdims=True)
    same = (columns == self_index[rows]).astype(jnp.float32)[:, None]
    return jnp.concatenate([zi, zj, zi * zj, jnp.abs(zi - zj), t_s[rows], c_s[columns], cosine, same], axis=1)
