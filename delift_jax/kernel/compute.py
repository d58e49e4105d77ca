"""``utility_kernel``: the DELIFT utility U[i, j] for targets i and candidates j, through a crash-safe store.

Work is planned as pairs sorted by candidate, cut into blocks of about ``block_pairs`` pairs. Each block is scored
(prefix reuse, sharded over the local devices) and written atomically; a rerun skips finished blocks. Under
``jax.distributed`` every process takes the blocks ``b`` with ``b % process_count == process_index``; process 0
waits for all of them, then assembles and normalizes globally.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.records import Example
from delift_jax.data.tokenize import eos_token_id
from delift_jax.errors import DataError
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.embeddings import mean_pooled_embeddings, top_k_pairs
from delift_jax.kernel.engine import PairScorer
from delift_jax.kernel.estimate import RunEstimate, estimate_run
from delift_jax.kernel.normalize import normalize, utilities
from delift_jax.kernel.pairs import build_pair_sequences, full_sequences_for
from delift_jax.kernel.store import FORMAT_VERSION, KernelStore
from delift_jax.scoring import ScoringConfig, TeacherForcedScorer, mean_log_prob, rms_distance
from delift_jax.sharding import data_mesh


@dataclasses.dataclass
class KernelResult:
    """kernel: normalized (dense ``[n_t, n_c]``, or sparse values ``[n_t, k]`` with ``indices``);
    utility: raw U in the same layout; distance_*: the chosen distance without / with the example."""

    kernel: np.ndarray
    utility: np.ndarray
    indices: np.ndarray | None
    distance_no_example: np.ndarray
    distance_with_example: np.ndarray
    n_candidates: int
    directory: Path | None
    summary: dict


def model_fingerprint(model) -> str:
    """SHA-256 over every parameter's path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for path, var in sorted(nnx.to_flat_state(nnx.state(model)), key=lambda kv: str(kv[0])):
        array = np.asarray(var.get_value())
        digest.update(f"{path}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def data_fingerprint(targets: Sequence[Example], candidates: Sequence[Example] | None) -> str:
    payload = {"targets": [[e.prompt, e.response] for e in targets],
               "candidates": None if candidates is None else [[e.prompt, e.response] for e in candidates]}
    return hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()


def tokens_fingerprint(seqs, eos_id) -> str:
    """SHA-256 over every token id the kernel scores (no-example sequences, demonstration prefixes, continuations),
    so a store is tied to the tokenizer as well as to the text and the weights."""
    digest = hashlib.sha256(f"eos:{eos_id}".encode())
    for sequence in list(seqs.no_example) + list(seqs.continuations):
        digest.update(np.asarray(sequence.tokens, np.int64).tobytes() + f"|{sequence.n_scored}|".encode())
    for prefix in seqs.prefixes:
        digest.update(np.asarray(prefix, np.int64).tobytes() + b"|")
    return digest.hexdigest()


def plan_pairs(n_targets: int, n_candidates: int, top_k: np.ndarray | None) -> np.ndarray:
    """``[n, 2]`` (target, candidate) pairs sorted by candidate, then target."""
    if top_k is None:
        targets, candidates = np.meshgrid(np.arange(n_targets), np.arange(n_candidates), indexing="xy")
        return np.stack([targets.ravel(), candidates.ravel()], axis=1).astype(np.int32)
    pairs = np.stack([np.repeat(np.arange(n_targets), top_k.shape[1]), top_k.ravel()], axis=1).astype(np.int32)
    return pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]


