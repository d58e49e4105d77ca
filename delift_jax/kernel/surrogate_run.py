"""The surrogate mode of ``utility_kernel`` (``KernelConfig(utility="surrogate")``): a store whose exact pairs are a
fixed sample (plus refinement rounds) and whose other entries a small network predicts (``kernel/surrogate.py``).

Stages, each resumable (rerun the same command to continue):

1. embeddings of the targets and candidates (``KernelConfig.neighbours``: the scoring model's mean-pooled states or
   the sentence encoder; ``embeddings.npz``): the network's features; in the sparse mode also the neighbours
   (``neighbours.npy``, the kernel's layout, as in the exact sparse mode).
2. the exact sample (``sample_pairs``, a pure function of the store's identity) as the store's blocks, computed by
   ``compute_blocks`` exactly like an exact kernel's blocks; d(i | no example) of the sampled rows only
   (``no_example.npz``, with their row numbers).
3. the network trained on every exact U of the run's distance the store holds (the sample, then the finished
   refinement rounds), its held-out R² and Spearman, and its predictions in the layout (``surrogate_<distance>.npz``,
   trained again only when the exact pairs or the distance change; one store serves both distances, as exact
   stores do).
4. the final arrays: the predictions overwritten by every exact value the store holds (sample pairs that lie in the
   layout, and every finished refinement round under ``exact/``), normalized as an exact kernel is, ``exact.npy``
   marking the exact entries; the manifest's ``summary.surrogate`` holds the held-out scores.

Refinement rounds (``kernel/surrogate_rounds.py``) add exact pairs in their own resumable sub-stores
``exact/<hash>/``; a round counts once finished, from the next ``utility_kernel`` call on the store on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel.blocks import check_finite, compute_blocks
from delift_jax.kernel.job import Job, block_scorer, pair_sequences
from delift_jax.kernel.coordination import log
from delift_jax.kernel.estimate import choose_block_pairs, demonstration_bytes, seconds_per_pair
from delift_jax.kernel.identity import kernel_identity
from delift_jax.kernel.engine import PairScorer
from delift_jax.kernel.packing import Item
from delift_jax.kernel.normalize import apply_scale, fit_scale
from delift_jax.kernel.outputs import KernelResult
from delift_jax.kernel.plan import KernelPlan, plan_blocks
from delift_jax.kernel.sparse import similarity_embeddings
from delift_jax.kernel.embeddings import top_k_pairs
from delift_jax.kernel.store import DamagedFileError, KernelStore
from delift_jax.kernel.surrogate import length_scalars, pair_features, sample_pairs
from delift_jax.kernel.surrogate_net import NETWORK_VERSION, NetOptions, fit_surrogate, predict_layout
from delift_jax.scoring import mean_log_prob, rms_distance

NEAR_K = 16  # dense mode: each sampled row's nearest candidates the sample draws its neighbour pairs from
ROUNDS_DIR = "exact"


@dataclasses.dataclass(frozen=True, eq=False)
class _Prepared:
    plan: KernelPlan
    held_out: np.ndarray
    layout: np.ndarray | None  # sparse: [n_targets, k] neighbours; dense: None
    target_emb: np.ndarray
    candidate_emb: np.ndarray


def run_surrogate(job: Job, store: KernelStore, in_memory: bool) -> KernelResult:
    """``utility_kernel`` in the surrogate mode (see the module docstring)."""
    if jax.process_count() > 1:
        raise DataError("the surrogate utility runs in one process; start it without --coordinator")
    seqs, n_truncated_targets = pair_sequences(job)
    identity = kernel_identity(job.model, job.tokenizer, job.targets, job.candidates, job.square, seqs, job.config)
    fresh = not store.directory.exists()
    with store.exclusive(on_wait=log):
        try:
            prepared = _prepare(job, store, seqs, identity)
        except BaseException:
            if fresh:
                store.remove_if_unused()
            raise
    stats = compute_blocks(prepared.plan, block_scorer(job, seqs), store, progress=job.progress)
    for sub in finished_rounds(store):  # a finished round's missing or damaged block is computed again
        plan = _round_plan(sub, len(job.targets), len(job.candidates), job.square)
        if len(sub.verified_blocks(log)) < plan.n_blocks:  # a damaged block is reported and removed here
            log(f"refinement round {sub.directory.name}: computing its missing blocks again", job.progress)
            compute_blocks(plan, block_scorer(job, seqs), sub, progress=job.progress)
    with store.exclusive(on_wait=log):
        _add_seconds(store, exact_pairs=stats.seconds)
        summary = {"pairs_computed_now": stats.pairs_computed, "seconds_computing_pairs": round(stats.seconds, 3),
                   "pairs_without_prefix_reuse_now": stats.n_full, "pairs_truncated_now": stats.n_truncated,
                   "targets_truncated": n_truncated_targets, "block_pairs": prepared.plan.block_pairs,
                   "n_blocks": prepared.plan.n_blocks}
        return _write(job, store, prepared, summary, in_memory)


def _prepare(job: Job, store: KernelStore, seqs, identity: dict) -> _Prepared:
    store.check_identity(identity)
    if store.read_manifest() is not None:
        removed = store.remove_orphans()
        if removed:
            log(f"removed {removed} temporary files left in {store.directory} by an interrupted run")
    target_emb, candidate_emb, seconds = _embeddings(job, store, seqs)
    n_t, n_c, config = len(job.targets), len(job.candidates), job.config
    sparse = config.top_k is not None
    started = time.perf_counter()
    layout = _stored_neighbours(store) if sparse else None
    if sparse and layout is None:
        layout = top_k_pairs(target_emb, candidate_emb, config.top_k,
                             exclude_self=job.square and config.exclude_diagonal)
    near = layout if sparse else top_k_pairs(target_emb, candidate_emb, min(NEAR_K, n_c))
    seconds["neighbours"] = time.perf_counter() - started
    sample = sample_pairs(n_t, n_c, config.n_surrogate_pairs, near,
                          diagonal=job.square and not config.exclude_diagonal, seed=config.surrogate_seed,
                          neighbour_share=0.75 if sparse else 0.5)
    if job.max_pairs is not None and len(sample) > job.max_pairs:
        raise DataError(f"the surrogate's exact sample has {len(sample):,} pairs, more than --max-pairs "
                        f"{job.max_pairs:,}; lower --surrogate-pairs or raise --max-pairs")
    plan = pairs_plan(sample.pairs, n_t, n_c, job.square, _block_pairs(job, store, seqs, sample.pairs))
    created = store.read_manifest() is None
    store.open(dict(identity, n_blocks=plan.n_blocks, n_pairs=plan.n_pairs, block_pairs=plan.block_pairs))
    if created:
        store.update_manifest(stage_seconds={k: round(v, 3) for k, v in seconds.items()})
    if not store.has("embeddings.npz"):
        store.save_checked_npz("embeddings.npz", targets=target_emb,
                               **({} if job.square else {"candidates": candidate_emb}))
    if sparse and not store.has("neighbours.npy"):
        store.save_npy("neighbours.npy", layout)
    rows = np.unique(sample.pairs[:, 0])
    _log_plan(job, store, plan, rows, layout)
    _ensure_no_example(job, store, store, seqs, rows)
    return _Prepared(plan, sample.held_out, layout, target_emb, candidate_emb)


def _embeddings(job: Job, store: KernelStore, seqs) -> tuple[np.ndarray, np.ndarray, dict]:
    """The stored embeddings when the store has them (a resumed run), else computed now; and their seconds."""
    if store.read_manifest() is not None and store.has("embeddings.npz"):
        try:
            stored = store.load_checked_npz("embeddings.npz")
            return stored["targets"], stored.get("candidates", stored["targets"]), {}
        except DamagedFileError as exc:
            log(f"{exc}; computing the embeddings again")
    started = time.perf_counter()
    target_emb, candidate_emb = similarity_embeddings(job.model, job.tokenizer, seqs, job.targets, job.candidates,
                                                      job.square, job.config, job.embeddings, job.mesh,
                                                      progress=job.progress)
    target_emb, candidate_emb = np.asarray(target_emb, np.float32), np.asarray(candidate_emb, np.float32)
    return target_emb, candidate_emb, {"embeddings": time.perf_counter() - started}


def _stored_neighbours(store: KernelStore) -> np.ndarray | None:
    if store.read_manifest() is not None and store.has("neighbours.npy"):
        return store.load_npy("neighbours.npy")
    return None


def pairs_plan(pairs: np.ndarray, n_targets: int, n_candidates: int, square: bool, block_pairs: int) -> KernelPlan:
    """A plan for an arbitrary list of (target, candidate) pairs, sorted by candidate then target (slot = position
    in that order)."""
    pairs = np.asarray(pairs, np.int32).reshape(-1, 2)
    pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]
    slots = np.arange(len(pairs), dtype=np.int64)
    blocks = plan_blocks(pairs, block_pairs)
    for array in (pairs, slots, blocks):
        array.setflags(write=False)
    return KernelPlan(n_targets=n_targets, n_candidates=n_candidates, square=square, block_pairs=int(block_pairs),
                      pairs=pairs, blocks=blocks, slots=slots, neighbours=None)


def _block_pairs(job: Job, store: KernelStore, seqs, pairs: np.ndarray) -> int:
    if job.config.block_pairs is not None:
        return job.config.block_pairs
    existing = store.read_manifest()
    if existing is not None and existing.get("block_pairs"):
        return int(existing["block_pairs"])
    per_candidate = len(pairs) / max(len(np.unique(pairs[:, 1])), 1)
    return choose_block_pairs(seconds_per_pair(job.model, seqs, job.config, job.mesh), per_candidate,
                              demonstration_bytes(job.model, seqs, job.config))


def _log_plan(job: Job, store: KernelStore, plan: KernelPlan, rows: np.ndarray, layout) -> None:
    entries = len(job.targets) * (layout.shape[1] if layout is not None else len(job.candidates))
    finished = len(store.finished_blocks())
    log(f"surrogate kernel plan: {plan.n_pairs:,} exact pairs on {len(rows):,} rows ({plan.n_pairs / entries:.1%} of "
        f"the {entries:,} entries the kernel holds) in {plan.n_blocks} blocks of up to {plan.block_pairs:,} "
        f"({finished} already finished) + {len(rows):,} targets without an example; a network predicts the rest; "
        f"store: {store.directory}", job.progress)


# ---------------------------------------------------------------------------------------------------------------------
# d(i | no example) for some rows.


def _ensure_no_example(job: Job, store: KernelStore, into: KernelStore, seqs, rows: np.ndarray) -> None:
    """Score the targets ``rows`` without an example into ``into``/no_example.npz (kept if it verifies). No rows (a
    refinement round on rows scored before): nothing to score and no file (``exact_values`` reads none)."""
    if len(rows) == 0 and into is not store:
        return
    if into.has("no_example.npz"):
        try:
            if np.array_equal(into.load_checked_npz("no_example.npz")["rows"], rows):
                return
        except DamagedFileError as exc:
            log(f"{exc}; computing it again")
    from tqdm.auto import tqdm

    started = time.perf_counter()
    items = [Item(k, None, seqs.no_example[i].tokens, seqs.no_example[i].n_scored) for k, i in enumerate(rows)]
    with tqdm(total=len(items), unit="target", desc="without an example", disable=not job.progress) as bar:
        logps = PairScorer(job.model, job.config, mesh=job.mesh).logprobs(items, [], bar.update)
    logp = np.array([mean_log_prob(lp) for lp in logps], np.float64).reshape(-1)
    check_finite(logp, "no-example scores")
    into.save_checked_npz("no_example.npz", rows=np.asarray(rows, np.int64),
                          rms=np.array([rms_distance(np.exp(lp)) for lp in logps], np.float64).reshape(-1),
                          logp=logp, n_scored=np.array([seqs.no_example[i].n_scored for i in rows], np.int64))
    _add_seconds(store, no_example=time.perf_counter() - started)


def _add_seconds(store: KernelStore, **seconds: float) -> None:
    """Add to the manifest's ``stage_seconds`` (kept across resumed runs: the time each stage really took)."""
    manifest = store.read_manifest() or {}
    stages = dict(manifest.get("stage_seconds") or {})
    for name, value in seconds.items():
        stages[name] = round(stages.get(name, 0.0) + float(value), 3)
    store.update_manifest(stage_seconds=stages)


