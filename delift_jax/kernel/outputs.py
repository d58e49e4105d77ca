"""The final arrays of a kernel store, streamed from the blocks into memory-mapped files and published together.

Everything is staged in temporary files first (every block read and verified on the way); only then is the manifest
set to incomplete, the staged files renamed onto their final names, and the manifest set to complete with each
file's size and SHA-256 (``files``, read back by ``delift select``: ``kernel.checksums``). A damaged or
missing block therefore leaves a complete store complete, and a crash mid-publish leaves it incomplete, never mixed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel.assemble import WithExample, assemble, diagonal_mask, raw_utility, row_chunks
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.normalize import apply_scale, fit_scale, utilities
from delift_jax.kernel.plan import KernelPlan
from delift_jax.kernel.store import FILES_KEY, DamagedFileError, KernelStore


@dataclasses.dataclass
class KernelResult:
    """kernel: normalized (dense ``[n_t, n_c]``, or sparse values ``[n_t, k]`` with ``indices``);
    utility: raw U in the same layout; distance_*: the chosen distance without / with the example (surrogate
    mode: NaN where not computed); exact: surrogate mode only, True where an entry is exact (None: all are)."""

    kernel: np.ndarray
    utility: np.ndarray
    indices: np.ndarray | None
    distance_no_example: np.ndarray
    distance_with_example: np.ndarray
    n_candidates: int
    directory: Path | None
    summary: dict
    exact: np.ndarray | None = None


def write_outputs(store: KernelStore, plan: KernelPlan, config: KernelConfig, run_summary: dict,
                  in_memory: bool = False) -> KernelResult:
    """Assemble, normalize and publish the final arrays (call under the store lock). in_memory: return arrays in
    memory rather than mapped from the store's files."""
    no_example = store.load_checked_npz("no_example.npz")
    staged: dict[str, Path] = {}
    try:
        low, high = _stage_arrays(store, plan, config, no_example, staged)
        store.update_manifest(complete=False)  # the renames below are not one atomic step
        records = store.publish(staged)
    except BaseException:
        for tmp in staged.values():  # those not yet renamed; a rerun reassembles
            tmp.unlink(missing_ok=True)
        raise
    summary = {"distance": config.distance, "normalization": config.normalization,
               "exclude_diagonal": config.exclude_diagonal, "utility_min": low, "utility_max": high, **run_summary}
    files = {**(store.read_manifest().get(FILES_KEY) or {}), **records}  # the neighbours' record stays
    store.update_manifest(complete=True, summary=summary, **{FILES_KEY: files})
    return _result(store, plan, config, summary, in_memory)


def _stage_arrays(store: KernelStore, plan: KernelPlan, config: KernelConfig, no_example: dict,
                  staged: dict[str, Path]) -> tuple[float, float]:
    """Write every final array into a staging file (recorded in ``staged``); returns U's min and max."""
    def new(name: str, dtype) -> np.ndarray:
        staged[name] = store.staging_path(name)
        return np.lib.format.open_memmap(staged[name], mode="w+", dtype=dtype, shape=plan.shape)

    with_example = WithExample(new(".rms_with_example.npy", np.float64), new(".logp_with_example.npy", np.float64))
    with_example.rms[:] = np.nan
    with_example.logp[:] = np.nan
    assemble(plan, _verified_blocks(store, plan), out=with_example)
    utility_raw, kernel = new("utility_raw.npy", np.float32), new("kernel.npy", np.float32)
    utility_range = _write_utility(plan, config, no_example, with_example, utility_raw, kernel)
    for array in (with_example.rms, with_example.logp, utility_raw, kernel):
        array.flush()
    _stage_npz(store, staged, "distances.npz", rms_no_example=no_example["rms"],
               logp_no_example=no_example["logp"], rms_with_example=with_example.rms,
               logp_with_example=with_example.logp, n_scored=no_example["n_scored"])
    chosen = ".rms_with_example.npy" if config.distance == "rms" else ".logp_with_example.npy"
    staged["distance_with_example.npy"] = staged.pop(chosen)
    staged.pop(".rms_with_example.npy" if chosen != ".rms_with_example.npy" else ".logp_with_example.npy").unlink()
    _stage_npy(store, staged, "distance_no_example.npy",
               no_example["rms"] if config.distance == "rms" else no_example["logp"])
    if plan.neighbours is not None:
        _stage_npy(store, staged, "kernel_indices.npy", plan.neighbours)
        staged["kernel_values.npy"] = staged.pop("kernel.npy")
        staged["utility_raw_values.npy"] = staged.pop("utility_raw.npy")
    return utility_range


def _verified_blocks(store: KernelStore, plan: KernelPlan) -> Iterator[tuple[int, dict]]:
    for index in range(plan.n_blocks):
        try:
            yield index, store.read_block(index)
        except FileNotFoundError:
            raise DataError(f"block {index} of {store.directory} is missing; rerun to compute it") from None
        except DamagedFileError as exc:
            with store.claim(index) as claimed:
                if claimed:
                    store.block_path(index).unlink(missing_ok=True)
            raise DamagedFileError(f"{exc}; it was removed: rerun to compute it again") from None


def _write_utility(plan: KernelPlan, config: KernelConfig, no_example: dict, with_example: WithExample,
                   utility_raw: np.ndarray, kernel: np.ndarray) -> tuple[float, float]:
    """Fill the raw utility (float32) and the normalized kernel row chunk by row chunk; returns U's min and max."""
    chunks = list(row_chunks(plan.n_targets, plan.shape[1]))
    mask = (lambda rows: diagonal_mask(plan, rows)) if config.exclude_diagonal else (lambda rows: None)
    scale = fit_scale(((raw_utility(no_example, with_example, config.distance, rows), mask(rows))
                       for rows in chunks), config.normalization)
    low, high = np.inf, -np.inf
    for rows in chunks:
        utility = raw_utility(no_example, with_example, config.distance, rows)
        low, high = min(low, float(np.min(utility))), max(high, float(np.max(utility)))
        utility_raw[rows] = utility.astype(np.float32)
        kernel[rows] = apply_scale(utility, scale, mask(rows))
    return low, high


def _stage_npz(store: KernelStore, staged: dict[str, Path], name: str, **arrays) -> None:
    staged[name] = store.staging_path(name)
    with open(staged[name], "wb") as handle:
        np.savez(handle, **arrays)  # streams memory-mapped arrays into the archive chunk by chunk


def _stage_npy(store: KernelStore, staged: dict[str, Path], name: str, array: np.ndarray) -> None:
    staged[name] = store.staging_path(name)
    with open(staged[name], "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


def _result(store: KernelStore, plan: KernelPlan, config: KernelConfig, summary: dict,
            in_memory: bool) -> KernelResult:
    sparse = plan.neighbours is not None
    load = (lambda name: np.load(store.directory / name, allow_pickle=False)) if in_memory else \
        (lambda name: np.load(store.directory / name, mmap_mode="r", allow_pickle=False))
    d_none, d_with = load("distance_no_example.npy"), load("distance_with_example.npy")
    utility = utilities(d_none, d_with, d_none, d_with, config.distance)  # the chosen distance fills both roles
    return KernelResult(kernel=load("kernel_values.npy" if sparse else "kernel.npy"), utility=utility,
                        indices=np.array(plan.neighbours) if sparse else None,
                        distance_no_example=d_none, distance_with_example=d_with,
                        n_candidates=plan.n_candidates, directory=store.directory, summary=summary)
