"""scripts/bench_recovery.py: the known-answer data, the selection metrics on kernels whose answer is planted,
and one end-to-end run on the tiny model (kernels, every selection method, fine-tuning, ICL, the final JSON)."""

from __future__ import annotations

import importlib.util
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from delift_jax.data import Example
from delift_jax.report.known_answer import composition, precision, source_mixture

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_recovery.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recovery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fake_loader(name):
    """Four tiny "sources" whose examples say which source they are; prompts of varying length."""
    return [Example(f"Instruction: {name} question {i}{' pad' * (i % 5)}\nInput: \n", f" {name} answer {i}")
            for i in range(30)]


SOURCES = ("alpha", "beta", "gamma", "delta")


def test_mixture_parts_are_disjoint_seeded_and_equal():
    a = source_mixture(0, SOURCES, pool_per_source=3, select_targets=2, test_targets=4, loader=fake_loader)
    b = source_mixture(0, SOURCES, pool_per_source=3, select_targets=2, test_targets=4, loader=fake_loader)
    c = source_mixture(1, SOURCES, pool_per_source=3, select_targets=2, test_targets=4, loader=fake_loader)
    assert a.pool == b.pool and a.select == b.select and a.test == b.test and a.pool != c.pool
    assert np.bincount(a.pool_source).tolist() == [3, 3, 3, 3]
    assert a.pool_source.tolist() != sorted(a.pool_source.tolist())  # interleaved, not in source order
    for s, name in enumerate(SOURCES):
        parts = [set(a.pool[i] for i in np.flatnonzero(a.pool_source == s)), set(a.select[name]), set(a.test[name])]
        assert [len(p) for p in parts] == [3, 2, 4]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert all(name in ex.prompt for part in parts for ex in part)
    grouped = np.array([0] * 3 + [1] * 3 + [2] * 3 + [3] * 3)
    assert composition([0, 4, 5, 11], grouped, 4).tolist() == [1, 2, 0, 1]
    assert precision([3, 4, 9], grouped, 1) == pytest.approx(2 / 3)


def test_duplicates_are_light_edits_of_their_base(bench):
    sizes = bench.Sizes(dup_bases=4, dup_copies=3, dup_held_out=5)
    dups = bench.dup_data(0, sizes, loader=fake_loader, source="alpha")
    assert len(dups.pool) == 12 and np.bincount(dups.base_of).tolist() == [3, 3, 3, 3]
    for base in range(4):
        members = [dups.pool[i] for i in np.flatnonzero(dups.base_of == base)]
        words = {" ".join(m.prompt.replace("Please answer: ", "").replace(" ?", "?").split()).lower()
                 for m in members}
        assert len(words) == 1  # the same question up to case, spacing and the added request
    assert not set(dups.held_out) & set(dups.pool)


def planted_raw(mixture, rng, signal=1.0):
    """Raw utilities where a demonstration from the same source helps (+signal) and others do not."""
    same = mixture.pool_source[:, None] == mixture.pool_source[None, :]
    n = len(mixture.pool)
    pool = rng.normal(0, 0.05, (n, n)) + signal * same
    np.fill_diagonal(pool, 5.0)  # the dominant diagonal of real kernels
    raw = {"task_pool": {"U_rms": pool, "U_pmi": pool * 3}}
    for s, name in enumerate(mixture.sources):
        rows = rng.normal(0, 0.05, (len(mixture.select[name]), n)) + signal * (mixture.pool_source == s)[None, :]
        raw[f"targets:{name}"] = {"U_rms": rows, "U_pmi": rows * 3}
    return raw


