"""From raw utilities U to the kernel K the selectors consume (DESIGN §1.2). Always global, never per block."""

from __future__ import annotations

import warnings

import numpy as np

from delift_jax.errors import DataError


def utilities(d_no_example: np.ndarray, d_with_example: np.ndarray, logp_no_example: np.ndarray,
              logp_with_example: np.ndarray, distance: str) -> np.ndarray:
    """U[i, j] (or U at the stored pairs): rms: d(i | none) - d(i | j); pmi: mean log p(i | j) - mean log p(i | none).

    The first argument of each pair is per target (broadcast along the last axis of the second)."""
    if distance == "rms":
        return d_no_example[:, None] - d_with_example
    if distance == "pmi":
        return logp_with_example - logp_no_example[:, None]
    raise DataError(f"distance {distance!r} is unknown; choose rms or pmi")


def normalize(values: np.ndarray, method: str, ignore: np.ndarray | None = None) -> np.ndarray:
    """Apply ``method`` (minmax | clip_minmax | exp | none) to ``values`` with statistics over all entries except
    those where ``ignore`` is True (which come out as 0: they are left out of the objective too)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError(f"{int(np.sum(~np.isfinite(values)))} utilities are NaN or infinite; the model produced "
                        "non-finite scores (try float32 compute)")
    keep = np.ones(values.shape, bool) if ignore is None else ~ignore
    if method == "none":
        out = values.copy()
    elif method == "exp":
        out = np.exp(values)
    elif method in ("minmax", "clip_minmax"):
        if method == "clip_minmax":
            values = np.maximum(values, 0.0)
        kept = values[keep]
        if kept.size == 0:
            raise DataError("no utilities left to normalize")
        low, high = float(kept.min()), float(kept.max())
        if high == low:
            warnings.warn(f"all utilities are equal ({low:.6g}); the min-max kernel is all zeros", stacklevel=2)
            out = np.zeros_like(values)
        else:
            out = (values - low) / (high - low)
    else:
        raise DataError(f"normalization {method!r} is unknown; choose minmax, clip_minmax, exp or none")
    out[~keep] = 0.0
    return out.astype(np.float32)
