"""``delift run --top-k K`` end to end on the tiny model: the delift method runs in the sparse mode (n·K pairs),
its store holds the row-major top-k kernel, the selection reports top_k, and bad K values are one-line errors."""

import json

import numpy as np
import pytest

from delift_jax import cli
from test_pipeline_common import check_run, ifbench_file, run_command


def test_instruction_run_in_the_sparse_mode(tiny_llama, tmp_path):
    hf_dir = tiny_llama[0]
    data = ifbench_file(tmp_path / "pool.jsonl", 16)
    out = tmp_path / "run"
    results, stdout = run_command(["--use-case", "instruction", "--model", str(hf_dir), "--data", str(data),
                                   "--budget", "0.4", "--methods", "delift", "--out", str(out), "--top-k", "3",
                                   "--exclude-diagonal", "--optimizer", "stochastic"])
    records = [json.loads(line) for line in data.read_text().splitlines()]
    splits = check_run(out, results, records, ("delift",), schema={"id", "prompt", "response"})
    pool = splits["selection_pool"]
    k = results["splits"]["budget_k"]
    assert results["methods"]["delift"]["selected"] == k >= 1
    selection = json.loads((out / "delift" / "selection.json").read_text())
    info = selection["info"]
    assert info["top_k"] == 3 and info["exclude_diagonal"] is True and info["optimizer"] == "stochastic"
    chosen = selection["indices"]
    assert len(chosen) == len(set(chosen)) == k and set(chosen) <= set(pool)
    # The pool kernel's store is sparse: each selection-pool row lists its 3 nearest other rows (never itself).
    store = out / "delift" / "kernels" / "pool"
    neighbours = np.load(store / "kernel_indices.npy")
    values = np.load(store / "kernel_values.npy")
    assert neighbours.shape == values.shape == (len(pool), 3)
    assert not np.any(neighbours == np.arange(len(pool))[:, None])
    assert np.all((neighbours >= 0) & (neighbours < len(pool)))
    assert not (store / "kernel.npy").exists()  # no dense n x n kernel was written
    assert "| delift |" in stdout


@pytest.mark.parametrize("top_k", ["0", "-2"])
def test_top_k_below_one_is_a_one_line_error(monkeypatch, capsys, tmp_path, top_k):
    monkeypatch.setattr(cli, "COMMANDS", {"run": ("delift_jax.pipeline.command", "a use case end to end")})
    code = cli.main(["run", "--model", "no/such/model", "--use-case", "instruction", "--data", "ifbench",
                     "--limit", "16", "--top-k", top_k, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "top" in err[0], err
    assert not (tmp_path / "run" / "results.json").exists()
