"""``delift run`` end to end, instruction use case, on the tiny model and 24 real IFBench examples (a data file
with an extra ``id`` field, so the exported subset must keep the input's own schema)."""

import json

import numpy as np

from test_pipeline_common import check_run, ifbench_file, run_command


def test_instruction_end_to_end(tiny_llama, tmp_path):
    hf_dir = tiny_llama[0]
    data = ifbench_file(tmp_path / "pool.jsonl", 24)
    out = tmp_path / "run"
    results, stdout = run_command(["--use-case", "instruction", "--model", str(hf_dir), "--data", str(data),
                                   "--budget", "0.3", "--methods", "delift,random,full,initial", "--out", str(out)])
    records = [json.loads(line) for line in data.read_text().splitlines()]
    splits = check_run(out, results, records, ("delift", "random", "full", "initial"), schema={"id", "prompt",
                                                                                              "response"})
    assert results["use_case"] == "instruction"
    assert splits["evaluation"]["source"] == "pool"
    pool_split = splits["pool"]
    assert sorted(pool_split["train"] + pool_split["validation"] + pool_split["test"]) == list(range(24))
    assert splits["selection_pool"] == pool_split["train"]            # validation and test never offered
    k = results["splits"]["budget_k"]
    assert k == int(0.3 * len(pool_split["train"]))
    assert results["methods"]["delift"]["selected"] == k
    assert results["methods"]["full"]["selected"] == len(pool_split["train"])
    assert results["methods"]["initial"]["selected"] == 0 and results["methods"]["initial"]["train"] is None
    assert results["methods"]["random"]["train"]["steps"] >= 1
    # DELIFT's kernels landed in the run directory (square pool kernel over the selection pool only)
    kernel = np.load(out / "delift" / "kernels" / "pool" / "utility_raw.npy")
    assert kernel.shape == (len(pool_split["train"]),) * 2
    assert "| delift |" in stdout and "| initial |" in stdout