def test_planted_target_fl2mi_recovers_it_fl1mi_saturates(bench):
    """On a kernel whose answer is planted (same-source demonstrations help, a dominant diagonal), FL2MI picks only
    the target's source; FL1MI picks one target example first, then spreads: once a row's coverage reaches its cap
    η·max_q Q[i, q], more of the target's source adds nothing, and the other rows' small positive caps take over."""
    mixture = source_mixture(0, SOURCES, pool_per_source=10, select_targets=3, test_targets=1, loader=fake_loader)
    raw = planted_raw(mixture, np.random.default_rng(0))
    n = len(mixture.pool)
    fl1mi = []
    for t, name in enumerate(SOURCES):
        for fraction in (0.1, 0.3):
            k = bench.budget_k(fraction, n)
            for distance in ("rms", "pmi"):
                picks = bench.delift_task_picks(raw, name, k, distance, "fl2mi", eta=1.0)
                assert len(set(picks.tolist())) == k
                assert precision(picks, mixture.pool_source, t) == pytest.approx(min(1.0, 10 / k))  # 10 per source
                picks = bench.delift_task_picks(raw, name, k, distance, "flmi", eta=1.0)
                assert mixture.pool_source[picks[0]] == t
                fl1mi.append(precision(picks, mixture.pool_source, t))
    assert 0.25 < np.mean(fl1mi) < 1.0


def test_planted_novel_source_flcg_picks_it_first(bench):
    """The existing half of source A covers A's other half, so FLCG's first picks come from the novel source B.
    Once B's rows are covered, every further gain is noise (in this planted kernel one source is one tight
    cluster), so only the first picks are determined: with the dominant diagonal the first (each pick covers its
    own row with 1 − floor, which swamps the novelty signal), with the diagonal left out the first two."""
    mixture = source_mixture(0, SOURCES, pool_per_source=10, select_targets=3, test_targets=1, loader=fake_loader)
    raw = planted_raw(mixture, np.random.default_rng(0))
    u = raw["task_pool"]["U_rms"]
    for t in range(4):
        existing, new, novel = bench.continual_split(mixture, t)
        assert len(existing) == 5 and novel.sum() == 5 and not set(existing) & set(new)
        blocks = {"K": u[np.ix_(new, new)], "P": u[np.ix_(new, existing)]}
        scaled = bench.common_minmax(blocks, ignore_diagonal_of="K")
        assert novel[bench.greedy("flcg", 5, scaled["K"], private=scaled["P"])[:2]].all()
        scaled = bench.common_minmax(blocks)
        assert novel[bench.greedy("flcg", 5, scaled["K"], private=scaled["P"])[0]]


def test_common_minmax_scales_jointly_and_drops_the_diagonal(bench):
    k = np.array([[9.0, 1.0], [2.0, 9.0]])
    q = np.array([[0.0], [3.0]])
    joint = bench.common_minmax({"K": k, "Q": q})
    assert joint["K"].max() == 1.0 and joint["Q"][0, 0] == 0.0 and joint["Q"][1, 0] == pytest.approx(3 / 9)
    off = bench.common_minmax({"K": k, "Q": q}, ignore_diagonal_of="K")
    assert np.diag(off["K"]).tolist() == [0.0, 0.0] and off["Q"][1, 0] == 1.0 and off["K"][0, 1] == pytest.approx(1 / 3)
    clipped = bench.common_minmax({"K": k - 2.0}, clip=True)
    assert clipped["K"][0, 1] == 0.0 and clipped["K"][1, 0] == 0.0


DEFAULTS = {"task": "fl2mi_pmi_eta1", "continual": "flcg_pmi_row_rank_quality_novelty_nu1",
            "dup": "fl_pmi_row_rank_quality"}


def test_default_methods_are_the_package_defaults(bench):
    """fl2mi (DeliftOptions' task objective) at η = 1 with the pmi distance (KernelConfig's default)."""
    from delift_jax.kernel import KernelConfig
    from delift_jax.methods.delift import DeliftOptions

    assert (DeliftOptions().task_objective, DeliftOptions().eta, KernelConfig().distance) == ("fl2mi", 1.0, "pmi")
    assert bench.default_methods() == DEFAULTS
    assert bench.parse_args([]).train_methods == ["fl2mi_pmi_eta1", "random"]
    continual_picks = {"random": [], "delift_se": [], "delift_rms": [], "delift_pmi": [], DEFAULTS["continual"]: []}
    assert bench.continual_methods(["fl2mi_pmi_eta1", "random"], continual_picks) == [DEFAULTS["continual"], "random"]
    assert bench.continual_methods(["delift_rms", "fl2mi_rms_eta1", "delift_pmi", "fl2mi_pmi_eta1"],
                                   continual_picks) == ["delift_rms", "delift_pmi", DEFAULTS["continual"]]


