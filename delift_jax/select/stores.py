"""A kernel location as ``delift select`` trusts it: where it lives, and for a store of ``delift kernel`` what its
arrays verifiably hold.

A location is a ``.npy`` file or a directory with ``kernel.npy`` (dense) or ``kernel_indices.npy`` +
``kernel_values.npy`` (sparse) and ``manifest.json``. A *store* (its manifest has ``n_targets``, ``n_candidates``,
``square``) is checked before anything is selected from it:

* its manifest against its arrays (``check_manifest``): the counts, the square flag, the mode and top-k are read
  from array headers and compared, so a hand-edited ``n_targets`` cannot re-orient or mis-size a kernel;
* every array it reads against the size and SHA-256 its manifest records (``kernel.checksums``; verified once per
  process and file version, streamed: cheap at 1M, see there). A complete store with no ``files`` record was written
  before checksums existed (or by hand): it is used, with one warning (``unverified_note``);
* its distance is derived from what it holds (``derived_distance``), never read from the editable
  ``summary.distance``: ``distance_no_example.npy`` is published together with the kernel (and checksummed with
  it) and equals exactly one of the checksummed ``no_example.npz`` arrays, ``rms`` (rms) or ``logp`` (pmi);
* its examples are known per side (``side_sha256``): a query or private store computed on another pool than K's,
  even of the same size, is refused (``select.io.load_oriented``).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from pathlib import Path

import numpy as np

from delift_jax.errors import SelectionError
from delift_jax.kernel import checksums
from delift_jax.kernel.checksums import DamagedFileError
from delift_jax.kernel.store import FILES_KEY, REPAIR, read_checked_npz

DENSE_FILE = "kernel.npy"
INDICES_FILE = "kernel_indices.npy"
VALUES_FILE = "kernel_values.npy"
RAW_DENSE_FILE = "utility_raw.npy"
RAW_VALUES_FILE = "utility_raw_values.npy"
MANIFEST_FILE = "manifest.json"
DISTANCE_FILE = "distance_no_example.npy"
NO_EXAMPLE_FILE = "no_example.npz"
STORE_FIELDS = ("n_targets", "n_candidates", "square")
DISTANCE_OF = {"rms": "rms", "logp": "pmi"}  # no_example.npz array -> the distance that stores it as d(i | none)


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """Where a kernel lives. manifest: the directory's manifest.json (None for a .npy file or no manifest).
    distance: what its utilities were computed with (``derived_distance``; None where unknown)."""

    path: Path
    what: str
    manifest: dict | None
    distance: str | None = None

    @property
    def is_store(self) -> bool:
        """Written by ``delift kernel`` (so its orientation and normalization are known)."""
        return isinstance(self.manifest, dict) and all(f in self.manifest for f in STORE_FIELDS)

    @property
    def is_sparse(self) -> bool:
        return self.path.is_dir() and not (self.path / DENSE_FILE).exists()

    @property
    def checksummed(self) -> bool:
        """A store whose manifest records its files' checksums (every store ``delift kernel`` completes now)."""
        return self.is_store and isinstance(self.manifest.get(FILES_KEY), dict)

    @property
    def normalization(self) -> str | None:
        return self._summary().get("normalization")

    @property
    def exclude_diagonal(self) -> bool:
        return bool(self._summary().get("exclude_diagonal"))

    def side_sha256(self, side: str) -> str | None:
        """The data fingerprint of the store's ``targets`` (rows) or ``candidates`` (columns); a square store's
        ``data_sha256`` serves both (it hashes the one example list)."""
        if not self.is_store:
            return None
        value = self.manifest.get(f"{side}_sha256")
        if value is None and self.manifest.get("square") is True:
            value = self.manifest.get("data_sha256")
        return value if isinstance(value, str) else None

    def label(self) -> str:
        return f"{self.what} {self.path}"

    def _summary(self) -> dict:
        summary = self.manifest.get("summary") if self.is_store else None
        return summary if isinstance(summary, dict) else {}


