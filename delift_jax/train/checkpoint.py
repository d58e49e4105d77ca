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


def model_fingerprint(model) -> str:
    """Hash of a (base) model's config and weights."""
    from flax import nnx

    _, state = nnx.split(model)
    arrays = {".".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}
    return hashlib.sha256((repr(model.config) + array_digest(arrays)).encode()).hexdigest()[:16]


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
            differ = sorted(k for k in set(recorded) | set(self.fingerprint)
                            if recorded.get(k) != self.fingerprint.get(k))
            if differ:
                detail = "; ".join(f"{k}: {_short(recorded.get(k))} != {_short(self.fingerprint.get(k))}"
                                   for k in differ[:3])
                raise CheckpointMismatchError(
                    f"checkpoint directory {self.directory} belongs to another run ({detail}); "
                    "use a new output directory or the same model, data and settings to resume")
            return
        if self.directory.exists() and any(self.directory.iterdir()):
            raise CheckpointMismatchError(f"output directory {self.directory} is not empty and holds no "
                                          f"{FINGERPRINT_FILE}; choose a new or empty directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True))
        tmp.replace(marker)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))

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


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
