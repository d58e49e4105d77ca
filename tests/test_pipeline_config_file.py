"""Run files: ``delift run --config run.toml`` mirrors RunConfig and the method options, flags override the file,
and an earlier run's results.json runs again with the same settings and the same selection."""

import argparse
import json

import numpy as np
import pytest

from delift_jax.errors import DataError
from delift_jax.kernel import KernelConfig
from delift_jax.pipeline import RunConfig, RunInputs, load_run_file
from delift_jax.pipeline import command
from test_pipeline_common import ifbench_file, run_command

RUN_TOML = """
use_case = "instruction"
budget = 0.25
methods = ["delift", "random"]
seed = 3
split = [0.6, 0.2, 0.2]
metrics = ["rouge", "nll"]

[kernel]
max_length = 300
max_response_tokens = 8

[train]
max_steps = 2
batch_size = 4

[train.lora]
rank = 4

[generation]
max_new_tokens = 3

[method_options.delift]
eta = 0.5
scale = "clip_minmax"
kernel_config = { max_length = 200 }

[inputs]
model = "smollm2"
data = "ifbench"
dedupe = true
"""


def parse(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_run_file_mirrors_run_config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(RUN_TOML)
    config, inputs = command.resolve_run(parse(["--config", str(path)]))
    assert config.use_case == "instruction" and config.budget == 0.25 and config.seed == 3
    assert config.methods == ("delift", "random") and config.split == (0.6, 0.2, 0.2)
    assert config.kernel == KernelConfig(max_length=300, max_response_tokens=8)
    assert config.train.max_steps == 2 and config.train.batch_size == 4 and config.train.lora.rank == 4
    assert config.generation.max_new_tokens == 3
    assert config.nll_max_length == config.train.max_length  # delift run scores NLL at the training length
    assert inputs == RunInputs(model="smollm2", data="ifbench", dedupe=True)
    options = config.options_for("delift", {"kernel_config": config.kernel, "progress": True, "encoder": None})
    assert options.eta == 0.5 and options.scale == "clip_minmax" and options.progress is True
    assert options.kernel_config == KernelConfig(max_length=200)  # the user's option wins over the run's kernel


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(RUN_TOML)
    config, inputs = command.resolve_run(parse(["--config", str(path), "--seed", "5", "--budget", "7",
                                                "--max-length", "256", "--kernel-max-length", "400",
                                                "--data", "nq-open", "--no-checkpoints"]))
    assert config.seed == 5 and config.train.seed == 5 and config.budget == 7 and config.checkpoints is False
    assert config.train.max_length == config.generation.max_prompt_tokens == config.nll_max_length == 256
    assert config.kernel.max_length == 400 and config.kernel.max_response_tokens == 8  # the rest of [kernel] stays
    assert config.train.max_steps == 2 and inputs.data == "nq-open" and inputs.dedupe is True


def test_quality_flag_reaches_delift_options():
    config, _ = command.resolve_run(parse(["--use-case", "instruction", "--data", "ifbench", "--quality", "none"]))
    assert config.method_options["delift"]["quality"] == "none"
    default, _ = command.resolve_run(parse(["--use-case", "instruction", "--data", "ifbench"]))
    assert "quality" not in default.method_options.get("delift", {})
    with pytest.raises(SystemExit):  # argparse refuses another choice with its one-line usage error
        parse(["--use-case", "instruction", "--data", "ifbench", "--quality", "length"])
    config, _ = command.resolve_run(parse(["--use-case", "continual", "--data", "ifbench", "--existing", "nq-open",
                                           "--novelty", "none"]))
    assert config.method_options["delift"]["novelty"] == "none"
    assert "novelty" not in default.method_options.get("delift", {})


def test_without_a_file_the_flags_give_the_old_defaults():
    config, inputs = command.resolve_run(parse(["--use-case", "task", "--data", "ifbench", "--target", "nq-open"]))
    assert config == RunConfig(use_case="task", nll_max_length=1024)
    assert inputs.model == "smollm2" and inputs.target == "nq-open"


@pytest.mark.parametrize("text, fragment", [
    ("use_case = 'instruction'\ncolour = 1\n[inputs]\ndata = 'ifbench'\n", "run config: unknown key(s) colour"),
    ("use_case = 'instruction'\n[kernel]\nmax_lenght = 3\n[inputs]\ndata = 'ifbench'\n",
     "run config.kernel: unknown key(s) max_lenght; valid keys:"),
    ("use_case = 'instruction'\nmethods = ['delift']\n[method_options.delift]\nnu = 1\nett = 2\n"
     "[inputs]\ndata = 'ifbench'\n", "delift: unknown option(s) ett; valid options:"),
    ("use_case = 'instruction'\n[inputs]\ndata = 'ifbench'\nfile = 'x'\n", "run inputs: unknown key(s) file"),
    ("use_case = 'instruction'\n", "no data: pass --data"),
    ("[inputs]\ndata = 'ifbench'\n", "no use case"),
    ("use_case = [", "is not valid TOML"),
])
def test_bad_run_files_are_one_line_errors(tmp_path, text, fragment):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        command.resolve_run(parse(["--config", str(path)]))
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    ("[train]\nmax_steps = 'ten'\n", "run config.train: key max_steps must be a whole number or None (absent), "
                                     "got 'ten' (a string)"),
    ("seed = 1.5\n", "run config: key seed must be a whole number, got 1.5 (a number)"),
    ("seed = true\n", "run config: key seed must be a whole number, got True (true/false)"),
    ("budget = '0.3'\n", "run config: key budget must be a number, got '0.3' (a string)"),
    ("checkpoints = 1\n", "run config: key checkpoints must be true or false, got 1"),
    ("[kernel]\ntop_k = 2.5\n", "run config.kernel: key top_k must be a whole number or None (absent)"),
    ("[kernel]\ndistance = 3\n", "run config.kernel: key distance must be a string, got 3"),
    ("kernel = 3\n", "run config: key kernel must be a table of KernelConfig settings, got 3"),
    ("[train.lora]\ntargets = ['q_proj', 3]\n", "run config.train.lora: key targets must be a list of strings"),
    ("[generation]\ntemperature = 'hot'\n", "run config.generation: key temperature must be a number"),
    ("methods = 3\n", "run config: key methods must be a list or a string, got 3"),
    ("[method_options.delift]\neta = 'high'\n", "delift: option eta must be a number, got 'high'"),
    ("[inputs]\ndedupe = 'yes'\n", "run inputs: key dedupe must be true or false, got 'yes'"),
])
def test_wrongly_typed_values_are_one_line_errors(tmp_path, text, fragment):
    """Every field's type is checked when the options are built (as unknown keys are), never a TypeError later."""
    path = tmp_path / "run.toml"
    path.write_text("use_case = 'instruction'\n" + text + ("" if "[inputs]" in text else "[inputs]\n")
                    + "data = 'ifbench'\n")
    with pytest.raises(DataError) as info:
        command.resolve_run(parse(["--config", str(path)]))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_whole_numbers_for_float_fields_become_floats():
    config = RunConfig.from_dict({"use_case": "instruction", "train": {"learning_rate": 1, "lora": {"alpha": 8}},
                                  "budget": 3})
    assert type(config.train.learning_rate) is float and type(config.train.lora.alpha) is float
    assert config.budget == 3 and type(config.budget) is int  # float | int: a count stays a count
    assert config.train.fingerprint() == RunConfig.from_dict(
        {"use_case": "instruction", "train": {"learning_rate": 1.0, "lora": {"alpha": 8.0}}}).train.fingerprint()


