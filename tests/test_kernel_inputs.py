"""Kernel inputs at the edges: top-k clamping, dense/sparse store mix-ups, estimates of truncated runs."""

import numpy as np
import pytest

from delift_jax.data import Example
from delift_jax.kernel import KernelConfig, KernelStoreMismatchError, utility_kernel
from delift_jax.kernel.estimate import estimate_run
from delift_jax.kernel.pairs import build_pair_sequences
from delift_jax.kernel.plan import plan_pairs
from delift_jax.sharding import data_mesh
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
