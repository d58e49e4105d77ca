"""Bad inputs and injected I/O faults, driven in-process through ``delift_jax.cli.main``.

Every bad input must end in: exit status 2, exactly one ``error:`` line on stderr that names the problem, no
traceback, and no new or changed file under the output path. Most cases fail before any model loads (the model
given is a path that does not exist, so a case that slips past its check fails on the model instead of running).

Injected faults (ENOSPC, EIO) hit the atomic writer while a kernel block, a training checkpoint or a result file
is written: the run ends in one clean error line, leaves no half-written file, and the same command run again
finishes with the same result as a run that never failed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from delift_jax import atomic_io, cli, cli_checks

NO_MODEL = "no/such/model-dir"


# ------------------------------------------------------------------------------------------------ the world
@pytest.fixture
def world(tmp_path, monkeypatch):
    """Input files every case may name; the working directory is the world directory."""
    monkeypatch.chdir(tmp_path)
    records = [{"prompt": f"Question {i}: what is {i} + {i}?", "response": f" It is {2 * i}."} for i in range(6)]
    Path("data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    Path("empty.jsonl").write_text("")
    Path("broken.jsonl").write_text('{"prompt": "a", "response": \n')
    Path("afile").write_text("I am a file\n")
    Path("adir").mkdir()
    (Path("adir") / "keep.txt").write_text("keep\n")
    Path("dangling").symlink_to(tmp_path / "nowhere")
    np.save("idx_range.npy", np.array([0, 99]))
    np.save("idx_dup.npy", np.array([1, 1]))
    np.save("idx_float.npy", np.array([0.5, 1.0]))
    np.save("idx_empty.npy", np.zeros(0, np.int64))
    np.save("idx_object.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    Path("idx.txt").write_text("zero one\n")
    kernel = np.random.default_rng(0).random((6, 6)).astype(np.float32)
    np.save("k.npy", kernel)
    np.save("k_object.npy", np.array([kernel], dtype=object), allow_pickle=True)
    np.save("k_rect.npy", kernel[:, :4])
    np.save("k_nan.npy", np.full((6, 6), np.nan, np.float32))
    Path("weights.bin").write_bytes(pickle.dumps({"w": 1}))
    Path("model-pickled").mkdir()
    (Path("model-pickled") / "config.json").write_text("{}")
    (Path("model-pickled") / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    return tmp_path


def snapshot(path: Path):
    """Everything under ``path`` (kind, and content hash for files); None when it does not exist."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() and not path.exists():
        return ("dangling", os.readlink(path))
    if path.is_file():
        return ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return ("dir", {str(p.relative_to(path)): snapshot(p) if p.is_file() else "dir" for p in sorted(path.rglob("*"))})


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def assert_clean_error(code, err, fragment):
    assert "Traceback" not in err, err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(error_lines) == 1, err
    assert fragment in error_lines[0], (fragment, error_lines[0])


# ------------------------------------------------------------------------------------------------ the matrix
REQUIRED = {  # the least each command needs besides the output option
    "score": ["score", "--model", NO_MODEL, "--data", "data.jsonl"],
    "kernel": ["kernel", "--model", NO_MODEL, "--data", "data.jsonl"],
    "select": ["select", "--kernel", "k.npy", "--budget", "0.5"],
    "finetune": ["finetune", "--model", NO_MODEL, "--data", "data.jsonl", "--no-progress"],
    "evaluate": ["evaluate", "--model", NO_MODEL, "--data", "data.jsonl"],
    "run": ["run", "--use-case", "instruction", "--model", NO_MODEL, "--data", "data.jsonl"],
    "demo": ["demo", "--model", NO_MODEL],
}
OUT = {"kernel": "out", "select": "out", "finetune": "out", "evaluate": "out.json", "run": "out", "demo": "out",
       "score": None}
DIR_COMMANDS = ("kernel", "select", "finetune", "run", "demo")
WRONG_CHILD = {"kernel": ("blocks", "file"), "select": ("picks.npy", "dir"), "finetune": ("checkpoints", "file"),
               "run": ("results.json", "dir"), "demo": ("results.md", "dir")}

CASES: list = []


def case(command, extra, fragment, out=None, setup=None, name=None):
    """One bad input: ``command`` with ``extra`` arguments; ``out`` the output path (the command's default name
    when None); ``setup(world, monkeypatch)`` prepares the fault."""
    CASES.append(pytest.param(command, list(extra), fragment, out, setup, id=name or f"{command}:{' '.join(extra)}"))


def _make_out_file(world, monkeypatch, out):
    Path(out).write_text("not a directory\n")


def _make_child(kind):
    """``out`` holding a name the command writes, as the wrong kind (``kind``: (name, the kind it wrongly is))."""
    def setup(world, monkeypatch, out):
        Path(out).mkdir()
        child, child_kind = kind
        if child_kind == "file":
            (Path(out) / child).write_text("x")
        else:
            (Path(out) / child).mkdir()
    return setup


def _read_only(world, monkeypatch, out):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(cli_checks.tempfile, "mkstemp", refuse)


def _disk_full(world, monkeypatch, out):
    monkeypatch.setattr(cli_checks, "free_bytes", lambda directory: 512 * 1024)