def open_kernel(location: str | os.PathLike, what: str = "kernel") -> KernelSource:
    """Check that ``location`` holds a finished kernel; for a store, check its manifest against its arrays and
    derive its distance (only headers and per-target vectors are read)."""
    path = Path(location)
    if not path.exists():
        raise SelectionError(f"{what} not found: {path}")
    if path.is_file():
        if path.suffix != ".npy":
            raise SelectionError(f"{what} file {path} is not a .npy file; pass a .npy file or a kernel directory")
        return KernelSource(path, what, None)
    manifest = _read_manifest(path, what)
    if not (path / DENSE_FILE).exists() and not ((path / INDICES_FILE).exists() and (path / VALUES_FILE).exists()):
        raise SelectionError(f"{what} directory {path} holds neither {DENSE_FILE} nor {INDICES_FILE} + {VALUES_FILE}")
    source = KernelSource(path, what, manifest)
    if not source.is_store:
        return source
    check_manifest(source)
    return dataclasses.replace(source, distance=derived_distance(source))


def _read_manifest(directory: Path, what: str) -> dict | None:
    """A store whose manifest does not say complete holds no finished kernel (a run is unfinished or is rewriting
    the final arrays); a directory without a manifest (arrays saved by hand) is taken as it is."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise SelectionError(f"{directory / MANIFEST_FILE} is not valid JSON ({exc})") from None
    if isinstance(manifest, dict) and manifest.get("complete") is False:
        raise SelectionError(f"{what} in {directory} is incomplete (its manifest says complete: false); rerun the "
                             "kernel command with the same --out to finish it")
    return manifest if isinstance(manifest, dict) else None


def load_npy(source: KernelSource, name: str | None, what: str) -> np.ndarray:
    """Array ``name`` of a kernel directory (None: the .npy file ``source`` is), memory-mapped; verified first
    against the store's checksum record where it has one."""
    path = source.path if name is None else source.path / name
    if source.checksummed and name is not None:
        entry = source.manifest[FILES_KEY].get(name)
        if entry is None:
            raise DamagedFileError(f"{path} is not among the files the manifest of {source.label()} records; "
                                   f"{REPAIR}")
        checksums.verify(path, entry, REPAIR)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SelectionError(f"cannot read {what} {path}: {exc}") from None


def unverified_note(source: KernelSource | None) -> str | None:
    """One warning line for a store whose manifest records no checksums (its arrays are used unverified)."""
    if source is None or not source.is_store or source.checksummed:
        return None
    return (f"{source.label()} records no checksums of its arrays (written by hand or before delift recorded them), "
            f"so a damaged file would go unnoticed; {REPAIR} and record them")


# ---------------------------------------------------------------------------------------------------------------------
# The manifest against the arrays.


def check_manifest(source: KernelSource) -> None:
    """One-line SelectionError where the store's manifest and its arrays disagree (see the module docstring)."""
    manifest = source.manifest
    for name, entry in (manifest.get(FILES_KEY) or {}).items() if source.checksummed else ():
        if name != "neighbours.npy":  # used by `delift kernel` only; select never reads it
            checksums.check_size(source.path / name, entry, REPAIR)
    n_targets, n_candidates = (_count(source, name) for name in ("n_targets", "n_candidates"))
    if not isinstance(manifest["square"], bool) or (manifest["square"] and n_targets != n_candidates):
        _disagree(source, f"square {manifest['square']!r} with {n_targets} targets and {n_candidates} candidates")
    mode = "sparse" if source.is_sparse else "dense"
    if manifest.get("mode", mode) != mode:
        _disagree(source, f"mode {manifest.get('mode')!r}, but the directory holds a {mode} kernel")
    if mode == "dense":
        for name in (DENSE_FILE, RAW_DENSE_FILE):
            _expect_shape(source, name, (n_targets, n_candidates))
    else:
        width = _header(source, INDICES_FILE).shape[-1]
        if manifest.get("top_k") is not None and manifest.get("top_k") != width:
            _disagree(source, f"top_k {manifest.get('top_k')!r}, but {INDICES_FILE} holds {width} per target")
        for name in (INDICES_FILE, VALUES_FILE, RAW_VALUES_FILE):
            _expect_shape(source, name, (n_targets, width))
    _expect_shape(source, DISTANCE_FILE, (n_targets,))


