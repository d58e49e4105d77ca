"""``delift select`` refuses to put a pool store and a target store of different distances on one scale: pmi
utilities (log-probability gains) and rms utilities (probability-distance gains) are in different units, and no
joint min-max makes them comparable. The stores are tiny hand-made ones in ``delift kernel``'s layout, each
recording its distance in ``summary.distance`` as ``kernel/outputs.py`` does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delift_jax.errors import SelectionError
from delift_jax.select import io
from test_select_cli import main, read
from test_select_cli_orientation import fake_store, one_line_error, run_cli


def store(path, raw, distance, **kwargs):
    fake_store(path, raw, **kwargs)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["summary"]["distance"] = distance
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture()
def raws():
    rng = np.random.default_rng(0)
    return rng.random((6, 6)), rng.random((3, 6))  # K = U of the pool (6); Q = Uᵀ of 3 targets x 6 pool


def test_common_scale_refuses_stores_of_different_distances(raws, tmp_path):
    k = store(tmp_path / "k", raws[0], "pmi", square=True)
    q = store(tmp_path / "q", raws[1], "rms")
    result = run_cli(["--kernel", str(k), "--objective", "flmi", "--query-kernel", str(q), "--budget", "2",
                      "--scale", "common"], tmp_path)
    one_line_error(result, "--distance pmi", "--distance rms", "rerun one of them with --distance", str(k), str(q))
    assert not (tmp_path / "o" / "summary.json").exists()


@pytest.mark.parametrize("normalization", ["minmax", "none"])
def test_plan_scale_checks_distances_whatever_the_normalization(raws, tmp_path, normalization):
    k = io.open_kernel(store(tmp_path / "k", raws[0], "rms", square=True, normalization=normalization), "kernel K")
    p = io.open_kernel(store(tmp_path / "p", raws[1].T, "pmi", normalization=normalization), "private kernel P")
    with pytest.raises(SelectionError, match=r"kernel K .* --distance rms and private kernel P .* --distance pmi"
                                             ) as info:
        io.plan_scale([k, p], "common")
    assert "\n" not in str(info.value)


def test_same_distance_or_unrecorded_distance_still_selects(raws, tmp_path, capsys):
    k = store(tmp_path / "k", raws[0], "pmi", square=True)
    q = store(tmp_path / "q", raws[1], "pmi")
    assert main(["select", "--kernel", str(k), "--objective", "flmi", "--query-kernel", str(q), "--budget", "2",
                 "--out", str(tmp_path / "same")]) == 0
    picks, _, summary = read(tmp_path / "same")
    assert len(picks) == 2 and summary["common_scale_range"] is not None  # jointly re-normalized as before
    unrecorded = fake_store(tmp_path / "q_old", raws[1])  # a store without summary.distance: nothing to compare
    assert main(["select", "--kernel", str(k), "--objective", "flmi", "--query-kernel", str(unrecorded),
                 "--budget", "2", "--out", str(tmp_path / "old")]) == 0
    assert np.array_equal(read(tmp_path / "old")[0], picks)  # same raw utilities, same picks
