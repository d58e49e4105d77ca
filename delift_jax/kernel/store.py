"""A crash-safe kernel directory: a manifest, one checksummed file per finished block, final arrays.

Every file appears atomically (temporary file, fsync, rename, fsync of the directory), so a crash at any moment
leaves either the whole file or none of it. Block files carry a SHA-256 of their arrays: a block that fails to read
or verify is removed and computed again. Re-running the same command finds the finished blocks and skips them; a
directory made for another model, data or configuration is refused, never silently reused.

Several processes may work on one store: the store lock (``.lock``) serializes creating the store, the shared
inputs and the assembly; a block is computed only by the process holding its claim (``blocks/.block_*.lock``).
Both are ``flock`` leases that end with their holder, ``kill -9`` included.

Layout::

    manifest.json            identity (format, model fingerprint, data hash, token-id hash, config hash, block grid)
                             + provenance (each side's data hash, the device mesh it was started on)
                             + status (``complete`` turns true only once every final array is written)
                             + ``files``: size and SHA-256 of every published array (``checksums``)
    no_example.npz           d(i | no example) for every target (rms, mean log p, scored-token counts), checksummed
    neighbours.npy           sparse mode: each target's candidates
    blocks/block_000012.npz  pairs (target, candidate) of block 12, their rms / mean log p, and a checksum
    kernel.npy, utility_raw.npy, distance_*.npy, distances.npz   final outputs (sparse: kernel_indices/values.npy)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from delift_jax.atomic_io import (atomic_save_json, atomic_save_npy, atomic_save_npz, atomic_write_text,
                                  temporary_file)
from delift_jax.errors import DeliftError
from delift_jax.kernel import checksums
from delift_jax.kernel.checksums import DamagedFileError
from delift_jax.kernel.locks import FileLock

FORMAT_VERSION = 3  # 2: the token ids joined the identity; 3: checksummed blocks, block size chosen from the plan
# Manifest fields that identify what the store holds; everything else (status, summary) may change.
IDENTITY_FIELDS = ("format_version", "model_fingerprint", "data_sha256", "tokens_sha256", "compute_fingerprint",
                   "n_targets", "n_candidates", "square", "mode", "top_k", "n_blocks", "n_pairs", "utility")
CHECKSUM_KEY = "checksum"
# Manifest fields that follow from the identity (so an existing store may be given them when it is reopened).
DERIVED_FIELDS = ("targets_sha256", "candidates_sha256")
FILES_KEY = "files"
REPAIR = "rerun `delift kernel` with the same --out to rewrite it from its verified blocks"


class KernelStoreMismatchError(DeliftError):
    """The output directory holds a kernel computed with another model, data or configuration."""


def array_checksum(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """SHA-256 (as 32 uint8) over each array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}|".encode())
        digest.update(array.tobytes())
    return np.frombuffer(digest.digest(), np.uint8).copy()


def read_checked_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a checksummed ``.npz`` (checksum removed); DamagedFileError when unreadable or altered."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DamagedFileError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
    stored = arrays.pop(CHECKSUM_KEY, None)
    if stored is None or not np.array_equal(stored, array_checksum(arrays)):
        raise DamagedFileError(f"{path} does not match its checksum")
    return arrays