# output paths, for every command that writes
for command in DIR_COMMANDS:
    case(command, [], "is a file, but a directory is written there", out="afile", name=f"{command}:out-is-a-file")
    case(command, [], "afile is a file, not a directory", out="afile/sub", name=f"{command}:out-under-a-file")
    case(command, [], f"{WRONG_CHILD[command][0]} is a {'file' if WRONG_CHILD[command][1] == 'file' else 'directory'}",
         out="out", setup=_make_child(WRONG_CHILD[command]), name=f"{command}:child-of-wrong-kind")
    case(command, [], "is not writable", out="out", setup=_read_only, name=f"{command}:not-writable")
    case(command, [], "no space left", out="out", setup=_disk_full, name=f"{command}:disk-full")
    case(command, [], "is empty", out="", name=f"{command}:empty-out")
    case(command, [], "broken symbolic link", out="dangling", name=f"{command}:dangling-symlink")
case("evaluate", [], "is a directory, but a file is written there", out="adir", name="evaluate:out-is-a-dir")
case("evaluate", [], "afile is a file, not a directory", out="afile/r.json", name="evaluate:out-under-a-file")
case("evaluate", [], "is not writable", out="r.json", setup=_read_only, name="evaluate:not-writable")
case("evaluate", [], "no space left", out="r.json", setup=_disk_full, name="evaluate:disk-full")
case("evaluate", [], "is empty", out="", name="evaluate:empty-out")
case("evaluate", [], "broken symbolic link", out="dangling", name="evaluate:dangling-symlink")
case("evaluate", [], "is a directory", out="adir/sub", name="evaluate:out-is-an-existing-dir",
     setup=lambda w, m, out: Path(out).mkdir())
case("finetune", ["--save-params", "adir"], "--save-params adir is a directory", name="finetune:save-params-dir")

# count options, every command that has them
COUNTS = {
    "score": [("--limit", -1), ("--limit", 0), ("--batch-size", 0), ("--max-length", 0), ("--max-length", 3),
              ("--max-response-tokens", -3)],
    "kernel": [("--limit", -1), ("--limit", 0), ("--max-length", 3), ("--max-response-tokens", 0),
               ("--batch-size", 0), ("--block-pairs", 0), ("--top-k", 0), ("--max-pairs", 0),
               ("--num-processes", 0), ("--process-id", -1)],
    "select": [("--devices", 0), ("--devices", -2)],
    "finetune": [("--limit", -5), ("--limit", 0), ("--lora-rank", 0), ("--epochs", 0), ("--max-steps", 0),
                 ("--batch-size", 0), ("--grad-accum", 0), ("--max-length", 2), ("--save-every", 0), ("--keep", 0),
                 ("--warmup-steps", -1)],
    "evaluate": [("--limit", 0), ("--limit", -4), ("--skip", -1), ("--pool-limit", 0), ("--k", 0),
                 ("--max-new-tokens", 0), ("--judge-max-new-tokens", 0), ("--batch-size", -2), ("--max-length", 1)],
    "run": [("--limit", -1), ("--target-limit", 0), ("--existing-limit", 0), ("--kernel-max-length", 3),
            ("--max-response-tokens", 0), ("--epochs", 0), ("--train-steps", 0), ("--batch-size", 0),
            ("--max-length", 0), ("--max-new-tokens", 0), ("--eval-batch-size", 0), ("--icl", -1)],
    "demo": [("--per-source", 0), ("--targets", 0), ("--test", -1), ("--train-steps", 0)],
}
for command, options in COUNTS.items():
    for option, value in options:
        case(command, [option, value], f"{option} {value} must", out=OUT[command] and "out",
             name=f"{command}:{option}={value}")
for option, value, bound in (("--lora-alpha", "0", "above 0"), ("--lora-alpha", "-2", "above 0"),
                             ("--lora-alpha", "nan", "above 0"), ("--max-grad-norm", "-1", "at least 0"),
                             ("--max-grad-norm", "inf", "at least 0")):
    case("finetune", [option, value], f"{option} {float(value)} must be a finite number {bound}",
         name=f"finetune:{option}={value}")
case("kernel", ["--num-processes", 2, "--process-id", 2], "--process-id 2 must be below --num-processes 2",
     name="kernel:process-id-too-large")

# inputs that cannot be used (all refused before a model loads)
case("kernel", ["--data", "missing.jsonl"], "neither a file nor a built-in dataset", name="kernel:data-missing")
case("kernel", ["--data", "empty.jsonl"], "empty.jsonl", name="kernel:data-empty")
case("kernel", ["--data", "broken.jsonl"], "broken.jsonl", name="kernel:data-not-json")
case("kernel", ["--targets", "missing.jsonl"], "neither a file nor a built-in dataset", name="kernel:targets-missing")
case("kernel", ["--prompt-field", "prompt"], "give both --prompt-field and --response-field",
     name="kernel:half-field-map")
case("kernel", ["--format", "alpaca", "--prompt-field", "p", "--response-field", "r"], "either --format",
     name="kernel:format-and-fields")
case("score", ["--data", "missing.jsonl"], "neither a file nor a built-in dataset", name="score:data-missing")
case("score", ["--data", "empty.jsonl"], "empty.jsonl", name="score:data-empty")
case("finetune", ["--indices", "missing.npy"], "missing.npy does not exist", name="finetune:indices-missing")
case("finetune", ["--indices", "idx_range.npy"], "index 99 outside the 6 examples", name="finetune:indices-range")
case("finetune", ["--indices", "idx_dup.npy"], "repeats example indices", name="finetune:indices-duplicate")
case("finetune", ["--indices", "idx_float.npy"], "integer example indices", name="finetune:indices-float")
case("finetune", ["--indices", "idx_empty.npy"], "selects no examples", name="finetune:indices-empty")
case("finetune", ["--indices", "idx_object.npy"], "cannot read indices", name="finetune:indices-pickled")
case("finetune", ["--indices", "idx.txt"], "cannot read indices", name="finetune:indices-text-garbage")
case("finetune", ["--indices", "adir"], "--indices adir is a directory without picks.npy",
     name="finetune:indices-directory")
