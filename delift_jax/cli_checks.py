"""Checks every ``delift`` command runs on its arguments before any data or model is loaded.

Two kinds, each in one place for every command:

* count options (``--limit``, ``--batch-size``, ``--top-k``, ...): a table of each option's smallest valid value;
  an option a command does not have is simply absent from its arguments.
* output paths (``--out`` and friends): the path must not exist as the wrong kind (a file where a directory is
  written, or the reverse), its nearest existing ancestor must be a directory the process can create files in, and
  that file system must have some free space. These are checked up front so a run never does hours of work and
  then fails to write its result. Nothing is created: a probe file is made and removed in the nearest existing
  directory, so the output path holds exactly what it held before.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import tempfile
from pathlib import Path

from delift_jax.errors import UsageError

# argparse dest -> smallest valid value. A count below its minimum would silently change what runs (a negative
# --limit keeps examples[:limit], a zero batch size divides by zero deep inside JAX), so each is refused here.
COUNT_MINIMUMS: dict[str, int] = {
    "host_devices": 1,
    "limit": 1, "pool_limit": 1, "target_limit": 1, "existing_limit": 1, "skip": 0,
    "per_source": 1, "targets": 1, "test": 1,  # demo's set sizes (an int --targets; kernel's is a path)
    "batch_size": 1, "eval_batch_size": 1, "grad_accum": 1,
    "max_length": 4, "kernel_max_length": 4, "max_response_tokens": 1,
    "max_new_tokens": 1, "judge_max_new_tokens": 1,
    "block_pairs": 1, "top_k": 1, "max_pairs": 1, "num_processes": 1, "process_id": 0, "devices": 1,
    "epochs": 1, "max_steps": 1, "train_steps": 1, "warmup_steps": 0, "save_every": 1, "keep": 1,
    "lora_rank": 1, "k": 1, "icl": 0,
    "surrogate_pairs": 8,  # kernel.config.MIN_SURROGATE_PAIRS
    "surrogate_seed": 0, "refine_rounds": 0, "refine_pairs": 1,
}

# Real-valued options whose library check comes only after the model has loaded (or never): argparse dest ->
# (bound, whether the bound itself is allowed). Options checked by their config dataclasses are not repeated here.
FLOAT_BOUNDS: dict[str, tuple[float, bool]] = {
    "lora_alpha": (0.0, False),     # alpha 0 scales every adapter to nothing: training would change nothing
    "max_grad_norm": (0.0, True),   # 0 turns clipping off; a negative norm has no meaning
}

# Free space below this on the output's file system is a full disk: even the small result files would not fit.
MIN_FREE_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """An output option: ``dest`` of argparse, ``kind`` "dir" or "file", and the names written inside a
    directory output with the kind each must have (``children``: name -> "dir" | "file")."""

    dest: str
    kind: str
    children: tuple[tuple[str, str], ...] = ()


# command -> its output options. ``score`` writes nothing (it prints its table).
OUTPUTS: dict[str, tuple[OutputSpec, ...]] = {
    "kernel": (OutputSpec("out", "dir", (("manifest.json", "file"), ("blocks", "dir"))),),
    "select": (OutputSpec("out", "dir", (("picks.npy", "file"), ("gains.npy", "file"), ("summary.json", "file"))),),
    "finetune": (OutputSpec("out", "dir", (("run.json", "file"), ("checkpoints", "dir"), ("results.json", "file"),
                                           ("model", "dir"))),
                 OutputSpec("save_params", "file")),
    "evaluate": (OutputSpec("out", "file"),),
    "run": (OutputSpec("out", "dir", (("results.json", "file"), ("results.md", "file"), ("splits.json", "file"))),),
    "demo": (OutputSpec("out", "dir", (("results.json", "file"), ("results.md", "file"), ("splits.json", "file"))),),
}


def option_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_counts(args: argparse.Namespace) -> None:
    """Refuse a count option below its minimum (one line naming the option, its value and the bound)."""
    values = vars(args)
    for dest, minimum in COUNT_MINIMUMS.items():
        value = values.get(dest)
        if value is None or isinstance(value, bool) or not isinstance(value, int):
            continue
        if value < minimum:
            bound = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise UsageError(f"{option_name(dest)} {value} {bound}")
    for dest, (bound, inclusive) in FLOAT_BOUNDS.items():
        value = values.get(dest)
        if not isinstance(value, float):
            continue
        if not math.isfinite(value) or value < bound or (value == bound and not inclusive):
            relation = "at least" if inclusive else "above"
            raise UsageError(f"{option_name(dest)} {value} must be a finite number {relation} {bound:g}")
    processes, process = values.get("num_processes"), values.get("process_id")
    if isinstance(processes, int) and isinstance(process, int) and process >= processes:
        raise UsageError(f"--process-id {process} must be below --num-processes {processes}")


def check_outputs(command: str, args: argparse.Namespace) -> None:
    """Check each output option of ``command`` that is set (see the module docstring)."""
    values = vars(args)
    for spec in OUTPUTS.get(command, ()):
        location = values.get(spec.dest)
        if location is None:
            continue
        check_output_path(location, spec.kind, option_name(spec.dest), spec.children)


def check_output_path(location: str | os.PathLike, kind: str, option: str = "--out",
                      children: tuple[tuple[str, str], ...] = ()) -> Path:
    """``location`` can be written as a ``kind`` ("dir" or "file"); raise ``UsageError`` naming it otherwise."""
    path = Path(location).expanduser()
    if str(location).strip() == "":
        raise UsageError(f"{option} is empty; give a path")
    if path.exists() or path.is_symlink():
        _check_existing(path, kind, option)
        if kind == "dir":
            for name, child_kind in children:
                child = path / name
                if child.exists():
                    _check_existing(child, child_kind, f"{option} {path}:")
        writable_dir = path if kind == "dir" else path.parent
    else:
        writable_dir = _nearest_existing_ancestor(path, option)
    _check_writable(writable_dir, path, option)
    _check_free_space(writable_dir, path, option)
    return path


def _check_existing(path: Path, kind: str, option: str) -> None:
    if not path.exists():
        raise UsageError(f"{option} {path} is a broken symbolic link; remove it or choose another path")
    if kind == "dir" and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, but a directory is written there; "
                         "remove it or choose another path")
    if kind == "file" and path.is_dir():
        raise UsageError(f"{option} {path} is a directory, but a file is written there; "
                         f"give a file path (e.g. {path / 'results.json'})")


def _nearest_existing_ancestor(path: Path, option: str) -> Path:
    """The closest existing ancestor of a path that does not exist yet; it must be a directory."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise UsageError(f"{option} {path}: {ancestor} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path} cannot be created: {ancestor} is a file, not a directory; "
                         "choose another path")
    return ancestor


