"""kill -9 a training process after a checkpoint, run the same command again: the run ends as if never stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from delift_jax.train import LoRAConfig, TrainConfig, finetune, split_model
from examples import EXAMPLES

ATOL = 1e-5
STEPS, SAVE_EVERY = 12, 3
CONFIG = TrainConfig(method="lora", lora=LoRAConfig(4, 8.0, dropout=0.1), learning_rate=1e-2, schedule="constant",
                     weight_decay=0.1, batch_size=2, max_length=128, pad_to_max_length=True, max_steps=STEPS,
                     save_every=SAVE_EVERY)


def _command(model_dir, data, out, params, *extra):
    return [sys.executable, "-m", "delift_jax.train.command", "--model", str(model_dir), "--data", str(data),
            "--out", str(out), "--save-params", str(params), "--no-export", "--no-progress",
            "--method", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--lr", "1e-2",
            "--schedule", "constant", "--weight-decay", "0.1", "--batch-size", "2", "--max-length", "128",
            "--pad-to-max-length", "--max-steps", str(STEPS), "--save-every", str(SAVE_EVERY), *extra]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    env["DELIFT_XLA_CACHE"] = "0"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _finished_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run(tiny_llama, tmp_path):
    model_dir, _, model, tokenizer = tiny_llama
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in EXAMPLES))
    out, params = tmp_path / "run", tmp_path / "params.npz"

    proc = subprocess.Popen(_command(model_dir, data, out, params, "--sleep-per-step", "0.4"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _finished_steps(out) or _finished_steps(out)[-1] < SAVE_EVERY:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _finished_steps(out)[-1]
    assert killed_at < STEPS and not (out / "results.json").exists()

    done = subprocess.run(_command(model_dir, data, out, params), env=_env(), capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert summary["resumed_from"] is not None and summary["resumed_from"] >= killed_at

    reference = finetune(model, tokenizer, EXAMPLES, CONFIG)
    np.testing.assert_allclose(summary["losses"], reference.losses, atol=ATOL, rtol=0)
    _, want, _ = split_model(reference.model, nnx.LoRAParam)
    got = np.load(params)
    assert sorted(got.files) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=ATOL, rtol=0, err_msg=name)