def fake_results(bench, seed: int, targets) -> dict:
    """Per-seed results with a distinct, known value for every method, target and budget."""
    methods = list(bench.main_methods()) + [f"{o}_{d}_eta{e:g}" for o in bench.OBJECTIVES for d in ("rms", "pmi")
                                            for e in bench.ETAS]
    value = lambda *key: (zlib.crc32(repr((seed,) + key).encode()) % 997) / 997.0
    precision_ = {m: {b: {t: value(m, b, t) for t in targets} for b in ("0.1", "0.3")} for m in methods}
    continual = ("random", "delift_se", "delift_rms", "delift_pmi", DEFAULTS["continual"], DEFAULTS["dup"])
    return {"task": {"precision": precision_},
            "continual": {"novel": {m: {t: value("novel", m, t) for t in targets} for m in continual}},
            "dup": {"distinct": {m: {"k=bases": value("dup", m), "50%": 0.5} for m in continual},
                    "coverage": {m: {"k=bases": 0.3} for m in continual}},
            "task_nll": {t: {"initial": 9.0, **{f"{kind}:{m}": 5 + value(kind, m, t)
                                                for m in ("fl2mi_pmi_eta1", "delift_rms", "random")
                                                for kind in ("ft", "icl")}} for t in targets},
            "continual_nll": {t: {"existing_only": 9.0, **{f"ft:{m}": 5 + value("cont", m, t)
                                                            for m in (DEFAULTS["continual"], "delift_rms",
                                                                      "random")}}
                              for t in targets[:1]},
            "targets_measured": list(targets)}


def test_summary_delift_keys_report_the_package_defaults(bench):
    """*_delift = fl2mi with pmi (task), FLCG on row ranks (continual), FL on row ranks with the quality term
    (duplicates); the authors' FL1MI with rms, fl2mi with rms and the min-max forms keep their own names."""
    targets = list(SOURCES)
    results = [fake_results(bench, seed, targets) for seed in (0, 1, 2)]
    _, summary = bench.report(results, [0, 1, 2], targets, 0.25)

    def over_seeds(get):
        per_seed = [np.mean([get(r, t) for t in targets]) for r in results]
        return round(float(np.mean(per_seed)), 4)

    def precision_of(method, budget="0.1"):
        return over_seeds(lambda r, t: r["task"]["precision"][method][budget][t])

    assert summary["task_precision_delift"] == precision_of("fl2mi_pmi_eta1")
    assert summary["task_precision_delift_30"] == precision_of("fl2mi_pmi_eta1", "0.3")
    assert summary["task_precision_fl2mi_rms"] == precision_of("fl2mi_rms_eta1")
    assert summary["task_precision_flmi_rms"] == precision_of("delift_rms")
    assert summary["task_precision_flmi_pmi"] == precision_of("delift_pmi")
    assert summary["task_precision_random"] == precision_of("random")
    assert summary["continual_novel_delift"] == over_seeds(
        lambda r, t: r["continual"]["novel"][DEFAULTS["continual"]][t])
    assert summary["continual_novel_delift_minmax"] == over_seeds(lambda r, t: r["continual"]["novel"]["delift_pmi"][t])
    assert summary["continual_novel_delift_rms"] == over_seeds(lambda r, t: r["continual"]["novel"]["delift_rms"][t])
    assert summary["dup_distinct_delift"] == round(float(np.mean([r["dup"]["distinct"][DEFAULTS["dup"]]["k=bases"]
                                                                  for r in results])), 4)
    assert summary["dup_distinct_delift_minmax"] == round(float(np.mean(
        [r["dup"]["distinct"]["delift_pmi"]["k=bases"] for r in results])), 4)
    assert summary["task_nll_delift"] == over_seeds(lambda r, t: r["task_nll"][t]["ft:fl2mi_pmi_eta1"])
    assert summary["task_icl_nll_delift"] == over_seeds(lambda r, t: r["task_nll"][t]["icl:fl2mi_pmi_eta1"])
    assert summary["task_nll_flmi_rms"] == over_seeds(lambda r, t: r["task_nll"][t]["ft:delift_rms"])
    assert summary["task_nll_fl2mi_rms"] is None  # not trained in these results
    assert summary["continual_nll_delift"] == round(float(np.mean(
        [r["continual_nll"][targets[0]][f"ft:{DEFAULTS['continual']}"] for r in results])), 4)
    assert summary["n_seeds_with_training"] == 3
    assert summary["task_precision_delift"] != summary["task_precision_flmi_rms"]  # the fake values differ