def _check_writable(directory: Path, path: Path, option: str) -> None:
    """Create and remove a probe file in ``directory``: the only test that holds for every user and mount
    (``os.access`` says yes to root on a read-only file system)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".delift-write-probe.", dir=directory)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"{option} {path} is not writable: cannot create files in {directory} ({reason}); "
                         "choose another path or fix its permissions") from None
    os.close(fd)
    os.unlink(probe)


def free_bytes(directory: Path) -> float:
    """Bytes available to this user on the file system holding ``directory`` (inf where unknown)."""
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):
        return math.inf
    return stats.f_bavail * stats.f_frsize


def _check_free_space(directory: Path, path: Path, option: str) -> None:
    available = free_bytes(directory)
    if available < MIN_FREE_BYTES:
        raise UsageError(f"{option} {path}: no space left on the device holding {directory} "
                         f"({available / 2**20:.1f} MiB free); free some space or choose another path")


def check_arguments(command: str, args: argparse.Namespace) -> None:
    """Every up-front check of a command's arguments: counts, then output paths."""
    check_counts(args)
    check_outputs(command, args)


def describe_os_error(exc: OSError) -> str:
    """One line for an ``OSError`` that escaped the up-front checks (a disk that filled up meanwhile, ...)."""
    text = str(exc)
    reason = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    where = exc.filename if exc.filename is not None else None
    if where is not None and exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    fix = {errno.ENOSPC: "free some space and rerun the same command",
           errno.EACCES: "fix the permissions or choose another path",
           errno.EROFS: "choose a writable path"}.get(exc.errno, "check the path and rerun the same command")
    text = f"{where}: {reason}" if where is not None else reason
    return f"{text}; {fix}"


# Metrics that are NaN/inf only when the model's outputs are (a judge score may be NaN when nothing parsed).
MODEL_OUTPUT_METRICS = ("token_nll", "nll", "perplexity")


def refuse_nonfinite_metrics(conditions: dict, keys: tuple[str, ...] = MODEL_OUTPUT_METRICS) -> None:
    """Raise ``NonFiniteError`` naming the first condition and metric whose value is NaN or infinite: such a
    result is a failure of the model's numerics, never a score to write down as a success."""
    from delift_jax.errors import NonFiniteError

    for condition, summary in conditions.items():
        for key in keys:
            value = summary.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                raise NonFiniteError(f"{key} of condition {condition} is {value}: the model produced non-finite "
                                     "log-probabilities (damaged weights, or an overflow in --dtype bfloat16); "
                                     "nothing was written")
