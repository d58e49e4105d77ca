"""``delift finetune`` (through its add_arguments/run) and bad input at the command line."""

import argparse
import json

import numpy as np
import pytest

from delift_jax.errors import DataError
from delift_jax.train import command
from examples import EXAMPLES


def _args(*argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in EXAMPLES))
    return path


COMMON = ("--method", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--lr", "1e-2",
          "--schedule", "constant", "--weight-decay", "0.1", "--batch-size", "2", "--max-length", "128",
          "--save-every", "2", "--pad-to-max-length", "--no-progress")


def test_finetune_command_on_a_selected_subset(tiny_llama, data_file, tmp_path, capsys):
    directory = tiny_llama[0]
    np.save(tmp_path / "subset.npy", np.array([6, 0, 3, 2, 5]))
    out = tmp_path / "run"
    code = command.run(_args("--model", str(directory), "--data", str(data_file), "--indices",
                             str(tmp_path / "subset.npy"), "--out", str(out), "--epochs", "2", *COMMON))
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == json.loads((out / "results.json").read_text())
    assert summary["examples"] == 5 and summary["steps"] == 6 and len(summary["losses"]) == 6
    assert summary["tokens_per_s"] > 0 and summary["final_loss"] < summary["first_loss"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("content, message", [
    (np.array([], dtype=np.int64), "selects no examples"),
    (np.array([1, 99]), "index 99 outside the 7 examples"),
    (np.array([1, 1]), "repeats"),
    (np.array([0.5]), "integer"),
])
def test_bad_indices(tiny_llama, data_file, tmp_path, content, message):
    np.save(tmp_path / "subset.npy", content)
    with pytest.raises(DataError, match=message):
        command.run(_args("--model", str(tiny_llama[0]), "--data", str(data_file), "--indices",
                          str(tmp_path / "subset.npy"), "--out", str(tmp_path / "run"), *COMMON))


def test_main_prints_one_line_error(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    code = command.main(["--data", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
