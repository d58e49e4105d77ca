"""`delift select --objective flmi_paper`: the paper's written FLMI from .npy kernels equals the library's greedy."""

import json

import numpy as np
import pytest

from delift_jax import select as sel
from delift_jax.cli import main


def test_flmi_paper_from_npy_matches_the_library(tmp_path):
    rng = np.random.default_rng(3)
    kernel = rng.random((30, 30), dtype=np.float32)
    query = rng.random((30, 5), dtype=np.float32)
    np.save(tmp_path / "k.npy", kernel)
    np.save(tmp_path / "q.npy", query)
    out = tmp_path / "out"
    assert main(["select", "--kernel", str(tmp_path / "k.npy"), "--query-kernel", str(tmp_path / "q.npy"),
                 "--objective", "flmi_paper", "--eta", "2.5", "--scale", "stored", "--budget", "9",
                 "--optimizer", "naive", "--out", str(out)]) == 0
    expected = sel.maximize(sel.fl_paper_mutual_information(kernel, query, eta=2.5), 9, optimizer="naive")
    assert np.load(out / "picks.npy").tolist() == np.asarray(expected.picks).tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "flmi_paper" and summary["eta"] == 2.5 and summary["k"] == 9
    assert summary["objective_value"] == pytest.approx(float(np.sum(np.asarray(expected.gains))), rel=1e-5)


def test_flmi_paper_needs_the_query_kernel(tmp_path, capsys):
    np.save(tmp_path / "k.npy", np.ones((6, 6), np.float32))
    assert main(["select", "--kernel", str(tmp_path / "k.npy"), "--objective", "flmi_paper", "--budget", "2",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query kernel" in err[0]
    assert not (tmp_path / "out").exists()
