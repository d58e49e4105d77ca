"""``delift run`` end to end, task use case: a 16-example IFBench pool, NQ-open as the target (benchmark) set; the
target set's test split is the held-out evaluation set and never enters selection."""

import json

import numpy as np

from test_pipeline_common import builtin_records, check_run, ifbench_file, run_command


def test_task_end_to_end(tiny_llama, tmp_path):
    hf_dir = tiny_llama[0]
    data = ifbench_file(tmp_path / "pool.jsonl", 16)
    out = tmp_path / "run"
    results, _ = run_command(["--use-case", "task", "--model", str(hf_dir), "--data", str(data), "--target",
                              "nq-open", "--target-limit", "10", "--split", "0.6,0.1,0.3", "--budget", "4",
                              "--methods", "delift,random,initial", "--out", str(out)])
    pool = [json.loads(line) for line in data.read_text().splitlines()]
    target = builtin_records("nq-open", 10)
    splits = check_run(out, results, pool, ("delift", "random", "initial"), {"id", "prompt", "response"},
                       eval_records=target, query_records=target)
    assert splits["evaluation"]["source"] == "target"
    parts = splits["target"]
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == list(range(10))
    assert splits["evaluation"]["indices"] == parts["test"] and len(parts["test"]) == 3
    assert splits["selection_queries"] == sorted(parts["train"] + parts["validation"])
    assert splits["selection_pool"] == list(range(16))        # the pool is not split for the task use case
    assert results["methods"]["delift"]["selected"] == 4
    # the FLMI queries are the target selection part: U(targets, pool) has one row per query, none from the test
    utility = np.load(out / "delift" / "kernels" / "targets" / "utility_raw.npy")
    assert utility.shape == (len(splits["selection_queries"]), 16)
    # evaluation ran on the target's held-out examples
    evaluation = json.loads((out / "delift" / "evaluation.json").read_text())
    assert [e["reference"] for e in evaluation["examples"]] == [target[i]["response"] for i in parts["test"]]
