"""The selection half shared by DELIFT and DELIFT (SE): one objective per use case over kernels on one scale.

Orientation (DESIGN §1.3): rows are covered elements, columns candidates.

* instruction: facility location on the square pool kernel K (n x n).
* task:        an FL mutual-information form with Q (n x n_targets), Q[i, q] = the value of pool example i for
               target q, chosen by ``task_objective``. Default ``fl2mi`` (submodlib's FL2MI):
               I(A; Q) = Σ_q max_{j∈A} Q[j, q] + η Σ_{j∈A} max_q Q[j, q] (K is not used). ``flmi`` (FL1MI, the
               authors' code): Σ_i min(max_{j∈A} K[i, j], η · max_q Q[i, q]). ``flmi_paper`` (the paper's text):
               Σ_i max_{j∈A} K[i, j] + η Σ_{j∈A} max_q Q[j, q]. Why fl2mi: over 3 seeds × 4 targets of
               ``scripts/bench_recovery.py`` it picked the target's source at 10% with precision 0.67 (rms; 1.00
               with pmi) against FL1MI's 0.33 (base share 0.25); FL1MI's caps saturate (docs/evidence.md).
* continual:   FL conditional gain with P (n x n_existing), P[i, p] = the value of existing example p for pool
               example i:  f(A | P) = Σ_i max(max_{j∈A} K[i, j] − ν · max_p P[i, p], 0).

The greedy maximizer is ``delift_jax.select.maximize`` (exactly k picks; ties to the lower index).
"""

from __future__ import annotations

import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel.normalize import ROW_NORMALIZATIONS, apply_scale, fit_scale, row_normalize
from delift_jax.select import facility_location, fl_conditional_gain, fl_mutual_information, maximize
from delift_jax.select.objectives import evaluate, fl_paper_mutual_information, fl_variant_mutual_information
from delift_jax.select.optimizers import OPTIMIZERS

OBJECTIVE_OF_USE_CASE = {"instruction": "fl", "continual": "flcg"}  # task: ``task_objective``
TASK_OBJECTIVES = ("flmi", "fl2mi", "flmi_paper")
DEFAULT_TASK_OBJECTIVE = "fl2mi"  # from bench_recovery over seeds; "flmi" is the authors' code
SCALES = ("minmax", "clip", "clip_minmax") + ROW_NORMALIZATIONS
# scale -> (pointwise clip at 0 first, normalization of ``kernel.normalize`` applied jointly)
_SCALE_STEPS = {"minmax": (False, "minmax"), "clip": (True, "none"), "clip_minmax": (False, "clip_minmax")}


def common_scale(raw: dict[str, np.ndarray], scale: str, ignore: dict[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
    """Map every kernel of one run with the same function, so that K, Q and P stay comparable.

    minmax:      (U − lo) / (hi − lo) with lo, hi the min and max over the union of all kernels' entries.
    clip:        max(U, 0), no rescaling (the paper's text: negative utility counts as none).
    clip_minmax: max(U, 0), then the common min-max.
    row_rank / row_minmax: per covered element (row), over its entries in all kernels together (K's and P's
    columns; they share the pool's rows): the percentile rank / the min-max of the row (``kernel.normalize.
    row_normalize``).
    ``ignore[name]`` marks entries left out of the statistics and set to 0 (the diagonal, on request).
    One ``kernel.normalize`` scale is fitted over all kernels together and applied to each.
    """
    if scale not in SCALES:
        raise DataError(f"kernel scale {scale!r} is unknown; choose one of {', '.join(SCALES)}")
    if scale in ROW_NORMALIZATIONS:
        return row_normalize(raw, scale, ignore)
    clip, method = _SCALE_STEPS[scale]
    ignore = ignore or {}
    values = {name: np.maximum(u, 0.0) if clip else np.asarray(u, np.float64) for name, u in raw.items()}
    fitted = fit_scale(((u, ignore.get(name)) for name, u in values.items()), method)
    return {name: apply_scale(u, fitted, ignore.get(name)) for name, u in values.items()}


def select_on_kernels(use_case: str, budget: int, kernel: np.ndarray, query: np.ndarray | None = None,
                      private: np.ndarray | None = None, *, eta: float = 1.0, nu: float = 1.0,
                      optimizer: str = "lazy", seed: int = 0, task_objective: str = DEFAULT_TASK_OBJECTIVE
                      ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(picks, marginal gains, info) of the use case's objective; see the module docstring."""
    if use_case == "instruction":
        objective = facility_location(kernel)
    elif use_case == "task":
        task_form = {"flmi": fl_mutual_information, "flmi_paper": fl_paper_mutual_information}.get(task_objective)
        if task_objective == "fl2mi":
            objective = fl_variant_mutual_information(query, eta)
        elif task_form is not None:
            objective = task_form(kernel, query, eta)
        else:
            raise DataError(f"task_objective {task_objective!r} is unknown; "
                            f"choose one of {', '.join(TASK_OBJECTIVES)}")
    elif use_case == "continual":
        objective = fl_conditional_gain(kernel, private, nu)
    else:
        raise DataError(f"use_case {use_case!r} is unknown")
    result = maximize(objective, int(budget), optimizer=optimizer, seed=int(seed))
    picks = np.asarray(result.picks, dtype=np.int64)
    gains = np.asarray(result.gains, dtype=np.float64)
    info = {"objective": task_objective if use_case == "task" else OBJECTIVE_OF_USE_CASE[use_case],
            "optimizer": optimizer,
            "objective_value": float(evaluate(objective, picks))}
    if use_case == "task":
        info["eta"] = float(eta)
    if use_case == "continual":
        info["nu"] = float(nu)
    return picks, gains, info
