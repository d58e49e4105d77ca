"""scripts/bench_sparse.py's retention measure on a hand-made utility matrix: roles split the examples, and a sparse
kernel that keeps every pair selects exactly what the dense kernel does (fraction 1 for every objective)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_sparse.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_sparse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_split_the_examples(bench):
    cases = bench.Cases(np.zeros((20, 20)), role_fraction=0.25, seed=3)
    assert len(cases.role) == 5 and len(cases.rest) == 15
    assert sorted(np.concatenate([cases.role, cases.rest]).tolist()) == list(range(20))
    assert set(cases.blocks("flmi")) == {"K", "Q"} and set(cases.blocks("fl2mi")) == {"Q"}
    rows, cols = cases.blocks("flcg")["P"]
    assert np.array_equal(rows, cases.rest) and np.array_equal(cols, cases.role)
    raw = cases.dense_raw("flmi")
    assert raw["K"].shape == (15, 15) and raw["Q"].shape == (15, 5)  # Q as (pool, targets)


def test_every_pair_kept_reaches_the_dense_objective(bench):
    rng = np.random.default_rng(0)
    n = 20
    utility = rng.normal(size=(n, n)) + 3 * np.eye(n)
    cases = bench.Cases(utility, role_fraction=0.25, seed=1)
    embeddings = rng.normal(size=(n, 8)).astype(np.float32)
    for objective in bench.OBJECTIVES:
        found, control = bench.retention(cases, objective, 0.3, [n], {"model": embeddings}, 1,
                                         np.random.default_rng(2))
        assert found["model"][n] == pytest.approx(1.0, abs=1e-6), objective
        assert control[n] == pytest.approx(1.0, abs=1e-6), objective


def test_few_neighbours_lose_objective_on_a_spread_kernel(bench):
    """With k = 1 (each row keeps only its nearest column by unrelated embeddings) the FL selection cannot see the
    rows' real best columns, and reaches less than the dense selection."""
    rng = np.random.default_rng(4)
    n = 20
    cases = bench.Cases(rng.random((n, n)), role_fraction=0.25, seed=0)
    found, _ = bench.retention(cases, "fl", 0.3, [1], {"model": rng.normal(size=(n, 8)).astype(np.float32)}, 1,
                               np.random.default_rng(0))
    assert found["model"][1] < 1.0
