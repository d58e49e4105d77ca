"""The utility kernel against a plain PyTorch implementation of the authors' teacher-forced procedure."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from delift_jax.data import DEFAULT_TEMPLATES, Example
from delift_jax.errors import DataError
from delift_jax.kernel import KernelConfig, KernelStoreMismatchError, utility_kernel
from delift_jax.kernel.compute import plan_blocks, plan_pairs
from delift_jax.kernel.normalize import normalize
from delift_jax.kernel.pairs import build_pair_sequences, full_sequences_for
from delift_jax.sharding import data_mesh
from delift_jax.scoring import ScoringConfig, TeacherForcedScorer, mean_log_prob, rms_distance
from examples import EXAMPLES

# The last example's response ends in whitespace, which merges with the query's leading newlines when the joint
# context is tokenized: that pair cannot reuse the prefix and must take the full-sequence path.
POOL = EXAMPLES[:5] + [Example("Say 84 and a space.", "84 ")]
CONFIG = KernelConfig(max_length=256, batch_size=3)


def torch_distances(torch_model, tokenizer, context: str, response: str):
    """d(i | context): the authors' procedure, plainly: full sequence, full logits, float32 softmax, gather."""
    eos = tokenizer.eos_token_id
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    resp = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = ctx + [eos] + resp + [eos]
    with torch.no_grad():
        probs = torch.softmax(torch_model(torch.tensor([ids])).logits[0].float(), dim=-1)
    p = torch.stack([probs[t - 1, ids[t]] for t in range(len(ctx) + 1, len(ids))]).double()
    return float(torch.sqrt(torch.mean((1 - p) ** 2))), float(torch.mean(torch.log(p)))


def torch_kernel(torch_model, tokenizer, targets, candidates):
    """U for both distances: rms d(i|none) - d(i|j) and pmi mean log p(i|j) - mean log p(i|none)."""
    none = [torch_distances(torch_model, tokenizer, DEFAULT_TEMPLATES.context_without_example(t), t.response)
            for t in targets]
    u_rms = np.zeros((len(targets), len(candidates)))
    u_pmi = np.zeros_like(u_rms)
    for i, target in enumerate(targets):
        for j, candidate in enumerate(candidates):
            rms, logp = torch_distances(torch_model, tokenizer,
                                        DEFAULT_TEMPLATES.context_with_example(target, candidate), target.response)
            u_rms[i, j] = none[i][0] - rms
            u_pmi[i, j] = logp - none[i][1]
    return u_rms, u_pmi


@pytest.fixture(scope="module")
def reference(tiny_llama):
    _, torch_model, _, tokenizer = tiny_llama
    return torch_kernel(torch_model, tokenizer, POOL, POOL)


@pytest.mark.parametrize("distance", ["rms", "pmi"])
def test_square_kernel_matches_plain_torch(tiny_llama, reference, distance):
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, batch_size=3, distance=distance, normalization="none")
    result = utility_kernel(model, tokenizer, POOL, config=config)
    expected = reference[0] if distance == "rms" else reference[1]
    np.testing.assert_allclose(result.utility, expected, atol=1e-5, rtol=0)
    assert result.summary["pairs_without_prefix_reuse_now"] == len(POOL)  # the whitespace candidate's column
    np.testing.assert_allclose(result.kernel, expected, atol=1e-5, rtol=0)  # normalization "none"


def test_the_default_distance_is_pmi_and_rms_is_one_option_away():
    assert KernelConfig().distance == "pmi"
    assert KernelConfig(distance="rms").distance == "rms"


