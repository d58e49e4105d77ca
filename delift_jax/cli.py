"""The ``delift`` console script: parse arguments, call the library, print. Nothing else lives here.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their command runs, so ``delift --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from delift_jax.errors import DeliftError
from delift_jax.host_devices import split_host_cpu, xla_flag_cpu_devices

# command name -> (module, one-line help)
COMMANDS = {
    "run": ("delift_jax.pipeline.command",
            "one use case end to end: select, export, fine-tune, evaluate on a held-out split"),
    "demo": ("delift_jax.demo.command",
             "a known-answer case on built-in data (task, instruction or continual): what each method picks"),
    "score": ("delift_jax.scoring.command", "score responses teacher-forced with a model; print per-example distances"),
    "kernel": ("delift_jax.kernel.command", "compute the DELIFT utility kernel into a resumable directory"),
    "select": ("delift_jax.select.command", "pick a subset from a kernel with submodular maximization"),
    "finetune": ("delift_jax.train.command", "fine-tune a model (LoRA or full) on a dataset or a selected subset"),
    "evaluate": ("delift_jax.evaluate.command",
                 "generate for a test set with and without the subset's nearest examples as demonstrations; metrics"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delift", description="DELIFT data selection for LLM fine-tuning, in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command_parser)
    return parser


def enable_compilation_cache(default: str | Path | None = None) -> None:
    """Persist XLA compilations across runs (a resumed kernel or a second demo skips recompiling).

    ``DELIFT_XLA_CACHE`` sets the directory (else ``default``, else ``~/.cache/delift_jax/xla``);
    ``DELIFT_XLA_CACHE=0`` turns it off. Off in processes with several simulated CPU devices (see
    ``simulated_cpu_devices``), which ``delift kernel`` is by default on a CPU-only machine (host_devices.py).
    Scripts call this too, never ``jax.config`` directly."""
    default = default if default is not None else Path.home() / ".cache" / "delift_jax" / "xla"
    location = os.environ.get("DELIFT_XLA_CACHE", str(default))
    if location in ("", "0") or simulated_cpu_devices() > 1:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", location)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def simulated_cpu_devices() -> int:
    """How many CPU devices this process asked XLA to simulate (1 if none), read without starting a backend (so a
    later ``jax.distributed.initialize`` still works).

    With several simulated CPU devices, programs with cross-device collectives loaded back from the persistent cache
    deadlock in XLA's all-reduce rendezvous and abort the process (jaxlib 0.10.2: a warm cache turned the sharded
    train step into "Termination timeout for all reduce ... Exiting"); such processes compile afresh instead."""
    import jax

    # The larger of the two requests (JAX uses jax_num_cpu_devices when set): never under-counts.
    return max(1, int(jax.config.jax_num_cpu_devices), xla_flag_cpu_devices() or 1)  # -1 when unset


def one_line(text: str) -> str:
    """An error message on one line (a multi-line message would read as several errors)."""
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure it foresees ends in one ``error:`` line on stderr and exit status 2."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage line and message (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    return run_parsed(args.command, args, importlib.import_module(args._module).run)


def run_parsed(command: str, args: argparse.Namespace, run) -> int:
    """Check ``args`` of ``command`` up front (count options, output paths: ``cli_checks``), then ``run(args)``.

    A ``DeliftError`` or an ``OSError`` that still escapes (a disk that fills up during the run) ends in one
    ``error:`` line naming the problem (and the path), exit status 2, never a traceback."""
    try:
        from delift_jax.cli_checks import check_arguments

        check_arguments(command, args)
        split_host_cpu(args)  # before anything starts JAX's backend, and before the cache looks at the count
        enable_compilation_cache()
        return int(run(args) or 0)
    except DeliftError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        from delift_jax.cli_checks import describe_os_error

        print(f"error: {one_line(describe_os_error(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
