"""What a kernel store is tied to: the weights, the text, the token ids and the settings that change the numbers;
and its provenance: each side's examples (``targets_sha256``, ``candidates_sha256``: comparable with a square
store's ``data_sha256``, so ``delift select`` can tell that K and Q share their pool) and the device mesh it was
started on.

The mesh. Results do not depend on the mesh's ``data`` size (every unit of work has the same shape whatever the
device count, and results are gathered, never summed across devices: docs/design.md, "bit-identical"), so a store resumed on
another data size holds the same numbers: one warning line says so. The ``model`` size changes the order of the
tensor-parallel partial sums (utilities equal to ~1e-5, not bit for bit), so blocks still to compute on another
model size would mix two roundings in one kernel: refused in one line, unless nothing is left to compute (then the
rerun only reassembles, and a warning says where the store was computed).
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.data.tokenize import eos_token_id
from delift_jax.fingerprints import model_fingerprint
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.store import FORMAT_VERSION, KernelStoreMismatchError


def data_fingerprint(targets: Sequence[Example], candidates: Sequence[Example] | None) -> str:
    payload = {"targets": [[e.prompt, e.response] for e in targets],
               "candidates": None if candidates is None else [[e.prompt, e.response] for e in candidates]}
    return hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()


def tokens_fingerprint(seqs, eos_id) -> str:
    """SHA-256 over every token id the kernel scores (no-example sequences, demonstration prefixes, continuations),
    so a store is tied to the tokenizer as well as to the text and the weights."""
    digest = hashlib.sha256(f"eos:{eos_id}".encode())
    for sequence in list(seqs.no_example) + list(seqs.continuations):
        digest.update(np.asarray(sequence.tokens, np.int64).tobytes() + f"|{sequence.n_scored}|".encode())
    for prefix in seqs.prefixes:
        digest.update(np.asarray(prefix, np.int64).tobytes() + b"|")
    return digest.hexdigest()


def kernel_identity(model, tokenizer, targets: Sequence[Example], candidates: Sequence[Example], square: bool,
                    seqs, config: KernelConfig) -> dict:
    """The manifest fields known before planning (the block grid joins them once planned)."""
    targets_sha256 = data_fingerprint(targets, None)
    candidates_sha256 = targets_sha256 if square else data_fingerprint(candidates, None)
    return {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint(model),
        "data_sha256": targets_sha256 if square else data_fingerprint(targets, candidates),
        "targets_sha256": targets_sha256, "candidates_sha256": candidates_sha256,
        "tokens_sha256": tokens_fingerprint(seqs, eos_token_id(tokenizer)),
        "compute_fingerprint": config.compute_fingerprint({"dtype": str(model.dtype)}),
        "n_targets": len(targets), "n_candidates": len(candidates), "square": square,
        "mode": "dense" if config.top_k is None else "sparse", "top_k": config.top_k,
        **({"utility": "surrogate"} if config.utility == "surrogate" else {}),  # exact stores keep their identity
    }


def mesh_record(mesh) -> dict:
    """The manifest's ``mesh``: axis sizes by name, ``data`` and ``model`` always present (a 1-D data mesh is
    ``model=1``)."""
    return {"data": 1, "model": 1, **{str(name): int(size) for name, size in dict(mesh.shape).items()}}


def mesh_change(recorded: dict | None, mesh, directory, work_left: bool) -> str | None:
    """One warning line when the store was started on another mesh whose results equal this one's, None when the
    mesh is the same (or the store predates the record); KernelStoreMismatchError when blocks are still to compute
    and the ``model`` sizes differ (see the module docstring)."""
    current = mesh_record(mesh)
    if not isinstance(recorded, dict) or recorded == current:
        return None
    then, now = _mesh_text(recorded), _mesh_text(current)
    if recorded.get("model", 1) != current["model"] and work_left:
        raise KernelStoreMismatchError(
            f"{directory} was started on mesh {then} and this run's mesh is {now}: another model size reorders the "
            "tensor-parallel sums (utilities equal to ~1e-5, not bit for bit), so one kernel would mix two roundings; "
            f"resume with --mesh model={recorded.get('model', 1)} (any data size) or use a new --out")
    if recorded.get("model", 1) != current["model"]:
        return (f"{directory} was computed on mesh {then}; this run ({now}) only reassembles its finished blocks")
    return (f"{directory} was started on mesh {then}; resuming on {now}: results do not depend on the data size "
            "(bit-identical), so the store stays one kernel")


def _mesh_text(record: dict) -> str:
    return ",".join(f"{name}={size}" for name, size in record.items())