@pytest.mark.slow
def test_end_to_end_on_the_tiny_model(bench, tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("delift_jax.data.load_builtin", lambda name, limit=None: fake_loader(name))
    argv = ["--model", str(tiny_llama[0]), "--sources", *SOURCES, "--seeds", "0", "--cache", str(tmp_path),
            "--pool-per-source", "3", "--select-targets", "1", "--test-targets", "2", "--dup-bases", "3",
            "--dup-copies", "2", "--dup-held-out", "3", "--train-steps", "1", "--max-length", "128",
            "--icl-max-length", "256", "--icl-k", "2"]
    monkeypatch.setattr(bench, "DUP_SOURCE", "alpha")
    bench.main(argv)
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    for key in ("task_precision_delift", "task_precision_random", "task_precision_se", "continual_novel_delift",
                "continual_novel_random", "dup_distinct_delift", "dup_distinct_random", "task_nll_delift",
                "task_nll_random"):
        assert summary[key] is not None and np.isfinite(summary[key]), key
        assert 0.0 <= summary[key] <= (1.0 if "nll" not in key else 50.0), key
    assert summary["seeds"] == [0]
    assert any(line.startswith("| fl2mi_pmi_eta1 |") for line in printed)  # the default's row
    assert any(line.startswith("| delift_rms |") for line in printed)      # FL1MI with rms, the authors'
    results = json.loads((tmp_path / "seed0" / "results.json").read_text())
    assert set(results["task_nll"]) == set(SOURCES)
    # *_delift are the package default's figures (fl2mi with pmi; FLCG on row ranks; FL on row ranks with the
    # quality term), read back from the saved results.
    assert summary["task_precision_delift"] == round(float(np.mean(
        list(results["task"]["precision"]["fl2mi_pmi_eta1"]["0.1"].values()))), 4)
    assert summary["continual_novel_delift"] == round(float(np.mean(
        list(results["continual"]["novel"][DEFAULTS["continual"]].values()))), 4)
    assert summary["dup_distinct_delift"] == results["dup"]["distinct"][DEFAULTS["dup"]]["k=bases"]
    assert np.load(tmp_path / "seed0" / "raw_dup_pool.npz")["information"].shape == (6,)  # 3 bases x 2 copies
    assert summary["task_nll_delift"] == round(float(np.mean(
        [unit["ft:fl2mi_pmi_eta1"] for unit in results["task_nll"].values()])), 4)
    assert all(f"ft:{DEFAULTS['continual']}" in unit for unit in results["continual_nll"].values())
    # The raw utilities saved for selection are the two distances of the store (U_rms is rms, not the default).
    raw = np.load(tmp_path / "seed0" / "raw_task_pool.npz")
    with np.load(tmp_path / "seed0" / "task_pool" / "distances.npz") as stored:
        np.testing.assert_allclose(raw["U_rms"], stored["rms_no_example"][:, None] - stored["rms_with_example"],
                                   atol=1e-12, rtol=0)
        np.testing.assert_allclose(raw["U_pmi"], stored["logp_with_example"] - stored["logp_no_example"][:, None],
                                   atol=1e-12, rtol=0)
    assert not np.allclose(raw["U_rms"], raw["U_pmi"])
    # A rerun resumes from the saved results and stores (nothing recomputed, same summary).
    bench.main(argv + ["--report-only"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary


def test_main_leaves_the_compilation_cache_off_under_simulated_devices(bench, monkeypatch, tmp_path):
    """bench_recovery.main, called in-process by the end-to-end test, must not turn the persistent XLA cache on for
    the rest of a 4-device test process (a warm cache aborted the sharded train step there)."""
    import jax

    monkeypatch.delenv("DELIFT_XLA_CACHE", raising=False)
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setattr("delift_jax.models.loading.load_model", lambda *a, **k: (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        bench.main(["--seeds", "0", "--cache", str(tmp_path)])
    assert jax.config.jax_compilation_cache_dir == before
