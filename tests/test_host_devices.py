"""`delift kernel` splits a CPU-only machine into host devices by default (host_devices.py); where anything else
decides the device count, or an accelerator may compute, nothing changes. The kernel it computes that way equals
the one-device kernel bit for bit: test_kernel.py (1, 3, 4 devices in-process) and test_kernel_resilience.py (its
reference kernel comes from a default `delift kernel` process; its other runs have 4 devices or 1)."""

import argparse
import os
import subprocess
import sys

import jax
import pytest

from delift_jax import host_devices as H
from delift_jax.errors import UsageError


def test_the_default_applies_only_where_nothing_else_decides():
    plain = dict(cores=2, requested=None, accelerator=False, keeps_devices=False)
    assert H.default_host_devices(**plain) == H.DEFAULT_HOST_DEVICES == 2
    assert H.default_host_devices(**{**plain, "cores": 64}) == 2  # more copies of the parameters: asked for only
    assert H.default_host_devices(**{**plain, "cores": 1}) is None
    assert H.default_host_devices(**{**plain, "requested": 1}) is None  # XLA_FLAGS / jax_num_cpu_devices
    assert H.default_host_devices(**{**plain, "accelerator": True}) is None  # GPU/TPU: the CPU does not compute
    assert H.default_host_devices(**{**plain, "keeps_devices": True}) is None  # --coordinator or --mesh


@pytest.fixture
def restore_platforms():
    saved = jax.config.jax_platforms
    yield
    jax.config.update("jax_platforms", saved)


def test_an_accelerator_is_possible_unless_jax_platforms_says_cpu(restore_platforms):
    jax.config.update("jax_platforms", "cpu")  # what JAX_PLATFORMS=cpu sets when JAX is imported
    assert not H.accelerator_possible()
    jax.config.update("jax_platforms", "cuda,cpu")
    assert H.accelerator_possible()


def test_requests_are_read_without_starting_jax(monkeypatch):
    assert H.requested_cpu_devices() == 4  # conftest: jax_num_cpu_devices wins over the flag, as in JAX
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert H.xla_flag_cpu_devices() == 3
    monkeypatch.setenv("XLA_FLAGS", "")
    assert H.xla_flag_cpu_devices() is None


def test_a_process_whose_jax_has_started_keeps_its_devices():
    jax.devices()  # started (as in any test process by now): the count can no longer change
    assert H.split_host_cpu(argparse.Namespace()) is None  # a command without --host-devices
    assert H.split_host_cpu(argparse.Namespace(host_devices=None)) is None  # conftest asked for 4
    assert H.split_host_cpu(argparse.Namespace(host_devices=4)) == 4  # the count it has: nothing to change
    with pytest.raises(UsageError, match="--host-devices 2: JAX has already started with 4 CPU devices"):
        H.split_host_cpu(argparse.Namespace(host_devices=2))
    assert len(jax.devices()) == 4


# A fresh process through the CLI's own start-up (argument checks, device split, compilation cache); the stub
# command prints what JAX got instead of computing a kernel.
PROBE = """
import argparse, sys, jax
from delift_jax import cli
from delift_jax.kernel import command
parser = argparse.ArgumentParser()
command.add_arguments(parser)
args = parser.parse_args(["--data", "x", "--out", sys.argv[1], *sys.argv[2:]])
probe = lambda _: print(len(jax.devices()), jax.config.jax_compilation_cache_dir is not None)
sys.exit(cli.run_parsed("kernel", args, probe))
"""


def test_delift_kernel_processes_get_the_split_or_keep_what_they_ask(tmp_path):
    base = dict(os.environ, JAX_PLATFORMS="cpu", DELIFT_XLA_CACHE=str(tmp_path / "xla"), XLA_FLAGS="")
    cases = {  # name -> (environment, extra arguments, expected "devices cache-on")
        "default": (base, [], f"{min(2, H.available_cores())} {H.available_cores() < 2}"),
        "one": (base, ["--host-devices", "1"], "1 True"),
        "xla-flags": ({**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, [], "3 False"),
    }
    processes = {name: subprocess.Popen([sys.executable, "-c", PROBE, str(tmp_path / name), *extra], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, (env, extra, _) in cases.items()}
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        assert out.split("\n")[-2] == cases[name][2], (name, out, err[-2000:])


def test_a_count_below_one_is_a_one_line_error(tmp_path, capsys):
    from delift_jax import cli

    assert cli.main(["kernel", "--data", "x", "--out", str(tmp_path / "k"), "--host-devices", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --host-devices 0 must be at least 1"