case("finetune", ["--data", "broken.jsonl"], "broken.jsonl", name="finetune:data-not-json")
case("evaluate", ["--indices", "idx_range.npy"], "--indices index into --pool", name="evaluate:indices-no-pool")
case("evaluate", ["--pool-limit", 3], "needs --pool", name="evaluate:pool-limit-no-pool")
case("evaluate", ["--metrics", "rouge,bleu"], "bleu", name="evaluate:unknown-metric")
case("evaluate", ["--pool", "data.jsonl"], "also occur in the selection pool", name="evaluate:test-in-pool")
case("evaluate", ["--pool", "data.jsonl", "--pool-limit", 3, "--skip", 3, "--indices", "idx_object.npy"], "cannot read subset indices",
     name="evaluate:indices-pickled")
case("evaluate", ["--data", "missing.jsonl"], "neither a file nor a built-in dataset", name="evaluate:data-missing")
case("select", ["--budget", "lots"], "budget must be a fraction", name="select:budget-word")
case("select", ["--kernel", "missing.npy"], "missing.npy", name="select:kernel-missing")
case("select", ["--kernel", "k_object.npy"], "k_object.npy", name="select:kernel-pickled")
case("select", ["--kernel", "k_nan.npy"], "NaN", name="select:kernel-nan")
case("select", ["--objective", "flmi"], "needs a query kernel", name="select:flmi-without-q")
case("select", ["--objective", "flcg"], "needs a private kernel", name="select:flcg-without-p")
case("select", ["--budget", "0"], "budget", name="select:budget-zero")
case("select", ["--budget", "7"], "budget", name="select:budget-above-n")
case("run", ["--budget", "1"], "ambiguous", name="run:budget-one")
case("run", ["--methods", "delift,magic"], "unknown selection method 'magic'", name="run:unknown-method")
case("run", ["--split", "0.5,0.5"], "split fractions (0.5, 0.5) must be", name="run:split-two-parts")
case("run", ["--split", "a,b,c"], "'a,b,c'", name="run:split-words")
case("run", ["--use-case", "task"], "pass --target", name="run:task-without-target")
case("run", ["--data", "missing.jsonl"], "data 'missing.jsonl'", name="run:data-missing")


def _run_file(text):
    def setup(world, monkeypatch, out):
        Path("run.toml").write_text(text)
    return setup


# run files with wrongly typed values: one line naming the key, before any loading (issue 24.1)
case("run", ["--config", "run.toml"], "run config.train: key max_steps must be a whole number or None (absent), "
     "got 'ten'", setup=_run_file('[train]\nmax_steps = "ten"\n'), name="run:config-max-steps-string")
case("run", ["--config", "run.toml"], "run config: key seed must be a whole number, got 1.5",
     setup=_run_file("seed = 1.5\n"), name="run:config-seed-float")
case("run", ["--config", "run.toml"], "run inputs: key dedupe must be true or false, got 'yes'",
     setup=_run_file('[inputs]\ndedupe = "yes"\n'), name="run:config-inputs-dedupe-string")
case("run", ["--config", "run.toml"], "delift: option eta must be a number, got 'high'",
     setup=_run_file('[method_options.delift]\neta = "high"\n'), name="run:config-method-option-string")
for command in ("kernel", "run"):  # --mesh: each axis once, sizes at least 1 (issue 24.7)
    case(command, ["--mesh", "data=1,data=1"], "axis data is given twice", name=f"{command}:mesh-repeated-axis")
    case(command, ["--mesh", "data=0"], "axis sizes must be at least 1", name=f"{command}:mesh-size-zero")
    case(command, ["--mesh", "data=2,model=0"], "axis sizes must be at least 1", name=f"{command}:mesh-model-zero")

# models that are refused at load (never unpickled; a missing path)
case("kernel", ["--model", "weights.bin"], "pickle-based PyTorch weights file", name="kernel:model-pickle-file")
case("finetune", ["--model", "model-pickled"], "convert it to safetensors", name="finetune:model-pickle-dir")
case("score", ["--model", "missing-model"], "does not exist", name="score:model-missing")
case("evaluate", ["--model", "afile"], "not a .gguf", name="evaluate:model-plain-file")


def _argv(command, extra, out):
    argv = [a for a in REQUIRED[command]]
    # later options win in argparse: extras override the defaults above
    argv += [str(a) for a in extra]
    if OUT[command] is not None:
        argv += ["--out", OUT[command] if out is None else out]
    return argv


@pytest.mark.parametrize("command, extra, fragment, out, setup", CASES)
def test_bad_input_ends_in_one_clean_line(world, monkeypatch, capsys, command, extra, fragment, out, setup):
    out_path = Path(OUT[command] if out is None else out) if OUT[command] is not None else None
    if setup is not None:
        setup(world, monkeypatch, out_path)
    before = snapshot(out_path) if out_path is not None and str(out_path) not in ("", ".") else None
    world_before = snapshot(world)
    code, err, _ = run_cli(_argv(command, extra, out), capsys)
    assert_clean_error(code, err, fragment)
    if out_path is not None and str(out_path) not in ("", "."):
        assert snapshot(out_path) == before
    assert snapshot(world) == world_before  # nothing new or changed anywhere in the working directory


