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


ROW_NORMALIZATIONS = ("row_rank", "row_minmax")


def row_normalize(kernels: dict[str, np.ndarray], method: str, ignore: dict[str, np.ndarray] | None = None
                  ) -> dict[str, np.ndarray]:
    """Per covered element (row) i, over row i's entries in every kernel together (the pool kernel K's columns and
    the existing data P's, say; entries where ``ignore`` is True left out and set to 0), as float32:

    * ``row_rank``: the entry's percentile rank in its row (ties share their average rank): 0 for the row's
      smallest utility, 1 for its largest;
    * ``row_minmax``: (U[i, j] - min_i) / (max_i - min_i).

    Why per row: a global scale lets rows with more to gain dominate facility location. Under the authors'
    global min-max, an example the model predicts badly without help (a corrupted one, say) has large utilities
    in its row — the largest on its diagonal, where it is its own demonstration — so covering it outweighs
    covering a typical example. Per row, every element weighs the same and only the order of its demonstrations
    counts. Every kernel must have the same rows."""
    if method not in ROW_NORMALIZATIONS:
        raise DataError(f"row normalization {method!r} is unknown; choose {' or '.join(ROW_NORMALIZATIONS)}")
    names = list(kernels)
    values = [np.asarray(kernels[name], np.float64) for name in names]
    if len({v.shape[0] for v in values}) != 1:
        raise DataError("a row normalization needs kernels with the same rows (covered elements)")
    masks = [np.zeros(v.shape, bool) if not ignore or name not in ignore else np.asarray(ignore[name], bool)
             for name, v in zip(names, values)]
    stacked, skipped = np.hstack(values), np.hstack(masks)
    if not np.all(np.isfinite(stacked[~skipped])):
        raise DataError("utilities are NaN or infinite; the model produced non-finite scores (try float32 compute)")
    out = np.zeros(stacked.shape, np.float32)
    for i in range(stacked.shape[0]):
        kept = ~skipped[i]
        out[i, kept] = _row_rank(stacked[i, kept]) if method == "row_rank" else _row_minmax(stacked[i, kept])
    bounds = np.cumsum([0] + [v.shape[1] for v in values])
    return {name: out[:, bounds[k]:bounds[k + 1]] for k, name in enumerate(names)}


def _row_rank(row: np.ndarray) -> np.ndarray:
    if row.size < 2:
        return np.ones(row.shape)
    ordered = np.sort(row)
    average_rank = (np.searchsorted(ordered, row, "left") + np.searchsorted(ordered, row, "right") - 1) / 2.0
    return average_rank / (row.size - 1)


def _row_minmax(row: np.ndarray) -> np.ndarray:
    low, high = (row.min(), row.max()) if row.size else (0.0, 0.0)
    return np.zeros(row.shape) if high == low else (row - low) / (high - low)
