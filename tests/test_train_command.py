"""``delift finetune`` trains on the examples a selection picked: the data options (--dedupe, ...) of
``delift kernel`` apply, and a ``delift select`` output made for other data is refused (not silently re-indexed)."""

import argparse
import json

import numpy as np
import pytest

from delift_jax.errors import DataError
from delift_jax.kernel import command as kernel_command
from delift_jax.kernel.compute import data_fingerprint
from delift_jax.select import command as select_command
from delift_jax.train import command
from examples import EXAMPLES

# Rows 2 and 5 repeat rows 1 and 4: after --dedupe the pool is EXAMPLES, without it every later index shifts.
RAW = [EXAMPLES[0], EXAMPLES[1], EXAMPLES[1], EXAMPLES[2], EXAMPLES[3], EXAMPLES[3], EXAMPLES[4], EXAMPLES[5],
       EXAMPLES[6]]


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in examples))
    return path


def make_dedupe_selection(model_dir, root):
    """RAW as a file, a square kernel over it with --dedupe, and a 'delift select' output on that kernel."""
    raw = write_jsonl(root / "raw.jsonl", RAW)
    kernel, selection = root / "kernel", root / "sel"
    assert kernel_command.run(_parse(kernel_command, ["--model", model_dir, "--data", raw, "--out", kernel,
                                                      "--max-length", 128, "--batch-size", 2, "--dedupe"])) == 0
    assert select_command.run(_parse(select_command, ["--kernel", kernel, "--budget", 4, "--optimizer", "naive",
                                                      "--out", selection])) == 0
    picks = np.load(selection / "picks.npy").tolist()
    manifest = json.loads((kernel / "manifest.json").read_text())
    assert manifest["n_candidates"] == len(EXAMPLES) and len(picks) == 4
    # The test means something only if the undeduplicated list puts other examples at these indices.
    assert [RAW[i] for i in picks] != [EXAMPLES[i] for i in picks]
    return raw, selection, picks, manifest


@pytest.fixture(scope="module")
def selection(tiny_llama, tmp_path_factory):
    return make_dedupe_selection(tiny_llama[0], tmp_path_factory.mktemp("dedupe"))


COMMON = ("--lora-rank", "2", "--batch-size", "2", "--max-length", "128", "--max-steps", "1", "--no-export",
          "--no-progress")


def test_finetune_with_the_kernels_data_options_trains_on_the_picked_examples(tiny_llama, selection, tmp_path,
                                                                               capsys):
    raw, sel, picks, manifest = selection
    out = tmp_path / "run"
    args = _parse(command, ["--model", tiny_llama[0], "--data", raw, "--dedupe", "--indices", sel / "picks.npy",
                            "--out", out, *COMMON])
    assert command.run(args) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["examples"] == len(picks)
    assert summary["data_sha256"] == manifest["data_sha256"]
    assert summary["examples_sha256"] == data_fingerprint([EXAMPLES[i] for i in picks], None)
    assert summary["selection_check"] == "kernel data_sha256"
    assert summary["data_options"] == {"fields": None, "dedupe": True, "drop_empty": False}


def test_finetune_without_the_kernels_data_options_is_refused(tiny_llama, selection, tmp_path):
    raw, sel, _, _ = selection
    with pytest.raises(DataError, match=r"selected from 7 candidates but --data gives 9 examples.*--dedupe"):
        command.run(_parse(command, ["--model", tiny_llama[0], "--data", raw, "--indices", sel / "picks.npy",
                                     "--out", tmp_path / "run", *COMMON]))
    assert not (tmp_path / "run").exists()


def test_finetune_on_other_examples_of_the_same_count_is_refused(tiny_llama, selection, tmp_path, capsys):
    _, sel, _, _ = selection
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", RAW[::-1])  # 7 examples after --dedupe, another order
    code = command.main(["--model", str(tiny_llama[0]), "--data", str(shuffled), "--dedupe", "--indices",
                         str(sel / "picks.npy"), "--out", str(tmp_path / "run"), *COMMON])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "made for other examples than the 7 that --data gives (same count, different content or order)" in err


def test_indices_without_a_select_summary_get_only_the_range_check(tiny_llama, tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", RAW)
    np.save(tmp_path / "subset.npy", np.array([8, 2]))
    out = tmp_path / "run"
    assert command.run(_parse(command, ["--model", tiny_llama[0], "--data", raw, "--indices",
                                        tmp_path / "subset.npy", "--out", out, *COMMON])) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["selection_check"] is None
    assert summary["examples_sha256"] == data_fingerprint([RAW[8], RAW[2]], None)
    with pytest.raises(DataError, match="index 8 outside the 7 examples"):
        command.run(_parse(command, ["--model", tiny_llama[0], "--data", raw, "--dedupe", "--indices",
                                     tmp_path / "subset.npy", "--out", tmp_path / "run2", *COMMON]))
