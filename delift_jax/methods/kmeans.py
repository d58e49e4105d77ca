"""Seeded k-means (k-means++ initialisation, Lloyd iterations, best of n_init restarts) in NumPy.

Deterministic for a seed: restart r draws from ``numpy.random.default_rng([seed, r])``. An empty cluster is
re-seeded with the point farthest from its centroid. Ties in the assignment go to the lower cluster id.
"""

from __future__ import annotations

import numpy as np

from delift_jax.errors import DataError


def _sq_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    centers = [int(rng.integers(n))]
    closest = _sq_distances(x, x[centers])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        nxt = int(rng.choice(n, p=closest / total)) if total > 0 else int(rng.integers(n))
        centers.append(nxt)
        closest = np.minimum(closest, _sq_distances(x, x[[nxt]])[:, 0])
    return x[centers].copy()


def _lloyd(x: np.ndarray, centroids: np.ndarray, max_iter: int, tol: float):
    for _ in range(max_iter):
        d = _sq_distances(x, centroids)
        labels = np.argmin(d, axis=1)
        new = centroids.copy()
        for c in range(len(centroids)):
            members = labels == c
            if members.any():
                new[c] = x[members].mean(0)
            else:  # re-seed an empty cluster with the worst-fitted point
                far = int(np.argmax(d[np.arange(len(x)), labels]))
                new[c] = x[far]
                labels[far] = c
        shift = float(np.abs(new - centroids).max())
        centroids = new
        if shift <= tol:
            break
    d = _sq_distances(x, centroids)
    labels = np.argmin(d, axis=1)
    return labels, centroids, float(d[np.arange(len(x)), labels].sum())


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 100,
           tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64[n], centroids float64[k, d]) of the restart with the lowest inertia."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not 1 <= k <= len(x):
        raise DataError(f"k-means needs a 2-D array with at least k={k} rows; got shape {x.shape}")
    best = None
    for r in range(max(1, int(n_init))):
        rng = np.random.default_rng([int(seed), r])
        labels, centroids, inertia = _lloyd(x, _plus_plus(x, k, rng), max_iter, tol)
        if best is None or inertia < best[2] - 1e-12:
            best = (labels, centroids, inertia)
    return best[0].astype(np.int64), best[1]
