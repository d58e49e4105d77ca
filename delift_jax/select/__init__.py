"""Submodular data selection over a utility kernel (rows = covered elements, columns = candidates; DESIGN §1.3).

Objectives (objectives.py) reduce FL, FL1MI, FL2MI, the paper's FLMI and FLCG to one saturated facility-location form; the greedy
optimizers (optimizers.py: naive, block-lazy, stochastic) run inside ``jax.lax`` loops, on dense or sparse top-k
kernels (sparse.py), on one device or with the kernel rows sharded over a Mesh (sharding.py).
"""

from delift_jax.select.layout import DenseKernel
from delift_jax.select.maximize import build_selector, maximize, objective_value, resolve_budget
from delift_jax.select.objectives import (
    OBJECTIVE_NAMES,
    Objective,
    evaluate,
    facility_location,
    fl_conditional_gain,
    fl_mutual_information,
    fl_paper_mutual_information,
    fl_variant_mutual_information,
    make_objective,
    prefix_values,
)
from delift_jax.select.greedy_loop import Selection, stochastic_sample_size
from delift_jax.select.optimizers import OPTIMIZERS, lazy_greedy, naive_greedy, stochastic_greedy
from delift_jax.select.sharding import row_mesh, shard_rows
from delift_jax.select.sparse import SparseKernel, sparse_from_dense, sparse_to_dense

__all__ = [
    "OBJECTIVE_NAMES",
    "OPTIMIZERS",
    "DenseKernel",
    "Objective",
    "Selection",
    "SparseKernel",
    "build_selector",
    "evaluate",
    "facility_location",
    "fl_conditional_gain",
    "fl_mutual_information",
    "fl_paper_mutual_information",
    "fl_variant_mutual_information",
    "lazy_greedy",
    "make_objective",
    "maximize",
    "naive_greedy",
    "objective_value",
    "prefix_values",
    "resolve_budget",
    "row_mesh",
    "shard_rows",
    "sparse_from_dense",
    "sparse_to_dense",
    "stochastic_greedy",
    "stochastic_sample_size",
]