def test_config_dict_round_trip():
    config = RunConfig(use_case="continual", budget=12, methods="delift,less", split=(0.7, 0.1, 0.2),
                       kernel=KernelConfig(max_length=64, distance="rms"),  # not the default
                       method_options={"delift": {"eta": 0.5, "kernel_config": KernelConfig(max_length=32)},
                                       "LESS-style": {"projection_dim": 16}})
    values = json.loads(json.dumps(config.to_dict()))
    again = RunConfig.from_dict(values)
    assert again.to_dict() == config.to_dict()
    assert again.kernel.distance == "rms"  # a run file naming the paper's distance keeps it under the pmi default
    assert again.options_for("delift", {}).kernel_config == KernelConfig(max_length=32)
    assert again.options_for("less", {}).projection_dim == 16
    with pytest.raises(DataError, match="projection_dim must be at least 1"):
        RunConfig(methods="less", method_options={"less": {"projection_dim": 0}})


def test_results_json_runs_again(tiny_llama, tmp_path):
    """A finished run's results.json, passed back with --config, resolves to the same settings and inputs and
    makes the same selection."""
    data = ifbench_file(tmp_path / "pool.jsonl", 14)
    first, _ = run_command(["--use-case", "instruction", "--model", str(tiny_llama[0]), "--data", str(data),
                            "--budget", "0.5", "--methods", "random,initial", "--seed", "2", "--dedupe",
                            "--out", str(tmp_path / "first")])
    config_values, input_values = load_run_file(tmp_path / "first" / "results.json")
    assert RunConfig.from_dict(config_values).to_dict() == first["config"]
    assert RunInputs.from_dict(input_values) == RunInputs(model=str(tiny_llama[0]), data=str(data), dedupe=True)
    second, _ = run_command(["--config", str(tmp_path / "first" / "results.json"), "--out", str(tmp_path / "again")],
                            fast=False)
    assert second["config"] == first["config"] and second["inputs"] == first["inputs"]
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "random" / "indices.npy"),
                                  np.load(tmp_path / "first" / "random" / "indices.npy"))


def test_progress_bars_follow_the_terminal(monkeypatch):
    from delift_jax.progress import show_progress

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr("sys.stderr", Stream(True))
    assert show_progress() is True and show_progress(False) is False
    monkeypatch.setattr("sys.stderr", Stream(False))
    assert show_progress() is False and show_progress(True) is True
    assert parse(["--use-case", "task"]).progress is None and parse(["--no-progress"]).progress is False
