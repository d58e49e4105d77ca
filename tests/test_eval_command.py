"""``delift evaluate`` end to end on the tiny model (JSON results, ICL with a selected subset), and its errors."""

import argparse
import json

import numpy as np
import pytest

from delift_jax.errors import DataError
from delift_jax.evaluate import command, pipeline
from delift_jax.evaluate.generate import GenerationConfig, generate_responses
from examples import EXAMPLES


def parse(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    test = root / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in EXAMPLES[:3]))
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in EXAMPLES))
    np.save(root / "picks.npy", np.array([6, 3, 4, 0, 5, 1], np.int32))
    return root, test, pool


def test_evaluate_command_end_to_end(tiny_llama, files, capsys):
    directory, _, model, tokenizer = tiny_llama
    root, test, pool = files
    out = root / "results.json"
    args = parse(["--model", str(directory), "--data", str(test), "--pool", str(pool), "--indices",
                  str(root / "picks.npy"), "--k", "2", "--metrics", "rouge,embedding,nll,accuracy,judge",
                  "--max-new-tokens", "4", "--judge-max-new-tokens", "4", "--batch-size", "2",
                  "--max-length", "256", "--out", str(out)])
    assert command.run(args) == 0
    results = json.loads(out.read_text())  # strict JSON (no NaN)
    assert results["n_test"] == 3 and results["pool_size"] == 6
    assert set(results["conditions"]) == {"no_icl", "icl"}
    assert results["judge"]["label"] == "small-judge approximation"
    for name, summary in results["conditions"].items():
        for key in ("rouge1", "rougeL", "embedding_cosine", "token_nll", "perplexity", "accuracy", "judge_score",
                    "judge_parse_failures"):
            assert key in summary, (name, key)
        assert summary["n"] == 3 and summary["perplexity"] > 1
    record = results["examples"][0]
    assert record["reference"] == EXAMPLES[0].response
    # The subset excludes the test example itself (pool index 0 == test 0 is in the subset: never its own demo).
    subset = [6, 3, 4, 0, 5, 1]
    assert all(subset[j] != 0 for j in record["icl"]["demonstrations"])
    # no-ICL predictions equal a direct greedy generation with the same settings.
    direct, _ = generate_responses(model, tokenizer, EXAMPLES[:3],
                                   GenerationConfig(max_new_tokens=4, batch_size=2, max_prompt_tokens=256))
    assert [r["no_icl"]["prediction"] for r in results["examples"]] == direct
    printed = capsys.readouterr().out
    assert "| condition |" in printed and "| icl |" in printed and "small-judge approximation" in printed


def test_unknown_metric_lists_valid_ones():
    with pytest.raises(DataError, match="unknown metric 'bleu'; valid metrics: rouge, embedding, nll, accuracy, judge"):
        pipeline.parse_metrics("rouge,bleu")
    with pytest.raises(DataError, match="unknown metric"):
        command.run(parse(["--metrics", "bleu"]))


def test_empty_test_set(files):
    root, test, _ = files
    with pytest.raises(DataError, match="no test examples"):
        command.run(parse(["--data", str(test), "--skip", "10", "--metrics", "rouge"]))
    with pytest.raises(DataError, match="test set is empty"):
        pipeline.evaluate_model(None, None, [], pipeline.EvalSetup())


def test_indices_need_pool_and_must_exist(files):
    root, test, pool = files
    with pytest.raises(DataError, match="--indices index into --pool"):
        command.run(parse(["--data", str(test), "--indices", str(root / "picks.npy")]))
    with pytest.raises(DataError, match="do not exist"):
        command.load_indices(str(root / "nope.npy"))
    np.testing.assert_array_equal(command.load_indices(str(root)), [6, 3, 4, 0, 5, 1])
