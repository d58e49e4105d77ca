"""Training checkpoints: an Orbax ``CheckpointManager`` plus a fingerprint that ties a directory to one run.

Layout of a run directory::

    run.json           fingerprint: base model, training config, data (written when the directory is created)
    checkpoints/<step>/ {state: trainable params, optimizer state, step, key, data plan; meta: losses, ...}

Opening a directory whose ``run.json`` names another model, config or dataset is refused with a one-line
``CheckpointMismatchError`` naming the fields that differ, so a resume can never silently mix two runs. Orbax
writes each step to a temporary name and renames it when complete, so a process killed mid-save leaves the
previous checkpoint intact; only the ``keep`` newest are kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from delift_jax.atomic_io import atomic_save_json
from delift_jax.errors import DeliftError

FINGERPRINT_FILE = "run.json"


class CheckpointMismatchError(DeliftError):
    """A checkpoint directory belongs to another model, configuration or dataset."""


def array_digest(arrays: dict[str, Any], stride: int = 997) -> str:
    """A cheap content hash: names, shapes, dtypes and every ``stride``-th element (plus sums) of each array."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        flat = a.reshape(-1)
        h.update(f"{name}:{a.shape}:{a.dtype}".encode())
        h.update(np.ascontiguousarray(flat[::stride]).tobytes())
        h.update(np.float64(flat.astype(np.float64).sum()).tobytes())
    return h.hexdigest()[:16]


def sequences_fingerprint(sequences) -> str:
    h = hashlib.sha256()
    for seq in sequences:
        h.update(np.int64(seq.n_scored).tobytes())
        h.update(np.asarray(seq.tokens, np.int32).tobytes())
    return h.hexdigest()[:16]


class Checkpointer:
    """Save and restore ``{state pytree, meta JSON}`` at step numbers in ``directory/checkpoints``."""

    def __init__(self, directory: str | Path, fingerprint: dict, keep: int = 2):
        self.directory = Path(directory).expanduser().resolve()
        self.fingerprint = fingerprint
        self._check_or_claim()
        self.manager = ocp.CheckpointManager(
            self.directory / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True),
            item_names=("state", "meta"))

    def _check_or_claim(self) -> None:
        marker = self.directory / FINGERPRINT_FILE
        if marker.is_file():
            try:
                recorded = json.loads(marker.read_text())
            except json.JSONDecodeError:
                raise CheckpointMismatchError(f"{marker} is corrupt; use a new output directory") from None
            differ = fingerprint_differences(recorded, self.fingerprint)
            if differ:
                detail = "; ".join(f"{key}: {old} in the checkpoint, {new} now" for key, old, new in differ)
                raise CheckpointMismatchError(
                    f"checkpoint directory {self.directory} belongs to another run ({detail}); "
                    "use a new output directory or the same model, data and settings to resume")
            return
        if self.directory.exists() and any(self.directory.iterdir()):
            raise CheckpointMismatchError(f"output directory {self.directory} is not empty and holds no "
                                          f"{FINGERPRINT_FILE}; choose a new or empty directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_save_json(marker, self.fingerprint, indent=1)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))
        # The train step donates ``state``'s buffers on its next call; finishing the save here means no save can
        # still be reading them then, whatever Orbax copies in the background. (An abort once blamed on this was
        # the persistent XLA cache: see ``cli.simulated_cpu_devices``.)
        self.manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restore ``state`` shaped (and sharded) like the pytree ``like``, and the meta dict."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


_MISSING = object()


def fingerprint_differences(recorded: dict, current: dict, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, recorded value, current value)`` for every leaf that differs, nested dicts walked down to
    the differing key (so a long config names only ``config.learning_rate``, with both values in full)."""
    differences = []
    for key in sorted(set(recorded) | set(current), key=str):
        old, new = recorded.get(key, _MISSING), current.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += fingerprint_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append((f"{prefix}{key}", _show(old), _show(new)))
    return differences


def _show(value) -> str:
    return "(absent)" if value is _MISSING else json.dumps(value, sort_keys=True)