# ---------------------------------------------------------------------------------------------------------------------
# Exact values held by a store.


@dataclasses.dataclass(frozen=True, eq=False)
class ExactPairs:
    """Exact d(i | j) of some pairs: pairs [m, 2], rms [m], logp [m]."""

    pairs: np.ndarray
    rms: np.ndarray
    logp: np.ndarray


def _read_blocks(store: KernelStore, plan: KernelPlan) -> ExactPairs:
    parts = []
    for index in range(plan.n_blocks):
        try:
            block = store.read_block(index)
        except FileNotFoundError:
            raise DataError(f"block {index} of {store.directory} is missing; rerun to compute it") from None
        if not np.array_equal(block["pairs"], plan.block_pairs_of(index)):
            raise DataError(f"stored block {index} of {store.directory} holds other pairs than planned; delete the "
                            "store and rerun")
        parts.append(block)
    if not parts:
        return ExactPairs(np.zeros((0, 2), np.int32), np.zeros(0), np.zeros(0))
    return ExactPairs(*(np.concatenate([p[name] for p in parts]) for name in ("pairs", "rms", "logp")))


def finished_rounds(store: KernelStore) -> list[KernelStore]:
    """The refinement rounds of ``store`` whose pairs are all computed, in name order."""
    directory = store.directory / ROUNDS_DIR
    if not directory.is_dir():
        return []
    rounds = [KernelStore(path) for path in sorted(directory.iterdir()) if path.is_dir()]
    return [r for r in rounds if (r.read_manifest() or {}).get("complete") is True]


