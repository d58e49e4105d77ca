"""DELIFT (SE): DELIFT's objectives over a sentence-embedding similarity kernel instead of the model's utilities.

Embeddings e (unit norm, all-MiniLM-L6-v2 over ``prompt + "\\n" + response``); similarity s(a, b) = e_a · e_b
(cosine) mapped to [0, 1]:

* ``similarity="shift"`` (default): (cos + 1) / 2. Order preserving, keeps every value (cosines of this encoder are
  rarely but sometimes negative), already on one scale for K, Q and P (no further normalization needed).
* ``similarity="clip"``: max(cos, 0) (negatively correlated texts count as unrelated).

Kernels as in DELIFT: K[i, j] = s(pool_i, pool_j); task: Q[i, q] = s(pool_i, target_q); continual:
P[i, p] = s(pool_i, existing_p). Same objectives (FL / FL1MI / FLCG), same greedy.

Options: ``DeliftSeOptions``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from delift_jax.errors import DataError
from delift_jax.methods.base import (MethodOptions, MethodSelection, budget_count, check_choice, check_inputs)
from delift_jax.methods.embeddings import embed_examples, given_embeddings, normalize_rows
from delift_jax.methods.submodular import DEFAULT_TASK_OBJECTIVE, OPTIMIZERS, TASK_OBJECTIVES, select_on_kernels

SIMILARITIES = ("shift", "clip")


@dataclasses.dataclass(frozen=True)
class DeliftSeOptions(MethodOptions):
    """encoder: anything with ``encode(texts) -> [n, d]`` (default all-MiniLM-L6-v2); embeddings /
    target_embeddings / existing_embeddings: precomputed, rows aligned with the sets; similarity: shift | clip;
    exclude_diagonal: K[i, i] = 0; task_objective: flmi | fl2mi | flmi_paper (as DELIFT's); eta (η, task), nu (ν,
    continual); optimizer: lazy | naive | stochastic."""

    encoder: object = None
    embeddings: object = None
    target_embeddings: object = None
    existing_embeddings: object = None
    similarity: str = "shift"
    exclude_diagonal: bool = False
    task_objective: str = DEFAULT_TASK_OBJECTIVE
    eta: float = 1.0
    nu: float = 1.0
    optimizer: str = "lazy"

    def __post_init__(self):
        check_choice("delift_se", "similarity", self.similarity, SIMILARITIES)
        check_choice("delift_se", "task_objective", self.task_objective, TASK_OBJECTIVES)
        check_choice("delift_se", "optimizer", self.optimizer, OPTIMIZERS)


def similarity(a: np.ndarray, b: np.ndarray, mode: str = "shift") -> np.ndarray:
    """[len(a), len(b)] cosine similarity of unit-norm rows mapped to [0, 1] (see the module docstring)."""
    cos = np.clip(np.asarray(a, np.float64) @ np.asarray(b, np.float64).T, -1.0, 1.0)
    if mode == "shift":
        return ((cos + 1.0) / 2.0).astype(np.float32)
    if mode == "clip":
        return np.maximum(cos, 0.0).astype(np.float32)
    raise DataError(f"similarity {mode!r} is unknown; choose one of {', '.join(SIMILARITIES)}")


def _embeddings(examples, given, key, encoder):
    given = given_embeddings("delift_se", given, key, len(examples))
    return normalize_rows(given) if given is not None else embed_examples(examples, encoder)


def delift_se_selection(*, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                        tokenizer=None, seed: int = 0, options: DeliftSeOptions = DeliftSeOptions()
                        ) -> MethodSelection:
    check_inputs("delift_se", pool, use_case, targets, existing)
    k = budget_count(budget, len(pool), "delift_se")
    mode, encoder = options.similarity, options.encoder
    pool_e = _embeddings(pool, options.embeddings, "embeddings", encoder)
    kernel = similarity(pool_e, pool_e, mode)
    if options.exclude_diagonal:
        np.fill_diagonal(kernel, 0.0)
    query = private = None
    if use_case == "task":
        query = similarity(pool_e, _embeddings(targets, options.target_embeddings, "target_embeddings", encoder), mode)
    elif use_case == "continual":
        private = similarity(pool_e, _embeddings(existing, options.existing_embeddings, "existing_embeddings",
                                                 encoder), mode)
    picks, gains, info = select_on_kernels(use_case, k, kernel, query, private, eta=options.eta, nu=options.nu,
                                           optimizer=options.optimizer, seed=seed,
                                           task_objective=options.task_objective)
    info.update({"method": "delift_se", "budget": k, "use_case": use_case, "seed": int(seed), "similarity": mode,
                 "exclude_diagonal": bool(options.exclude_diagonal), "fine_tune": True})
    arrays = {"kernel_K": kernel, "embeddings": pool_e}
    if query is not None:
        arrays["kernel_Q"] = query
    if private is not None:
        arrays["kernel_P"] = private
    return MethodSelection(picks, gains, info, arrays)
