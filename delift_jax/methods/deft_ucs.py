"""DEFT-UCS (Das & Khetan, 2023/2024): unsupervised core-set selection by k-means over sentence embeddings.

Rule as implemented (the paper's Algorithm "UCS", with its per-cluster quota A and easy/hard weights α, β):

1. e_i = unit-norm sentence embedding of pool example i (all-MiniLM-L6-v2 here; the paper used Sentence-T5).
2. k-means with ``n_clusters`` clusters (default 7, at most n), seeded k-means++ and Lloyd iterations, best of
   ``n_init`` restarts (``kmeans.py``); d_i = Euclidean distance of e_i to its cluster's centroid.
3. Quota: the budget is split evenly over the clusters, A_c = ⌊k / C⌋, the remainder one each to the largest
   clusters (ties: lower cluster id); a cluster smaller than its quota gives all its members and the unused
   quota is re-split the same way over the clusters that still have unchosen members (most unchosen first),
   so exactly k examples are chosen whenever k ≤ n.
4. Inside cluster c: the ⌊α·A_c + ½⌋ ("round half up") members closest to the centroid (easy) and the remaining
   A_c − easy members farthest from it (hard), with α = ``easy_fraction`` and β = 1 − α. The paper's weights
   are fractions of the per-cluster quota; α + β = 1 here so that the quota is met exactly. Default α = 0
   (hard sampling), the paper's best-performing setting.

5. Optional random base set (the DEFT framework's D_base, final set D_base ∪ UCS(D_remain)): with
   ``base_fraction`` = f > 0, round(f·k) examples are drawn uniformly at random (seeded) first and UCS picks the
   other k − round(f·k) from the rest of the pool. Default 0: UCS alone.

Returned indices are DATASET indices into the pool (never positions inside a cluster): the base set first (in
draw order), then cluster by cluster in cluster-id order, easy ones first (nearest first), then hard ones
(farthest first). Scores are the distances. Targets and existing data are not used (unsupervised over the pool).

Options: ``DeftUcsOptions``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from delift_jax.methods.base import (MethodOptions, MethodSelection, budget_count, check_at_least, check_fraction,
                                     check_inputs)
from delift_jax.methods.embeddings import embed_examples, given_embeddings
from delift_jax.methods.kmeans import kmeans

DEFAULT_CLUSTERS = 7


@dataclasses.dataclass(frozen=True)
class DeftUcsOptions(MethodOptions):
    """n_clusters: C (at most n is used); easy_fraction: α; base_fraction: the random D_base share of the budget;
    n_init / max_iter: k-means restarts and Lloyd iterations; encoder: anything with ``encode(texts) -> [n, d]``
    (default all-MiniLM-L6-v2); embeddings: precomputed pool embeddings (rows aligned with the pool)."""

    n_clusters: int = DEFAULT_CLUSTERS
    easy_fraction: float = 0.0
    base_fraction: float = 0.0
    n_init: int = 10
    max_iter: int = 100
    encoder: object = None
    embeddings: object = None

    def __post_init__(self):
        check_fraction("deft_ucs", "easy_fraction (α)", self.easy_fraction)
        check_fraction("deft_ucs", "base_fraction (random D_base share of the budget)", self.base_fraction)
        for name in ("n_clusters", "n_init", "max_iter"):
            check_at_least("deft_ucs", name, getattr(self, name))


def cluster_quotas(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Per-cluster counts summing to min(budget, Σ sizes): even split, remainder to the largest clusters,
    quota a cluster cannot fill re-split over the clusters that still have members (water filling)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quotas = np.zeros_like(sizes)
    left = min(int(budget), int(sizes.sum()))
    while left > 0:
        open_ = np.flatnonzero(quotas < sizes)
        share, extra = divmod(left, len(open_))
        # the largest remaining clusters (ties to the lower id) get one more
        order = open_[np.lexsort((open_, -(sizes[open_] - quotas[open_])))]
        add = np.full(len(open_), share, np.int64)
        add[:extra] += 1
        for c, a in zip(order, add):
            take = min(int(a), int(sizes[c] - quotas[c]))
            quotas[c] += take
            left -= take
    return quotas


def easy_hard(members: np.ndarray, distances: np.ndarray, quota: int, easy_fraction: float) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """(easy, hard) dataset indices of one cluster: the ⌊α·A + ½⌋ nearest and the A − that farthest."""
    nearest = members[np.lexsort((members, distances[members]))]  # nearest first; ties to the lower index
    n_easy = min(int(np.floor(easy_fraction * quota + 0.5)), quota)
    easy = nearest[:n_easy]
    rest = nearest[n_easy:]
    hard = rest[np.lexsort((rest, -distances[rest]))][: quota - n_easy]  # farthest first; ties to the lower index
    return easy, hard


def deft_ucs_selection(*, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                       tokenizer=None, seed: int = 0, options: DeftUcsOptions = DeftUcsOptions()) -> MethodSelection:
    check_inputs("deft_ucs", pool, use_case, targets, existing)
    k = budget_count(budget, len(pool), "deft_ucs")
    easy_fraction = float(options.easy_fraction)
    n_clusters = min(int(options.n_clusters), len(pool))
    embeddings = given_embeddings("deft_ucs", options.embeddings, "embeddings", len(pool))
    if embeddings is None:
        embeddings = embed_examples(pool, options.encoder)
    labels, centroids = kmeans(embeddings, n_clusters, seed=seed, n_init=int(options.n_init),
                               max_iter=int(options.max_iter))
    distances = np.linalg.norm(embeddings.astype(np.float64) - centroids[labels], axis=1)
    # D_base: a seeded random draw (its own stream, independent of the k-means seeding); UCS sees the rest.
    n_base = int(np.floor(float(options.base_fraction) * k + 0.5))
    base = np.random.default_rng([int(seed), 1]).permutation(len(pool))[:n_base].astype(np.int64)
    in_base = np.zeros(len(pool), bool)
    in_base[base] = True
    sizes = np.bincount(labels[~in_base], minlength=n_clusters)
    quotas = cluster_quotas(sizes, k - n_base)
    chosen, n_easy, n_hard = [base], 0, 0
    for c in range(n_clusters):
        easy, hard = easy_hard(np.flatnonzero((labels == c) & ~in_base), distances, int(quotas[c]), easy_fraction)
        chosen.extend([easy, hard])
        n_easy, n_hard = n_easy + len(easy), n_hard + len(hard)
    indices = np.concatenate(chosen).astype(np.int64)
    info = {"method": "deft_ucs", "budget": k, "use_case": use_case, "seed": int(seed), "n_clusters": n_clusters,
            "easy_fraction": easy_fraction, "hard_fraction": 1.0 - easy_fraction, "n_base": n_base, "n_easy": n_easy,
            "n_hard": n_hard, "cluster_sizes": sizes.tolist(), "cluster_quotas": quotas.tolist(), "fine_tune": True}
    return MethodSelection(indices, distances[indices], info,
                     {"labels": labels, "centroids": centroids, "distances": distances, "embeddings": embeddings})