def _round_plan(sub: KernelStore, n_targets: int, n_candidates: int, square: bool) -> KernelPlan:
    manifest = sub.read_manifest()
    return pairs_plan(sub.load_npy("pairs.npy"), n_targets, n_candidates, square, int(manifest["block_pairs"]))


def exact_values(store: KernelStore, plan: KernelPlan) -> tuple[ExactPairs, dict[str, np.ndarray]]:
    """Every exact pair the store holds (the sample, then each finished round) and d(i | no example) as full
    [n_targets] arrays (NaN for rows never scored)."""
    parts, no_example = [_read_blocks(store, plan)], [store.load_checked_npz("no_example.npz")]
    for sub in finished_rounds(store):
        parts.append(_read_blocks(sub, _round_plan(sub, plan.n_targets, plan.n_candidates, plan.square)))
        if sub.has("no_example.npz"):
            no_example.append(sub.load_checked_npz("no_example.npz"))
    full = {name: np.full(plan.n_targets, np.nan) for name in ("rms", "logp")}
    for part in no_example:
        for name in full:
            full[name][part["rows"]] = part[name]
    joined = ExactPairs(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("pairs", "rms", "logp")))
    return joined, full


def exact_utility(exact: ExactPairs, no_example: dict[str, np.ndarray], distance: str) -> np.ndarray:
    """U (float64) at the exact pairs: rms d(i | none) - d(i | j), pmi mean log p(i | j) - mean log p(i | none)."""
    rows = exact.pairs[:, 0]
    if distance == "rms":
        values = no_example["rms"][rows] - exact.rms
    else:
        values = exact.logp - no_example["logp"][rows]
    if not np.all(np.isfinite(values)):
        raise DataError("an exact pair's target has no stored score without an example; delete the store and rerun")
    return values


