"""``delift select`` refuses to put a pool store and a target store of different distances on one scale: pmi
utilities (log-probability gains) and rms utilities (probability-distance gains) are in different units, and no
min-max, joint (--scale common) or separate (--scale stored), makes them comparable. The stores are tiny hand-made
ones in ``delift kernel``'s layout (``fake_store``): the distance is derived from what they hold (which no-example
distance ``distance_no_example.npy`` equals), never from the editable ``summary.distance``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delift_jax.errors import DataError, SelectionError
from delift_jax.kernel import checksums
from delift_jax.select import io
from test_select_cli import main, read
from test_select_cli_orientation import fake_store, one_line_error, run_cli


def store(path, raw, distance, **kwargs):
    return fake_store(path, raw, distance=distance, **kwargs)


def edit_summary(path, distance):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["summary"]["distance"] = distance
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture()
def raws():
    rng = np.random.default_rng(0)
    return rng.random((6, 6)), rng.random((3, 6))  # K = U of the pool (6); Q = Uᵀ of 3 targets x 6 pool


@pytest.mark.parametrize("scale", ["common", "stored"])
def test_either_scale_refuses_stores_of_different_distances(raws, tmp_path, scale):
    """--scale stored was only a warning whose advice (drop --scale stored) was wrong here (issue 24.3)."""
    k = store(tmp_path / "k", raws[0], "pmi", square=True)
    q = store(tmp_path / "q", raws[1], "rms")
    result = run_cli(["--kernel", str(k), "--objective", "flmi", "--query-kernel", str(q), "--budget", "2",
                      "--scale", scale], tmp_path)
    one_line_error(result, "--distance pmi", "--distance rms", "rerun one of them with --distance", str(k), str(q),
                   "no --scale (common or stored)")
    assert not (tmp_path / "o" / "summary.json").exists()


def test_an_edited_summary_distance_changes_nothing(raws, tmp_path):
    """The distance comes from the arrays (issue 24.5): a manifest edited to claim pmi still holds rms utilities."""
    k = store(tmp_path / "k", raws[0], "pmi", square=True)
    q = store(tmp_path / "q", raws[1], "rms")
    edit_summary(q, "pmi")
    assert io.open_kernel(q, "query kernel Q").distance == "rms"
    result = run_cli(["--kernel", str(k), "--objective", "flmi", "--query-kernel", str(q), "--budget", "2"], tmp_path)
    one_line_error(result, "--distance pmi", "--distance rms", str(q))
    edit_summary(k, "rms")  # both claims now agree with each other and with neither store's arrays
    assert io.open_kernel(k, "kernel K").distance == "pmi"


def test_distance_file_that_matches_neither_distance_is_damage(raws, tmp_path):
    q = store(tmp_path / "q", raws[1], "rms")
    np.save(q / "distance_no_example.npy", np.zeros(3))  # the checksum record no longer fits either
    with pytest.raises(DataError, match="does not match the checksum"):
        io.open_kernel(q, "query kernel Q")
    manifest = json.loads((q / "manifest.json").read_text())  # re-recorded: checksummed, but no distance of the store
    manifest["files"]["distance_no_example.npy"] = checksums.record(q / "distance_no_example.npy")
    (q / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="equals neither distance of no_example.npz"):
        io.open_kernel(q, "query kernel Q")


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
    unrecorded = fake_store(tmp_path / "q_old", raws[1], distance=None)  # older store: no distance to compare
    assert main(["select", "--kernel", str(k), "--objective", "flmi", "--query-kernel", str(unrecorded),
                 "--budget", "2", "--out", str(tmp_path / "old")]) == 0
    assert np.array_equal(read(tmp_path / "old")[0], picks)  # same raw utilities, same picks
