"""``delift run`` end to end, continual use case: FanOutQA multi-hop questions are the new data, their single-hop
sub-questions the existing data (built-in datasets: the subset is exported as prompt/response records)."""

import numpy as np

from test_pipeline_common import builtin_records, check_run, run_command


def test_continual_end_to_end(tiny_llama, tmp_path):
    hf_dir = tiny_llama[0]
    out = tmp_path / "run"
    results, _ = run_command(["--use-case", "continual", "--model", str(hf_dir), "--data", "fanoutqa-multihop",
                              "--limit", "16", "--existing", "fanoutqa-singlehop", "--existing-limit", "6",
                              "--split", "0.7,0.1,0.2", "--budget", "0.5", "--methods", "delift,full,initial",
                              "--out", str(out)], after=["--max-length", "640"])  # long multi-hop answers
    pool = builtin_records("fanoutqa-multihop", 16)
    existing = builtin_records("fanoutqa-singlehop", 6)
    splits = check_run(out, results, pool, ("delift", "full", "initial"), {"prompt", "response"},
                       existing_records=existing)
    assert splits["evaluation"]["source"] == "pool"
    assert results["splits"]["existing"] == 6 and splits["existing"]["used"] == list(range(6))
    n = len(splits["selection_pool"])
    assert results["methods"]["delift"]["selected"] == int(0.5 * n)
    # FLCG's P = U(pool, existing): rows the selection pool only
    utility = np.load(out / "delift" / "kernels" / "existing" / "utility_raw.npy")
    assert utility.shape == (n, 6)
    # The model learned the existing data first, and DELIFT's kernels were computed with that model, not the base.
    import json

    from delift_jax.kernel.compute import model_fingerprint

    assert results["existing_training"]["steps"] >= 1
    manifest = json.loads((out / "delift" / "kernels" / "existing" / "manifest.json").read_text())
    assert manifest["model_fingerprint"] != model_fingerprint(tiny_llama[2])