def layout_slots(pairs: np.ndarray, layout: np.ndarray | None, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat slot, in layout) of each pair: dense i * n_candidates + j; sparse i * k + the position of j in row i's
    neighbours (pairs outside the layout: False)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if layout is None:
        return pairs[:, 0] * n_candidates + pairs[:, 1], np.ones(len(pairs), bool)
    hit = np.asarray(layout)[pairs[:, 0]] == pairs[:, 1][:, None]
    return pairs[:, 0] * layout.shape[1] + np.argmax(hit, axis=1), hit.any(axis=1)


# ---------------------------------------------------------------------------------------------------------------------
# The network and the final arrays.


def _predictions(job: Job, store: KernelStore, prepared: _Prepared, exact: ExactPairs,
                 no_example: dict) -> tuple[np.ndarray, dict]:
    """The network's U in the layout and its scores, trained on every exact pair the store holds (the sample, then
    each finished refinement round); stored per distance with a hash of its training pairs and the network's
    version, so it is trained again only when one of them changes."""
    name = f"surrogate_{job.config.distance}.npz"
    digest = hashlib.sha256(f"network {NETWORK_VERSION}|".encode())
    digest.update(np.ascontiguousarray(exact.pairs, np.int32).tobytes())
    digest = np.frombuffer(digest.digest(), np.uint8)
    if store.has(name):
        try:
            stored = store.load_checked_npz(name)
            if np.array_equal(stored["training_pairs_sha256"], digest):
                return stored["prediction"], json.loads(str(stored["scores"]))
        except DamagedFileError as exc:
            log(f"{exc}; training the surrogate again")
    started = time.perf_counter()
    features = pair_features(prepared.target_emb, prepared.candidate_emb, length_scalars(job.targets),
                             length_scalars(job.candidates), square=job.square)
    fitted = fit_surrogate(features, exact.pairs, exact_utility(exact, no_example, job.config.distance),
                           _held_out_of(prepared, exact.pairs), NetOptions(seed=job.config.surrogate_seed))
    trained = time.perf_counter()
    columns = prepared.layout if prepared.layout is not None else len(job.candidates)
    prediction = predict_layout(fitted, len(job.targets), columns)
    check_finite(prediction, "surrogate predictions")
    scores = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in fitted.scores.items()}
    store.save_checked_npz(name, prediction=prediction, scores=np.array(json.dumps(scores)),
                           training_pairs_sha256=digest)
    _add_seconds(store, training=trained - started, prediction=time.perf_counter() - trained)
    return prediction, scores


