"""``delift run`` end to end, instruction use case, on the tiny model and 24 real IFBench examples (a data file
with an extra ``id`` field, so the exported subset must keep the input's own schema)."""

import json

import numpy as np
import pytest

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


def test_icl_condition_and_model_export(tiny_llama, tmp_path):
    """``--icl K``: the base model is evaluated with the K subset examples nearest to each test prompt; the
    demonstrations come from the method's own subset only. ``--export-models``: fine-tuned methods write a Hugging
    Face directory that loads back with the same config; methods with nothing to train write none."""
    from delift_jax.models import load_model

    hf_dir = tiny_llama[0]
    data = ifbench_file(tmp_path / "pool.jsonl", 20)
    out = tmp_path / "run"
    results, stdout = run_command(["--use-case", "instruction", "--model", str(hf_dir), "--data", str(data),
                                   "--budget", "0.25", "--methods", "random,initial", "--out", str(out),
                                   "--icl", "2", "--export-models"])
    n_test = results["splits"]["test"]
    random_entry = results["methods"]["random"]
    assert random_entry["icl_metrics"]["n"] == n_test and random_entry["icl_metrics"]["k"] == 2
    assert random_entry["icl_metrics"]["pool_size"] == random_entry["selected"]
    assert random_entry["metrics"] != random_entry["icl_metrics"]  # fine-tuned no-ICL vs base model with ICL
    icl = json.loads((out / "random" / "evaluation_icl.json").read_text())
    assert set(icl["conditions"]) == {"icl"}
    demos = np.array([record["icl"]["demonstrations"] for record in icl["examples"]])
    assert demos.shape == (n_test, 2) and demos.min() >= 0 and demos.max() < random_entry["selected"]
    assert results["methods"]["initial"]["icl_metrics"] is None        # nothing selected, nothing to show
    assert "ICL rougeL" in stdout

    assert random_entry["model"] == str(out / "random" / "model")
    exported, _, _ = load_model(out / "random" / "model")
    reference, _, _ = load_model(hf_dir)
    assert exported.config == reference.config
    assert results["methods"]["initial"]["model"] is None and not (out / "initial" / "model").exists()


def test_icl_rejects_negative_k():
    from delift_jax.errors import DataError
    from delift_jax.pipeline.config import RunConfig

    with pytest.raises(DataError, match="icl_k=-1"):
        RunConfig(icl_k=-1)
