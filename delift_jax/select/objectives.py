"""Submodular objectives over a utility kernel, all reduced to one saturated facility-location form.

Orientation: rows i are covered elements, columns j are candidates (DESIGN §1.3). Every objective here is

    f(A) = Σ_i [ max(floor_i, min(max_{j∈A} K[i, j], cap_i)) − floor_i ]  +  Σ_{j∈A} bonus_j

with a max over the empty set equal to −∞ (so f(∅) = 0). One greedy engine therefore serves all of them:

* facility location (FL):               f(A) = Σ_i max_{j∈A} K[i, j]                  floor = 0, cap = ∞, bonus = 0
* FL mutual information (FL1MI, η):     I(A; Q) = Σ_i min(max_{j∈A} K[i, j], η·max_q Q[i, q])
                                                                                      floor = 0, cap_i = η·max_q Q[i, q]
* FL variant MI (FL2MI, η):             I(A; Q) = Σ_q max_{j∈A} Q[j, q] + η·Σ_{j∈A} max(max_q Q[j, q], 0)
                                        kernel = Qᵀ (rows = targets q), bonus_j = η·max(max_q Q[j, q], 0)
* FLMI, the paper's text (η):           f(A) = Σ_i max_{j∈A} K[i, j] + η·Σ_{j∈A} max(max_q Q[j, q], 0)
  ("flmi_paper")                                                                      floor = 0, cap = ∞,
                                                                                      bonus_j = η·max(max_q Q[j, q], 0)
* FL conditional gain (FLCG, ν):        f(A | P) = Σ_i max(max_{j∈A} K[i, j] − ν·max(max_p P[i, p], 0), 0)
                                                                                      floor_i = ν·max(max_p P[i, p], 0)

Q[i, q] is the utility of pool example i as a demonstration for target q; P[i, p] the same for existing example p.
Every max here starts at 0, as in submodlib: FL's and FL1MI's coverage (floor 0), FLCG's private maximum and the
modular relevance max_q Q[j, q] of FL2MI and flmi_paper. So raw utilities below 0 never count, and every gain is
>= 0 (the greedy stays exact on kernels with negative entries). flmi_paper is the form the DELIFT paper writes
(facility location over the pool plus each pick's best utility for a target), which its code does not use.
These are exactly submodlib's FacilityLocation, FacilityLocationMutualInformation, FacilityLocationVariantMutual-
Information and FacilityLocationConditionalGain functions (checked numerically in tests/test_select_oracle.py).

The marginal gain of candidate j at coverage c (c starts at floor) is

    gain_j(c) = Σ_i max(min(K[i, j], cap_i) − c_i, 0) + bonus_j,        and picking j sets c_i ← max(c_i, min(K[i, j], cap_i)).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from delift_jax.errors import SelectionError
from delift_jax.select.layout import DenseKernel
from delift_jax.select.sparse import SparseKernel, row_max

OBJECTIVE_NAMES = ("fl", "flmi", "fl2mi", "flmi_paper", "flcg")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A saturated facility-location objective (see the module docstring for the exact math).

    kernel: K (n_rows, n_candidates; rows are covered elements) as a DenseKernel (held candidate-major, see
            layout.py) or a SparseKernel (top-k per row).
    floor:  float32[n_rows] coverage before anything is picked.
    cap:    float32[n_rows] per-row ceiling on a utility, or None for no ceiling.
    bonus:  float32[n_candidates] modular term added to a candidate's gain, or None.
    name:   which objective this is (one of OBJECTIVE_NAMES); static under jit.
    """

    kernel: DenseKernel | SparseKernel
    floor: jax.Array
    cap: jax.Array | None
    bonus: jax.Array | None
    name: str = "fl"

    @property
    def n_rows(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def n_candidates(self) -> int:
        return int(self.kernel.shape[1])


jax.tree_util.register_dataclass(Objective, data_fields=["kernel", "floor", "cap", "bonus"], meta_fields=["name"])


# ---------------------------------------------------------------------------------------------------------------------
# Input checks: one-line messages that name the problem and the fix.


def _check_kernel(kernel, what: str) -> None:
    """A kernel must be 2-D, non-empty and finite; a sparse one must also have in-range indices."""
    if isinstance(kernel, DenseKernel):
        kernel = kernel.columns  # the checks below do not depend on the orientation
    if isinstance(kernel, SparseKernel):
        indices, values = np.asarray(kernel.indices), np.asarray(kernel.values)
        if indices.ndim != 2 or values.ndim != 2 or indices.shape != values.shape:
            raise SelectionError(
                f"{what}: sparse indices {indices.shape} and values {values.shape} must both be 2-D and of the same "
                "shape (n_rows, k_nn)"
            )
        if kernel.n_candidates < 1 or indices.shape[0] < 1 or indices.shape[1] < 1:
            raise SelectionError(f"{what} is empty (n_rows={indices.shape[0]}, n_candidates={kernel.n_candidates})")
        if not np.issubdtype(indices.dtype, np.integer):
            raise SelectionError(f"{what}: sparse indices must be integers, got {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() >= kernel.n_candidates):
            raise SelectionError(
                f"{what}: sparse indices must lie in [0, {kernel.n_candidates}); found "
                f"[{indices.min()}, {indices.max()}]"
            )
        if not np.all(np.isfinite(values.astype(np.float32))):
            raise SelectionError(f"{what} has non-finite values (NaN or inf); clean or recompute the kernel")
        if values.size and values.min() < 0:
            raise SelectionError(
                f"{what}: sparse values must be >= 0 (absent entries count as 0, the floor); found {values.min()}"
            )
        ordered = np.sort(indices, axis=1)
        if np.any(ordered[:, 1:] == ordered[:, :-1]):
            raise SelectionError(f"{what}: sparse indices repeat within a row; each row must list distinct candidates")
        return
    shape = np.shape(kernel)
    if len(shape) != 2:
        raise SelectionError(f"{what} must be 2-D (n_rows, n_candidates), got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise SelectionError(f"{what} is empty (shape {shape}); it needs at least one row and one column")
    if not _all_finite(kernel):
        raise SelectionError(f"{what} has non-finite values (NaN or inf); clean or recompute the kernel")


def _all_finite(array) -> bool:
    """Finiteness without a full-size temporary: a fused reduction on the device, row blocks on the host."""
    if isinstance(array, jax.Array):
        return bool(jnp.all(jnp.isfinite(array)))
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        return True
    step = max(1, (1 << 22) // max(1, array.shape[1]))
    return all(bool(np.isfinite(array[start:start + step].astype(np.float32)).all())
               for start in range(0, array.shape[0], step))


def _check_weight(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise SelectionError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_rows_agree(kernel, other, kernel_name: str, other_name: str) -> None:
    if other.shape[0] != kernel.shape[0]:
        raise SelectionError(
            f"{other_name} has {other.shape[0]} rows but {kernel_name} has {kernel.shape[0]}; both rows must index the "
            "same covered elements"
        )


def _as_float(array):
    """A jax array in its own float dtype (float32 or bfloat16 stay; integers and float64 become float32)."""
    array = jnp.asarray(array)
    if not jnp.issubdtype(array.dtype, jnp.floating) or array.dtype == jnp.float64:
        array = array.astype(jnp.float32)
    return array


def _as_kernel(kernel) -> DenseKernel | SparseKernel:
    """A DenseKernel or SparseKernel on the device; a plain (n_rows, n_candidates) array is laid out candidate-major."""
    if isinstance(kernel, SparseKernel):
        return SparseKernel(jnp.asarray(kernel.indices, jnp.int32), _as_float(kernel.values), int(kernel.n_candidates))
    if isinstance(kernel, DenseKernel):
        return DenseKernel(_as_float(kernel.columns))
    return DenseKernel.from_rows(_as_float(kernel))


def _as_rows(kernel):
    """Q or P as something row_max understands: a (n_rows, m) array or a SparseKernel."""
    if isinstance(kernel, DenseKernel):
        return kernel.rows()
    if isinstance(kernel, SparseKernel):
        return _as_kernel(kernel)
    return _as_float(kernel)


# ---------------------------------------------------------------------------------------------------------------------
# Constructors.


def facility_location(kernel) -> Objective:
    """FL: f(A) = Σ_i max_{j∈A} K[i, j] (coverage floor 0)."""
    _check_kernel(kernel, "kernel K")
    kernel = _as_kernel(kernel)
    return Objective(kernel, jnp.zeros((kernel.shape[0],), jnp.float32), None, None, "fl")


def fl_mutual_information(kernel, query_kernel, eta: float = 1.0) -> Objective:
    """FL1MI: I(A; Q) = Σ_i min(max_{j∈A} K[i, j], η·max_q Q[i, q]); Q is (n_rows, n_targets)."""
    _check_kernel(kernel, "kernel K")
    _check_kernel(query_kernel, "query kernel Q")
    _check_rows_agree(kernel, query_kernel, "kernel K", "query kernel Q")
    eta = _check_weight(eta, "eta (η)")
    kernel = _as_kernel(kernel)
    cap = eta * row_max(_as_rows(query_kernel))
    return Objective(kernel, jnp.zeros((kernel.shape[0],), jnp.float32), cap, None, "flmi")


def fl_variant_mutual_information(query_kernel, eta: float = 1.0) -> Objective:
    """FL2MI: I(A; Q) = Σ_q max_{j∈A} Q[j, q] + η·Σ_{j∈A} max(max_q Q[j, q], 0); Q is dense (n_candidates, n_targets).

    Facility location over Qᵀ (targets are the covered rows) plus the modular bonus η·max(max_q Q[j, q], 0).
    """
    if isinstance(query_kernel, SparseKernel):
        raise SelectionError("fl2mi needs a dense query kernel Q (n_candidates, n_targets); densify the sparse one")
    _check_kernel(query_kernel, "query kernel Q")
    eta = _check_weight(eta, "eta (η)")
    query_kernel = _as_rows(query_kernel)
    kernel = DenseKernel(query_kernel)  # Q (n_candidates, n_targets) is already Qᵀ laid out candidate-major
    bonus = eta * jnp.maximum(row_max(query_kernel), 0.0)
    return Objective(kernel, jnp.zeros((kernel.shape[0],), jnp.float32), None, bonus, "fl2mi")


def fl_paper_mutual_information(kernel, query_kernel, eta: float = 1.0) -> Objective:
    """flmi_paper: f(A) = Σ_i max_{j∈A} K[i, j] + η·Σ_{j∈A} max(max_q Q[j, q], 0); Q is (n_candidates, n_targets).

    The DELIFT paper's written FLMI: facility location over the pool (diversity) plus a modular relevance term, each
    pick's best utility for a target. K must be square over the candidates (rows = pool = candidates).
    """
    _check_kernel(kernel, "kernel K")
    _check_kernel(query_kernel, "query kernel Q")
    if kernel.shape[0] != kernel.shape[1]:
        raise SelectionError(f"flmi_paper needs the square pool kernel K (n, n); got shape {tuple(kernel.shape)}")
    _check_rows_agree(kernel, query_kernel, "kernel K", "query kernel Q")
    eta = _check_weight(eta, "eta (η)")
    kernel = _as_kernel(kernel)
    bonus = eta * jnp.maximum(row_max(_as_rows(query_kernel)), 0.0)
    return Objective(kernel, jnp.zeros((kernel.shape[0],), jnp.float32), None, bonus, "flmi_paper")


def fl_conditional_gain(kernel, private_kernel, nu: float = 1.0) -> Objective:
    """FLCG: f(A | P) = Σ_i max(max_{j∈A} K[i, j] − ν·max(max_p P[i, p], 0), 0); P is (n_rows, n_existing).

    The private maximum starts at 0 (submodlib's FacilityLocationConditionalGain): an example whose best existing
    utility is negative is not covered by the existing data at all.
    """
    _check_kernel(kernel, "kernel K")
    _check_kernel(private_kernel, "private kernel P")
    _check_rows_agree(kernel, private_kernel, "kernel K", "private kernel P")
    nu = _check_weight(nu, "nu (ν)")
    kernel = _as_kernel(kernel)
    floor = nu * jnp.maximum(row_max(_as_rows(private_kernel)), 0.0)
    return Objective(kernel, floor, None, None, "flcg")


def make_objective(name: str, kernel=None, *, query_kernel=None, private_kernel=None, eta: float = 1.0,
                   nu: float = 1.0) -> Objective:
    """Build an objective by name: "fl" (K), "flmi" (K, Q, η), "fl2mi" (Q, η), "flmi_paper" (K, Q, η),
    "flcg" (K, P, ν)."""
    if name == "fl":
        if kernel is None:
            raise SelectionError("objective fl needs a kernel K")
        return facility_location(kernel)
    if name == "flmi":
        if kernel is None or query_kernel is None:
            raise SelectionError("objective flmi needs a kernel K and a query kernel Q (--query-kernel)")
        return fl_mutual_information(kernel, query_kernel, eta)
    if name == "fl2mi":
        if query_kernel is None:
            raise SelectionError("objective fl2mi needs a query kernel Q (--query-kernel)")
        return fl_variant_mutual_information(query_kernel, eta)
    if name == "flmi_paper":
        if kernel is None or query_kernel is None:
            raise SelectionError("objective flmi_paper needs a kernel K and a query kernel Q (--query-kernel)")
        return fl_paper_mutual_information(kernel, query_kernel, eta)
    if name == "flcg":
        if kernel is None or private_kernel is None:
            raise SelectionError("objective flcg needs a kernel K and a private kernel P (--private-kernel)")
        return fl_conditional_gain(kernel, private_kernel, nu)
    raise SelectionError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVE_NAMES)}")


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation of any set.


def coverage_of(objective: Objective, member) -> jax.Array:
    """Coverage c_i = max(floor_i, min(max_{j∈A} K[i, j], cap_i)) of the set A given as a bool[n_candidates] mask.

    A mask (not an index list) keeps one compiled shape for every set size.
    """
    kernel = objective.kernel
    if isinstance(kernel, SparseKernel):
        listed = member[kernel.indices]
        best = jnp.max(jnp.where(listed, kernel.values.astype(jnp.float32), -jnp.inf), axis=1)
        # A chosen candidate that a row does not list has the implicit utility 0 there (indices are distinct per row).
        best = jnp.where(jnp.sum(listed, axis=1) < jnp.sum(member), jnp.maximum(best, 0.0), best)
    else:
        best = jnp.max(jnp.where(member[:, None], kernel.columns.astype(jnp.float32), -jnp.inf), axis=0)
    if objective.cap is not None:
        best = jnp.minimum(best, objective.cap)
    return jnp.maximum(objective.floor, best)


@jax.jit
def _value(objective: Objective, member) -> jax.Array:
    value = jnp.sum(coverage_of(objective, member) - objective.floor)
    if objective.bonus is not None:
        value = value + jnp.sum(jnp.where(member, objective.bonus, 0.0))
    return value


def evaluate(objective: Objective, chosen: Sequence[int] | jax.Array) -> float:
    """f(A) for any set A of candidate indices (duplicates are ignored; the empty set gives 0)."""
    chosen_np = np.asarray(chosen, dtype=np.int64).reshape(-1)
    if chosen_np.size and (chosen_np.min() < 0 or chosen_np.max() >= objective.n_candidates):
        raise SelectionError(
            f"set indices must lie in [0, {objective.n_candidates}); found [{chosen_np.min()}, {chosen_np.max()}]"
        )
    member = np.zeros(objective.n_candidates, bool)
    member[chosen_np] = True
    return float(_value(objective, jnp.asarray(member)))


def prefix_values(objective: Objective, picks: Sequence[int]) -> np.ndarray:
    """f(A_t) for every greedy prefix A_t = picks[:t], t = 1..len(picks) (host loop; for tests and reports)."""
    picks = [int(p) for p in np.asarray(picks).reshape(-1)]
    return np.array([evaluate(objective, picks[: t + 1]) for t in range(len(picks))], dtype=np.float64)
