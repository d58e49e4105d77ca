"""Kernel inputs at the edges: top-k clamping, dense/sparse store mix-ups, estimates of truncated runs."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from delift_jax.data import Example
from delift_jax.kernel import KernelConfig, KernelStoreMismatchError, utility_kernel
from delift_jax.kernel.compute import _plan_message
from delift_jax.kernel.estimate import estimate_run
from delift_jax.kernel.pairs import build_pair_sequences
from delift_jax.kernel.plan import plan_pairs
from delift_jax.sharding import data_mesh, model_mesh
from test_kernel import POOL


def test_top_k_at_or_above_the_pool_is_clamped_with_one_warning(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    with pytest.warns(UserWarning, match="top_k=9 is not below the 6 candidates") as caught:
        result = utility_kernel(model, tokenizer, POOL, config=KernelConfig(max_length=256, top_k=9))
    assert len([w for w in caught if "top_k" in str(w.message)]) == 1
    assert result.indices.shape == (len(POOL), len(POOL))
    with pytest.warns(UserWarning, match="clamped to 5"):
        result = utility_kernel(model, tokenizer, POOL,
                                config=KernelConfig(max_length=256, top_k=6, exclude_diagonal=True))
    assert result.indices.shape == (len(POOL), 5)
    assert not np.any(result.indices == np.arange(len(POOL))[:, None])


def test_top_k_below_one_is_refused():
    with pytest.raises(Exception, match="top_k=0 must be at least 1"):
        KernelConfig(top_k=0)


def test_a_sparse_store_is_not_resumed_as_a_dense_one(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    utility_kernel(model, tokenizer, POOL[:4], config=KernelConfig(max_length=256, top_k=2), out_dir=tmp_path)
    with pytest.raises(KernelStoreMismatchError, match=r"holds a sparse \(top-2\) kernel and this run asks for a "
                                                       "dense one"):
        utility_kernel(model, tokenizer, POOL[:4], config=KernelConfig(max_length=256), out_dir=tmp_path)


def test_estimate_counts_sequences_as_truncated(tiny_llama):
    """Demonstrations far beyond max_length cost what their truncated pairs cost: the estimate stays put."""
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=48, max_response_tokens=8)
    estimates = []
    for words in (60, 2000):
        examples = [Example(f"Repeat {i}.", " ".join(f"w{i}" for _ in range(words))) for i in range(3)]
        seqs = build_pair_sequences(tokenizer, examples, examples, config)
        estimates.append(estimate_run(model, seqs, plan_pairs(3, 3, None), config, data_mesh()))
    assert estimates[0].memory_mb == estimates[1].memory_mb
    assert estimates[0].tokens == estimates[1].tokens
    assert estimates[1].tokens <= (9 + 3 + 3) * config.max_length


def test_estimate_counts_one_unit_per_data_index_on_a_model_mesh(tiny_llama):
    """A call runs one pair unit per index of ``data`` (on (2, 2): 2 units, each split over 2 model devices), so
    the estimated memory is that of 2 units side by side (as a 2-device data mesh), not 4; the time still assumes
    all 4 devices compute."""
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, max_response_tokens=8)
    seqs = build_pair_sequences(tokenizer, POOL[:3], POOL[:3], config)
    pairs = plan_pairs(3, 3, None)
    one, two, four = (estimate_run(model, seqs, pairs, config, data_mesh(jax.devices()[:n])) for n in (1, 2, 4))
    unit_mb = two.memory_mb - one.memory_mb  # one more unit per call
    assert unit_mb > 0 and four.memory_mb == pytest.approx(one.memory_mb + 3 * unit_mb, rel=1e-12)
    on_mesh = estimate_run(model, seqs, pairs, config, model_mesh(2, 2))
    assert on_mesh.memory_mb == pytest.approx(one.memory_mb + unit_mb, rel=1e-12)
    assert (on_mesh.seconds, on_mesh.assumed_tflops, on_mesh.flops) == (four.seconds, four.assumed_tflops, four.flops)
    # The printed plan line carries the 2-unit figure (here ~6 MB; 4 units would print ~9 MB).
    plan = SimpleNamespace(n_blocks=1, block_pairs=len(pairs))
    store = SimpleNamespace(finished_blocks=lambda: set(), directory="store")
    assert f"memory ~{two.memory_mb:,.0f} MB;" in _plan_message(on_mesh, plan, store, 0, 1)
    assert f"{two.memory_mb:,.0f}" != f"{four.memory_mb:,.0f}"


def test_large_dense_runs_get_the_sparse_mode_recommended(tiny_llama, monkeypatch, capsys):
    """Above SPARSE_ADVICE_PAIRS a dense plan names the sparse mode with its projected time (same seconds per pair
    for n·16 pairs); below it, and for sparse runs, nothing is said."""
    from delift_jax.kernel import estimate as estimate_module
    from delift_jax.kernel.estimate import RunEstimate, SPARSE_ADVICE_PAIRS, sparse_advice

    big = RunEstimate(n_pairs=5_000_000, forward_passes=0, tokens=0, flops=0.0, memory_mb=0.0, seconds=360_000.0,
                      assumed_tflops=0.0)
    line = sparse_advice(big, 2_237, None)
    assert "--top-k 16" in line and "35,792 pairs" in line and "~0.7 h" in line and "~100.0 h" in line
    assert sparse_advice(big, 2_237, 8) is None
    assert sparse_advice(RunEstimate(SPARSE_ADVICE_PAIRS, 0, 0, 0.0, 0.0, 1.0, 0.0), 2_000, None) is None

    _, _, model, tokenizer = tiny_llama
    monkeypatch.setattr(estimate_module, "SPARSE_ADVICE_PAIRS", 8)
    utility_kernel(model, tokenizer, POOL[:3], config=KernelConfig(max_length=256), progress=True)
    assert "the sparse mode (--top-k 16) computes 48 pairs" in capsys.readouterr().err
    utility_kernel(model, tokenizer, POOL[:3], config=KernelConfig(max_length=256, top_k=2), progress=True)
    assert "sparse mode (--top-k" not in capsys.readouterr().err