def plan_blocks(pairs: np.ndarray, block_pairs: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges of about ``block_pairs`` pairs; a candidate's pairs stay together unless
    they alone exceed ``block_pairs``."""
    boundaries = np.flatnonzero(np.diff(pairs[:, 1])) + 1
    runs = np.split(np.arange(len(pairs)), boundaries)
    blocks, start, size = [], 0, 0
    for run in runs:
        for piece_start in range(0, len(run), block_pairs):
            piece = len(run[piece_start:piece_start + block_pairs])
            if size and size + piece > block_pairs:
                blocks.append((start, start + size))
                start, size = start + size, 0
            size += piece
    if size:
        blocks.append((start, start + size))
    return blocks


def _log(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def utility_kernel(model, tokenizer, targets: Sequence[Example], candidates: Sequence[Example] | None = None,
                   config: KernelConfig = KernelConfig(), *, out_dir: str | Path | None = None,
                   embeddings: tuple[np.ndarray, np.ndarray] | None = None, mesh: Mesh | None = None,
                   max_pairs: int | None = None, progress: bool = False,
                   wait_timeout_s: float = 24 * 3600.0) -> KernelResult | None:
    """Compute the DELIFT utility kernel (DESIGN §1.1-1.2).

    targets: the rows (examples whose responses are predicted). candidates: the columns (examples shown as the
    demonstration); None for the square kernel of a pool against itself. out_dir: the crash-safe store
    (rerun to resume); None computes in a temporary directory. embeddings: (targets, candidates) matrices for the
    sparse mode's similarity (default: mean-pooled hidden states of ``model``). max_pairs: refuse plans with more
    pairs. Returns the result on the process that assembles it (process 0), None on the others.
    """
    square = candidates is None
    if len(targets) == 0 or (candidates is not None and len(candidates) == 0):
        raise DataError("the target and candidate sets must not be empty")
    if square and len(targets) < 2:
        raise DataError(f"a square kernel needs at least 2 examples; got {len(targets)}")
    if config.exclude_diagonal and not square:
        raise DataError("exclude_diagonal applies to square kernels only (a pool against itself)")
    candidate_list = list(targets) if square else list(candidates)
    mesh = mesh or data_mesh()

    if out_dir is None and jax.process_count() > 1:
        raise DataError("a kernel over several processes needs a shared output directory (out_dir / --out) that "
                        "every process can reach")
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="delift-kernel-") as tmp:
            result = utility_kernel(model, tokenizer, targets, candidates, config, out_dir=tmp,
                                    embeddings=embeddings, mesh=mesh, max_pairs=max_pairs, progress=progress,
                                    wait_timeout_s=wait_timeout_s)
            if result is not None:
                result.directory = None
            return result

    store = KernelStore(out_dir)
    run_started = time.time()  # failure reports of other processes older than this belong to an earlier run
    seqs = build_pair_sequences(tokenizer, targets, candidate_list, config)
    if seqs.n_empty_responses:
        warnings.warn(f"{seqs.n_empty_responses} responses tokenize to nothing; only their final EOS is scored",
                      stacklevel=2)
    n_truncated_targets = sum(s.context_dropped > 0 for s in seqs.no_example)
    if n_truncated_targets:
        warnings.warn(f"{n_truncated_targets} targets exceed max_length={config.max_length} without an example; "
                      "their contexts are truncated from the left (scored tokens are kept)", stacklevel=2)

    manifest = {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint(model),
        "data_sha256": data_fingerprint(targets, None if square else candidate_list),
        "tokens_sha256": tokens_fingerprint(seqs, eos_token_id(tokenizer)),
        "compute_fingerprint": config.compute_fingerprint({"dtype": str(model.dtype)}),
        "n_targets": len(targets), "n_candidates": len(candidate_list), "square": square,
        "mode": "dense" if config.top_k is None else "sparse", "top_k": config.top_k,
    }
    store.check_identity(manifest)  # before anything stored (the sparse neighbours) is read back
    top_k = None
    if config.top_k is not None:
        if jax.process_index() != 0:
            # One set of neighbours for every process: process 0's, never a recomputation that could drift.
            _wait_for(lambda: store.read_manifest() is not None and store.has("neighbours.npy"), wait_timeout_s,
                      "the sparse neighbours of process 0", store, run_started)
        top_k = _sparse_neighbours(model, tokenizer, store, seqs, targets, candidate_list, square, config,
                                   embeddings, mesh)
    pairs = plan_pairs(len(targets), len(candidate_list), top_k)
    if max_pairs is not None and len(pairs) > max_pairs:
        raise DataError(f"the kernel needs {len(pairs):,} pairs, more than --max-pairs {max_pairs:,}; use the sparse "
                        "mode (--top-k) or raise --max-pairs")
    blocks = plan_blocks(pairs, config.block_pairs)
    manifest.update(n_blocks=len(blocks), n_pairs=int(len(pairs)))
    process, n_processes = jax.process_index(), jax.process_count()
    if process == 0:
        store.open(manifest)
    else:
        _wait_for(lambda: store.read_manifest() is not None, wait_timeout_s, "the manifest of process 0", store,
                  run_started)
        store.open(manifest, create=False)
    if top_k is not None and process == 0 and not store.has("neighbours.npy"):
        store.save_npy("neighbours.npy", top_k)

    estimate = estimate_run(model, seqs, pairs, config, mesh)
    finished = store.finished_blocks()
    mine = [b for b in range(len(blocks)) if b % n_processes == process and b not in finished]
    _log(_plan_message(estimate, len(blocks), len(finished), len(mine), n_processes, store.directory), progress)

    if process == 0 and not store.has("no_example.npz"):
        scorer = TeacherForcedScorer(model, ScoringConfig(max_length=config.max_length, batch_size=config.batch_size,
                                                          logits_chunk=config.logits_chunk), mesh=mesh)
        logps = scorer.logprobs(seqs.no_example, progress=progress)
        _check_finite(np.array([mean_log_prob(lp) for lp in logps]), "no-example scores")
        store.save_npz("no_example.npz", rms=np.array([rms_distance(np.exp(lp)) for lp in logps]),
                       logp=np.array([mean_log_prob(lp) for lp in logps]),
                       n_scored=np.array([s.n_scored for s in seqs.no_example]))

    pair_scorer = PairScorer(model, config, mesh=mesh)
    bar = _pair_bar(sum(e - s for b, (s, e) in enumerate(blocks) if b in mine), progress)
    started = time.perf_counter()
    n_full = n_truncated_pairs = 0
    try:
        for b in mine:
            start, end = blocks[b]
            block_pairs = pairs[start:end]
            full = full_sequences_for(tokenizer, targets, candidate_list, block_pairs, seqs, config)
            n_full += len(full)
            n_truncated_pairs += sum(seq.context_dropped > 0 for seq in full.values())
            rms, logp = pair_scorer.score(block_pairs, seqs, full, on_progress=bar.update)
            _check_finite(logp, f"block {b}")
            store.write_block(b, block_pairs, rms, logp)
    except Exception as exc:
        if n_processes > 1:  # tell process 0, which would otherwise wait for these blocks until its timeout
            store.save_text(f"failed_process_{process}.txt", f"{type(exc).__name__}: {exc}")
        raise
    bar.close()
    elapsed = time.perf_counter() - started
    if n_truncated_pairs:
        _log(f"{n_truncated_pairs} pairs exceeded max_length={config.max_length}: their contexts (demonstration "
             "first) were truncated from the left; scored tokens were kept", True)

    if process != 0:
        return None
    _wait_for(lambda: len(store.finished_blocks()) >= len(blocks), wait_timeout_s, "the blocks of other processes",
              store, run_started)
    return _assemble(store, pairs, blocks, top_k, config, square, len(candidate_list), {
        "pairs_computed_now": int(sum(blocks[b][1] - blocks[b][0] for b in mine)),
        "seconds_computing_pairs": round(elapsed, 3),
        "pairs_without_prefix_reuse_now": n_full,
        "pairs_truncated_now": n_truncated_pairs,
        "targets_truncated": int(n_truncated_targets),
        "estimate": dataclasses.asdict(estimate),
    })


def _sparse_neighbours(model, tokenizer, store: KernelStore, seqs, targets, candidates, square: bool,
                       config: KernelConfig, embeddings, mesh) -> np.ndarray:
    """Top-k candidate indices per target. A resumed run reuses the stored ones, so its pairs cannot drift."""
    if store.read_manifest() is not None and store.has("neighbours.npy"):
        return np.load(store.directory / "neighbours.npy", allow_pickle=False)
    if embeddings is not None:
        target_emb, candidate_emb = (np.asarray(e) for e in embeddings)
        if target_emb.shape[0] != len(targets) or candidate_emb.shape[0] != len(candidates):
            raise DataError(f"embeddings have {target_emb.shape[0]} and {candidate_emb.shape[0]} rows; expected "
                            f"{len(targets)} targets and {len(candidates)} candidates")
    else:
        embed = lambda sequences: mean_pooled_embeddings(model, sequences, max_length=config.max_length,
                                                         batch_size=config.batch_size, mesh=mesh)
        target_emb = embed(seqs.no_example)
        # Candidates are embedded like targets (no-example layout); a response too long to fit is capped here
        # (similarity only), where a dense run would truncate the demonstration rather than fail.
        cap = min(config.max_response_tokens or config.max_length, config.max_length // 2)
        candidate_emb = target_emb if square else embed(
            build_pair_sequences(tokenizer, candidates, [], dataclasses.replace(config, max_response_tokens=cap))
            .no_example)
    # An excluded diagonal would waste one of each row's k slots on a cell forced to 0.
    return top_k_pairs(target_emb, candidate_emb, config.top_k, exclude_self=square and config.exclude_diagonal)


def _assemble(store: KernelStore, pairs, blocks, top_k, config: KernelConfig, square: bool, n_candidates: int,
              run_summary: dict) -> KernelResult:
    # Final arrays are rewritten below (a rerun may change distance / normalization): until the manifest says
    # complete again, readers must not take them for a finished kernel.
    store.update_manifest(complete=False)
    no_example = store.load_npz("no_example.npz")
    rms_pairs = np.full(len(pairs), np.nan)
    logp_pairs = np.full(len(pairs), np.nan)
    for b, (start, end) in enumerate(blocks):
        block = store.read_block(b)
        if not np.array_equal(block["pairs"], pairs[start:end]):
            raise DataError(f"stored block {b} holds other pairs than planned; delete {store.directory} and rerun")
        rms_pairs[start:end], logp_pairs[start:end] = block["rms"], block["logp"]

    n_targets = len(no_example["rms"])
    if top_k is None:
        shape, slots = (n_targets, n_candidates), pairs[:, 0] * n_candidates + pairs[:, 1]
    else:
        shape = top_k.shape
        order = {(int(i), int(j)): i * shape[1] + t for i in range(shape[0]) for t, j in enumerate(top_k[i])}
        slots = np.array([order[(int(i), int(j))] for i, j in pairs])
    rms_with = np.full(shape, np.nan)
    logp_with = np.full(shape, np.nan)
    rms_with.flat[slots], logp_with.flat[slots] = rms_pairs, logp_pairs

    utility = utilities(no_example["rms"], rms_with, no_example["logp"], logp_with, config.distance)
    diagonal = None
    if config.exclude_diagonal:
        columns = np.arange(n_candidates)[None, :] if top_k is None else top_k
        diagonal = columns == np.arange(n_targets)[:, None]
    kernel = normalize(utility, config.normalization, ignore=diagonal)
    d_none = no_example["rms"] if config.distance == "rms" else no_example["logp"]
    d_with = rms_with if config.distance == "rms" else logp_with

    store.save_npz("distances.npz", rms_no_example=no_example["rms"], logp_no_example=no_example["logp"],
                   rms_with_example=rms_with, logp_with_example=logp_with,
                   n_scored=no_example["n_scored"])
    store.save_npy("distance_no_example.npy", d_none)
    store.save_npy("distance_with_example.npy", d_with)
    if top_k is None:
        store.save_npy("utility_raw.npy", utility.astype(np.float32))
        store.save_npy("kernel.npy", kernel)
    else:
        store.save_npy("kernel_indices.npy", top_k)
        store.save_npy("kernel_values.npy", kernel)
        store.save_npy("utility_raw_values.npy", utility.astype(np.float32))
    summary = {"distance": config.distance, "normalization": config.normalization,
               "exclude_diagonal": config.exclude_diagonal, "utility_min": float(np.min(utility)),
               "utility_max": float(np.max(utility)), **run_summary}
    store.update_manifest(complete=True, summary=summary)
    return KernelResult(kernel=kernel, utility=utility, indices=top_k, distance_no_example=d_none,
                        distance_with_example=d_with, n_candidates=n_candidates, directory=store.directory,
                        summary=summary)


def _check_finite(values: np.ndarray, what: str) -> None:
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        raise DataError(f"{bad} non-finite scores in {what}; nothing was saved for it (try float32 compute)")


def _wait_for(condition, timeout_s: float, what: str, store: KernelStore | None = None,
              since: float = 0.0) -> None:
    """Poll ``condition``; give up at the timeout or as soon as another process reports (after the wall-clock time
    ``since``) a failure in ``store``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        failed = store.failures(since) if store is not None else []
        if failed:
            raise DataError(f"stopped waiting for {what}: {failed[0]} (fix it and rerun every process to resume)")
        if time.monotonic() > deadline:
            raise DataError(f"timed out after {timeout_s:.0f} s waiting for {what}; rerun to resume")
        time.sleep(0.5)


def _pair_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pair", desc="kernel", disable=not enabled, smoothing=0.05)


def _plan_message(estimate: RunEstimate, n_blocks, n_finished, n_mine, n_processes, directory) -> str:
    return (f"kernel plan: {estimate.n_pairs:,} pairs in {n_blocks} blocks ({n_finished} already finished, "
            f"{n_mine} for this process of {n_processes}); forward passes: {estimate.forward_passes:,} "
            f"({estimate.tokens:,} tokens); memory ~{estimate.memory_mb:,.0f} MB; "
            f"time ~{estimate.seconds / 60:.1f} min (at {estimate.assumed_tflops:.3f} TFLOP/s); store: {directory}")