class KernelStore:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest_path = self.directory / "manifest.json"
        self.blocks_dir = self.directory / "blocks"
        self._lock = FileLock(self.directory / ".lock")

    # -- the store lock -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the store lock (re-entrant within this object); ``on_wait`` hears one line if another holds it."""
        if self._lock.held:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait(f"another process is working on {self.directory}; waiting for it to finish its step")
            self._lock.acquire(blocking=True)
        try:
            yield
        finally:
            self._lock.release()

    def remove_if_unused(self) -> None:
        """Remove the directory again if it holds nothing but this store's lock (a run that failed before creating
        the store leaves no trace behind)."""
        if not self.directory.is_dir() or self.read_manifest() is not None:
            return
        self.remove_orphans()  # e.g. the half-written first manifest of a run that failed while writing it
        if {p.name for p in self.directory.iterdir()} <= {".lock"}:
            (self.directory / ".lock").unlink(missing_ok=True)
            self.directory.rmdir()

    # -- manifest -------------------------------------------------------------------------------------------------
    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise KernelStoreMismatchError(f"{self.manifest_path} is not valid JSON; delete {self.directory} "
                                           "or choose another --out") from None

    def open(self, manifest: dict, *, create: bool = True) -> dict:
        """Create the store with ``manifest`` or check that the existing one holds the same kernel. Creation runs
        under the store lock, so two processes can never both create it."""
        existing = self.read_manifest()
        if existing is None and create:
            with self.exclusive():
                existing = self.read_manifest()
                if existing is None:
                    return self._create(manifest)
        if existing is None:
            raise KernelStoreMismatchError(f"{self.directory} has no manifest.json yet")
        self.check_identity(manifest, IDENTITY_FIELDS)
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        missing = {f: manifest[f] for f in DERIVED_FIELDS if f in manifest and existing.get(f) != manifest[f]}
        if missing and create:  # a store from before these fields: the identity matched, so they hold for it too
            self.update_manifest(**missing)
            existing = self.read_manifest()
        return existing

    def _create(self, manifest: dict) -> dict:
        if any(not p.name.startswith(".") for p in self.directory.iterdir()):
            raise KernelStoreMismatchError(f"{self.directory} exists, is not empty and holds no manifest.json; "
                                           "choose a new --out directory")
        # The manifest comes first: a crash right after it leaves a store that the rerun resumes.
        atomic_save_json(self.manifest_path, dict(manifest, complete=False))
        self.blocks_dir.mkdir(exist_ok=True)
        return self.read_manifest()

    def check_identity(self, manifest: dict, fields=IDENTITY_FIELDS) -> None:
        """Refuse a store whose manifest differs from ``manifest`` in any of ``fields`` (no store: nothing to do)."""
        existing = self.read_manifest()
        if existing is None:
            return
        if "mode" in manifest and _mode_of(existing) != _mode_of(manifest):
            raise KernelStoreMismatchError(
                f"{self.directory} holds a {_mode_name(existing)} kernel and this run asks for a "
                f"{_mode_name(manifest)} one; use another --out directory (or the store's own mode to resume it)")
        differing = [f for f in fields if f in manifest and existing.get(f) != manifest.get(f)]
        if differing:
            raise KernelStoreMismatchError(
                f"{self.directory} holds a kernel made with a different {', '.join(differing)}; "
                "use a new --out directory or delete this one")

    def update_manifest(self, **fields) -> None:
        manifest = self.read_manifest() or {}
        manifest.update(fields)
        atomic_save_json(self.manifest_path, manifest)

    def record_files(self, records: dict[str, dict]) -> None:
        """Add (or replace) the size and SHA-256 of published files in the manifest's ``files``."""
        manifest = self.read_manifest() or {}
        self.update_manifest(**{FILES_KEY: {**(manifest.get(FILES_KEY) or {}), **records}})

    # -- blocks ---------------------------------------------------------------------------------------------------
    def block_path(self, index: int) -> Path:
        return self.blocks_dir / f"block_{index:06d}.npz"

    def has_block(self, index: int) -> bool:
        return self.block_path(index).is_file()

    def finished_blocks(self) -> set[int]:
        """Blocks whose files exist (unverified: see ``verified_blocks``)."""
        if not self.blocks_dir.is_dir():
            return set()
        return {int(p.stem.split("_")[1]) for p in self.blocks_dir.glob("block_*.npz")}

    def write_block(self, index: int, pairs: np.ndarray, rms: np.ndarray, logp: np.ndarray) -> None:
        arrays = {"pairs": np.asarray(pairs, np.int32), "rms": np.asarray(rms), "logp": np.asarray(logp)}
        atomic_save_npz(self.block_path(index), **arrays, **{CHECKSUM_KEY: array_checksum(arrays)})

    def read_block(self, index: int) -> dict[str, np.ndarray]:
        """The block's pairs, rms and logp; DamagedFileError when its file is unreadable or fails its checksum."""
        return read_checked_npz(self.block_path(index))

    def verified_blocks(self, report: Callable[[str], None]) -> set[int]:
        """Finished blocks whose files read and verify; a damaged one is reported in one line and removed (unless
        a live process holds its claim), so it is computed again."""
        finished = set()
        for index in sorted(self.finished_blocks()):
            try:
                self.read_block(index)
            except DamagedFileError as exc:
                with self.claim(index) as claimed:
                    if claimed:
                        self.block_path(index).unlink(missing_ok=True)
                        report(f"{exc}; block {index} will be computed again")
                continue
            finished.add(index)
        return finished

    @contextlib.contextmanager
    def claim(self, index: int) -> Iterator[bool]:
        """Try to claim block ``index`` without waiting; yields whether this process holds it."""
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.blocks_dir / f".block_{index:06d}.lock")
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            lock.release()

    def remove_orphans(self) -> int:
        """Delete temporary files that crashed writers left behind: a block's (``blocks/.block_*.tmp``) only when
        nobody holds its claim, and every other one the store writes (``.<name>.<random>.tmp`` beside the manifest:
        the manifest's, the no-example scores', the neighbours', the staged final arrays'), with or without a
        manifest yet (a crash while the first manifest was written leaves only its temporary file). A directory
        that is no store (files but no manifest) is left alone. Call under the store lock (the final arrays' writers
        hold it). Returns how many were removed."""
        if not self.directory.is_dir() or (self.read_manifest() is None and any(
                not p.name.startswith(".") for p in self.directory.iterdir())):
            return 0
        removed = 0
        for tmp in sorted(self.blocks_dir.glob(".block_*.tmp")) if self.blocks_dir.is_dir() else []:
            with self.claim(int(tmp.name.split(".")[1].split("_")[1])) as claimed:
                if claimed:
                    tmp.unlink(missing_ok=True)
                    removed += 1
        for tmp in self.directory.glob(".*.tmp") if self.directory.is_dir() else []:
            if tmp.is_file() and not tmp.name.startswith(".failed_process_"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- other files ----------------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def save_checked_npz(self, name: str, **arrays) -> None:
        atomic_save_npz(self.directory / name, **arrays, **{CHECKSUM_KEY: array_checksum(arrays)})

    def load_checked_npz(self, name: str) -> dict[str, np.ndarray]:
        return read_checked_npz(self.directory / name)

    def save_npz(self, name: str, **arrays) -> None:
        atomic_save_npz(self.directory / name, **arrays)

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.directory / name, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save_npy(self, name: str, array: np.ndarray) -> None:
        """Write ``name`` and record its checksum in the manifest (when there is one yet)."""
        atomic_save_npy(self.directory / name, array)
        if self.read_manifest() is not None:
            self.record_files({name: checksums.record(self.directory / name)})

    def load_npy(self, name: str) -> np.ndarray:
        """The array of ``name``, verified against the manifest's checksum where one is recorded."""
        entry = ((self.read_manifest() or {}).get(FILES_KEY) or {}).get(name)
        if entry is not None:
            checksums.verify(self.directory / name, entry, "delete it and rerun the same command (it is computed "
                             "again, deterministically)")
        try:
            return np.load(self.directory / name, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DamagedFileError(f"{self.directory / name} is unreadable ({type(exc).__name__}: {exc}); "
                                   "delete it and rerun") from None

    def save_text(self, name: str, text: str) -> None:
        atomic_write_text(self.directory / name, text)

    def failures(self, since: float = 0.0) -> list[str]:
        """Reports of processes that failed (``failed_process_<i>.txt`` written at or after the wall-clock time
        ``since``: older ones belong to an earlier run), as "process i: message"."""
        return [f"process {p.stem.rsplit('_', 1)[1]}: {p.read_text(encoding='utf-8').strip()}"
                for p in sorted(self.directory.glob("failed_process_*.txt")) if p.stat().st_mtime >= since]

    # -- final arrays, staged then published together ------------------------------------------------------------
    def staging_path(self, name: str) -> Path:
        """A fresh temporary file beside ``name`` (removed as an orphan by the next run if never published)."""
        fd, tmp = temporary_file(self.directory, name)
        os.close(fd)
        return Path(tmp)

    def publish(self, staged: dict[str, Path]) -> dict[str, dict]:
        """Make each staged file durable and rename it onto its final name, then make the renames durable. Returns
        each file's size and SHA-256 (taken from the staged file, so it describes exactly what was renamed) for the
        manifest's ``files``."""
        records = {}
        for name, tmp in staged.items():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            records[name] = checksums.record(tmp)
        for name, tmp in staged.items():
            os.replace(tmp, self.directory / name)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return records


def _mode_of(manifest: dict) -> tuple:
    """(layout, top-k, utility); a manifest without ``utility`` is an exact store."""
    return manifest.get("mode"), manifest.get("top_k"), manifest.get("utility", "exact")


def _mode_name(manifest: dict) -> str:
    layout = f"sparse (top-{manifest.get('top_k')})" if manifest.get("mode") == "sparse" else "dense"
    return f"surrogate {layout}" if manifest.get("utility") == "surrogate" else layout
