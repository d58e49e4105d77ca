"""From raw utilities U to the kernel K the selectors consume (DESIGN §1.2). Always global, never per block."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable

import numpy as np

from delift_jax.errors import DataError

NORMALIZATIONS = ("minmax", "clip_minmax", "exp", "none")


def utilities(d_no_example: np.ndarray, d_with_example: np.ndarray, logp_no_example: np.ndarray,
              logp_with_example: np.ndarray, distance: str) -> np.ndarray:
    """U[i, j] (or U at the stored pairs): rms: d(i | none) - d(i | j); pmi: mean log p(i | j) - mean log p(i | none).

    The first argument of each pair is per target (broadcast along the last axis of the second)."""
    if distance == "rms":
        return d_no_example[:, None] - d_with_example
    if distance == "pmi":
        return logp_with_example - logp_no_example[:, None]
    raise DataError(f"distance {distance!r} is unknown; choose rms or pmi")


@dataclasses.dataclass(frozen=True)
class Scale:
    """A fitted normalization: ``method`` and, for the min-max methods, the global ``low`` and ``high``."""

    method: str
    low: float = 0.0
    high: float = 0.0


def fit_scale(chunks: Iterable[tuple[np.ndarray, np.ndarray | None]], method: str) -> Scale:
    """The statistics of ``method`` over chunks of (values, ignore) that together make up the whole kernel, so a
    kernel too large for memory is scaled exactly as if it were one array."""
    if method not in NORMALIZATIONS:
        raise DataError(f"normalization {method!r} is unknown; choose minmax, clip_minmax, exp or none")
    low, high, n_kept = np.inf, -np.inf, 0
    for values, ignore in chunks:
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise DataError(f"{int(np.sum(~np.isfinite(values)))} utilities are NaN or infinite; the model produced "
                            "non-finite scores (try float32 compute)")
        if method in ("minmax", "clip_minmax"):
            kept = (np.maximum(values, 0.0) if method == "clip_minmax" else values)[_keep(values, ignore)]
            if kept.size:
                low, high, n_kept = min(low, float(kept.min())), max(high, float(kept.max())), n_kept + kept.size
    if method not in ("minmax", "clip_minmax"):
        return Scale(method)
    if n_kept == 0:
        raise DataError("no utilities left to normalize")
    if high == low:
        warnings.warn(f"all utilities are equal ({low:.6g}); the min-max kernel is all zeros", stacklevel=2)
    return Scale(method, low, high)


def apply_scale(values: np.ndarray, scale: Scale, ignore: np.ndarray | None = None) -> np.ndarray:
    """``values`` normalized with ``scale`` as float32; entries where ``ignore`` is True come out as 0."""
    values = np.asarray(values, dtype=np.float64)
    if scale.method == "none":
        out = values.copy()
    elif scale.method == "exp":
        out = np.exp(values)
    else:
        if scale.method == "clip_minmax":
            values = np.maximum(values, 0.0)
        out = np.zeros_like(values) if scale.high == scale.low else (values - scale.low) / (scale.high - scale.low)
    out[~_keep(values, ignore)] = 0.0
    return out.astype(np.float32)


def normalize(values: np.ndarray, method: str, ignore: np.ndarray | None = None) -> np.ndarray:
    """Apply ``method`` (minmax | clip_minmax | exp | none) to ``values`` with statistics over all entries except
    those where ``ignore`` is True (which come out as 0: they are left out of the objective too)."""
    return apply_scale(values, fit_scale([(values, ignore)], method), ignore)


def _keep(values: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    return np.ones(values.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