def test_the_matrix_has_at_least_100_cases():
    assert len(CASES) >= 100


def test_every_output_option_of_every_command_is_checked():
    """A command (or option) added later without an entry in cli_checks.OUTPUTS would skip the up-front checks."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        dests = {a.dest for a in sub._actions}
        checked = {spec.dest for spec in cli_checks.OUTPUTS.get(name, ())}
        writes = {d for d in dests if d == "out" or d.startswith("save_") and d != "save_every"}
        assert writes <= checked, (name, writes - checked)


def test_oserror_that_escapes_the_checks_is_one_line_with_the_path(world, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(world / "out" / "picks.npy"))

    monkeypatch.setattr("delift_jax.select.io.write_selection", full)
    code, err, _ = run_cli(["select", "--kernel", "k.npy", "--budget", "0.5", "--out", "out"], capsys)
    assert_clean_error(code, err, "out/picks.npy: no space left on device; free some space")


def test_argparse_errors_return_2_without_raising(world, capsys):
    code, err, _ = run_cli(["kernel", "--limit", "many", "--data", "x", "--out", "o"], capsys)
    assert code == 2 and "invalid int value" in err and "Traceback" not in err
    assert not Path("o").exists()


# ------------------------------------------------------------------------------------------------ injected faults
class Faults:
    """Make the atomic writer fail (ENOSPC, EIO, ...) on the next write of a named file, once per planned fault."""

    def __init__(self, monkeypatch):
        self.pending: list[tuple[str, int]] = []
        self.fired: list[tuple[str, int]] = []
        original = atomic_io._write_durably

        def write(handle, data, target):
            for i, (name, code) in enumerate(self.pending):
                if target.name == name:
                    del self.pending[i]
                    self.fired.append((name, code))
                    handle.write(data[: len(data) // 2])  # a half-written temporary file, as a full disk leaves
                    raise OSError(code, os.strerror(code))
            return original(handle, data, target)

        monkeypatch.setattr(atomic_io, "_write_durably", write)

    def next(self, name: str, code: int) -> None:
        self.pending.append((name, code))


def no_temporaries(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")]


REASON = {errno.ENOSPC: "no space left on device", errno.EIO: os.strerror(errno.EIO)}


def expect_fault(argv, capsys, faults, code, file_name):
    status, err, _ = run_cli(argv, capsys)
    assert faults.fired and faults.fired[-1][1] == code, f"the fault was not reached: {status} {err}"
    assert_clean_error(status, err, REASON[code])
    assert file_name in err  # the line names the file that could not be written


def test_select_results_write_faults_leave_no_partial_file_and_rerun_completes(world, monkeypatch, capsys):
    argv = ["select", "--kernel", "k.npy", "--budget", "0.5", "--out"]
    assert run_cli(argv + ["reference"], capsys)[0] == 0
    faults = Faults(monkeypatch)
    for name, code in (("picks.npy", errno.ENOSPC), ("gains.npy", errno.EIO), ("summary.json", errno.ENOSPC)):
        faults.next(name, code)
        expect_fault(argv + ["sel"], capsys, faults, code, name)
        assert no_temporaries(world) == []
        for written in Path("sel").glob("*.npy"):
            np.load(written, allow_pickle=False)  # whatever exists is whole
    assert run_cli(argv + ["sel"], capsys)[0] == 0
    for name in ("picks.npy", "gains.npy"):
        np.testing.assert_array_equal(np.load(f"sel/{name}"), np.load(f"reference/{name}"))


@pytest.fixture
def tiny_model_dir(tiny_llama):
    return tiny_llama[0]


def test_kernel_block_and_result_faults_resume_bit_identical(world, tiny_model_dir, monkeypatch, capsys):
    argv = ["kernel", "--model", tiny_model_dir, "--data", "data.jsonl", "--limit", 4, "--block-pairs", 4,
            "--max-length", 64, "--batch-size", 4, "--out"]
    assert run_cli(argv + ["reference"], capsys)[0] == 0
    faults = Faults(monkeypatch)
    plan = (("no_example.npz", errno.ENOSPC), ("block_000001.npz", errno.ENOSPC), ("block_000002.npz", errno.EIO),
            ("manifest.json", errno.EIO))
    for name, code in plan:
        faults.next(name, code)
        expect_fault(argv + ["store"], capsys, faults, code, name)
        for written in Path("store").rglob("*.np[yz]"):  # every file under its final name is whole
            loaded = np.load(written, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                [loaded[key] for key in loaded.files]
                loaded.close()
    assert run_cli(argv + ["store"], capsys)[0] == 0
    assert no_temporaries(world) == []  # the finished run leaves no temporary file of the failed ones
    for name in ("kernel.npy", "utility_raw.npy"):
        np.testing.assert_array_equal(np.load(f"store/{name}"), np.load(f"reference/{name}"))


def test_finetune_checkpoint_and_results_faults_resume_to_the_same_run(world, tiny_model_dir, monkeypatch, capsys):
    from delift_jax.train import checkpoint

    argv = ["finetune", "--model", tiny_model_dir, "--data", "data.jsonl", "--max-steps", 4, "--save-every", 2,
            "--batch-size", 2, "--max-length", 64, "--lora-rank", 2, "--lr", "1e-2", "--no-export", "--no-progress",
            "--out"]
    assert run_cli(argv + ["reference"], capsys)[0] == 0
    reference = json.loads(Path("reference/results.json").read_text())

    faults = Faults(monkeypatch)
    failing_steps: dict[int, int] = {}
    save = checkpoint.Checkpointer.save

    def save_or_fail(self, step, state, meta):
        if step in failing_steps:  # the disk fails while this checkpoint is written: nothing of it is kept
            code = failing_steps.pop(step)
            faults.fired.append(("checkpoint", code))
            raise OSError(code, os.strerror(code), str(self.directory / "checkpoints" / str(step)))
        return save(self, step, state, meta)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_or_fail)
    faults.next("run.json", errno.ENOSPC)
    expect_fault(argv + ["ft"], capsys, faults, errno.ENOSPC, "run.json")
    failing_steps[2] = errno.EIO
    expect_fault(argv + ["ft"], capsys, faults, errno.EIO, "checkpoints/2")
    interrupt_after_steps = [3]  # Ctrl-C during step 3, after the checkpoint of step 2 was written

    def sleep_or_interrupt(seconds):
        interrupt_after_steps[0] -= 1
        if interrupt_after_steps[0] == 0:
            raise KeyboardInterrupt

    real_sleep = time.sleep
    monkeypatch.setattr("time.sleep", sleep_or_interrupt)
    status, err, _ = run_cli(argv + ["ft", "--sleep-per-step", "0.01"], capsys)
    assert status == 130 and "Traceback" not in err
    assert "interrupted: the newest checkpoint (step 2) is kept in" in err and "rerun the same command" in err
    monkeypatch.setattr("time.sleep", real_sleep)
    failing_steps[4] = errno.ENOSPC
    expect_fault(argv + ["ft"], capsys, faults, errno.ENOSPC, "checkpoints/4")
    faults.next("results.json", errno.EIO)
    expect_fault(argv + ["ft"], capsys, faults, errno.EIO, "results.json")
    assert no_temporaries(world) == [] and not Path("ft/results.json").exists()

    crashed_export = Path("ft/.model.k1ll3d.tmp")  # what kill -9 during an earlier export leaves
    crashed_export.mkdir()
    (crashed_export / "model.safetensors").write_bytes(b"\0" * 4096)
    assert run_cli(argv + ["ft"], capsys)[0] == 0
    assert not crashed_export.exists()
    resumed = json.loads(Path("ft/results.json").read_text())
    assert resumed["resumed_from"] == 4
    assert resumed["losses"] == reference["losses"]  # the same run, step for step
    assert resumed["tokens"] == reference["tokens"]  # counted over the whole run, not only since the resume


# ------------------------------------------------------------------------------------------------ messages
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(world, tiny_model_dir, capsys):
    import shutil

    from safetensors.numpy import load_file, save_file

    damaged = world / "nan-model"
    shutil.copytree(tiny_model_dir, damaged)
    tensors = load_file(str(damaged / "model.safetensors"))
    name = "model.layers.0.self_attn.v_proj.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][0, 0] = np.nan
    save_file(tensors, str(damaged / "model.safetensors"))
    for command in (["score", "--data", "data.jsonl", "--limit", 2],
                    ["evaluate", "--data", "data.jsonl", "--limit", 2, "--metrics", "nll", "--out", "e.json"]):
        code, err, out = run_cli([command[0], "--model", damaged, *command[1:]], capsys)
        assert_clean_error(code, err, "layers.0.attn.v_proj.kernel")
        assert "NaN/inf" in err and "nan" not in out
    assert not Path("e.json").exists()


def test_nan_scores_and_metrics_are_errors_not_results(world, tiny_model_dir, monkeypatch, capsys):
    import delift_jax.scoring as scoring
    from delift_jax.cli_checks import refuse_nonfinite_metrics
    from delift_jax.errors import NonFiniteError

    real = scoring.score_examples

    def nan_scores(*args, **kwargs):
        table = real(*args, **kwargs)
        table.rms[1] = np.nan
        return table

    monkeypatch.setattr(scoring, "score_examples", nan_scores)
    code, err, out = run_cli(["score", "--model", tiny_model_dir, "--data", "data.jsonl", "--limit", 3,
                              "--max-length", 64], capsys)
    assert_clean_error(code, err, "example 1 (and 0 more) scored NaN/inf")
    refuse_nonfinite_metrics({"no_icl": {"token_nll": 2.5, "judge_score": float("nan")}})  # judge NaN: unparsed
    with pytest.raises(NonFiniteError, match="token_nll of condition icl is nan"):
        refuse_nonfinite_metrics({"no_icl": {"token_nll": 2.5}, "icl": {"token_nll": float("nan")}})


def test_checkpoint_mismatch_names_every_differing_key_with_both_values(tmp_path):
    from delift_jax.train.checkpoint import CheckpointMismatchError, Checkpointer, fingerprint_differences

    long_text = "x" * 200
    old = {"model": "abc", "config": {"learning_rate": 0.0002, "lora": {"rank": 8, "targets": long_text}},
           "data": "d1", "examples": 4}
    new = {"model": "abc", "config": {"learning_rate": 0.001, "lora": {"rank": 4, "targets": long_text + "y"}},
           "data": "d1", "examples": 4, "extra": True}
    assert fingerprint_differences(old, new) == [
        ("config.learning_rate", "0.0002", "0.001"), ("config.lora.rank", "8", "4"),
        ("config.lora.targets", json.dumps(long_text), json.dumps(long_text + "y")), ("extra", "(absent)", "true")]
    Checkpointer(tmp_path / "run", old).close()
    with pytest.raises(CheckpointMismatchError) as info:
        Checkpointer(tmp_path / "run", new)
    message = str(info.value)
    assert "config.learning_rate: 0.0002 in the checkpoint, 0.001 now" in message
    assert "config.lora.rank: 8 in the checkpoint, 4 now" in message and long_text + "y" in message
    assert "extra: (absent) in the checkpoint, true now" in message and "\n" not in message


def test_finetune_too_long_response_names_its_own_option(world, tiny_model_dir, capsys):
    Path("long.jsonl").write_text(json.dumps({"prompt": "Say it.", "response": " word" * 80}) + "\n"
                                  + json.dumps({"prompt": "Again.", "response": " ok"}) + "\n")
    code, err, _ = run_cli(["finetune", "--model", tiny_model_dir, "--data", "long.jsonl", "--max-length", 16,
                            "--out", "ft", "--no-progress"], capsys)
    assert_clean_error(code, err, "raise --max-length")
    assert "max_response_tokens" not in err and "max-response-tokens" not in err
    assert not Path("ft").exists()


def test_data_warnings_name_the_command_line_flags(world, capsys, caplog):
    """A CLI user is told --drop-empty / --dedupe, not the Python keywords alone (issue 24). The findings are
    logging warnings (stderr through logging's last-resort handler in the CLI; pytest captures them instead)."""
    rows = [{"prompt": "a", "response": " x"}, {"prompt": "a", "response": " x"}, {"prompt": "b", "response": " "}]
    Path("findings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err, _ = run_cli(["kernel", "--model", NO_MODEL, "--data", "findings.jsonl", "--out", "out"], capsys)
    assert_clean_error(code, err, NO_MODEL)  # the data loads (with its findings), then the missing model stops it
    warnings = [line for line in err.splitlines() if not line.startswith("error:")]
    warnings += [record.getMessage() for record in caplog.records]
    assert any("kept; drop them with --drop-empty (drop_empty=True in Python)" in line for line in warnings), err
    assert any("kept; remove them with --dedupe (dedupe=True in Python)" in line for line in warnings), err
    assert not Path("out").exists()


def test_a_select_output_directory_is_read_as_its_picks(world, capsys):
    from delift_jax.train.command import select_examples

    assert run_cli(["select", "--kernel", "k.npy", "--budget", "2", "--out", "sel"], capsys)[0] == 0
    examples = list(range(6))
    assert select_examples(examples, "sel") == [examples[i] for i in np.load("sel/picks.npy")]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(world, capsys, mask):
    """Atomic writes and the kernel store's staging files get 0666 / 0777 less the umask, never mkstemp's 0600."""
    from delift_jax.kernel.store import KernelStore

    old = os.umask(mask)
    try:
        assert run_cli(["select", "--kernel", "k.npy", "--budget", "2", "--out", "sel"], capsys)[0] == 0
        store = KernelStore("store")
        store.directory.mkdir()
        store.save_npy("neighbours.npy", np.zeros((2, 2), np.int32))
        store.save_checked_npz("no_example.npz", rms=np.zeros(2))
        staged = store.staging_path("kernel.npy")
        with atomic_io.atomic_directory("exported") as staging:
            (staging / "weights.bin").write_bytes(b"w")
    finally:
        os.umask(old)
    for path in (Path("sel/picks.npy"), Path("sel/summary.json"), Path("store/neighbours.npy"),
                 Path("store/no_example.npz"), staged):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, (path, oct(path.stat().st_mode))
    assert Path("exported").stat().st_mode & 0o777 == 0o777 & ~mask


# ------------------------------------------------------------------------------------------------ kernel stores
TARGET_ROWS = [{"prompt": f"Target {i}: what is {i} times 3?", "response": f" It is {3 * i}."} for i in range(3)]
OTHER_ROWS = [{"prompt": f"Other {i}: name a colour.", "response": f" Colour {i}."} for i in range(6)]


@pytest.fixture(scope="module")
def real_stores(tiny_llama, tmp_path_factory):
    """Stores of the real `delift kernel` (tiny model): the pool against itself, 3 targets against the pool (pmi and
    rms), the same targets against another pool of the same size (6), and the pool as targets of that other set."""
    root = tmp_path_factory.mktemp("stores")
    pool_rows = [{"prompt": f"Question {i}: what is {i} + {i}?", "response": f" It is {2 * i}."} for i in range(6)]
    for name, rows in (("pool", pool_rows), ("targets", TARGET_ROWS), ("other", OTHER_ROWS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model", str(tiny_llama[0]), "--max-length", "64", "--batch-size", "4"]
    runs = {"k": ["--data", "pool.jsonl"], "q": ["--data", "pool.jsonl", "--targets", "targets.jsonl"],
            "q_rms": ["--data", "pool.jsonl", "--targets", "targets.jsonl", "--distance", "rms"],
            "q_other": ["--data", "other.jsonl", "--targets", "targets.jsonl"],
            "q_swapped": ["--data", "other.jsonl", "--targets", "pool.jsonl"]}
    for name, args in runs.items():
        argv = ["kernel", *common, *[str(root / a) if a.endswith(".jsonl") else a for a in args],
                "--out", str(root / name)]
        assert cli.main(argv) == 0, name
    return root


@pytest.fixture
def stores(world, real_stores):
    import shutil

    for name in ("k", "q", "q_rms", "q_other"):
        shutil.copytree(real_stores / name, world / name)
    return world


def _edit_manifest(path, **fields):
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    for key, value in fields.items():
        target = manifest
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    (Path(path) / "manifest.json").write_text(json.dumps(manifest))


def _flip_a_bit(path):
    data = bytearray(Path(path).read_bytes())
    data[-3] ^= 0x10  # inside the array data, past the header
    Path(path).write_bytes(bytes(data))


STORE_CASES = [  # (name, argv after `select`, fragment of the error, damage done to the stores first)
    ("query-store-of-another-pool", ["--kernel", "k", "--objective", "flmi", "--query-kernel", "q_other"],
     "was computed on other examples than the pool of --kernel", None),
    ("query-store-of-another-pool-fl2mi", ["--kernel", "k", "--objective", "fl2mi", "--query-kernel", "q_other"],
     "same size, different data fingerprints", None),
    ("stored-scale-mixed-distances", ["--kernel", "k", "--objective", "flmi", "--query-kernel", "q_rms",
                                      "--scale", "stored"], "no --scale (common or stored)", None),
    ("common-scale-mixed-distances", ["--kernel", "k", "--objective", "flmi", "--query-kernel", "q_rms"],
     "--distance pmi and query kernel Q q_rms with --distance rms", None),
    ("flipped-bit-in-kernel", ["--kernel", "k"], "k/kernel.npy does not match the checksum",
     lambda: _flip_a_bit("k/kernel.npy")),
    ("flipped-bit-in-raw-utilities", ["--kernel", "k", "--objective", "flmi", "--query-kernel", "q"],
     "q/utility_raw.npy does not match the checksum", lambda: _flip_a_bit("q/utility_raw.npy")),
    ("truncated-kernel", ["--kernel", "k"], "k/kernel.npy has 268 bytes but its store's manifest records 272",
     lambda: Path("k/kernel.npy").write_bytes(Path("k/kernel.npy").read_bytes()[:-4])),
    ("edited-summary-distance", ["--kernel", "k", "--objective", "flmi", "--query-kernel", "q_rms"],
     "with --distance rms", lambda: _edit_manifest("q_rms", **{"summary.distance": "pmi"})),
    ("edited-n-targets", ["--kernel", "k", "--objective", "flmi", "--query-kernel", "q"],
     "the manifest of query kernel Q q says n_targets x n_candidates = (6, 6), but kernel.npy has shape (3, 6)",
     lambda: _edit_manifest("q", n_targets=6)),
    ("edited-square-flag", ["--kernel", "k"], "says square True with 3 targets and 6 candidates",
     lambda: (_edit_manifest("q", square=True), Path("k").rename("k_orig"), Path("q").rename("k"))),
    ("non-square-store-as-k", ["--kernel", "q"], "kernel K q is 3 x 6, but K must be the pool against itself", None),
    ("rectangular-npy-k-fl", ["--kernel", "k_rect.npy"], "kernel K k_rect.npy is 6 x 4", None),
    ("rectangular-npy-k-flcg", ["--kernel", "k_rect.npy", "--objective", "flcg", "--private-kernel", "q"],
     "is 6 x 4, but K must be the pool against itself", None),
]


@pytest.mark.parametrize("argv, fragment, damage", [c[1:] for c in STORE_CASES], ids=[c[0] for c in STORE_CASES])
def test_bad_kernel_stores_end_in_one_clean_line(stores, capsys, argv, fragment, damage):
    if damage is not None:
        damage()
    before = snapshot(stores)
    code, err, _ = run_cli(["select", *argv, "--budget", "2", "--out", "sel"], capsys)
    assert_clean_error(code, err, fragment)
    assert snapshot(stores) == before and not Path("sel").exists()


def test_store_records_checksums_fingerprints_and_mesh(stores, capsys):
    manifest = json.loads(Path("q/manifest.json").read_text())
    from delift_jax.kernel import checksums

    assert set(manifest["files"]) == {"kernel.npy", "utility_raw.npy", "distance_no_example.npy",
                                      "distance_with_example.npy", "distances.npz"}
    for name, entry in manifest["files"].items():
        assert entry == checksums.record(Path("q") / name)
    square = json.loads(Path("k/manifest.json").read_text())
    assert square["targets_sha256"] == square["candidates_sha256"] == square["data_sha256"]
    assert manifest["candidates_sha256"] == square["data_sha256"] != manifest["targets_sha256"]
    assert manifest["mesh"] == {"data": 4, "model": 1}  # tests simulate 4 CPU devices; a data mesh over all
    code, err, _ = run_cli(["select", "--kernel", "k", "--objective", "flmi", "--query-kernel", "q", "--budget", "2",
                            "--out", "sel"], capsys)
    assert code == 0 and "warning" not in err, err


def test_a_store_without_checksums_is_used_with_one_warning(stores, capsys):
    _edit_manifest("k", files=None)
    manifest = json.loads(Path("k/manifest.json").read_text())
    del manifest["files"]
    Path("k/manifest.json").write_text(json.dumps(manifest))
    code, err, _ = run_cli(["select", "--kernel", "k", "--budget", "2", "--out", "sel"], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and "records no checksums" in warnings[0], err


def test_a_store_of_two_equal_sized_sets_is_oriented_by_fingerprint(world, real_stores, capsys):
    """Sizes cannot orient a 6 x 6 store of two sets (the pool as rows, another set of 6 as columns); the data
    fingerprints can: its pool side is its rows, so it is used as stored, with the other-direction warning (by size
    alone it was transposed, silently putting the other set on the rows)."""
    import shutil

    shutil.copytree(real_stores / "k", "k")
    shutil.copytree(real_stores / "q_swapped", "swapped")
    code, err, _ = run_cli(["select", "--kernel", "k", "--objective", "fl2mi", "--query-kernel", "swapped",
                            "--budget", "2", "--out", "sel"], capsys)
    assert code == 0 and "has the pool as its rows" in err, err
    summary = json.loads(Path("sel/summary.json").read_text())
    assert summary["query_kernel_orientation"] == "store, as stored (U)"


KERNEL_ARGV = ["kernel", "--data", "data.jsonl", "--limit", 4, "--block-pairs", 4, "--max-length", 64,
               "--batch-size", 4]


def test_every_temporary_file_of_a_store_is_removed_by_the_next_run(world, tiny_model_dir, capsys):
    """Issue 24.8: a crash while the first manifest was written leaves only its temporary file (no manifest yet);
    crashes later leave them beside the manifest and under blocks/. The next run removes all of them."""
    argv = [*KERNEL_ARGV, "--model", tiny_model_dir, "--out", "store"]
    Path("store").mkdir()
    Path("store/.manifest.json.k1ll3d.tmp").write_text('{"format_version": ')
    code, err, _ = run_cli(argv, capsys)
    assert code == 0, err
    assert no_temporaries(world) == [] and "removed 1 temporary files" in err
    for name in (".manifest.json.a1.tmp", ".kernel.npy.b2.tmp", ".no_example.npz.c3.tmp", "blocks/.block_000000.d4.tmp",
                 "..rms_with_example.npy.e5.tmp"):
        (Path("store") / name).write_bytes(b"\0" * 64)
    code, err, _ = run_cli(argv, capsys)
    assert code == 0 and no_temporaries(world) == [], err


def test_a_failed_first_run_leaves_no_directory_even_after_an_orphan(world):
    from delift_jax.kernel.store import KernelStore

    store = KernelStore("fresh")
    store.directory.mkdir()
    (store.directory / ".manifest.json.x.tmp").write_text("{")
    (store.directory / ".lock").write_text("")
    store.remove_if_unused()
    assert not store.directory.exists()
    Path("foreign").mkdir()  # not a store: files but no manifest; its hidden temporary files are not ours
    Path("foreign/notes.txt").write_text("mine")
    Path("foreign/.notes.txt.1.tmp").write_text("mine too")
    assert KernelStore("foreign").remove_orphans() == 0 and Path("foreign/.notes.txt.1.tmp").exists()


def test_resuming_on_another_mesh_says_so(world, tiny_model_dir, capsys):
    """Issue 23.4d: the manifest records the mesh; another data size is one warning line (results bit-identical),
    another model size with blocks left to compute is one error line, with nothing left a warning."""
    argv = [*KERNEL_ARGV, "--model", tiny_model_dir, "--out", "store"]
    assert run_cli(argv, capsys)[0] == 0
    assert json.loads(Path("store/manifest.json").read_text())["mesh"] == {"data": 4, "model": 1}
    code, err, _ = run_cli([*argv, "--mesh", "data=2,model=2"], capsys)  # nothing left: reassembles only
    assert code == 0 and "warning: store was computed on mesh data=4,model=1; this run (data=2,model=2) only " \
        "reassembles its finished blocks" in err, err
    Path("store/blocks/block_000001.npz").unlink()
    before = snapshot(Path("store"))
    code, err, _ = run_cli([*argv, "--mesh", "data=2,model=2"], capsys)
    assert_clean_error(code, err, "store was started on mesh data=4,model=1 and this run's mesh is data=2,model=2")
    assert "resume with --mesh model=1 (any data size) or use a new --out" in err
    assert snapshot(Path("store")) == before


def test_resuming_on_another_data_size_warns_and_stays_bit_identical(world, tiny_llama):
    import jax

    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.sharding import data_mesh
    from examples import EXAMPLES

    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, batch_size=4, block_pairs=4)
    reference = utility_kernel(model, tokenizer, EXAMPLES[:3], config=config, mesh=data_mesh(jax.devices()[:1]))
    first = utility_kernel(model, tokenizer, EXAMPLES[:3], config=config, out_dir="store",
                           mesh=data_mesh(jax.devices()[:2]))
    Path("store/blocks/block_000000.npz").unlink()  # one block is recomputed on the other data size
    with pytest.warns(UserWarning, match=r"started on mesh data=2,model=1; resuming on data=4,model=1: results do not "
                                         r"depend on the data size \(bit-identical\)"):
        resumed = utility_kernel(model, tokenizer, EXAMPLES[:3], config=config, out_dir="store",
                                 mesh=data_mesh(jax.devices()[:4]))
    np.testing.assert_array_equal(np.asarray(first.utility), np.asarray(reference.utility))
    np.testing.assert_array_equal(np.asarray(resumed.utility), np.asarray(reference.utility))
