"""How many XLA devices a CPU-only process splits its cores into: decided before JAX starts its backend.

One XLA CPU device keeps about 1.7 of 2 cores busy on the packed kernel engine; two devices, each running its own
fixed-shape units, keep 1.93 busy: 1.72x the authors' PyTorch procedure per pair against 1.56x
(docs/benchmarks.md), and the kernel is bit-identical because every unit has the same shape on any device count. A
command that offers ``--host-devices`` (``delift kernel``) therefore splits the CPU by default, unless

* an accelerator may be present (a PJRT plugin or libtpu is installed and JAX_PLATFORMS does not say ``cpu``):
  there the CPU is not what computes, so nothing changes;
* the process already chose a count (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``jax_num_cpu_devices``);
* it runs with ``--coordinator`` (several processes) or an explicit ``--mesh``: those keep the devices they had;
* JAX has started its backend already (the count can no longer change).

The default is 2 devices (fewer on a 1-core machine): the measured setting. Each device holds its own copy of the
parameters, so a larger split is asked for explicitly (``--host-devices N``); ``--host-devices 1`` keeps one.
Processes with several simulated devices compile afresh instead of using the persistent cache
(``cli.enable_compilation_cache``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re

from delift_jax.errors import UsageError

DEFAULT_HOST_DEVICES = 2


def add_host_devices_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host-devices", type=int, default=None, metavar="N",
                        help="CPU only: split the CPU into N XLA devices that compute in parallel, results "
                             f"bit-identical (default {DEFAULT_HOST_DEVICES} on a CPU-only machine; 1 keeps one "
                             "device and the persistent compilation cache)")


def xla_flag_cpu_devices() -> int | None:
    """The count ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` asks for, else None."""
    match = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(match.group(1)) if match else None


def requested_cpu_devices() -> int | None:
    """The CPU device count this process already asked for, else None (``jax_num_cpu_devices`` wins over the flag,
    as in JAX)."""
    import jax

    configured = int(jax.config.jax_num_cpu_devices)  # -1 when unset
    return configured if configured >= 1 else xla_flag_cpu_devices()


def accelerator_possible() -> bool:
    """Whether JAX could pick a backend other than the CPU, judged without starting one: True when a PJRT plugin
    (CUDA, ROCm, Metal, ...) or libtpu is installed, unless JAX_PLATFORMS names the CPU alone."""
    import jax

    platforms = (jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS") or "").lower()
    if platforms:
        return platforms != "cpu"
    plugins = importlib.util.find_spec("jax_plugins") is not None or any(
        True for _ in importlib.metadata.entry_points(group="jax_plugins"))
    return (plugins or importlib.util.find_spec("libtpu") is not None
            or any(os.environ.get(name) for name in ("TPU_LIBRARY_PATH", "PJRT_NAMES_AND_LIBRARY_PATHS")))


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_host_devices(*, cores: int, requested: int | None, accelerator: bool, keeps_devices: bool) -> int | None:
    """The CPU device count to set when none was asked for, or None to leave JAX's own choice (see the module
    docstring for why each condition keeps it)."""
    if requested is not None or accelerator or keeps_devices:
        return None
    count = min(DEFAULT_HOST_DEVICES, cores)
    return count if count > 1 else None


def split_host_cpu(args: argparse.Namespace) -> int | None:
    """Set the CPU device count of a command with ``--host-devices`` (as given, or the default where it applies);
    returns the count set, or None where JAX keeps its own. A no-op for commands without the option."""
    if not hasattr(args, "host_devices"):
        return None
    if args.host_devices is not None:
        _set_cpu_devices(args.host_devices)
        return args.host_devices
    count = default_host_devices(
        cores=available_cores(), requested=requested_cpu_devices(), accelerator=accelerator_possible(),
        keeps_devices=bool(getattr(args, "coordinator", None) or getattr(args, "mesh", None)))
    if count is None:
        return None
    try:
        _set_cpu_devices(count)
    except UsageError:  # JAX has started already (a caller in the same process): it keeps its devices
        return None
    return count


def _set_cpu_devices(count: int) -> None:
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError as exc:  # JAX refuses once its backend has started (and the count differs)
        raise UsageError(f"--host-devices {count}: JAX has already started with "
                         f"{len(jax.devices('cpu'))} CPU devices in this process; give it to a fresh process") from exc