@pytest.mark.parametrize("distance", [None, "rms"])  # None: the default (pmi)
def test_rectangular_kernel_matches_plain_torch(tiny_llama, distance):
    _, torch_model, model, tokenizer = tiny_llama
    targets, candidates = EXAMPLES[4:7], POOL
    config = KernelConfig(max_length=256, batch_size=2)
    if distance is not None:
        config = dataclasses.replace(config, distance=distance)
    result = utility_kernel(model, tokenizer, targets, candidates, config)
    u_rms, u_pmi = torch_kernel(torch_model, tokenizer, targets, candidates)
    expected = u_rms if distance == "rms" else u_pmi
    assert result.summary["distance"] == (distance or "pmi")
    assert result.utility.shape == (3, len(POOL))
    np.testing.assert_allclose(result.utility, expected, atol=1e-5, rtol=0)
    low, high = expected.min(), expected.max()
    np.testing.assert_allclose(result.kernel, (expected - low) / (high - low), atol=1e-3, rtol=0)
    assert result.kernel.min() == 0.0 and result.kernel.max() == 1.0


def test_prefix_reuse_equals_full_sequence_scoring(tiny_llama, tmp_path):
    """Every pair scored as one full sequence (no prefix reuse) gives the kernel's d(i | j) within 1e-5, for both
    distances (the store keeps both; the result holds the default's, mean log p)."""
    _, _, model, tokenizer = tiny_llama
    result = utility_kernel(model, tokenizer, POOL, config=CONFIG, out_dir=tmp_path)
    seqs = build_pair_sequences(tokenizer, POOL, POOL, CONFIG)
    pairs = plan_pairs(len(POOL), len(POOL), None)
    full = full_sequences_for(tokenizer, POOL, POOL, pairs, seqs, CONFIG)
    sequences = [full.get((i, j)) or _joined(seqs, i, j) for i, j in pairs]
    logps = TeacherForcedScorer(model, ScoringConfig(max_length=256, batch_size=4)).logprobs(sequences)
    direct_rms, direct_logp = np.zeros((len(POOL), len(POOL))), np.zeros((len(POOL), len(POOL)))
    for (i, j), lp in zip(pairs, logps):
        direct_rms[i, j], direct_logp[i, j] = rms_distance(np.exp(lp)), mean_log_prob(lp)
    assert CONFIG.distance == "pmi"
    np.testing.assert_allclose(result.distance_with_example, direct_logp, atol=1e-5, rtol=0)
    with np.load(tmp_path / "distances.npz") as stored:
        np.testing.assert_allclose(stored["logp_with_example"], direct_logp, atol=1e-5, rtol=0)
        np.testing.assert_allclose(stored["rms_with_example"], direct_rms, atol=1e-5, rtol=0)


def _joined(seqs, i, j):
    from delift_jax.data.tokenize import ScoredSequence

    cont = seqs.continuations[i]
    return ScoredSequence(np.concatenate([seqs.prefixes[j], cont.tokens]), cont.n_scored)


@pytest.mark.parametrize("n_devices", [1, 3])
def test_device_counts_give_identical_kernels(tiny_llama, n_devices):
    _, _, model, tokenizer = tiny_llama
    assert len(jax.devices()) == 4
    four = utility_kernel(model, tokenizer, POOL, config=CONFIG, mesh=data_mesh(jax.devices()))
    other = utility_kernel(model, tokenizer, POOL, config=CONFIG, mesh=data_mesh(jax.devices()[:n_devices]))
    np.testing.assert_array_equal(other.utility, four.utility)
    np.testing.assert_array_equal(other.kernel, four.kernel)


