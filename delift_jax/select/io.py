"""Reading kernels from disk and writing selections atomically.

A kernel location is either a ``.npy`` file (dense K, rows = covered elements) or a directory holding
``kernel.npy`` (dense) or ``kernel_indices.npy`` + ``kernel_values.npy`` (sparse top-k) with ``manifest.json``
giving ``n_candidates``. Outputs are written to a temporary file in the same directory and renamed into place, so a
crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from delift_jax.atomic_io import atomic_save_json, atomic_save_npy
from delift_jax.errors import SelectionError
from delift_jax.select.layout import DenseKernel
from delift_jax.select.sparse import SparseKernel

DENSE_FILE = "kernel.npy"
INDICES_FILE = "kernel_indices.npy"
VALUES_FILE = "kernel_values.npy"
MANIFEST_FILE = "manifest.json"


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SelectionError(f"cannot read {what} {path}: {exc}") from None


def load_kernel(location: str | os.PathLike, what: str = "kernel", *, candidate_major: bool = False):
    """Load a dense or sparse kernel from ``location`` (.npy file or kernel directory).

    With ``candidate_major`` a dense kernel comes back as a DenseKernel (laid out as Kᵀ on the host, so only one
    n × n array reaches the device); otherwise as a numpy (n_rows, n_candidates) array.
    """
    path = Path(location)
    if not path.exists():
        raise SelectionError(f"{what} not found: {path}")
    if path.is_file():
        if path.suffix != ".npy":
            raise SelectionError(f"{what} file {path} is not a .npy file; pass a .npy file or a kernel directory")
        return _dense(_load_npy(path, what), candidate_major)
    _refuse_incomplete(path, what)
    if (path / DENSE_FILE).exists():
        return _dense(_load_npy(path / DENSE_FILE, what), candidate_major)
    if (path / INDICES_FILE).exists() and (path / VALUES_FILE).exists():
        indices = np.asarray(_load_npy(path / INDICES_FILE, f"{what} indices"))
        values = np.asarray(_load_npy(path / VALUES_FILE, f"{what} values"))
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
            n_candidates = int(manifest["n_candidates"])
        except FileNotFoundError:
            raise SelectionError(f"sparse {what} in {path} has no {MANIFEST_FILE} giving n_candidates") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SelectionError(f"{path / MANIFEST_FILE} must be JSON with an integer n_candidates ({exc})") from None
        return SparseKernel(indices, values, n_candidates)
    raise SelectionError(
        f"{what} directory {path} holds neither {DENSE_FILE} nor {INDICES_FILE} + {VALUES_FILE}"
    )


def _refuse_incomplete(directory: Path, what: str) -> None:
    """A kernel store whose manifest does not say complete holds no finished kernel (a run is unfinished or is
    rewriting the final arrays); a directory without a manifest (arrays saved by hand) is taken as it is."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return
    except ValueError as exc:
        raise SelectionError(f"{directory / MANIFEST_FILE} is not valid JSON ({exc})") from None
    if isinstance(manifest, dict) and manifest.get("complete") is False:
        raise SelectionError(f"{what} in {directory} is incomplete (its manifest says complete: false); rerun the "
                             "kernel command with the same --out to finish it")


def _dense(array: np.ndarray, candidate_major: bool):
    if array.ndim != 2:
        raise SelectionError(f"kernel must be 2-D (n_rows, n_candidates), got shape {array.shape}")
    if not candidate_major:
        return np.asarray(array)
    keep = array.dtype == np.float32 or array.dtype.name == "bfloat16"  # float32/bfloat16 stay as stored
    return DenseKernel(np.ascontiguousarray(array.T, dtype=array.dtype if keep else np.float32))


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_save_npy(path, array)


def save_json(path: Path, payload: dict) -> None:
    atomic_save_json(path, payload)


def write_selection(out_dir: str | os.PathLike, picks: np.ndarray, gains: np.ndarray, summary: dict) -> dict:
    """Write ``picks.npy`` (int32, in pick order), ``gains.npy`` (float32) and ``summary.json``; return the paths.

    The summary is written last, so its presence means the selection is complete.
    """
    out = Path(out_dir)
    paths = {"picks": out / "picks.npy", "gains": out / "gains.npy", "summary": out / "summary.json"}
    save_npy(paths["picks"], np.asarray(picks, np.int32))
    save_npy(paths["gains"], np.asarray(gains, np.float32))
    save_json(paths["summary"], summary)
    return {name: str(path) for name, path in paths.items()}
