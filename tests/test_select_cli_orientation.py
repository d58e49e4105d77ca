"""``delift select`` on the stores of ``delift kernel``: Q / P oriented from the manifest, K and Q / P on one scale.

A store holds U[target, candidate] (rows --targets, columns --data). The query kernel Q[i, q] (pool i as a
demonstration for target q) is therefore Uᵀ of ``delift kernel --data POOL --targets T``; the references below
build it that way, on the common min-max scale of ``delift_jax.methods.delift``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from delift_jax import select as sel
from delift_jax.data import Example
from delift_jax.kernel import checksums
from delift_jax.kernel.store import array_checksum
from delift_jax.kernel.normalize import normalize
from delift_jax.methods.submodular import common_scale
from test_select_cli import RUN_CLI, main, read

POOL = [
    Example("Name a color.", " Blue is a color."),
    Example("What is the capital of France?", "The capital of France is Paris."),
    Example("List three prime numbers.", "2, 3, 5"),
    Example("Compute 12 * 7.", "84"),
    Example("Translate 'cat' to German.", " Katze"),
]
TARGETS = [
    Example("Name a fruit.", " An apple is a fruit."),
    Example("Compute 6 * 7.", "42"),
    Example("What is the capital of Spain?", "The capital of Spain is Madrid."),
    Example("Translate 'dog' to German.", " Hund"),
    Example("List two even numbers.", "2, 4"),
]


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in examples))
    return path


@pytest.fixture(scope="module")
def stores(tiny_llama, tmp_path_factory):
    """Kernel stores written by the real `delift kernel`: the pool against itself, and the pool with 3 and with 5
    targets (5 = the pool size, where a wrong orientation would pass every shape check)."""
    root = tmp_path_factory.mktemp("orientation")
    pool = write_jsonl(root / "pool.jsonl", POOL)
    # rms, not the pmi default: the n_targets == 5 case must tell orientations apart by objective value, and on
    # this tiny random model the pmi stores' wrong orientation happens to agree to 3e-5 (rms: clearly apart).
    common = ["--model", str(tiny_llama[0]), "--max-length", "256", "--batch-size", "2", "--distance", "rms"]
    out = {"pool": root / "pool_kernel"}
    assert main(["kernel", "--data", str(pool), "--out", str(out["pool"]), *common]) == 0
    for n in (3, 5):
        targets = write_jsonl(root / f"targets{n}.jsonl", TARGETS[:n])
        out[n] = root / f"targets{n}_kernel"
        assert main(["kernel", "--data", str(pool), "--targets", str(targets), "--out", str(out[n]), *common]) == 0
    return out


def manifest(store):
    return json.loads((store / "manifest.json").read_text())


@pytest.mark.parametrize("n_targets", [3, 5])
def test_flmi_on_kernel_stores_uses_q_transposed_on_one_scale(stores, n_targets, tmp_path):
    target_store = stores[n_targets]
    info = manifest(target_store)
    assert (info["n_targets"], info["n_candidates"], info["square"]) == (n_targets, len(POOL), False)
    out = tmp_path / "flmi"
    assert main(["select", "--kernel", str(stores["pool"]), "--query-kernel", str(target_store), "--objective", "flmi",
                 "--eta", "0.5", "--budget", "3", "--optimizer", "naive", "--out", str(out)]) == 0
    picks, gains, summary = read(out)

    raw_pool = np.load(stores["pool"] / "utility_raw.npy")
    raw_targets = np.load(target_store / "utility_raw.npy")  # U[target, pool example]
    assert raw_targets.shape == (n_targets, len(POOL))
    scaled = common_scale({"K": raw_pool, "Q": raw_targets.T}, "minmax")
    reference = sel.fl_mutual_information(scaled["K"], scaled["Q"], 0.5)
    expected = sel.maximize(reference, 3, optimizer="naive")
    assert picks.tolist() == np.asarray(expected.picks).tolist()
    assert all(0 <= p < len(POOL) for p in picks) and summary["n_candidates"] == len(POOL)
    np.testing.assert_allclose(gains, np.asarray(expected.gains), rtol=1e-5, atol=1e-6)
    assert summary["objective_value"] == pytest.approx(sel.evaluate(reference, picks), rel=1e-5)
    assert summary["query_kernel_orientation"].startswith("store, transposed")
    assert summary["scale"] == "common" and summary["common_scale_range"] is not None
    if n_targets == len(POOL):
        # The test can tell: Q taken as stored (the old behaviour) or on the stores' own scales gives other values.
        wrong_orientation = sel.fl_mutual_information(scaled["K"], scaled["Q"].T, 0.5)
        own_scales = sel.fl_mutual_information(np.load(stores["pool"] / "kernel.npy"),
                                               np.load(target_store / "kernel.npy").T, 0.5)
        for other in (wrong_orientation, own_scales):
            assert sel.evaluate(other, picks) != pytest.approx(summary["objective_value"], rel=1e-4)


@pytest.mark.parametrize("with_kernel", [False, True])
def test_fl2mi_on_a_target_store_picks_pool_examples(stores, with_kernel, tmp_path):
    out = tmp_path / "fl2mi"
    source = ["--kernel", str(stores["pool"])] if with_kernel else []
    assert main(["select", *source, "--query-kernel", str(stores[3]), "--objective", "fl2mi", "--budget", "3",
                 "--optimizer", "naive", "--out", str(out)]) == 0
    picks, gains, summary = read(out)
    query = np.load(stores[3] / "kernel.npy").T  # (pool, targets); fl2mi compares Q with nothing else
    expected = sel.maximize(sel.fl_variant_mutual_information(query), 3, optimizer="naive")
    assert picks.tolist() == np.asarray(expected.picks).tolist()
    np.testing.assert_allclose(gains, np.asarray(expected.gains), rtol=1e-5, atol=1e-6)
    assert summary["n_candidates"] == len(POOL) and all(0 <= p < len(POOL) for p in picks)


# ---------------------------------------------------------------------------------------------------------------------
# Stores written by hand (same layout as `delift kernel`), for the errors, warnings and scale rules.


def fake_store(path, raw, *, normalization="minmax", square=False, exclude_diagonal=False, sparse_k=None,
               distance="pmi"):
    """A store as `delift kernel` writes it: arrays, manifest, the no-example distances its ``distance`` is derived
    from, and the size and SHA-256 of every array in the manifest. distance None: a store as older versions wrote it
    (no distance evidence, no checksums)."""
    path.mkdir()
    raw = np.asarray(raw, np.float64)
    ignore = np.eye(raw.shape[0], dtype=bool) if exclude_diagonal else None
    if sparse_k is None:
        np.save(path / "utility_raw.npy", raw.astype(np.float32))
        np.save(path / "kernel.npy", normalize(raw, normalization, ignore))
    else:
        indices = np.argsort(-raw, axis=1, kind="stable")[:, :sparse_k].astype(np.int32)
        values = np.take_along_axis(raw, indices, 1)
        np.save(path / "kernel_indices.npy", indices)
        np.save(path / "utility_raw_values.npy", values.astype(np.float32))
        np.save(path / "kernel_values.npy", normalize(values, normalization))
    manifest = {"n_targets": raw.shape[0], "n_candidates": raw.shape[1], "square": square, "complete": True,
                "mode": "dense" if sparse_k is None else "sparse", "top_k": sparse_k,
                "summary": {"normalization": normalization, "exclude_diagonal": exclude_diagonal}}
    if distance is not None:
        rng = np.random.default_rng(raw.shape[0])
        no_example = {"rms": rng.random(raw.shape[0]), "logp": -rng.random(raw.shape[0]),
                      "n_scored": np.full(raw.shape[0], 3)}
        np.savez(path / "no_example.npz", **no_example, checksum=array_checksum(no_example))
        np.save(path / "distance_no_example.npy", no_example["rms" if distance == "rms" else "logp"])
        manifest["summary"]["distance"] = distance
        manifest["files"] = {p.name: checksums.record(p) for p in sorted(path.glob("*.npy"))}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def run_cli(args, tmp_path):
    return subprocess.run([sys.executable, "-c", RUN_CLI, "select", *args, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


def test_store_that_fits_neither_way_is_one_line_error(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "k.npy", rng.random((6, 6), dtype=np.float32))
    fake_store(tmp_path / "q", rng.random((2, 4)), normalization="none")
    for objective in ("flmi", "fl2mi"):
        result = run_cli(["--kernel", str(tmp_path / "k.npy"), "--query-kernel", str(tmp_path / "q"),
                          "--objective", objective, "--budget", "2"], tmp_path)
        one_line_error(result, "(4, 2)", "(2, 4)", "6 rows", "delift kernel --data POOL --targets TARGETS")
    result = run_cli(["--kernel", str(tmp_path / "k.npy"), "--private-kernel", str(tmp_path / "q"),
                      "--objective", "flcg", "--budget", "2"], tmp_path)
    one_line_error(result, "6 rows", "delift kernel --data EXISTING --targets POOL")


def test_transposed_npy_is_refused_for_every_objective(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "k.npy", rng.random((6, 6), dtype=np.float32))
    np.save(tmp_path / "qt.npy", rng.random((3, 6), dtype=np.float32))  # (targets, pool): the wrong way round
    cases = [("flmi", "--query-kernel", "(6, n_targets)"), ("fl2mi", "--query-kernel", "(6, n_targets)"),
             ("flcg", "--private-kernel", "(6, n_existing)")]
    for objective, flag, expected in cases:
        result = run_cli(["--kernel", str(tmp_path / "k.npy"), flag, str(tmp_path / "qt.npy"), "--objective",
                          objective, "--budget", "2"], tmp_path)
        one_line_error(result, "(3, 6)", expected, "rows = the 6 pool examples", "transpose")
    np.save(tmp_path / "odd.npy", rng.random((4, 5), dtype=np.float32))  # fits neither way
    result = run_cli(["--kernel", str(tmp_path / "k.npy"), "--query-kernel", str(tmp_path / "odd.npy"),
                      "--objective", "flmi", "--budget", "2"], tmp_path)
    one_line_error(result, "(4, 5)", "(6, n_targets)", "delift kernel")


def test_flcg_private_store_common_scale_and_stored_scale(tmp_path, capsys):
    rng = np.random.default_rng(2)
    raw_pool = rng.normal(size=(7, 7))
    raw_existing = 3.0 * rng.normal(size=(7, 4)) + 1.0  # a wider range: separate min-max would distort P
    fake_store(tmp_path / "k", raw_pool, square=True, exclude_diagonal=True)
    fake_store(tmp_path / "p", raw_existing)  # --data EXISTING --targets POOL: P = U as stored
    args = ["select", "--kernel", str(tmp_path / "k"), "--private-kernel", str(tmp_path / "p"), "--objective", "flcg",
            "--nu", "0.7", "--budget", "3", "--optimizer", "naive"]
    assert main([*args, "--scale", "common", "--out", str(tmp_path / "common")]) == 0
    picks, gains, summary = read(tmp_path / "common")
    scaled = common_scale({"K": raw_pool.astype(np.float32), "P": raw_existing.astype(np.float32)}, "minmax",
                          {"K": np.eye(7, dtype=bool)})
    reference = sel.fl_conditional_gain(scaled["K"], scaled["P"], 0.7)
    expected = sel.maximize(reference, 3, optimizer="naive")
    assert picks.tolist() == np.asarray(expected.picks).tolist()
    np.testing.assert_allclose(gains, np.asarray(expected.gains), rtol=1e-5, atol=1e-6)
    assert summary["private_kernel_orientation"] == "store, as stored (U)" and summary["warnings"] == []
    assert "warning" not in capsys.readouterr().err

    assert main([*args, "--scale", "stored", "--out", str(tmp_path / "stored")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "min-max normalized separately" in err[0] and "--normalization none" in err[0]
    _, _, stored = read(tmp_path / "stored")
    as_stored = sel.fl_conditional_gain(np.load(tmp_path / "k" / "kernel.npy"), np.load(tmp_path / "p" / "kernel.npy"),
                                        0.7)
    picks_stored = np.load(tmp_path / "stored" / "picks.npy")
    assert stored["objective_value"] == pytest.approx(sel.evaluate(as_stored, picks_stored), rel=1e-5)
    assert stored["objective_value"] != pytest.approx(summary["objective_value"], rel=1e-3)


def test_fl_and_flcg_default_to_row_ranks_as_delift_run_does(tmp_path, capsys):
    """Without --scale, fl and flcg rank each pool row over K's and P's columns (the stores first on one scale),
    as methods.delift does for instruction and continual tuning; flmi refuses row_rank in one line."""
    rng = np.random.default_rng(5)
    raw_pool, raw_existing = rng.normal(size=(7, 7)), 3.0 * rng.normal(size=(7, 4)) + 1.0
    fake_store(tmp_path / "k", raw_pool, square=True, exclude_diagonal=True)
    fake_store(tmp_path / "p", raw_existing)
    ignore = {"K": np.eye(7, dtype=bool)}
    assert main(["select", "--kernel", str(tmp_path / "k"), "--private-kernel", str(tmp_path / "p"), "--objective",
                 "flcg", "--budget", "3", "--optimizer", "naive", "--out", str(tmp_path / "cg")]) == 0
    ranked = common_scale({"K": raw_pool, "P": raw_existing}, "row_rank", ignore)
    expected = sel.maximize(sel.fl_conditional_gain(ranked["K"], ranked["P"], 1.0), 3, optimizer="naive")
    picks, gains, summary = read(tmp_path / "cg")
    assert picks.tolist() == np.asarray(expected.picks).tolist() and summary["scale"] == "row_rank"
    np.testing.assert_allclose(gains, np.asarray(expected.gains), rtol=1e-5, atol=1e-6)
    assert main(["select", "--kernel", str(tmp_path / "k"), "--objective", "fl", "--budget", "3", "--optimizer",
                 "naive", "--out", str(tmp_path / "fl")]) == 0
    alone = common_scale({"K": raw_pool}, "row_rank", ignore)["K"]
    assert read(tmp_path / "fl")[0].tolist() == np.asarray(
        sel.maximize(sel.facility_location(alone), 3, optimizer="naive").picks).tolist()
    capsys.readouterr()
    assert main(["select", "--kernel", str(tmp_path / "k"), "--query-kernel", str(tmp_path / "p"), "--objective",
                 "flmi", "--budget", "3", "--scale", "row_rank", "--out", str(tmp_path / "mi")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale row_rank" in err[0] and "compares targets" in err[0]


def test_private_store_made_the_other_way_is_transposed_with_a_warning(tmp_path, capsys):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "k.npy", rng.random((6, 6), dtype=np.float32))
    fake_store(tmp_path / "p", rng.random((2, 6)), normalization="none")  # --data POOL --targets EXISTING
    assert main(["select", "--kernel", str(tmp_path / "k.npy"), "--private-kernel", str(tmp_path / "p"),
                 "--objective", "flcg", "--budget", "2", "--optimizer", "naive", "--scale", "common",
                 "--out", str(tmp_path / "o")]) == 0
    picks, _, summary = read(tmp_path / "o")
    reference = sel.fl_conditional_gain(np.load(tmp_path / "k.npy"), np.load(tmp_path / "p" / "kernel.npy").T)
    assert picks.tolist() == np.asarray(sel.maximize(reference, 2, optimizer="naive").picks).tolist()
    assert summary["private_kernel_orientation"] == "store, transposed (Uᵀ)"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data EXISTING --targets POOL" in err[0]


def test_sparse_target_store_and_plain_k_warn_about_scale(tmp_path, capsys):
    rng = np.random.default_rng(4)
    kernel = rng.random((6, 6), dtype=np.float32)
    np.save(tmp_path / "k.npy", kernel)
    raw = rng.normal(size=(3, 6))
    fake_store(tmp_path / "q", raw, sparse_k=2)  # 3 targets, each listing its 2 best pool examples
    assert main(["select", "--kernel", str(tmp_path / "k.npy"), "--query-kernel", str(tmp_path / "q"),
                 "--objective", "flmi", "--budget", "3", "--optimizer", "naive", "--out", str(tmp_path / "o")]) == 0
    picks, _, summary = read(tmp_path / "o")
    dense = np.zeros((3, 6), np.float32)  # absent entries count as 0
    np.put_along_axis(dense, np.load(tmp_path / "q" / "kernel_indices.npy").astype(np.int64),
                      np.load(tmp_path / "q" / "kernel_values.npy"), 1)
    reference = sel.fl_mutual_information(kernel, dense.T)
    assert picks.tolist() == np.asarray(sel.maximize(reference, 3, optimizer="naive").picks).tolist()
    assert summary["objective_value"] == pytest.approx(sel.evaluate(reference, picks), rel=1e-5)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be put on one scale" in err[0] and "--normalization none" in err[0]
