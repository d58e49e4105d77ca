"""``delift evaluate`` end to end on the tiny model (JSON results, ICL with a selected subset), and its errors:
the test set is checked against the whole selection pool (leakage), and the data options of ``delift kernel``
(--dedupe, ...) apply to --pool so the subset indices pick the selected examples."""

import argparse
import json

import numpy as np
import pytest

from delift_jax import cli
from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.evaluate import command, pipeline
from delift_jax.evaluate.generate import GenerationConfig, generate_responses
from delift_jax.kernel.compute import data_fingerprint
from examples import EXAMPLES
from test_train_command import EXAMPLES as DEDUPED, make_dedupe_selection, write_jsonl


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
    args = parse(["--model", str(directory), "--data", str(test), "--pool", str(pool), "--allow-overlap", "--indices",
                  str(root / "picks.npy"), "--k", "2", "--metrics", "rouge,embedding,nll,accuracy,judge",
                  "--max-new-tokens", "4", "--judge-max-new-tokens", "4", "--batch-size", "2",
                  "--max-length", "256", "--out", str(out)])
    assert command.run(args) == 0
    results = json.loads(out.read_text())  # strict JSON (no NaN)
    assert results["n_test"] == 3 and results["pool_size"] == 6
    assert results["test_pool_overlap"] == 3 and results["allow_overlap"] is True
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
    captured = capsys.readouterr()
    assert "warning: 3 of 3 test examples also occur in the selection pool" in captured.err
    printed = captured.out
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


QUICK = ("--k", "2", "--metrics", "rouge", "--max-new-tokens", "2", "--batch-size", "2", "--max-length", "128")


def cli_evaluate(monkeypatch, capsys, *argv):
    """``delift evaluate ...`` through the console entry point: (exit code, stderr lines)."""
    monkeypatch.setenv("DELIFT_XLA_CACHE", "0")
    code = cli.main(["evaluate", *[str(a) for a in argv]])
    return code, capsys.readouterr().err.strip().splitlines()


def test_test_set_inside_the_pool_is_refused_in_one_line(tiny_llama, files, tmp_path, monkeypatch, capsys):
    root, _, pool = files
    model = tiny_llama[0]
    code, err = cli_evaluate(monkeypatch, capsys, "--model", model, "--data", pool, "--pool", pool, "--limit", 2,
                             "--out", tmp_path / "r.json", *QUICK)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: 2 of 2 test examples also occur in the selection pool --pool")
    assert "--skip" in err[0] and "--allow-overlap" in err[0]
    # The whole ground set counts, not only the subset: picks 0..2 leave rows 5, 6 out, yet they were candidates.
    np.save(tmp_path / "first3.npy", np.array([0, 1, 2]))
    code, err = cli_evaluate(monkeypatch, capsys, "--model", model, "--data", pool, "--skip", 5, "--pool", pool,
                             "--indices", tmp_path / "first3.npy", "--out", tmp_path / "r.json", *QUICK)
    assert code == 2 and len(err) == 1 and "2 of 2 test examples" in err[0] and "test example 5" in err[0]
    # Same examples in another file (identity is prompt + response, not the file).
    other = write_jsonl(tmp_path / "other.jsonl", [Example("Unseen prompt?", "Unseen answer."), EXAMPLES[4]])
    code, err = cli_evaluate(monkeypatch, capsys, "--model", model, "--data", other, "--pool", pool,
                             "--out", tmp_path / "r.json", *QUICK)
    assert code == 2 and "1 of 2 test examples" in err[0] and "test example 1 of --data" in err[0]
    assert not (tmp_path / "r.json").exists()


def test_skipping_past_the_selection_rows_runs(tiny_llama, files, tmp_path, monkeypatch, capsys):
    _, _, pool = files
    out = tmp_path / "r.json"
    np.save(tmp_path / "picks.npy", np.array([4, 0, 2]))
    code, err = cli_evaluate(monkeypatch, capsys, "--model", tiny_llama[0], "--data", pool, "--skip", 5,
                             "--limit", 2, "--pool", pool, "--pool-limit", 5, "--indices", tmp_path / "picks.npy",
                             "--out", out, *QUICK)
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["test_pool_overlap"] == 0 and results["ground_size"] == 5 and results["pool_size"] == 3
    assert [r["reference"] for r in results["examples"]] == [e.response for e in EXAMPLES[5:7]]
    assert results["subset_sha256"] == data_fingerprint([EXAMPLES[i] for i in (4, 0, 2)], None)


@pytest.fixture(scope="module")
def dedupe_selection(tiny_llama, tmp_path_factory):
    return make_dedupe_selection(tiny_llama[0], tmp_path_factory.mktemp("eval-dedupe"))


def test_pool_loads_with_the_kernels_data_options(tiny_llama, dedupe_selection, tmp_path, monkeypatch, capsys):
    raw, selection, picks, manifest = dedupe_selection
    test = write_jsonl(tmp_path / "test.jsonl", [Example("Name a fruit.", " An apple."),
                                                 Example("What is 2 + 2?", "4")])
    out = tmp_path / "r.json"
    code, err = cli_evaluate(monkeypatch, capsys, "--model", tiny_llama[0], "--data", test, "--pool", raw,
                             "--dedupe", "--indices", selection, "--out", out, *QUICK)
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["pool_sha256"] == manifest["data_sha256"] and results["selection_check"] == "kernel data_sha256"
    # The demonstrations come from the examples the selection picked (after dedupe), not RAW[picks].
    assert results["subset_sha256"] == data_fingerprint([DEDUPED[i] for i in picks], None)
    assert results["pool_size"] == len(picks) and results["test_pool_overlap"] == 0
    assert all(0 <= j < len(picks) for r in results["examples"] for j in r["icl"]["demonstrations"])
    # Without --dedupe the pool has 9 examples and the picks would index other ones: refused.
    code, err = cli_evaluate(monkeypatch, capsys, "--model", tiny_llama[0], "--data", test, "--pool", raw,
                             "--indices", selection, "--out", tmp_path / "r2.json", *QUICK)
    assert code == 2 and len(err) == 1
    assert "selected from 7 candidates but --pool gives 9 examples" in err[0] and "--dedupe" in err[0]