def test_store_resumes_and_refuses_other_runs(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, batch_size=3, block_pairs=5)
    first = utility_kernel(model, tokenizer, POOL, config=config, out_dir=tmp_path)
    assert first.summary["pairs_computed_now"] == len(POOL) ** 2
    for name in ("kernel.npy", "utility_raw.npy", "distance_no_example.npy", "distance_with_example.npy",
                 "manifest.json", "distances.npz"):
        assert (tmp_path / name).is_file(), name
    np.testing.assert_array_equal(np.load(tmp_path / "kernel.npy"), first.kernel)

    again = utility_kernel(model, tokenizer, POOL, config=config, out_dir=tmp_path)
    assert again.summary["pairs_computed_now"] == 0
    np.testing.assert_array_equal(again.kernel, first.kernel)

    # Another normalization reuses the stored blocks: it is applied at assembly.
    clipped = utility_kernel(model, tokenizer, POOL, out_dir=tmp_path,
                             config=KernelConfig(max_length=256, batch_size=3, block_pairs=5,
                                                 normalization="clip_minmax"))
    assert clipped.summary["pairs_computed_now"] == 0
    np.testing.assert_array_equal(clipped.utility, first.utility)

    with pytest.raises(KernelStoreMismatchError, match="compute_fingerprint"):
        utility_kernel(model, tokenizer, POOL, out_dir=tmp_path,
                       config=KernelConfig(max_length=200, batch_size=3, block_pairs=5))
    with pytest.raises(KernelStoreMismatchError, match="data_sha256"):
        utility_kernel(model, tokenizer, POOL[:5] + [EXAMPLES[6]], config=config, out_dir=tmp_path)
    # Same text and weights, other token ids (a tokenizer with another EOS): refused, never mixed.
    with pytest.raises(KernelStoreMismatchError, match="tokens_sha256"):
        utility_kernel(model, OtherEos(tokenizer), POOL, config=config, out_dir=tmp_path)

    # A finished kernel whose manifest says incomplete (a rerun rewriting the final arrays) is not loaded.
    import json

    from delift_jax.errors import SelectionError
    from delift_jax.select.io import load_kernel

    np.testing.assert_array_equal(load_kernel(tmp_path), clipped.kernel)  # the last assembly wrote the files
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    with pytest.raises(SelectionError, match="incomplete"):
        load_kernel(tmp_path)


