"""Crash safety and multi-host runs of `delift kernel`, each in real subprocesses."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from test_kernel import POOL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in POOL))
    return path


def kernel_command(model_dir, data, out, *extra):
    return [sys.executable, "-m", "delift_jax.cli", "kernel", "--model", str(model_dir), "--data", str(data),
            "--out", str(out), "--max-length", "256", "--batch-size", "2", "--block-pairs", "3", *extra]


def run_to_end(command, timeout=300, env=None):
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def reference_store(tiny_llama, pool_file, tmp_path_factory):
    """The store of a `delift kernel` process that asks for no device count: on a CPU-only machine it splits the
    CPU into host devices by default (host_devices.py). The other runs here have 4 devices (conftest's XLA_FLAGS)
    or 1 (under jax.distributed), so each comparison with its kernel also checks that the split is bit-identical.
    Read only: a test that damages a finished store damages a copy."""
    from delift_jax.host_devices import available_cores

    out = tmp_path_factory.mktemp("reference") / "kernel"
    run_to_end(kernel_command(tiny_llama[0], pool_file, out), env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
    assert json.loads((out / "manifest.json").read_text())["mesh"] == {"data": min(2, available_cores()), "model": 1}
    return out


@pytest.fixture(scope="module")
def reference_kernel(reference_store):
    return np.load(reference_store / "kernel.npy"), np.load(reference_store / "utility_raw.npy")


def finished_blocks(out) -> int:
    return len(list((out / "blocks").glob("block_*.npz"))) if (out / "blocks").is_dir() else 0


def test_kill_9_mid_run_and_mid_resume_then_resume_is_bit_identical(tiny_llama, pool_file, tmp_path,
                                                                    reference_kernel):
    """One store, killed three times: mid-run, then in the middle of two resumed runs, each time once a random
    number of blocks is finished (and at least one more than the killed run started with); a last run finishes it.
    After every kill: no final kernel, a manifest that says incomplete, only whole blocks. Every resumed run picks
    up the finished blocks, and the kernel, made of blocks from all four runs, is the reference bit for bit."""
    rng = random.Random(1234)
    n_blocks = 12  # 6 candidates x 6 targets in pieces of 3 pairs
    out = tmp_path / "kernel"
    kills = 0
    for attempt, blocks_before_kill in enumerate(sorted(rng.sample(range(1, n_blocks), 3))):
        at_start = finished_blocks(out)
        kill_at = max(blocks_before_kill, at_start + 1)  # a resumed run computes before its kill
        stderr = tmp_path / f"attempt-{attempt}.err"
        with open(stderr, "w") as err:
            process = subprocess.Popen(kernel_command(tiny_llama[0], pool_file, out), stdout=subprocess.DEVNULL,
                                       stderr=err)
            deadline = time.monotonic() + 240
            while process.poll() is None and time.monotonic() < deadline:
                if finished_blocks(out) >= kill_at:
                    time.sleep(rng.uniform(0.0, 0.3))  # land anywhere inside the next block
                    break
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            process.wait()
        if process.returncode != -signal.SIGKILL:
            break  # the run finished before the kill landed: nothing left to kill
        kills += 1
        assert f"({at_start} already finished," in stderr.read_text()  # the blocks of the runs before
        # Killed mid-run: no final kernel, the manifest says incomplete, every block present is whole.
        assert not (out / "kernel.npy").exists()
        assert json.loads((out / "manifest.json").read_text())["complete"] is False
        for block in (out / "blocks").glob("block_*.npz"):
            with np.load(block) as data:
                assert len(data["pairs"]) == len(data["rms"]) == len(data["logp"])

    at_start = finished_blocks(out)
    resumed = run_to_end(kernel_command(tiny_llama[0], pool_file, out))
    assert f"({at_start} already finished," in resumed.stderr
    np.testing.assert_array_equal(np.load(out / "kernel.npy"), reference_kernel[0])
    np.testing.assert_array_equal(np.load(out / "utility_raw.npy"), reference_kernel[1])
    assert kills >= 2  # the kills really landed mid-run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_under_jax_distributed_match_one(tiny_llama, pool_file, tmp_path, reference_kernel):
    out = tmp_path / "kernel"
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device per process
    processes = [subprocess.Popen(kernel_command(tiny_llama[0], pool_file, out, "--coordinator", coordinator,
                                                 "--num-processes", "2", "--process-id", str(rank)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for rank in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "process 1: my blocks are done" in outputs[1][0]
    blocks = sorted(int(p.stem.split("_")[1]) for p in (out / "blocks").glob("block_*.npz"))
    assert blocks == list(range(12))
    np.testing.assert_array_equal(np.load(out / "kernel.npy"), reference_kernel[0])
    np.testing.assert_array_equal(np.load(out / "utility_raw.npy"), reference_kernel[1])


def test_two_processes_share_process_0s_sparse_neighbours(tiny_llama, pool_file, tmp_path):
    """Sparse mode under jax.distributed: process 1 waits for and uses process 0's stored neighbours, and the
    result equals a one-process sparse run."""
    single = tmp_path / "single"
    run_to_end(kernel_command(tiny_llama[0], pool_file, single, "--top-k", "3"))
    out = tmp_path / "kernel"
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, XLA_FLAGS="")
    processes = [subprocess.Popen(kernel_command(tiny_llama[0], pool_file, out, "--top-k", "3", "--coordinator",
                                                 coordinator, "--num-processes", "2", "--process-id", str(rank)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for rank in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert not list(out.glob("failed_process_*.txt"))
    for name in ("neighbours.npy", "kernel_indices.npy", "kernel_values.npy", "utility_raw_values.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(single / name), err_msg=name)


def test_two_independent_runs_on_one_out_share_the_blocks(tiny_llama, pool_file, tmp_path, reference_kernel):
    """Two `delift kernel` runs started on the same --out (no coordinator): they wait for each other's store steps
    and split the blocks through their claims; no pair is computed twice and the kernel is the one-run kernel."""
    out = tmp_path / "kernel"
    processes = [subprocess.Popen(kernel_command(tiny_llama[0], pool_file, out), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    computed = []
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        computed.append(int(stdout.split(" pairs computed now")[0].rsplit(" ", 1)[1]))
    assert sum(computed) == len(POOL) ** 2, computed
    np.testing.assert_array_equal(np.load(out / "kernel.npy"), reference_kernel[0])
    np.testing.assert_array_equal(np.load(out / "utility_raw.npy"), reference_kernel[1])
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_orphans_and_damaged_blocks_of_a_crash_are_cleaned_on_the_next_run(tiny_llama, pool_file, tmp_path,
                                                                          reference_store, reference_kernel):
    out = tmp_path / "kernel"
    shutil.copytree(reference_store, out)  # a finished store, as a run to the end leaves it
    (out / "blocks" / ".block_000004.npz.q1w2e3.tmp").write_bytes(b"half a block")
    (out / ".kernel.npy.r4t5y6.tmp").write_bytes(b"half a kernel")
    (out / "blocks" / "block_000007.npz").write_bytes(b"PK\x03\x04 torn")
    resumed = run_to_end(kernel_command(tiny_llama[0], pool_file, out))
    assert "removed 2 temporary files" in resumed.stderr
    assert sum("block_000007" in line for line in resumed.stderr.splitlines()) == 1
    assert " 3 pairs computed now" in resumed.stdout  # block 7 only
    assert not list(out.rglob(".*.tmp"))
    np.testing.assert_array_equal(np.load(out / "kernel.npy"), reference_kernel[0])
    np.testing.assert_array_equal(np.load(out / "utility_raw.npy"), reference_kernel[1])