def check_indices(source: KernelSource, indices: np.ndarray) -> None:
    """Sparse column indices must name candidates of the store (the manifest's n_candidates)."""
    if source.is_store and indices.size and (indices.min() < 0 or indices.max() >= source.manifest["n_candidates"]):
        _disagree(source, f"n_candidates {source.manifest['n_candidates']}, but {INDICES_FILE} holds column "
                          f"{int(indices.max()) if indices.max() >= 0 else int(indices.min())}")


def _count(source: KernelSource, name: str) -> int:
    value = source.manifest[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        _disagree(source, f"{name} {value!r}, which is no count of examples")
    return int(value)


def _header(source: KernelSource, name: str) -> np.ndarray:
    """The array's header (memory-mapped: no data is read, nothing verified yet)."""
    try:
        return np.load(source.path / name, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SelectionError(f"cannot read {source.what} {source.path / name}: {exc}") from None


def _expect_shape(source: KernelSource, name: str, shape: tuple) -> None:
    if not (source.path / name).exists():
        return
    actual = _header(source, name).shape
    if actual != shape:
        fields = "n_targets" if len(shape) == 1 else "n_targets x n_candidates" if name in (
            DENSE_FILE, RAW_DENSE_FILE) else "n_targets x top_k"
        _disagree(source, f"{fields} = {shape}, but {name} has shape {actual}")


def _disagree(source: KernelSource, what: str) -> None:
    raise SelectionError(f"the manifest of {source.label()} says {what}: the manifest was edited or damaged; "
                         "restore it, or recompute the store with `delift kernel` into a new --out")


# ---------------------------------------------------------------------------------------------------------------------
# The distance, from what the store holds.


def derived_distance(source: KernelSource) -> str | None:
    """"rms" or "pmi": which of the checksummed no-example distances the published ``distance_no_example.npy``
    holds. A store without those files (written by hand) falls back to ``summary.distance``, unverifiable; a
    checksummed store must have them."""
    missing = [name for name in (DISTANCE_FILE, NO_EXAMPLE_FILE) if not (source.path / name).exists()]
    if missing:
        if source.checksummed:
            raise DamagedFileError(f"{source.label()} lacks {' and '.join(missing)}, so the distance of its "
                                   f"utilities cannot be checked; {REPAIR}")
        recorded = source._summary().get("distance")
        return recorded if isinstance(recorded, str) else None
    published = np.asarray(load_npy(source, DISTANCE_FILE, f"{source.what} distances"))
    no_example = read_checked_npz(source.path / NO_EXAMPLE_FILE)
    if "rows" in no_example:  # a surrogate store scores only its sampled rows without an example (NaN elsewhere)
        rows = np.asarray(no_example["rows"])
        if published.ndim == 1 and rows.size and rows.max() < len(published):  # else: no match, reported below
            published = published[rows]
    matches = [DISTANCE_OF[key] for key in DISTANCE_OF
               if key in no_example and np.array_equal(published, no_example[key])]
    if not matches:
        raise DamagedFileError(f"{source.path / DISTANCE_FILE} equals neither distance of {NO_EXAMPLE_FILE}: "
                               f"{source.label()} is damaged; {REPAIR}")
    if len(matches) > 1:  # every target certain without an example (rms = logp = 0): either distance reads the same
        recorded = source._summary().get("distance")
        return recorded if recorded in matches else None
    return matches[0]
