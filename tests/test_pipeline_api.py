"""The pipeline's stages as a Python API: ``make_splits`` is pure (no files, no model), and ``run_use_case`` takes
records held in memory (a list of mappings here) as well as file paths and built-in names."""

import json

import numpy as np
import pytest

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.evaluate.generate import GenerationConfig
from delift_jax.kernel import KernelConfig
from delift_jax.pipeline import RunConfig, make_splits, run_use_case
from delift_jax.pipeline.inputs import Source
from delift_jax.train import TrainConfig
from test_pipeline_common import ifbench_records


def source(n, name="mem", prefix="q"):
    return Source(name, [Example(f"{prefix} {i}?", f" a {i}") for i in range(n)], None, None, "examples")


def test_make_splits_holds_the_test_split_out_of_selection():
    pool, prior = source(20), source(4, prefix="old")
    splits = make_splits("continual", pool, None, prior, fractions=(0.6, 0.2, 0.2), seed=1, budget=0.5)
    assert splits.evaluation_source == "pool" and len(splits.test) == 4 and len(splits.pool) == 12
    assert not set(splits.candidates) & set(splits.test_indices)
    assert splits.pool == tuple(pool.examples[i] for i in splits.candidates)
    assert splits.budget_k == 6 and splits.existing == tuple(prior.examples)
    assert splits.record["selection_pool"] == list(splits.candidates)
    again = make_splits("continual", pool, None, prior, fractions=(0.6, 0.2, 0.2), seed=1, budget=0.5)
    assert again == splits  # a pure function of its inputs


def test_make_splits_task_uses_the_target_set_for_queries_and_test():
    pool, target = source(6), source(10, prefix="t")
    splits = make_splits("task", pool, target, None, fractions=(0.5, 0.2, 0.3), seed=0, budget=2)
    assert splits.evaluation_source == "target" and len(splits.queries) + len(splits.test) == 10
    assert splits.candidates == tuple(range(6)) and splits.budget_k == 2
    with pytest.raises(DataError, match="budget 7 is above the selection pool"):
        make_splits("task", pool, target, None, fractions=(0.5, 0.2, 0.3), seed=0, budget=7)


def test_run_use_case_takes_records_in_memory(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    records = [{"id": f"r{i}", **r} for i, r in enumerate(ifbench_records(12))]
    config = RunConfig(train=TrainConfig(max_steps=2, batch_size=4, max_length=256), checkpoints=False,
                       generation=GenerationConfig(max_new_tokens=3, max_prompt_tokens=256), nll_max_length=256,
                       kernel=KernelConfig(max_length=160, max_response_tokens=8))
    out = tmp_path / "run"
    results = run_use_case("tiny", iter(records), use_case="instruction", budget=3, methods=("random", "initial"),
                           out_dir=out, config=config, model=model, tokenizer=tokenizer)
    assert results["inputs"]["data"] == "<list_iterator>" and results["inputs"]["n_data"] == 12
    indices = np.load(out / "random" / "indices.npy")
    subset = [json.loads(line) for line in (out / "random" / "subset.jsonl").read_text().splitlines()]
    assert subset == [records[i] for i in indices.tolist()]  # the records as given, every field kept
    assert results["methods"]["random"]["selected"] == 3 and results["methods"]["initial"]["train"] is None
