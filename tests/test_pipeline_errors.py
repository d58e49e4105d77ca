"""``delift run`` bad input: one-line errors (``error: ...``, exit 2) before any model is loaded."""

import json

import pytest

from delift_jax import cli
from delift_jax.methods import METHODS


@pytest.fixture
def delift(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"run": ("delift_jax.pipeline.command", "a use case end to end")})

    def call(argv, capsys):
        code = cli.main(["run", "--model", "no/such/model"] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        return code, err

    return call


BASE = ["--data", "ifbench", "--limit", "16"]


@pytest.mark.parametrize("argv, message", [
    (["--use-case", "task"] + BASE, "needs a target (benchmark) set: pass --target"),
    (["--use-case", "continual"] + BASE, "needs the existing data: pass --existing"),
    (["--use-case", "instruction", "--budget", "0"] + BASE, "outside (0, 1]"),
    (["--use-case", "instruction", "--budget", "0.0"] + BASE, "outside (0, 1]"),
    (["--use-case", "instruction", "--budget", "-0.2"] + BASE, "outside (0, 1]"),
    (["--use-case", "instruction", "--budget", "1.5"] + BASE, "outside (0, 1]"),
    (["--use-case", "instruction", "--budget", "lots"] + BASE, "is not a number"),
    (["--use-case", "instruction", "--budget", "40"] + BASE, "budget 40 is above the selection pool"),
    (["--use-case", "instruction", "--budget", "0.01"] + BASE, "selects nothing"),
    (["--use-case", "instruction", "--methods", "delift,magic"] + BASE, "unknown selection method 'magic'"),
    (["--use-case", "instruction", "--data", "no-such-data.jsonl"], "data 'no-such-data.jsonl'"),
    (["--use-case", "task", "--target", "nq-open", "--target-limit", "1"] + BASE, "target set 'nq-open'"),
])
def test_bad_input_is_one_line_error(delift, capsys, tmp_path, argv, message):
    code, err = delift(argv + ["--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run" / "results.json").exists()


def test_unknown_method_lists_valid_names(delift, capsys, tmp_path):
    code, err = delift(["--use-case", "instruction", "--methods", "magic"] + BASE, capsys)
    assert code == 2 and all(name in err[0] for name in METHODS)


def test_empty_target_set(delift, capsys, tmp_path):
    empty = tmp_path / "bench.jsonl"
    empty.write_text("")
    code, err = delift(["--use-case", "task", "--target", str(empty)] + BASE, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: target set '{empty}'"), err


def test_budget_above_pool_counts_the_selection_pool(delift, capsys):
    # 16 examples, 0.8/0.1/0.1: the selection pool is the 12-14 training examples, not all 16
    code, err = delift(["--use-case", "instruction", "--budget", "16"] + BASE, capsys)
    assert code == 2 and "above the selection pool" in err[0] and "after holding out the test split" in err[0]


def test_target_for_instruction_is_a_warning(tiny_llama, tmp_path, capsys):
    from test_pipeline_common import ifbench_file, run_command

    data = ifbench_file(tmp_path / "pool.jsonl", 10)
    results, stdout = run_command(["--use-case", "instruction", "--model", str(tiny_llama[0]), "--data", str(data),
                                   "--target", "nq-open", "--methods", "initial", "--out", str(tmp_path / "run")])
    assert results["warnings"] == ["--target is used by the task use case only; ignored for instruction"]
    assert results["inputs"]["target"] is None and "warning: --target" in stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["methods"]["initial"]["selected"] == 0


def test_config_parsing():
    from delift_jax.errors import DataError
    from delift_jax.pipeline.config import RunConfig, parse_budget

    assert parse_budget("0.3") == 0.3 and parse_budget("30") == 30 and parse_budget("1.0") == 1.0
    with pytest.raises(DataError, match="ambiguous"):  # one example, or the whole pool?
        parse_budget("1")

    config = RunConfig(methods="DELIFT (SE),random,Random", budget=5)
    assert config.methods == ("delift_se", "random") and config.budget == 5
    json.dumps(config.to_dict())
    for bad in ({"split": (0.5, 0.5, 0.0)}, {"split": (0.5, 0.2, 0.2)}, {"use_case": "other"}, {"budget": True},
                {"metrics": "rouge,bleu"}, {"method_options": {"less": {}}}, {"limit": 0}):
        with pytest.raises(DataError):
            RunConfig(**bad)


def test_fraction_budgets_do_not_lose_a_pick_to_float_error():
    from delift_jax.pipeline.run import resolve_k
    from delift_jax.select.maximize import resolve_budget

    assert 0.29 * 100 < 29  # the float artefact the rounding absorbs
    assert resolve_budget(0.29, 100) == 29 and resolve_k(0.29, 100) == 29
    assert resolve_budget(0.3, 10) == 3 and resolve_budget(0.999, 10) == 9
