"""DELIFT (Agarwal et al., ICLR 2025): the model-based utility kernel + the use case's submodular objective.

Kernels (``delift_jax.kernel.utility_kernel``; U[i, j] = d(i | no example) − d(i | example j), rows i predicted,
columns j shown as the demonstration):

* K = U(pool, pool), the square pool kernel (every use case but task with the default FL2MI, which reads only Q).
* task:      U_target = U(targets, pool) (rows targets, columns pool); Q = U_targetᵀ (pool x targets), so
             Q[i, q] = the utility of pool example i as a demonstration for target q.
* continual: P = U(pool, existing) (rows pool, columns existing): P[i, p] = the utility of existing example p
             as a demonstration for pool example i.

Scale (``scale``; ``None``, the default, takes the use case's from ``KERNEL_FORMS``: ``row_rank`` for instruction
and continual, ``minmax`` for task). ``row_rank`` replaces each pool row's utilities, over K's and P's columns
together, by their percentile ranks in that row (``kernel.normalize.row_normalize``): every covered example then
weighs the same in facility location, where under one global scale the examples the model predicts worst — the
corrupted ones, whose own diagonal is the largest utility of all — outweighed the rest, so DELIFT preferred them
(docs/noise.md). ``row_minmax`` is the per-row min-max. ``minmax`` is the authors': one common map
(U − lo)/(hi − lo) with lo, hi over the union of K, Q and P. Why common and not per kernel: FL1MI compares
max K against η·max Q and FLCG subtracts ν·max P from max K, so K, Q and P must be in the same units; min-maxing
each separately maps different raw utilities to the same number and changes which pool example counts as
already covered. A common min-max is order preserving and affine, so FL's picks equal those on the raw
utilities, and for η = ν = 1 the FL1MI caps and FLCG floors compare exactly the raw utilities; for the square
kernel alone it is the authors' global min-max. ``clip`` (max(U, 0), the paper's text) and ``clip_minmax`` are
offered. ``exclude_diagonal`` leaves K's diagonal (an example as its own demonstration, which dominates, DESIGN
§1.2) out of the statistics and sets it to 0.

Candidate weights (``candidate_weights``): after the scale, K's column j (example j as a demonstration) is
multiplied by the percentile rank, in the pool, of j's prompt information (``quality``: instruction and continual by
default) and, in the continual case, of how little the existing data covers j (``novelty``). Facility location then
credits a pick with weight_j · K[i, j] and stays monotone submodular. The kernel measures how representative a
demonstration is, not whether its response is right nor whether the model already has it (docs/noise.md).

Options: ``DeliftOptions``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel import KernelConfig, utility_kernel
from delift_jax.kernel.normalize import ROW_NORMALIZATIONS
from delift_jax.methods.base import (MethodOptions, MethodSelection, budget_count, check_at_least, check_choice,
                                     check_inputs, need_model)
from delift_jax.methods.refine import refined_selection, refining
from delift_jax.methods.submodular import (DEFAULT_TASK_OBJECTIVE, OPTIMIZERS, SCALES, TASK_OBJECTIVES, common_scale,
                                          select_on_kernels)
from delift_jax.progress import show_progress


# The kernel form (scale, exclude_diagonal) a use case gets when DeliftOptions leaves it open (None): chosen on the
# known-answer benchmarks (scripts/bench_recovery.py, docs/evidence.md, docs/noise.md). The authors' form is
# AUTHORS_KERNEL_FORM: one global min-max over K, Q and P with K's diagonal kept.
AUTHORS_KERNEL_FORM = ("minmax", False)
KERNEL_FORMS = {"instruction": ("row_rank", False), "task": AUTHORS_KERNEL_FORM, "continual": ("row_rank", False)}
# Candidate quality a use case gets when DeliftOptions.quality is None. "prompt_information": each candidate column
# of K is weighted by the percentile rank, in the pool, of the example's prompt information
# (``scoring.prompt_information``), so a pick covers others with quality_j · K[i, j]; "none": the authors' K.
# Chosen on the planted-noise pools (docs/noise.md): instruction low-quality share 0.31/0.26 -> 0.06/0.13 (set A),
# 0.33/0.27 -> 0.08/0.09 (set B). Not for task (it needs no quality term to find the target's domain).
QUALITY_FORMS = ("prompt_information", "none")
QUALITY_DEFAULTS = {"instruction": "prompt_information", "task": "none", "continual": "prompt_information"}
# Candidate novelty (continual only) when DeliftOptions.novelty is None. "existing_coverage": each candidate column is
# also weighted by the percentile rank of how little the existing data covers that example (the negated floor
# max_p P[j, p] of its own row, on the run's kernel scale), so a demonstration the model already has counts for
# less; "none": the authors' K. Quality alone cost the continual case its novelty (novel share 0.92 -> 0.50 at 10%,
# set A) because a new source's short answers rank low; with both weights it reads 0.83 / 0.96 novel at 10% / 30%
# on set A and 0.83 / 0.92 on set B, against 0.92 / 0.67 for the bare kernel (docs/noise.md).
NOVELTY_FORMS = ("existing_coverage", "none")
NOVELTY_DEFAULTS = {"instruction": "none", "task": "none", "continual": "existing_coverage"}


@dataclasses.dataclass(frozen=True)
class DeliftOptions(MethodOptions):
    """kernel_config: ``KernelConfig`` (distance pmi, the default | rms, the paper's; max_length, batch sizes;
    top_k: the sparse mode, each row's top_k most similar columns only — see ``sparse_kernels``);
    scale: None (the use case's ``KERNEL_FORMS``: row_rank for instruction and continual, minmax for task) |
    row_rank | row_minmax (per pool row over K and P) | minmax (the authors') | clip | clip_minmax (one map for K, Q
    and P); exclude_diagonal: None (the use case's: kept) | True: leave K's diagonal out of the statistics and of
    the objective; task_objective: fl2mi (default, chosen on evidence; needs no pool kernel) |
    flmi (FL1MI, the authors' code) | flmi_paper (the paper's text), see ``methods.submodular``; eta (η, task),
    nu (ν, continual); optimizer: lazy | naive | stochastic; quality: None (the use case's ``QUALITY_DEFAULTS``:
    prompt_information for instruction and continual, none for task) | prompt_information | none (the authors');
    novelty: None (the use case's ``NOVELTY_DEFAULTS``: existing_coverage for continual, none otherwise) |
    existing_coverage (continual only) | none (the authors');
    kernel_dir: crash-safe stores ``<dir>/pool``, ``<dir>/targets``, ``<dir>/existing`` (rerun to resume);
    max_pairs: stop each kernel after this many pairs (resume later); progress: progress bars (default: when
    stderr is a terminal)."""

    kernel_config: KernelConfig = KernelConfig()
    scale: str | None = None
    exclude_diagonal: bool | None = None
    task_objective: str = DEFAULT_TASK_OBJECTIVE
    eta: float = 1.0
    nu: float = 1.0
    optimizer: str = "lazy"
    quality: str | None = None
    novelty: str | None = None
    kernel_dir: str | Path | None = None
    max_pairs: int | None = None
    progress: bool | None = None

    def __post_init__(self):
        if not isinstance(self.kernel_config, KernelConfig):
            raise DataError(f"delift: kernel_config must be a KernelConfig, got {type(self.kernel_config).__name__}")
        if self.scale is not None:
            check_choice("delift", "scale", self.scale, SCALES)
        check_choice("delift", "optimizer", self.optimizer, OPTIMIZERS)
        check_choice("delift", "task_objective", self.task_objective, TASK_OBJECTIVES)
        if self.quality is not None:
            check_choice("delift", "quality", self.quality, QUALITY_FORMS)
        if self.novelty is not None:
            check_choice("delift", "novelty", self.novelty, NOVELTY_FORMS)
        check_at_least("delift", "max_pairs", self.max_pairs)


def raw_utilities(model, tokenizer, pool, use_case: str, targets=None, existing=None, *,
                  kernel_config: KernelConfig = KernelConfig(), kernel_dir=None, max_pairs=None,
                  progress: bool = False, pool_kernel: bool = True) -> dict[str, np.ndarray]:
    """{"K": U(pool, pool), "Q": U(targets, pool)ᵀ (task), "P": U(pool, existing) (continual)} as raw utilities;
    ``pool_kernel=False`` leaves K out (FL2MI reads only Q: n_targets·n pairs instead of n² more).

    Sparse mode (``kernel_config.top_k``): each entry is the (values, indices) pair of a row-major top-k kernel
    instead, with Q left as U(targets, pool) (rows targets); ``sparse_kernels`` turns them into the objective's
    kernels. The pool kernel's neighbours skip the diagonal when ``kernel_config.exclude_diagonal`` is set."""
    sparse = kernel_config.top_k is not None
    store = (lambda name: Path(kernel_dir) / name) if kernel_dir is not None else (lambda name: None)

    def run(rows, columns, name):
        config = store_config(kernel_config, kernel_config.exclude_diagonal, square=columns is None)
        result = utility_kernel(model, tokenizer, rows, columns, config, out_dir=store(name), max_pairs=max_pairs,
                                progress=progress)
        if result is None:  # a non-zero process under jax.distributed: process 0 assembles and selects
            raise DataError("delift: kernel assembled on process 0 only; run the selection there")
        utility = np.asarray(result.utility, dtype=np.float64)
        return (utility, np.asarray(result.indices, np.int32)) if sparse else utility

    raw = {"K": run(list(pool), None, "pool")} if pool_kernel else {}
    if use_case == "task":
        u_target = run(list(targets), list(pool), "targets")
        raw["Q"] = u_target if sparse else u_target.T
    elif use_case == "continual":
        raw["P"] = run(list(pool), list(existing), "existing")
    return raw


def scaled_kernels(raw: dict[str, np.ndarray], scale: str = "minmax", exclude_diagonal: bool = False
                   ) -> dict[str, np.ndarray]:
    """The kernels the objectives see (see the module docstring for the common scale)."""
    ignore = {"K": np.eye(raw["K"].shape[0], dtype=bool)} if exclude_diagonal and "K" in raw else None
    return common_scale(raw, scale, ignore)


def sparse_kernels(raw: dict, n_pool: int, n_targets: int, n_existing: int, scale: str = "minmax",
                   dense_query: bool = False) -> dict:
    """The objective's kernels from sparse raw utilities (``raw_utilities`` in the sparse mode).

    One common scale is fitted over the stored values of all kernels (as ``scaled_kernels`` does over all entries);
    absent pairs count as the floor 0 of the scaled kernel. K becomes a ``SparseKernel``. FL1MI and FLCG read Q
    and P only through their row maxima over the pool (caps η·max_q Q[i, q], floors ν·max_p P[i, p]), so each is
    passed as the (n_pool, 1) column of those maxima: for Q the maximum over the targets that list pool example i
    (scatter-max), for P over pool row i's stored values, each with the implicit 0 where some pair is absent.
    ``dense_query`` (FL2MI, which covers every target) gives Q whole instead: (n_pool, n_targets), 0 where absent."""
    from delift_jax.select import SparseKernel

    values = common_scale({name: v for name, (v, _) in raw.items()}, scale)
    kernels = {"K": SparseKernel(raw["K"][1], values["K"].astype(np.float32), n_pool)} if "K" in raw else {}
    if "Q" in raw and dense_query:
        query = np.zeros((n_pool, n_targets), np.float32)
        indices = raw["Q"][1]
        query[indices, np.arange(n_targets)[:, None]] = values["Q"]
        kernels["Q"] = query
    elif "Q" in raw:
        indices = raw["Q"][1]
        best = np.full(n_pool, -np.inf)
        np.maximum.at(best, indices.reshape(-1), values["Q"].reshape(-1))
        listed = np.bincount(indices.reshape(-1), minlength=n_pool)
        best = np.where(listed < n_targets, np.maximum(best, 0.0), best)
        kernels["Q"] = best.astype(np.float32)[:, None]
    if "P" in raw:
        best = values["P"].max(axis=1)
        if raw["P"][1].shape[1] < n_existing:
            best = np.maximum(best, 0.0)
        kernels["P"] = best.astype(np.float32)[:, None]
    return kernels


def resolved_kernel_form(options: DeliftOptions, use_case: str) -> tuple[str, bool]:
    """(scale, exclude_diagonal) of a run: the options' where set, else the use case's ``KERNEL_FORMS``."""
    default_scale, default_exclude = KERNEL_FORMS.get(use_case, AUTHORS_KERNEL_FORM)
    scale = options.scale if options.scale is not None else default_scale
    exclude = options.exclude_diagonal if options.exclude_diagonal is not None else default_exclude
    if use_case == "task" and scale in ROW_NORMALIZATIONS:
        raise DataError(f"delift: scale {scale!r} normalizes each pool row over K and P; the task case compares "
                        "targets, so use minmax, clip or clip_minmax there")
    return scale, bool(exclude)


def resolved_quality(options: DeliftOptions, use_case: str) -> str:
    """The candidate quality of a run: the options' where set, else the use case's ``QUALITY_DEFAULTS``."""
    return options.quality if options.quality is not None else QUALITY_DEFAULTS.get(use_case, "none")


def resolved_novelty(options: DeliftOptions, use_case: str) -> str:
    """The candidate novelty of a run: the options' where set, else the use case's ``NOVELTY_DEFAULTS``. It reads
    the existing data's kernel P, so only the continual case has it."""
    novelty = options.novelty if options.novelty is not None else NOVELTY_DEFAULTS.get(use_case, "none")
    if novelty != "none" and use_case != "continual":
        raise DataError(f"delift: novelty {novelty!r} weighs candidates by how little the existing data covers them; "
                        "only the continual use case has existing data, so use --novelty none here")
    return novelty


def percentile_ranks(values: np.ndarray, what: str) -> np.ndarray:
    """Each entry's percentile rank among ``values``, in (0, 1] (ties share their average rank): scale-free, so one
    weight means the same on every pool and scoring model."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise DataError(f"{what} must be one finite value per pool example")
    ordered = np.sort(values)
    # 1-based ranks lo+1 .. hi of the entries equal to each value: their average is the value's rank.
    ranks = (np.searchsorted(ordered, values, "left") + np.searchsorted(ordered, values, "right") + 1) / 2.0
    return ranks / len(values)


def quality_weights(information: np.ndarray) -> np.ndarray:
    """Each pool example's percentile rank of its prompt information, in (0, 1]."""
    return percentile_ranks(information, "prompt information")


def novelty_weights(private) -> np.ndarray:
    """Each pool example's percentile rank of how little the existing data covers it, in (0, 1]: the rank of
    −max_p P[j, p] over its row of the scaled P (dense (n_pool, n_existing), or the (n_pool, 1) row maxima of the
    sparse mode), the floor FLCG subtracts for that row."""
    return percentile_ranks(-np.asarray(private, np.float64).max(axis=1), "the existing data's coverage")


def candidate_weights(kernels: dict, use_case: str, options: DeliftOptions,
                      information: np.ndarray | None = None) -> np.ndarray | None:
    """The weight of each candidate column of K for a run (None: the authors' K): the quality rank where the run's
    quality is prompt_information (``information`` then required), times the novelty rank where its novelty is on."""
    weights = None
    if resolved_quality(options, use_case) == "prompt_information" and "K" in kernels:
        if information is None:
            raise DataError("delift: the quality term needs the pool's prompt information; pass it or set "
                            "quality='none'")
        weights = quality_weights(information)
    if resolved_novelty(options, use_case) == "existing_coverage" and "K" in kernels:
        novelty = novelty_weights(kernels["P"])
        weights = novelty if weights is None else weights * novelty
    return weights


def weighted_candidates(kernel, weights: np.ndarray):
    """K with each candidate column j multiplied by weights[j] (dense (n_pool, n_pool) or a ``SparseKernel``):
    facility location then credits pick j with weights[j] · K[i, j] and stays monotone submodular."""
    from delift_jax.select import SparseKernel

    weights = np.asarray(weights, np.float32)
    if isinstance(kernel, SparseKernel):
        return SparseKernel(kernel.indices, np.asarray(kernel.values, np.float32) * weights[np.asarray(
            kernel.indices)], kernel.n_candidates)
    return (np.asarray(kernel) * weights[None, :]).astype(np.asarray(kernel).dtype)


def select_from_raw(raw: dict[str, np.ndarray], use_case: str, k: int, options: DeliftOptions = DeliftOptions(),
                    seed: int = 0, information: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(picks, gains, info, kernels) of DELIFT's selection from dense raw utilities {"K", "Q" (task), "P"
    (continual)} (the pool kernel may be absent for FL2MI): the run's kernel form, K's candidate columns weighted
    by the run's quality (``information``: the pool's prompt information) and novelty (``candidate_weights``),
    then the use case's objective. ``kernels["weights"]`` holds the candidate weights where there are any."""
    scale, exclude = resolved_kernel_form(options, use_case)
    kernels = scaled_kernels(raw, scale, exclude)
    weights = candidate_weights(kernels, use_case, options, information)
    if weights is not None:
        kernels["K"] = weighted_candidates(kernels["K"], weights)
    picks, gains, info = select_on_kernels(use_case, k, kernels.get("K"), kernels.get("Q"), kernels.get("P"),
                                           eta=options.eta, nu=options.nu, optimizer=options.optimizer, seed=seed,
                                           task_objective=options.task_objective)
    info.update({"scale": scale, "exclude_diagonal": exclude})
    if weights is not None:
        kernels["weights"] = weights
    return picks, gains, info, kernels


def pool_information(model, tokenizer, pool, options: DeliftOptions) -> np.ndarray:
    """Prompt information of every pool example (``scoring.prompt_information``; 2 forward passes each), scored
    as the kernel scores responses (its max_length and max_response_tokens)."""
    from delift_jax.scoring import ScoringConfig
    from delift_jax.scoring.prompt_information import prompt_information

    config = options.kernel_config
    return prompt_information(model, tokenizer, list(pool), ScoringConfig(
        max_length=config.max_length, max_response_tokens=config.max_response_tokens),
        progress=show_progress(options.progress))


def store_config(kernel_config: KernelConfig, exclude_diagonal: bool, square: bool = True) -> KernelConfig:
    """The configuration a kernel store of a run is computed with: raw utilities (the scale is applied at
    selection), and the diagonal left out of the neighbours only for the sparse pool kernel (a dense store holds
    it; Q and P have none)."""
    sparse = kernel_config.top_k is not None
    return dataclasses.replace(kernel_config, exclude_diagonal=sparse and square and bool(exclude_diagonal),
                               normalization="none")


def delift_selection(*, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                     tokenizer=None, seed: int = 0, options: DeliftOptions = DeliftOptions()) -> MethodSelection:
    if options.kernel_config.utility == "surrogate" and not refining():  # exact where it matters: methods/refine.py
        stores = store_config(options.kernel_config, resolved_kernel_form(options, use_case)[1])
        return refined_selection(delift_selection, pool=pool, budget=budget, use_case=use_case, targets=targets,
                                 existing=existing, model=model, tokenizer=tokenizer, seed=seed, options=options,
                                 store_config=stores)
    check_inputs("delift", pool, use_case, targets, existing)
    need_model("delift", model, tokenizer)
    k = budget_count(budget, len(pool), "delift")
    if len(pool) < 2:
        raise DataError("delift: the square pool kernel needs at least 2 pool examples")
    sparse = options.kernel_config.top_k is not None
    query_only = use_case == "task" and options.task_objective == "fl2mi"  # FL2MI never reads K
    scale, exclude = resolved_kernel_form(options, use_case)
    # Sparse: an excluded diagonal is left out of the pool kernel's neighbours (a dense K zeroes it after scaling).
    kernel_config = dataclasses.replace(options.kernel_config, exclude_diagonal=exclude
                                        ) if sparse else options.kernel_config
    raw = raw_utilities(model, tokenizer, pool, use_case, targets, existing, kernel_config=kernel_config,
                        kernel_dir=options.kernel_dir, max_pairs=options.max_pairs,
                        progress=show_progress(options.progress), pool_kernel=not query_only)
    quality = resolved_quality(options, use_case) if not query_only else "none"
    novelty = resolved_novelty(options, use_case)
    information = pool_information(model, tokenizer, pool, options) if quality == "prompt_information" else None
    if sparse:
        kernels = sparse_kernels(raw, len(pool), len(targets or ()), len(existing or ()), scale,
                                 dense_query=query_only)
        weights = candidate_weights(kernels, use_case, options, information)
        if weights is not None:
            kernels["K"] = weighted_candidates(kernels["K"], weights)
        raw, indices = {name: v for name, (v, _) in raw.items()}, {name: i for name, (_, i) in raw.items()}
        picks, gains, info = select_on_kernels(use_case, k, kernels.get("K"), kernels.get("Q"), kernels.get("P"),
                                               eta=options.eta, nu=options.nu, optimizer=options.optimizer,
                                               seed=seed, task_objective=options.task_objective)
    else:
        picks, gains, info, kernels = select_from_raw(raw, use_case, k, options, seed, information)
        weights = kernels.pop("weights", None)
    info.update({"method": "delift", "budget": k, "use_case": use_case, "seed": int(seed), "scale": scale,
                 "exclude_diagonal": exclude, "quality": quality, "novelty": novelty, "fine_tune": True,
                 "utility_range": [float(min(u.min() for u in raw.values())),
                                   float(max(u.max() for u in raw.values()))]})
    arrays = {f"utility_{name}": u for name, u in raw.items()}
    if information is not None:
        arrays["prompt_information"] = information
    if weights is not None:
        arrays["candidate_weights"] = np.asarray(weights, np.float64)
    if sparse:  # row-major top-k: utility_X / kernel_K hold values, indices_X their columns
        info["top_k"] = int(options.kernel_config.top_k)
        arrays.update({f"indices_{name}": i for name, i in indices.items()})
        if "K" in kernels:
            arrays["kernel_K"] = np.asarray(kernels["K"].values)
    else:
        arrays.update({f"kernel_{name}": v for name, v in kernels.items()})
    return MethodSelection(picks, gains, info, arrays)
