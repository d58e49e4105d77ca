"""One fingerprint of a model's weights, shared by the kernel store identity and the fine-tuning checkpoints: both
must refuse to resume work made with other weights."""

from __future__ import annotations

import hashlib

import numpy as np
from flax import nnx


def model_fingerprint(model) -> str:
    """SHA-256 over every parameter's path, dtype, shape and bytes (in path order)."""
    digest = hashlib.sha256()
    for path, var in sorted(nnx.to_flat_state(nnx.state(model)), key=lambda kv: str(kv[0])):
        array = np.asarray(var.get_value())
        digest.update(f"{path}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
