"""Refinement rounds of a surrogate kernel store: exact pairs added after the sample (``methods/refine.py`` asks for
the picks' entries), each round in its own resumable sub-store ``exact/<hash of its pairs>/`` of the store.

``plan_round`` creates a round's sub-store (its pairs, its block grid) for the pairs not yet exact; ``finish_round``
scores d(i | no example) of its rows not scored before and its blocks (``compute_blocks``, as any kernel's), then
marks it finished. The same pairs give the same round, so an interrupted round resumes where it stopped.
"""

from __future__ import annotations

import hashlib

import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel.blocks import compute_blocks
from delift_jax.kernel.job import Job, block_scorer, pair_sequences
from delift_jax.kernel.coordination import log
from delift_jax.kernel.identity import kernel_identity
from delift_jax.kernel.plan import KernelPlan
from delift_jax.kernel.store import KernelStore
from delift_jax.kernel.surrogate_run import (ROUNDS_DIR, _add_seconds, _ensure_no_example, _round_plan, exact_values,
                                             pairs_plan)


def surrogate_job(model, tokenizer, targets, candidates, config, *, mesh=None, progress: bool = False) -> Job:
    """The job ``utility_kernel`` runs for these arguments (candidates None: the square kernel of ``targets``)."""
    from delift_jax.kernel.sparse import effective_top_k
    from delift_jax.sharding import current_mesh

    square = candidates is None
    columns = list(targets) if square else list(candidates)
    return Job(model, tokenizer, list(targets), columns, square, effective_top_k(config, len(columns), square),
                mesh or current_mesh(), None, None, progress, 24 * 3600.0)


def plan_round(job: Job, store: KernelStore, pairs: np.ndarray) -> str | None:
    """Create the sub-store of a refinement round for the ``pairs`` not yet exact (its pairs and block grid, no
    pair computed); returns its name (the same pairs give the same name: a planned round resumes), None when every
    pair is already exact."""
    seqs, _ = pair_sequences(job)
    identity = kernel_identity(job.model, job.tokenizer, job.targets, job.candidates, job.square, seqs, job.config)
    with store.exclusive(on_wait=log):
        manifest = store.read_manifest()
        if manifest is None or manifest.get("utility") != "surrogate" or not manifest.get("complete"):
            raise DataError(f"{store.directory} holds no finished surrogate kernel; run utility_kernel with "
                            "utility='surrogate' first")
        store.check_identity(identity)
        known, _ = exact_values(store, _sample_plan(store, job))
        new = _new_pairs(pairs, known.pairs, len(job.candidates))
        if len(new) == 0:
            return None
        digest = hashlib.sha256(new.tobytes()).hexdigest()
        sub = KernelStore(store.directory / ROUNDS_DIR / digest[:16])
        block_pairs = int(manifest.get("block_pairs") or 64)
        plan = pairs_plan(new, len(job.targets), len(job.candidates), job.square, block_pairs)
        sub.open({"pairs_sha256": digest, "n_pairs": plan.n_pairs, "n_blocks": plan.n_blocks,
                  "block_pairs": block_pairs})
        if (sub.read_manifest() or {}).get("pairs_sha256") != digest:
            raise DataError(f"{sub.directory} holds another refinement round; delete it and rerun")
        if not sub.has("pairs.npy"):
            sub.save_npy("pairs.npy", plan.pairs)
    return sub.directory.name


def finish_round(job: Job, store: KernelStore, name: str) -> int:
    """Compute a planned round (d(i | no example) of its rows not scored before, then its blocks) and mark it
    finished; returns the pairs computed now (0 when it was finished already)."""
    sub = KernelStore(store.directory / ROUNDS_DIR / name)
    if (sub.read_manifest() or {}).get("complete") is True:
        return 0
    seqs, _ = pair_sequences(job)
    plan = _round_plan(sub, len(job.targets), len(job.candidates), job.square)
    with store.exclusive(on_wait=log):
        _, no_example = exact_values(store, _sample_plan(store, job))
        rows = np.unique(plan.pairs[:, 0])
        _ensure_no_example(job, store, sub, seqs, rows[~np.isfinite(no_example["logp"][rows])])
    log(f"refinement: {plan.n_pairs:,} exact pairs in {store.directory} ({name})", job.progress)
    stats = compute_blocks(plan, block_scorer(job, seqs), sub, progress=job.progress)
    with store.exclusive(on_wait=log):
        sub.update_manifest(complete=True)
        _add_seconds(store, refinement_pairs=stats.seconds)
    return stats.pairs_computed


def _sample_plan(store: KernelStore, job: Job) -> KernelPlan:
    """The sample's plan, from its stored blocks (their pairs, in block order)."""
    manifest = store.read_manifest()
    pairs = [store.read_block(b)["pairs"] for b in range(int(manifest["n_blocks"]))]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int32)
    return pairs_plan(pairs, len(job.targets), len(job.candidates), job.square, int(manifest["block_pairs"]))


def _new_pairs(pairs: np.ndarray, known: np.ndarray, n_candidates: int) -> np.ndarray:
    """The distinct ``pairs`` not in ``known``, sorted by candidate then target (int32 [m, 2])."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    keys = np.unique(pairs[:, 0] * n_candidates + pairs[:, 1])
    known_keys = np.asarray(known, np.int64).reshape(-1, 2)
    keys = keys[~np.isin(keys, known_keys[:, 0] * n_candidates + known_keys[:, 1])]
    out = np.stack([keys // n_candidates, keys % n_candidates], axis=1).astype(np.int32)
    return out[np.lexsort((out[:, 0], out[:, 1]))]