def test_a_store_assembled_with_rms_serves_the_pmi_default(tiny_llama, reference, tmp_path):
    """A store finished under the previous default (rms), opened with the new one (pmi): no pair is computed again
    (both distances are in the blocks), the final arrays are reassembled with pmi and the manifest says so; asked
    for rms again, the store gives the rms kernel back."""
    import json

    from delift_jax.select.io import load_kernel

    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, batch_size=3, block_pairs=5)
    old = utility_kernel(model, tokenizer, POOL, config=dataclasses.replace(config, distance="rms"), out_dir=tmp_path)
    assert old.summary["distance"] == "rms"
    np.testing.assert_allclose(old.utility, reference[0], atol=1e-5, rtol=0)

    new = utility_kernel(model, tokenizer, POOL, config=config, out_dir=tmp_path)
    assert new.summary["pairs_computed_now"] == 0 and new.summary["distance"] == "pmi"
    np.testing.assert_allclose(new.utility, reference[1], atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "manifest.json").read_text())["summary"]["distance"] == "pmi"
    np.testing.assert_allclose(np.load(tmp_path / "utility_raw.npy"), reference[1], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(load_kernel(tmp_path), new.kernel)  # what `delift select` reads

    again = utility_kernel(model, tokenizer, POOL, config=dataclasses.replace(config, distance="rms"),
                           out_dir=tmp_path)
    assert again.summary["pairs_computed_now"] == 0 and again.summary["distance"] == "rms"
    np.testing.assert_array_equal(again.utility, old.utility)
    np.testing.assert_array_equal(again.kernel, old.kernel)


class OtherEos:
    """The tiny tokenizer with another end-of-sequence id."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    @property
    def eos_token_id(self):
        return self._tokenizer.eos_token_id + 1


def test_sparse_store_refuses_another_pool_before_reading_neighbours(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, batch_size=3, top_k=2)
    utility_kernel(model, tokenizer, POOL, config=config, out_dir=tmp_path)
    with pytest.raises(KernelStoreMismatchError, match="n_targets"):
        utility_kernel(model, tokenizer, POOL[:4], config=config, out_dir=tmp_path)


def test_sparse_exclude_diagonal_spends_no_slot_on_the_diagonal(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    result = utility_kernel(model, tokenizer, POOL,
                            config=KernelConfig(max_length=256, batch_size=3, top_k=2, exclude_diagonal=True))
    assert result.indices.shape == (len(POOL), 2)
    assert not np.any(result.indices == np.arange(len(POOL))[:, None])
    assert result.kernel.min() == 0.0 and result.kernel.max() == 1.0


def test_sparse_mode_matches_dense_entries(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    dense = utility_kernel(model, tokenizer, POOL, config=CONFIG)
    sparse = utility_kernel(model, tokenizer, POOL, config=KernelConfig(max_length=256, batch_size=3, top_k=3))
    assert sparse.indices.shape == (len(POOL), 3)
    assert all(len(set(row)) == 3 for row in sparse.indices.tolist())
    picked = np.take_along_axis(dense.utility, sparse.indices, axis=1)
    np.testing.assert_allclose(sparse.utility, picked, atol=1e-6, rtol=0)
    assert sparse.kernel.min() == 0.0 and sparse.kernel.max() == 1.0


def test_sparse_mode_uses_given_embeddings(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    embeddings = np.eye(len(POOL))[:, ::-1] + np.eye(len(POOL))  # each row similar to itself and its mirror
    result = utility_kernel(model, tokenizer, POOL, config=KernelConfig(max_length=256, top_k=2),
                            embeddings=(embeddings, embeddings))
    expected = np.sort(np.stack([np.arange(6), 5 - np.arange(6)], axis=1), axis=1)
    np.testing.assert_array_equal(np.sort(result.indices, axis=1), expected)


def test_normalizations():
    u = np.array([[0.5, -0.25], [0.0, 0.25]])
    np.testing.assert_allclose(normalize(u, "minmax"), [[1.0, 0.0], [1 / 3, 2 / 3]], atol=1e-7)
    np.testing.assert_allclose(normalize(u, "clip_minmax"), [[1.0, 0.0], [0.0, 0.5]], atol=1e-7)
    np.testing.assert_allclose(normalize(u, "exp"), np.exp(u), atol=1e-6)
    np.testing.assert_allclose(normalize(u, "none"), u, atol=1e-7)
    # Diagonal left out: statistics from the off-diagonal entries only, diagonal set to 0.
    np.testing.assert_allclose(normalize(u, "minmax", ignore=np.eye(2, dtype=bool)), [[0.0, 0.0], [1.0, 0.0]])


def test_exclude_diagonal(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    result = utility_kernel(model, tokenizer, POOL, config=KernelConfig(max_length=256, exclude_diagonal=True))
    off = ~np.eye(len(POOL), dtype=bool)
    assert np.all(np.diag(result.kernel) == 0)
    assert result.kernel[off].min() == 0.0 and result.kernel[off].max() == 1.0


def test_bad_input(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    with pytest.raises(DataError, match="must not be empty"):
        utility_kernel(model, tokenizer, [], config=CONFIG)
    with pytest.raises(DataError, match="at least 2 examples"):
        utility_kernel(model, tokenizer, POOL[:1], config=CONFIG)
    with pytest.raises(DataError, match="max-pairs"):
        utility_kernel(model, tokenizer, POOL, config=CONFIG, max_pairs=10)
    with pytest.raises(DataError, match="square kernels only"):
        utility_kernel(model, tokenizer, POOL[:2], POOL, KernelConfig(exclude_diagonal=True))
    with pytest.raises(DataError, match="non-finite"):
        normalize(np.array([[np.nan, 1.0]]), "minmax")
    with pytest.raises(DataError, match="distance"):
        KernelConfig(distance="kl")


def test_plan_blocks_cover_pairs_once():
    pairs = plan_pairs(5, 7, None)
    assert pairs.shape == (35, 2) and np.all(np.diff(pairs[:, 1]) >= 0)
    for block_pairs in (1, 4, 5, 6, 100):
        blocks = plan_blocks(pairs, block_pairs)
        covered = np.concatenate([np.arange(s, e) for s, e in blocks])
        np.testing.assert_array_equal(covered, np.arange(35))
        assert all(e - s <= max(block_pairs, 5) for s, e in blocks)


def test_truncation_is_reported_and_matches_torch(tiny_llama):
    """A max_length that cuts the demonstration: the pair is truncated from the left, scored tokens kept."""
    _, torch_model, model, tokenizer = tiny_llama
    targets, candidates = EXAMPLES[3:5], EXAMPLES[2:3]  # a long demonstration, short targets
    # The paper's distance, checked against its formula below.
    result = utility_kernel(model, tokenizer, targets, candidates, KernelConfig(max_length=40, distance="rms"))
    assert result.summary["pairs_truncated_now"] == 2
    eos = tokenizer.eos_token_id
    for i, target in enumerate(targets):
        ctx = tokenizer(DEFAULT_TEMPLATES.context_with_example(target, candidates[0]),
                        add_special_tokens=False)["input_ids"]
        resp = tokenizer(target.response, add_special_tokens=False)["input_ids"]
        ctx = ctx[len(ctx) - (40 - 2 - len(resp)):]
        ids = ctx + [eos] + resp + [eos]
        assert len(ids) == 40
        with torch.no_grad():
            probs = torch.softmax(torch_model(torch.tensor([ids])).logits[0].float(), dim=-1)
        p = torch.stack([probs[t - 1, ids[t]] for t in range(len(ctx) + 1, len(ids))]).double()
        assert abs(result.distance_with_example[i, 0] - float(torch.sqrt(torch.mean((1 - p) ** 2)))) < 1e-5


def test_waiting_process_stops_at_a_failure_report_of_this_run(tmp_path):
    import os
    import time

    from delift_jax.kernel.coordination import wait_for as _wait_for
    from delift_jax.kernel.store import KernelStore

    store = KernelStore(tmp_path)
    store.save_text("failed_process_1.txt", "DataError: 3 non-finite scores in block 7")
    old = time.time() - 3600
    os.utime(tmp_path / "failed_process_1.txt", (old, old))
    with pytest.raises(DataError, match="timed out"):     # a report from an earlier run is ignored
        _wait_for(lambda: False, 0.2, "the blocks of other processes", store, since=time.time() - 60)
    store.save_text("failed_process_1.txt", "DataError: 3 non-finite scores in block 7")
    started = time.monotonic()
    with pytest.raises(DataError, match="process 1: DataError: 3 non-finite scores in block 7"):
        _wait_for(lambda: False, 600, "the blocks of other processes", store, since=time.time() - 60)
    assert time.monotonic() - started < 5


def test_rectangular_sparse_mode_accepts_a_candidate_longer_than_max_length(tiny_llama):
    """A dense run truncates a too-long demonstration from the left; the sparse mode's candidate embeddings must not
    fail on it either, and its utilities equal the dense ones."""
    _, _, model, tokenizer = tiny_llama
    long_candidate = Example("Repeat the list.", " ".join(f"item{i}" for i in range(60)))
    candidates = [long_candidate] + POOL[:3]
    config = KernelConfig(max_length=64, batch_size=3)  # no response cap: the long response cannot fit
    assert len(tokenizer(long_candidate.response, add_special_tokens=False)["input_ids"]) > 64
    dense = utility_kernel(model, tokenizer, POOL[3:], candidates, config=config)
    sparse = utility_kernel(model, tokenizer, POOL[3:], candidates, config=dataclasses.replace(config, top_k=2))
    np.testing.assert_allclose(sparse.utility, np.take_along_axis(dense.utility, sparse.indices, axis=1),
                               atol=1e-6, rtol=0)
