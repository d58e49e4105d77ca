"""``delift select``: files in, picks/gains/summary out; errors as one line and exit code 2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from delift_jax import cli
from delift_jax import select as sel

# Run the real `delift` entry point, restricted to the commands whose modules exist in this checkout (other
# sub-commands are built in parallel and may not be importable yet).
RUN_CLI = (
    "import importlib.util, sys\n"
    "from delift_jax import cli\n"
    "def present(module):\n"
    "    try:\n"
    "        return importlib.util.find_spec(module) is not None\n"
    "    except ModuleNotFoundError:\n"
    "        return False\n"
    "cli.COMMANDS = {name: spec for name, spec in cli.COMMANDS.items() if present(spec[0])}\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main(argv):
    """cli.main in-process, over the importable commands only."""
    saved = cli.COMMANDS
    cli.COMMANDS = {name: spec for name, spec in saved.items() if _present(spec[0])}
    try:
        return cli.main(argv)
    finally:
        cli.COMMANDS = saved


@pytest.fixture()
def kernels(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.random((40, 40), dtype=np.float32)
    dense_dir = tmp_path / "dense"
    dense_dir.mkdir()
    np.save(dense_dir / "kernel.npy", kernel)
    sparse = sel.sparse_from_dense(kernel, 6)
    sparse_dir = tmp_path / "sparse"
    sparse_dir.mkdir()
    np.save(sparse_dir / "kernel_indices.npy", np.asarray(sparse.indices))
    np.save(sparse_dir / "kernel_values.npy", np.asarray(sparse.values))
    (sparse_dir / "manifest.json").write_text(json.dumps({"n_candidates": 40}))
    np.save(tmp_path / "q.npy", rng.random((40, 4), dtype=np.float32))
    np.save(tmp_path / "p.npy", rng.random((40, 3), dtype=np.float32))
    return tmp_path, kernel, sparse


def read(out):
    return (np.load(out / "picks.npy"), np.load(out / "gains.npy"), json.loads((out / "summary.json").read_text()))


def test_dense_fl_lazy_matches_the_library(kernels, capsys):
    root, kernel, _ = kernels
    out = root / "out"
    assert main(["select", "--kernel", str(root / "dense"), "--objective", "fl", "--budget", "0.3",
                 "--optimizer", "lazy", "--seed", "1", "--scale", "common", "--out", str(out)]) == 0
    picks, gains, summary = read(out)
    expected = sel.maximize(sel.facility_location(kernel), 12, optimizer="naive")
    assert picks.dtype == np.int32 and picks.tolist() == np.asarray(expected.picks).tolist()
    np.testing.assert_allclose(gains, expected.gains, rtol=1e-6)
    assert summary["k"] == 12 and summary["budget"] == 0.3 and summary["seed"] == 1
    assert summary["objective_value"] == pytest.approx(float(np.sum(gains)), rel=1e-5)
    assert set(summary["timings_s"]) >= {"load", "compile", "select", "total"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert "selected 12 of 40" in capsys.readouterr().out


@pytest.mark.parametrize("objective,extra", [("flmi", ["--query-kernel", "q.npy", "--eta", "0.5"]),
                                             ("flcg", ["--private-kernel", "p.npy", "--nu", "0.5"]),
                                             ("fl2mi", ["--query-kernel", "q.npy"])])
def test_objectives_sparse_npy_and_devices(kernels, objective, extra):
    root, kernel, sparse = kernels
    extra = [str(root / x) if x.endswith(".npy") else x for x in extra]
    out = root / f"out_{objective}"
    source = ["--kernel", str(root / "sparse")] if objective != "fl2mi" else []
    assert main(["select", *source, "--objective", objective, "--budget", "10", "--optimizer", "stochastic",
                 "--seed", "4", "--devices", "4", "--out", str(out), *extra]) == 0
    picks, gains, summary = read(out)
    assert len(set(picks.tolist())) == 10 and summary["devices"] == 4
    if objective != "fl2mi":
        assert summary["kernel_format"] == "sparse" and summary["n_rows"] == 40


def test_plain_npy_and_stop_option(kernels):
    root, kernel, _ = kernels
    np.save(root / "k.npy", kernel)
    out = root / "out_npy"
    assert main(["select", "--kernel", str(root / "k.npy"), "--budget", "1.0", "--optimizer", "naive",
                 "--stop-if-non-positive", "--out", str(out)]) == 0
    picks, gains, summary = read(out)
    assert summary["n_selected"] == len(picks) < 40 and np.all(gains > 0)


def test_bad_input_is_one_line_with_exit_code_2(kernels, tmp_path):
    root, _, _ = kernels
    np.save(root / "bad.npy", np.ones(5, np.float32))
    cases = [
        (["--kernel", str(root / "bad.npy"), "--budget", "0.3"], "2-D"),
        (["--kernel", str(root / "dense"), "--budget", "0"], "budget"),
        (["--kernel", str(root / "dense"), "--budget", "abc"], "budget"),
        (["--kernel", str(root / "missing"), "--budget", "0.3"], "not found"),
        (["--kernel", str(root / "dense"), "--objective", "flmi", "--budget", "0.3"], "query kernel"),
        (["--kernel", str(root / "dense"), "--objective", "flcg", "--private-kernel", str(root / "q.npy"),
          "--nu", "-1", "--budget", "0.3"], "nu"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-c", RUN_CLI, "select", *args, "--out", str(tmp_path / "o")],
                                capture_output=True, text=True)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.stderr)