def _held_out_of(prepared: _Prepared, pairs: np.ndarray) -> np.ndarray:
    """Held-out flags of the exact ``pairs`` (the sample first, in the plan's order, then refinement pairs): the
    sample's own flags; a refinement pair is held out when its row is one of the sample's held-out rows (rows are
    held out whole whenever the sample has 5 rows or more)."""
    n_sample = prepared.plan.n_pairs
    if not np.array_equal(pairs[:n_sample], prepared.plan.pairs):
        raise DataError("the stored sample blocks are not in the planned order; delete the store and rerun")
    sample_rows, held = prepared.plan.pairs[:, 0], prepared.held_out
    held_rows = np.unique(sample_rows[held])
    by_rows = len(held_rows) > 0 and held[np.isin(sample_rows, held_rows)].all()
    extra = np.isin(pairs[n_sample:, 0], held_rows) if by_rows else np.zeros(len(pairs) - n_sample, bool)
    return np.concatenate([held, extra])


def _write(job: Job, store: KernelStore, prepared: _Prepared, run_summary: dict, in_memory: bool) -> KernelResult:
    exact, no_example = exact_values(store, prepared.plan)
    n_sample = prepared.plan.n_pairs
    prediction, scores = _predictions(job, store, prepared, exact, no_example)
    started = time.perf_counter()
    layout, config = prepared.layout, job.config
    utility = prediction.astype(np.float64)
    is_exact = np.zeros(utility.shape, bool)
    with_example = np.full(utility.shape, np.nan)
    slots, inside = layout_slots(exact.pairs, layout, len(job.candidates))
    values = exact_utility(exact, no_example, config.distance)
    utility.reshape(-1)[slots[inside]] = values[inside]
    is_exact.reshape(-1)[slots[inside]] = True
    with_example.reshape(-1)[slots[inside]] = (exact.rms if config.distance == "rms" else exact.logp)[inside]
    ignore = _diagonal(job, layout, utility.shape) if config.exclude_diagonal else None
    kernel = apply_scale(utility, fit_scale([(utility, ignore)], config.normalization), ignore)
    arrays = {"exact.npy": is_exact, "utility_raw.npy": utility.astype(np.float32), "kernel.npy": kernel,
              "distance_no_example.npy": no_example["rms" if config.distance == "rms" else "logp"],
              "distance_with_example.npy": with_example}
    if layout is not None:
        arrays.update({"kernel_indices.npy": layout, "kernel_values.npy": arrays.pop("kernel.npy"),
                       "utility_raw_values.npy": arrays.pop("utility_raw.npy")})
    _publish(store, arrays)
    _add_seconds(store, assembly=time.perf_counter() - started)
    manifest = store.read_manifest()
    surrogate = dict(scores, sample_pairs=n_sample, exact_pairs=int(len(exact.pairs)),
                     refinement_rounds=len(finished_rounds(store)), exact_entries=int(is_exact.sum()),
                     entries=int(is_exact.size), rows_scored_without_example=int(np.isfinite(no_example["logp"]).sum()))
    summary = {"utility": "surrogate", "distance": config.distance, "normalization": config.normalization,
               "exclude_diagonal": config.exclude_diagonal, "utility_min": float(utility.min()),
               "utility_max": float(utility.max()), "surrogate": surrogate,
               "stage_seconds": manifest.get("stage_seconds", {}), **run_summary}
    store.update_manifest(complete=True, summary=summary)
    return KernelResult(kernel=kernel, utility=utility, indices=None if layout is None else np.array(layout),
                        distance_no_example=arrays["distance_no_example.npy"], distance_with_example=with_example,
                        n_candidates=len(job.candidates), directory=None if in_memory else store.directory,
                        summary=summary, exact=is_exact)


def _diagonal(job: Job, layout, shape) -> np.ndarray | None:
    if not job.square:
        return None
    if layout is None:
        return np.eye(shape[0], shape[1], dtype=bool)
    return np.asarray(layout) == np.arange(shape[0])[:, None]


def _publish(store: KernelStore, arrays: dict[str, np.ndarray]) -> None:
    """Stage every final array, mark the store incomplete, rename them into place and record their size and SHA-256
    in the manifest beside the records already there (the neighbours', as ``outputs.write_outputs``): ``delift
    select`` verifies every array it reads against them."""
    staged: dict[str, Path] = {}
    try:
        for name, array in arrays.items():
            staged[name] = store.staging_path(name)
            with open(staged[name], "wb") as handle:
                np.save(handle, np.asarray(array), allow_pickle=False)
        store.update_manifest(complete=False)
        records = store.publish(staged)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    store.record_files(records)
