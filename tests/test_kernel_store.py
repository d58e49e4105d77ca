"""The kernel store without a model: plans, checksummed blocks, claims shared by processes, streamed assembly."""

import json
import threading
import time
import tracemalloc

import numpy as np
import pytest

from delift_jax.errors import DataError
from delift_jax.kernel import assemble as assemble_module
from delift_jax.kernel import blocks as blocks_module
from delift_jax.kernel import checksums
from delift_jax.kernel.blocks import BlockScores, Coordination, compute_blocks
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.estimate import MAX_BLOCK_PAIRS, choose_block_pairs
from delift_jax.kernel.locks import FileLock
from delift_jax.kernel.normalize import normalize, utilities
from delift_jax.kernel.outputs import write_outputs
from delift_jax.kernel.plan import plan_blocks, plan_kernel, plan_pairs
from delift_jax.kernel.store import DamagedFileError, KernelStore, KernelStoreMismatchError

N_TARGETS, N_CANDIDATES = 7, 5


def fake_distances(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-pair distances (what a model would give), distinct for every pair."""
    i, j = pairs[:, 0].astype(np.float64), pairs[:, 1].astype(np.float64)
    return np.sin(i * 1.7 + j * 0.31) * 0.4 + 0.5, -np.abs(np.cos(i * 0.9 - j * 1.3)) * 3.0


class CountingScorer:
    def __init__(self, delay_s: float = 0.0):
        self.calls, self.delay_s = [], delay_s

    def __call__(self, pairs, on_progress):
        self.calls.append(pairs.copy())
        time.sleep(self.delay_s)
        on_progress(len(pairs))
        return BlockScores(*fake_distances(pairs))


def make_store(tmp_path, plan, name="store") -> KernelStore:
    store = KernelStore(tmp_path / name)
    store.open({"format_version": 3, "n_targets": plan.n_targets, "n_candidates": plan.n_candidates,
                "mode": "dense" if plan.neighbours is None else "sparse", "n_blocks": plan.n_blocks,
                "top_k": None if plan.neighbours is None else int(plan.neighbours.shape[1])})
    rng = np.random.default_rng(0)
    store.save_checked_npz("no_example.npz", rms=rng.uniform(0.3, 0.9, plan.n_targets),
                           logp=-rng.uniform(0.5, 3.0, plan.n_targets), n_scored=np.full(plan.n_targets, 4))
    return store


def old_assembly(store: KernelStore, plan, config: KernelConfig) -> dict:
    """The kernel assembled the way the store did before streaming: everything in memory, one normalize call."""
    no_example = store.load_checked_npz("no_example.npz")
    rms_with, logp_with = np.full(plan.shape, np.nan), np.full(plan.shape, np.nan)
    for b, (start, end) in enumerate(plan.blocks):
        block = store.read_block(b)
        rms_with.flat[plan.slots[start:end]], logp_with.flat[plan.slots[start:end]] = block["rms"], block["logp"]
    utility = utilities(no_example["rms"], rms_with, no_example["logp"], logp_with, config.distance)
    diagonal = None
    if config.exclude_diagonal:
        columns = np.arange(plan.n_candidates)[None, :] if plan.neighbours is None else plan.neighbours
        diagonal = columns == np.arange(plan.n_targets)[:, None]
    return {"kernel": normalize(utility, config.normalization, ignore=diagonal),
            "utility_raw": utility.astype(np.float32), "utility": utility,
            "with": rms_with if config.distance == "rms" else logp_with}


def square_neighbours(n: int, k: int) -> np.ndarray:
    return np.stack([(np.arange(n) + s) % n for s in range(1, k + 1)], axis=1).astype(np.int32)


# -- planning ---------------------------------------------------------------------------------------------------

def test_sparse_plan_slots_place_each_pair_in_its_row():
    neighbours = np.array([[3, 1], [0, 2], [1, 0], [2, 3]])
    plan = plan_kernel(4, 4, square=True, block_pairs=3, neighbours=neighbours)
    assert np.all(np.diff(plan.pairs[:, 1]) >= 0)
    rows, columns = np.divmod(plan.slots, 2)
    np.testing.assert_array_equal(plan.pairs[:, 0], rows)
    np.testing.assert_array_equal(neighbours[rows, columns], plan.pairs[:, 1])
    np.testing.assert_array_equal(plan.pairs, plan_pairs(4, 4, neighbours))
    assert not plan.pairs.flags.writeable


def test_plan_blocks_keep_the_greedy_packing():
    pairs = plan_pairs(3, 4, None)  # runs of 3 pairs per candidate
    np.testing.assert_array_equal(plan_blocks(pairs, 5), [[0, 3], [3, 6], [6, 9], [9, 12]])
    np.testing.assert_array_equal(plan_blocks(pairs, 6), [[0, 6], [6, 12]])
    np.testing.assert_array_equal(plan_blocks(pairs, 2), [[0, 2], [2, 3], [3, 5], [5, 6], [6, 8], [8, 9],
                                                          [9, 11], [11, 12]])


def greedy_blocks_reference(pairs, block_pairs):
    """Block packing written plainly: walk every candidate's run piece by piece."""
    runs = np.split(np.arange(len(pairs)), np.flatnonzero(np.diff(pairs[:, 1])) + 1)
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
    return np.asarray(blocks, np.int64).reshape(-1, 2)


def test_plan_blocks_equal_the_plain_packing_on_random_plans():
    rng = np.random.default_rng(3)
    for _ in range(60):
        n, m = (int(x) for x in rng.integers(1, 25, 2))
        k = int(rng.integers(1, m + 1))
        neighbours = np.stack([rng.choice(m, k, replace=False) for _ in range(n)])
        for pairs in (plan_pairs(n, m, None), plan_pairs(n, m, neighbours)):
            for block_pairs in (1, 2, 3, 7, 16, 1000):
                np.testing.assert_array_equal(plan_blocks(pairs, block_pairs),
                                              greedy_blocks_reference(pairs, block_pairs))


def test_sparse_planning_memory_grows_with_n_times_k():
    n, k = 60_000, 16
    neighbours = np.random.default_rng(0).integers(0, n, (n, k)).astype(np.int32)
    tracemalloc.start()
    plan = plan_kernel(n, n, square=True, block_pairs=4096, neighbours=neighbours)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert plan.n_pairs == n * k
    assert peak < 64 * n * k  # bytes; a dense n x n intermediate would be 3.6e9 elements


def test_block_size_is_about_a_minute_of_work():
    assert choose_block_pairs(0.25, 1000, 1 << 20) == 128        # 240 pairs a minute -> 128 (power of two below)
    assert choose_block_pairs(1e-9, 1000, 1) == MAX_BLOCK_PAIRS  # tiny work: capped
    assert choose_block_pairs(600.0, 1000, 1) == 1               # a pair takes longer than a minute: one per block
    # Each candidate's demonstration takes 256 MiB: at most 4 candidates (16 pairs each) fit the memory budget.
    assert choose_block_pairs(1e-6, 16, 256 << 20) == 64


# -- checksums and damaged blocks -------------------------------------------------------------------------------

def test_block_checksum_detects_altered_values_and_truncation(tmp_path):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    compute_blocks(plan, CountingScorer(), store)
    with np.load(store.block_path(1)) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["rms"][0] += 1e-12
    np.savez(store.block_path(1), **arrays)  # a valid archive whose values no longer match the checksum
    with pytest.raises(DamagedFileError, match="does not match its checksum"):
        store.read_block(1)
    store.block_path(2).write_bytes(store.block_path(2).read_bytes()[:100])
    with pytest.raises(DamagedFileError, match="unreadable"):
        store.read_block(2)


def test_damaged_blocks_are_reported_and_recomputed_on_resume(tmp_path, capsys):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    compute_blocks(plan, CountingScorer(), store)
    intact = {b: store.read_block(b) for b in range(plan.n_blocks)}
    store.block_path(3).write_bytes(b"PK\x03\x04 not really a zip file")
    capsys.readouterr()
    again = CountingScorer()
    stats = compute_blocks(plan, again, store)
    lines = [line for line in capsys.readouterr().err.splitlines() if "block_000003" in line]
    assert len(lines) == 1 and "computed again" in lines[0]
    assert len(again.calls) == 1 and stats.pairs_computed == plan.block_size(3)
    for b in range(plan.n_blocks):
        for key in ("pairs", "rms", "logp"):
            np.testing.assert_array_equal(store.read_block(b)[key], intact[b][key])


def test_assembly_with_a_damaged_block_leaves_a_complete_store_complete(tmp_path):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    compute_blocks(plan, CountingScorer(), store)
    config = KernelConfig()
    write_outputs(store, plan, config, {})
    kernel_before = np.load(store.directory / "kernel.npy")
    assert store.read_manifest()["complete"] is True
    store.block_path(2).write_bytes(b"garbage")
    with pytest.raises(DamagedFileError, match="rerun to compute it again"):
        write_outputs(store, plan, config, {})
    assert store.read_manifest()["complete"] is True
    np.testing.assert_array_equal(np.load(store.directory / "kernel.npy"), kernel_before)
    assert not store.block_path(2).exists()          # removed, so the rerun computes it
    assert not list(store.directory.glob(".*.tmp"))  # no staged file left behind


def test_damaged_no_example_file_is_refused_in_one_line(tmp_path):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    (store.directory / "no_example.npz").write_bytes(b"broken")
    with pytest.raises(DamagedFileError, match="no_example.npz is unreadable"):
        store.load_checked_npz("no_example.npz")


# -- orphans, store lock and claims -----------------------------------------------------------------------------

def test_orphan_temporary_files_are_removed_unless_a_live_claim_holds_them(tmp_path):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    orphan_block = store.blocks_dir / ".block_000001.npz.k2j3h4.tmp"
    live_block = store.blocks_dir / ".block_000002.npz.a8b7c6.tmp"
    orphan_final = store.directory / ".kernel.npy.x1y2z3.tmp"
    for path in (orphan_block, live_block, orphan_final):
        path.write_bytes(b"partial")
    holder = FileLock(store.blocks_dir / ".block_000002.lock")
    assert holder.acquire(blocking=False)
    try:
        with store.exclusive():
            assert store.remove_orphans() == 2
    finally:
        holder.release()
    assert not orphan_block.exists() and not orphan_final.exists() and live_block.exists()


def test_store_lock_excludes_a_second_holder_until_released(tmp_path):
    first, second = KernelStore(tmp_path / "s"), KernelStore(tmp_path / "s")
    heard = []
    with first.exclusive():
        with first.exclusive():  # re-entrant for its holder
            pass
        waiter = threading.Thread(target=lambda: second.exclusive(on_wait=heard.append).__enter__())
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and len(heard) == 1 and "waiting" in heard[0]
    waiter.join(5)
    assert not waiter.is_alive()


def test_two_workers_on_one_store_never_compute_a_block_twice(tmp_path):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=4)
    store_a = make_store(tmp_path, plan)
    store_b = KernelStore(store_a.directory)
    scorers = [CountingScorer(delay_s=0.05), CountingScorer(delay_s=0.05)]
    threads = [threading.Thread(target=compute_blocks, args=(plan, scorer, store))
               for scorer, store in zip(scorers, (store_a, store_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    computed = [tuple(map(tuple, pairs)) for scorer in scorers for pairs in scorer.calls]
    assert len(computed) == plan.n_blocks == len(set(computed))
    assert all(scorer.calls for scorer in scorers)  # the work was shared
    assert store_a.finished_blocks() == set(range(plan.n_blocks))


def test_a_block_whose_claim_holder_stops_is_taken_over(tmp_path, capsys):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    holder = FileLock(store.blocks_dir / ".block_000000.lock")
    assert holder.acquire(blocking=False)
    threading.Timer(0.6, holder.release).start()  # the other process dies without writing block 0
    scorer = CountingScorer()
    stats = compute_blocks(plan, scorer, store)
    assert stats.pairs_computed == plan.n_pairs and len(scorer.calls) == plan.n_blocks
    assert "claimed by another process" in capsys.readouterr().err


def test_interrupt_closes_the_progress_bar_before_propagating(tmp_path, monkeypatch):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    bars = []

    class Bar:
        total, closed = 0, False

        def update(self, n):
            pass

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(blocks_module, "_pair_bar", lambda total, enabled: bars.append(Bar()) or bars[-1])

    def interrupted(pairs, on_progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_blocks(plan, interrupted, store, coordination=Coordination())
    assert bars[0].closed
    assert not store.finished_blocks()


# -- streamed assembly ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("config", [KernelConfig(), KernelConfig(distance="rms"),  # the default (pmi) and the paper's
                                    KernelConfig(distance="rms", normalization="clip_minmax"),
                                    KernelConfig(normalization="exp"), KernelConfig(exclude_diagonal=True)])
def test_streamed_assembly_equals_the_in_memory_assembly_bit_for_bit(tmp_path, monkeypatch, sparse, config):
    n = 9
    if sparse:
        config = KernelConfig(**{**config.__dict__, "top_k": 3})
    neighbours = square_neighbours(n, 3) if sparse else None
    if sparse and not config.exclude_diagonal:
        neighbours[:, 0] = np.arange(n)  # the diagonal among the neighbours
    plan = plan_kernel(n, n, square=True, block_pairs=5, neighbours=neighbours)
    store = make_store(tmp_path, plan)
    compute_blocks(plan, CountingScorer(), store)
    expected = old_assembly(store, plan, config)
    monkeypatch.setattr(assemble_module, "CHUNK_ELEMENTS", 7)  # many row chunks of 1-2 rows
    result = write_outputs(store, plan, config, {"note": 1})
    suffix = "_values" if sparse else ""
    kernel_name = "kernel_values.npy" if sparse else "kernel.npy"
    np.testing.assert_array_equal(np.load(store.directory / kernel_name), expected["kernel"])
    np.testing.assert_array_equal(np.load(store.directory / f"utility_raw{suffix}.npy"), expected["utility_raw"])
    np.testing.assert_array_equal(np.load(store.directory / "distance_with_example.npy"), expected["with"])
    np.testing.assert_array_equal(result.utility, expected["utility"])
    assert result.kernel.dtype == np.float32 and result.utility.dtype == np.float64
    with np.load(store.directory / "distances.npz") as distances:
        assert set(distances.files) == {"rms_no_example", "logp_no_example", "rms_with_example",
                                        "logp_with_example", "n_scored"}
    if sparse:
        np.testing.assert_array_equal(np.load(store.directory / "kernel_indices.npy"), neighbours)
    manifest = json.loads((store.directory / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["summary"]["note"] == 1
    assert manifest["summary"]["utility_min"] == float(expected["utility"].min())
    assert not list(store.directory.glob(".*.tmp"))
    published = {p.name for p in store.directory.glob("*.np[yz]")} - {"no_example.npz"}
    assert set(manifest["files"]) == published  # every final array, with its size and SHA-256
    for name, entry in manifest["files"].items():
        assert entry == checksums.record(store.directory / name)


def test_assembly_refuses_a_block_with_other_pairs(tmp_path):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    compute_blocks(plan, CountingScorer(), store)
    other = plan.block_pairs_of(1).copy()
    other[:, 0] = (other[:, 0] + 1) % N_TARGETS
    store.write_block(1, other, *fake_distances(other))
    with pytest.raises(DataError, match="other pairs than planned"):
        write_outputs(store, plan, KernelConfig(), {})


def test_store_names_dense_and_sparse_modes_in_a_mismatch(tmp_path):
    store = KernelStore(tmp_path / "s")
    store.open({"format_version": 3, "mode": "sparse", "top_k": 4})
    with pytest.raises(KernelStoreMismatchError, match=r"holds a sparse \(top-4\) kernel and this run asks for a "
                                                       r"dense one"):
        store.open({"format_version": 3, "mode": "dense", "top_k": None})


def test_a_failed_manifest_write_during_assembly_leaves_no_staged_file(tmp_path, monkeypatch):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    compute_blocks(plan, CountingScorer(), store)
    write_outputs(store, plan, KernelConfig(), {})
    kernel_before = np.load(store.directory / "kernel.npy")

    def disk_full(**fields):
        raise OSError(28, "No space left on device", str(store.manifest_path))

    monkeypatch.setattr(store, "update_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_outputs(store, plan, KernelConfig(normalization="exp"), {})
    assert not list(store.directory.glob(".*.tmp"))
    assert store.read_manifest()["complete"] is True
    np.testing.assert_array_equal(np.load(store.directory / "kernel.npy"), kernel_before)


# -- checksums of published files ---------------------------------------------------------------------------------

def test_verification_streams_each_file_version_once(tmp_path, monkeypatch):
    """Verified in chunks (memory stays flat), once per process and file version; a changed file is read again."""
    path = tmp_path / "kernel.npy"
    np.save(path, np.arange(1000, dtype=np.float32))
    entry = checksums.record(path)
    reads = []
    real_open = open

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, size):
            reads.append(size)
            return self.handle.read(size)

    monkeypatch.setattr(checksums, "CHUNK_BYTES", 512)
    monkeypatch.setattr(checksums, "open", lambda p, mode: Counting(real_open(p, mode)), raising=False)
    checksums.verify(path, entry, "fix it")
    chunks = -(-path.stat().st_size // 512) + 1  # full chunks, the short last one, the empty read at the end
    assert set(reads) == {512} and len(reads) == chunks
    checksums.verify(path, entry, "fix it")
    assert len(reads) == chunks  # the same file version: not read again
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="kernel.npy does not match the checksum .*; fix it"):
        checksums.verify(path, entry, "fix it")
    with pytest.raises(DamagedFileError, match="has 3 bytes but its store's manifest records"):
        path.write_bytes(b"abc")
        checksums.check_size(path, entry, "fix it")


def test_saved_neighbours_are_verified_when_read_back(tmp_path):
    plan = plan_kernel(N_TARGETS, N_CANDIDATES, square=False, block_pairs=6)
    store = make_store(tmp_path, plan)
    neighbours = np.arange(12, dtype=np.int64).reshape(6, 2)
    store.save_npy("neighbours.npy", neighbours)
    assert store.read_manifest()["files"]["neighbours.npy"] == checksums.record(store.directory / "neighbours.npy")
    np.testing.assert_array_equal(store.load_npy("neighbours.npy"), neighbours)
    data = bytearray((store.directory / "neighbours.npy").read_bytes())
    data[-2] ^= 4
    (store.directory / "neighbours.npy").write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="neighbours.npy does not match the checksum .* delete it and rerun"):
        store.load_npy("neighbours.npy")
