"""scripts/bench_surrogate.py's measures on hand-made data: a surrogate whose sample is the whole kernel keeps the
dense objective exactly (retention 1, nothing left to refine), projections scale each stage by its growth, the
contention flag reads the load before the run, and the 10k mix is distinct, short and seeded."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_surrogate.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports bench_sparse
    spec = importlib.util.spec_from_file_location("bench_surrogate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("objective", ["fl", "fl2mi", "flcg"])
def test_a_sample_of_every_pair_keeps_the_dense_objective(bench, objective):
    rng = np.random.default_rng(0)
    n = 24
    embeddings = rng.normal(size=(n, 16)).astype(np.float32)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    utility = unit @ unit.T + 0.3 * rng.normal(size=(n, n)) + 2 * np.eye(n)
    study = bench.Study(utility, embeddings, np.zeros((n, 2), np.float32), role_fraction=0.25, seed=1)
    budget = 4
    reference = bench.dense_value(study, objective, bench.greedy_picks(objective, study.cases.dense_raw(objective),
                                                                          budget))
    out = bench.retention_case(study, objective, 100, 0, budget, 2, reference, within=False)
    assert out["exact_share_sample"] == 1.0 and out["exact_share_refined"] == 1.0
    assert out["retention"] == pytest.approx(1.0) and out["retention_refined"] == pytest.approx(1.0)
    assert out["rounds"] == 0  # every entry already exact: nothing to refine
    partial = bench.retention_case(study, objective, 20, 0, budget, 1, reference, within=False)
    assert 0.15 < partial["exact_share_sample"] < 0.3  # about 20% (a few diagonal and minimum pairs more)
    grew = partial["exact_share_refined"] > partial["exact_share_sample"]
    assert grew == (partial["rounds"] > 0) and partial["exact_share_refined"] <= 1.0
    assert partial["retention"] > 0.0  # greedy is not optimal: a surrogate's picks may even score above 1


def test_projection_scales_each_stage_by_its_growth(bench):
    stages = {"embeddings": 10.0, "neighbours": 1.0, "exact_pairs": 100.0, "unknown_stage": 2.0}
    out = bench.project(stages, 10_000, 100_000)
    assert out["stages"] == {"embeddings": 100.0, "neighbours": 100.0, "exact_pairs": 100.0, "unknown_stage": 20.0}
    assert out["total_s"] == 320.0


def test_contention_reads_the_load_before_the_run(bench):
    assert bench.contention(0.5, 2.0)["contended"] is False  # the load after the run is the run's own
    assert bench.contention(2.0, 2.0)["contended"] is True


def test_builtin_mix_is_distinct_short_and_seeded(bench):
    mix = bench.builtin_mix(200, 300, seed=3)
    assert len(mix) == 200 and len({(e.prompt, e.response) for e in mix}) == 200
    assert all(len(e.prompt) + len(e.response) <= 300 for e in mix)
    assert [e.prompt for e in bench.builtin_mix(200, 300, seed=3)] == [e.prompt for e in mix]
    assert [e.prompt for e in bench.builtin_mix(200, 300, seed=4)] != [e.prompt for e in mix]


def test_flcg_reports_each_kernel_exact_in_turn_and_p_floor_pairs_reach_the_sample(bench, monkeypatch):
    rng = np.random.default_rng(3)
    n = 40
    embeddings = rng.normal(size=(n, 16)).astype(np.float32)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    utility = unit @ unit.T + 0.3 * rng.normal(size=(n, n)) + 2 * np.eye(n)
    study = bench.Study(utility, embeddings, np.zeros((n, 2), np.float32), role_fraction=0.25, seed=1)
    budget = 6
    reference = bench.dense_value(study, "flcg", bench.greedy_picks("flcg", study.cases.dense_raw("flcg"), budget))
    whole = bench.retention_case(study, "flcg", 100, 0, budget, 0, reference, within=False)
    assert whole["retention_exact_K"] == pytest.approx(1.0) and whole["retention_exact_P"] == pytest.approx(1.0)
    assert set(whole["baseline"]) == {"K", "P"}
    part = bench.retention_case(study, "flcg", 10, 0, budget, 0, reference, within=False)
    assert {"retention_exact_K", "retention_exact_P"} <= set(part)
    monkeypatch.setitem(bench.BLOCK_SAMPLE_OPTIONS, "P", {"floor_share": 1.0})
    blocks = study.surrogates("flcg", 0.1, 0)
    rows, cols = study.blocks("flcg")["P"]
    from delift_jax.kernel.embeddings import top_k_pairs

    nearest = top_k_pairs(embeddings[rows], embeddings[cols], len(cols))[:, 0]
    assert blocks["P"].sampled[np.arange(len(rows)), nearest].all()  # every pool row's floor candidate is exact
    monkeypatch.delitem(bench.BLOCK_SAMPLE_OPTIONS, "P")
    plain = study.surrogates("flcg", 0.1, 0)["P"]
    assert not plain.sampled[np.arange(len(rows)), nearest].all()
