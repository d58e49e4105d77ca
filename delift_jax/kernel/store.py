"""A crash-safe kernel directory: a manifest, one file per finished block, final arrays.

Every file appears atomically (temporary file, fsync, rename, fsync of the directory), so a crash at any moment
leaves either the whole file or none of it. Re-running the same command finds the finished blocks and skips them;
a directory made for another model, data or configuration is refused, never silently reused.

Layout::

    manifest.json            identity (format, model fingerprint, data hash, token-id hash, config hash, block grid)
                             + status (``complete`` turns true only once every final array is written)
    no_example.npz           d(i | no example) for every target (rms, mean log p, scored-token counts)
    blocks/block_000012.npz  pairs (target, candidate) of block 12 and their rms / mean log p
    kernel.npy, utility_raw.npy, distance_*.npy   final outputs (or kernel_indices/values.npy when sparse)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from delift_jax.atomic_io import atomic_save_json, atomic_save_npy, atomic_save_npz, atomic_write_text
from delift_jax.errors import DeliftError

FORMAT_VERSION = 2  # 2: the token ids (tokenizer) joined the identity
# Manifest fields that identify what the store holds; everything else (status, summary) may change.
IDENTITY_FIELDS = ("format_version", "model_fingerprint", "data_sha256", "tokens_sha256", "compute_fingerprint",
                   "n_targets", "n_candidates", "square", "mode", "top_k", "n_blocks", "n_pairs")


class KernelStoreMismatchError(DeliftError):
    """The output directory holds a kernel computed with another model, data or configuration."""


class KernelStore:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest_path = self.directory / "manifest.json"
        self.blocks_dir = self.directory / "blocks"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise KernelStoreMismatchError(f"{self.manifest_path} is not valid JSON; delete {self.directory} "
                                           "or choose another --out") from None

    def open(self, manifest: dict, *, create: bool = True) -> dict:
        """Create the store with ``manifest`` or check that the existing one holds the same kernel."""
        existing = self.read_manifest()
        if existing is None:
            if self.directory.exists() and any(p for p in self.directory.iterdir() if not p.name.startswith(".")):
                raise KernelStoreMismatchError(f"{self.directory} exists, is not empty and holds no manifest.json; "
                                               "choose a new --out directory")
            if not create:
                raise KernelStoreMismatchError(f"{self.directory} has no manifest.json yet")
            # The manifest comes first: a crash right after it leaves a store that the rerun resumes.
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_save_json(self.manifest_path, dict(manifest, complete=False))
            self.blocks_dir.mkdir(exist_ok=True)
            return self.read_manifest()
        self.check_identity(manifest, IDENTITY_FIELDS)
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        return existing

    def check_identity(self, manifest: dict, fields=IDENTITY_FIELDS) -> None:
        """Refuse a store whose manifest differs from ``manifest`` in any of ``fields`` (no store: nothing to do)."""
        existing = self.read_manifest()
        if existing is None:
            return
        differing = [f for f in fields if f in manifest and existing.get(f) != manifest.get(f)]
        if differing:
            raise KernelStoreMismatchError(
                f"{self.directory} holds a kernel made with a different {', '.join(differing)}; "
                "use a new --out directory or delete this one")

    def block_path(self, index: int) -> Path:
        return self.blocks_dir / f"block_{index:06d}.npz"

    def finished_blocks(self) -> set[int]:
        if not self.blocks_dir.is_dir():
            return set()
        return {int(p.stem.split("_")[1]) for p in self.blocks_dir.glob("block_*.npz")}

    def write_block(self, index: int, pairs: np.ndarray, rms: np.ndarray, logp: np.ndarray) -> None:
        atomic_save_npz(self.block_path(index), pairs=pairs.astype(np.int32), rms=rms, logp=logp)

    def read_block(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self.block_path(index)) as data:
            return {k: data[k] for k in data.files}

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def save_npz(self, name: str, **arrays) -> None:
        atomic_save_npz(self.directory / name, **arrays)

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.directory / name) as data:
            return {k: data[k] for k in data.files}

    def save_npy(self, name: str, array: np.ndarray) -> None:
        atomic_save_npy(self.directory / name, array)

    def save_text(self, name: str, text: str) -> None:
        atomic_write_text(self.directory / name, text)

    def failures(self, since: float = 0.0) -> list[str]:
        """Reports of processes that failed (``failed_process_<i>.txt`` written at or after the wall-clock time
        ``since``: older ones belong to an earlier run), as "process i: message"."""
        return [f"process {p.stem.rsplit('_', 1)[1]}: {p.read_text(encoding='utf-8').strip()}"
                for p in sorted(self.directory.glob("failed_process_*.txt")) if p.stat().st_mtime >= since]

    def update_manifest(self, **fields) -> None:
        manifest = self.read_manifest() or {}
        manifest.update(fields)
        atomic_save_json(self.manifest_path, manifest)
