"""``utility_kernel``: the DELIFT utility U[i, j] for targets i and candidates j, through a crash-safe store.

The stages, each in its own module: token sequences (``pairs``) and the store's identity (``identity``);
``plan_kernel`` (``plan``: pairs sorted by candidate, cut into blocks of about a minute of work); ``compute_blocks``
(``blocks``: resumable, the only stage that writes blocks, shared by every process on the store through
``coordination``); ``assemble`` and ``normalize`` streamed into the final arrays (``assemble``, ``outputs``).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.kernel.blocks import Coordination, check_finite, compute_blocks
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.coordination import log, wait_for
from delift_jax.kernel.engine import PairScorer
from delift_jax.kernel.estimate import (RunEstimate, choose_block_pairs, demonstration_bytes, estimate_run,
                                        seconds_per_pair, sparse_advice)
from delift_jax.kernel.identity import (data_fingerprint, kernel_identity, mesh_change, mesh_record, model_fingerprint,
                                       tokens_fingerprint)
from delift_jax.kernel.job import Job, block_scorer, pair_sequences
from delift_jax.kernel.outputs import KernelResult, write_outputs
from delift_jax.kernel.plan import KernelPlan, plan_blocks, plan_kernel, plan_pairs
from delift_jax.kernel.sparse import effective_top_k, sparse_neighbours
from delift_jax.kernel.store import DamagedFileError, KernelStore
from delift_jax.scoring import mean_log_prob, rms_distance
from delift_jax.sharding import current_mesh

__all__ = ["KernelResult", "utility_kernel", "model_fingerprint", "data_fingerprint", "tokens_fingerprint",
           "plan_pairs", "plan_blocks"]


def utility_kernel(model, tokenizer, targets: Sequence[Example], candidates: Sequence[Example] | None = None,
                   config: KernelConfig = KernelConfig(), *, out_dir: str | Path | None = None,
                   embeddings: tuple[np.ndarray, np.ndarray] | None = None, mesh: Mesh | None = None,
                   max_pairs: int | None = None, progress: bool = False,
                   wait_timeout_s: float = 24 * 3600.0) -> KernelResult | None:
    """Compute the DELIFT utility kernel (DESIGN §1.1-1.2).

    targets: the rows (examples whose responses are predicted). candidates: the columns (examples shown as the
    demonstration); None for the square kernel of a pool against itself. out_dir: the crash-safe store
    (rerun to resume; several processes may share it); None computes in a temporary directory. embeddings:
    (targets, candidates) matrices for the sparse mode's similarity (default: mean-pooled hidden states of
    ``model``). mesh: a data mesh (``sharding.data_mesh``; the default is ``sharding.current_mesh()``: this
    process's devices unless inside ``sharding.inference_mesh``) or a ``(data,
    model)`` mesh (``sharding.model_mesh`` / ``parse_mesh``) on which the pair engine splits the parameters by
    ``sharding.FSDP_TP_RULES`` (the sparse mode's embeddings too; its neighbour search stays data parallel).
    max_pairs: refuse plans with more pairs. Returns the result on the process that assembles it
    (process 0), None on the others.
    """
    square = candidates is None
    candidate_list = list(targets) if square else list(candidates)
    _check_inputs(targets, candidate_list, square, config)
    job = Job(model, tokenizer, list(targets), candidate_list, square,
               effective_top_k(config, len(candidate_list), square), mesh or current_mesh(), embeddings, max_pairs,
               progress, wait_timeout_s)
    if out_dir is not None:
        return _run(job, KernelStore(out_dir), in_memory=False)
    if jax.process_count() > 1:
        raise DataError("a kernel over several processes needs a shared output directory (out_dir / --out) that "
                        "every process can reach")
    with tempfile.TemporaryDirectory(prefix="delift-kernel-") as tmp:
        result = _run(job, KernelStore(tmp), in_memory=True)
    return dataclasses.replace(result, directory=None)


def _check_inputs(targets, candidates, square: bool, config: KernelConfig) -> None:
    if len(targets) == 0 or len(candidates) == 0:
        raise DataError("the target and candidate sets must not be empty")
    if square and len(targets) < 2:
        raise DataError(f"a square kernel needs at least 2 examples; got {len(targets)}")
    if config.exclude_diagonal and not square:
        raise DataError("exclude_diagonal applies to square kernels only (a pool against itself)")


def _run(job: Job, store: KernelStore, in_memory: bool) -> KernelResult | None:
    if job.config.utility == "surrogate":  # exact sample + network: kernel/surrogate_run.py
        from delift_jax.kernel.surrogate_run import run_surrogate
        return run_surrogate(job, store, in_memory)
    since = time.time()  # failure reports of other processes older than this belong to an earlier run
    seqs, n_truncated_targets = pair_sequences(job)
    identity = kernel_identity(job.model, job.tokenizer, job.targets, job.candidates, job.square, seqs, job.config)
    process, n_processes = jax.process_index(), jax.process_count()
    plan = (_prepare_store if process == 0 else _join_store)(job, store, seqs, identity, since)
    estimate = estimate_run(job.model, seqs, plan.pairs, job.config, job.mesh)
    log(_plan_message(estimate, plan, store, process, n_processes), job.progress)
    advice = sparse_advice(estimate, len(job.targets), job.config.top_k)
    if advice and process == 0:
        log(advice, job.progress)
    coordination = Coordination(process, n_processes, wait_for_others=process == 0, timeout_s=job.wait_timeout_s,
                                since=since)
    stats = compute_blocks(plan, block_scorer(job, seqs), store, coordination=coordination, progress=job.progress)
    if stats.n_truncated:
        log(f"{stats.n_truncated} pairs exceeded max_length={job.config.max_length}: their contexts (demonstration "
            "first) were truncated from the left; scored tokens were kept")
    if process != 0:
        return None
    summary = {"pairs_computed_now": stats.pairs_computed, "seconds_computing_pairs": round(stats.seconds, 3),
               "pairs_without_prefix_reuse_now": stats.n_full, "pairs_truncated_now": stats.n_truncated,
               "targets_truncated": n_truncated_targets, "block_pairs": plan.block_pairs,
               "n_blocks": plan.n_blocks, "estimate": dataclasses.asdict(estimate)}
    with store.exclusive(on_wait=log):
        return write_outputs(store, plan, job.config, summary, in_memory=in_memory)


def _prepare_store(job: Job, store: KernelStore, seqs, identity: dict, since: float) -> KernelPlan:
    """Process 0 (or any independent process): under the store lock, check the store, obtain the neighbours, plan,
    create or reopen the store and score the targets without an example."""
    fresh = not store.directory.exists()
    with store.exclusive(on_wait=log):
        try:
            return _prepare_locked(job, store, seqs, identity)
        except BaseException:
            if fresh:
                store.remove_if_unused()
            raise


def _prepare_locked(job: Job, store: KernelStore, seqs, identity: dict) -> KernelPlan:
    store.check_identity(identity)  # before anything stored (the sparse neighbours) is read back
    removed = store.remove_orphans()  # with or without a manifest: a crash may have hit its first write
    if removed:
        log(f"removed {removed} temporary files left in {store.directory} by an interrupted run")
    neighbours = _neighbours(job, store, seqs) if job.config.top_k is not None else None
    plan = plan_kernel(len(job.targets), len(job.candidates), square=job.square, neighbours=neighbours,
                       block_pairs=_block_pairs(job, store, seqs, neighbours))
    _check_max_pairs(plan, job.max_pairs)
    store.open(dict(identity, n_blocks=plan.n_blocks, n_pairs=plan.n_pairs, block_pairs=plan.block_pairs,
                    mesh=mesh_record(job.mesh)))
    _check_mesh(job, store, plan)
    if neighbours is not None and not store.has("neighbours.npy"):
        store.save_npy("neighbours.npy", neighbours)
    _ensure_no_example(job, store, seqs)
    return plan


def _join_store(job: Job, store: KernelStore, seqs, identity: dict, since: float) -> KernelPlan:
    """Another process under ``jax.distributed``: plan from process 0's store (its neighbours, its block size)."""
    store.check_identity(identity)
    sparse = job.config.top_k is not None
    wait_for(lambda: store.read_manifest() is not None and (not sparse or store.has("neighbours.npy")),
             job.wait_timeout_s, "the sparse neighbours of process 0" if sparse else "the manifest of process 0",
             store, since)
    # One set of neighbours for every process: process 0's, never a recomputation that could drift.
    neighbours = store.load_npy("neighbours.npy") if sparse else None
    block_pairs = job.config.block_pairs or int(store.read_manifest()["block_pairs"])
    plan = plan_kernel(len(job.targets), len(job.candidates), square=job.square, neighbours=neighbours,
                       block_pairs=block_pairs)
    _check_max_pairs(plan, job.max_pairs)
    store.open(dict(identity, n_blocks=plan.n_blocks, n_pairs=plan.n_pairs), create=False)
    _check_mesh(job, store, plan)
    return plan


def _check_mesh(job: Job, store: KernelStore, plan: KernelPlan) -> None:
    """A store started on another mesh: a warning where the results are the same, refused where blocks are left to
    compute with another tensor-parallel rounding (``identity.mesh_change``)."""
    work_left = not store.has("no_example.npz") or len(store.finished_blocks()) < plan.n_blocks
    line = mesh_change(store.read_manifest().get("mesh"), job.mesh, store.directory, work_left)
    if line:
        warnings.warn(line, stacklevel=5)


def _neighbours(job: Job, store: KernelStore, seqs) -> np.ndarray:
    """Top-k candidates per target. A resumed run reuses the stored ones, so its pairs cannot drift."""
    if store.read_manifest() is not None and store.has("neighbours.npy"):
        return store.load_npy("neighbours.npy")
    # The embeddings run on the job's mesh (tensor parallel where it has a model axis, like the pair engine); the
    # neighbour search holds no parameters and stays data parallel over this process's devices (neighbours.py).
    return sparse_neighbours(job.model, job.tokenizer, seqs, job.targets, job.candidates, job.square, job.config,
                             job.embeddings, job.mesh)


def _block_pairs(job: Job, store: KernelStore, seqs, neighbours: np.ndarray | None) -> int:
    """The configured block size, else the store's (fixed when it was created), else about a minute of work."""
    if job.config.block_pairs is not None:
        return job.config.block_pairs
    existing = store.read_manifest()
    if existing is not None and existing.get("block_pairs"):
        return int(existing["block_pairs"])
    pairs_per_candidate = (len(job.targets) if neighbours is None
                           else neighbours.size / max(len(np.unique(neighbours)), 1))
    return choose_block_pairs(seconds_per_pair(job.model, seqs, job.config, job.mesh), pairs_per_candidate,
                              demonstration_bytes(job.model, seqs, job.config))


def _check_max_pairs(plan: KernelPlan, max_pairs: int | None) -> None:
    if max_pairs is not None and plan.n_pairs > max_pairs:
        raise DataError(f"the kernel needs {plan.n_pairs:,} pairs, more than --max-pairs {max_pairs:,}; use the "
                        "sparse mode (--top-k) or raise --max-pairs")


def _ensure_no_example(job: Job, store: KernelStore, seqs) -> None:
    """d(i | no example) of every target, stored once (recomputed if its file is damaged)."""
    if store.has("no_example.npz"):
        try:
            store.load_checked_npz("no_example.npz")
            return
        except DamagedFileError as exc:
            log(f"{exc}; computing it again")
    # The pair engine packs them like continuations without a demonstration: large calls, few program shapes.
    logps = PairScorer(job.model, job.config, mesh=job.mesh).score_sequences(seqs.no_example)
    logp = np.array([mean_log_prob(lp) for lp in logps])
    check_finite(logp, "no-example scores")
    store.save_checked_npz("no_example.npz", rms=np.array([rms_distance(np.exp(lp)) for lp in logps]), logp=logp,
                           n_scored=np.array([s.n_scored for s in seqs.no_example]))


def _plan_message(estimate: RunEstimate, plan: KernelPlan, store: KernelStore, process: int,
                  n_processes: int) -> str:
    finished = store.finished_blocks()
    mine = sum(1 for b in range(plan.n_blocks) if b % n_processes == process and b not in finished)
    return (f"kernel plan: {estimate.n_pairs:,} pairs in {plan.n_blocks} blocks of up to {plan.block_pairs:,} "
            f"({len(finished)} already finished, {mine} for this process of {n_processes}); forward passes: "
            f"{estimate.forward_passes:,} ({estimate.tokens:,} tokens); memory ~{estimate.memory_mb:,.0f} MB; "
            f"time ~{estimate.seconds / 60:.1f} min (at {estimate.assumed_tflops:.3f} TFLOP/s); "
            f"store: {store.directory}")
