"""Up-front cost estimates for a kernel run: forward passes, tokens, memory, time; and FLOP accounting."""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from delift_jax.sharding import data_size

# Fraction of the measured matmul peak a transformer forward reaches on CPUs (measured here: ~0.2-0.4).
ASSUMED_EFFICIENCY = 0.3


@dataclasses.dataclass(frozen=True)
class RunEstimate:
    n_pairs: int
    forward_passes: int
    tokens: int
    flops: float
    memory_mb: float
    seconds: float
    assumed_tflops: float


def forward_flops(config, n_tokens: int, n_scored: int, context: int = 0) -> float:
    """Matmul FLOPs of a forward over ``n_tokens`` tokens attending to ``context`` earlier ones on average, with
    vocabulary logits at ``n_scored`` positions only."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    per_token_layer = 2 * d * hd * (2 * config.num_heads + 2 * config.num_kv_heads) + 6 * d * f
    attention = 4 * config.num_heads * hd * context
    return float(n_tokens * config.num_layers * (per_token_layer + attention) + 2 * d * config.vocab_size * n_scored)


@functools.lru_cache(maxsize=4)
def measured_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    """Peak float32 FLOP/s of a large ``jnp.dot`` on the default device (best of ``repeats``)."""
    a = jnp.ones((size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def _capped_lengths(seqs, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prefix, continuation and scored lengths as the scorer runs them: nothing longer than ``max_length`` (a pair
    that does not fit is truncated from the left to ``max_length`` tokens)."""
    prefix_lens = np.minimum([len(p) for p in seqs.prefixes], max_length).astype(np.int64)
    cont_lens = np.minimum([len(c) for c in seqs.continuations], max_length).astype(np.int64)
    scored = np.minimum([c.n_scored for c in seqs.continuations], max_length).astype(np.int64)
    return prefix_lens.reshape(-1), cont_lens.reshape(-1), scored.reshape(-1)


def effective_flops(mesh) -> float:
    """FLOP/s assumed for a transformer forward on the mesh's devices."""
    return measured_matmul_flops() * mesh.size * ASSUMED_EFFICIENCY


def seconds_per_pair(model, seqs, config, mesh) -> float:
    """Estimated seconds of one (target, candidate) pair, averaged over the targets (each target occurs equally
    often in a dense or a top-k plan), with lengths capped at ``max_length``."""
    prefix_lens, cont_lens, scored = _capped_lengths(seqs, config.max_length)
    if len(cont_lens) == 0:
        return 0.0
    context = int(prefix_lens.mean()) if len(prefix_lens) else 0
    flops = forward_flops(model.config, int(cont_lens.sum()), int(scored.sum()), context=context) / len(cont_lens)
    return flops / effective_flops(mesh)


def demonstration_bytes(model, seqs, config) -> int:
    """Host bytes of one candidate's demonstration keys and values (float32, the longest capped prefix)."""
    cfg = model.config
    prefix_lens, _, _ = _capped_lengths(seqs, config.max_length)
    p_max = int(prefix_lens.max()) if len(prefix_lens) else 1
    return int(cfg.num_layers * 2 * p_max * cfg.num_kv_heads * cfg.head_dim * 4)


def estimate_run(model, seqs, pairs: np.ndarray, config, mesh) -> RunEstimate:
    """Forward passes, tokens, FLOPs, peak memory and time of scoring ``pairs``, with every sequence capped at
    ``max_length`` as the scorer truncates it. A call runs one unit per index of the mesh's ``"data"`` axis (its
    size; every device on a 1-D data mesh): memory counts that many units' activations and demonstrations, while
    time assumes every device computes (a unit is split over its ``"model"`` devices)."""
    cfg = model.config
    prefix_lens, cont_lens, scored = _capped_lengths(seqs, config.max_length)
    no_example = int(sum(len(s) for s in seqs.no_example))  # already truncated to max_length
    candidates = np.unique(pairs[:, 1])
    pair_tokens = int(cont_lens[pairs[:, 0]].sum())
    prefix_tokens = int(prefix_lens[candidates].sum())
    flops = (forward_flops(cfg, pair_tokens, int(scored[pairs[:, 0]].sum()),
                           context=int(prefix_lens.mean()) if len(prefix_lens) else 0)
             + forward_flops(cfg, prefix_tokens, 0)
             + forward_flops(cfg, no_example, int(scored.sum())))
    param_bytes = cfg.param_count() * jnp.dtype(model.dtype).itemsize
    group = data_size(mesh)  # units one call runs side by side: one per "data" index (a unit spans its model devices)
    t_max = int(cont_lens.max()) if len(cont_lens) else 1
    p_max = int(prefix_lens.max()) if len(prefix_lens) else 1
    attended = min(t_max + p_max, config.max_length)
    activations = group * config.batch_size * t_max * (cfg.hidden_size * 8 + cfg.intermediate_size * 3) * 4
    kv = group * demonstration_bytes(model, seqs, config)
    logits = config.logits_chunk * cfg.vocab_size * 4 * 2
    attention = group * config.batch_size * cfg.num_heads * t_max * attended * 4
    rate = effective_flops(mesh)
    return RunEstimate(n_pairs=int(len(pairs)), forward_passes=int(len(pairs) + len(candidates) + len(seqs.no_example)),
                       tokens=pair_tokens + prefix_tokens + no_example, flops=flops,
                       memory_mb=(param_bytes + activations + kv + logits + attention) / 2**20,
                       seconds=flops / rate, assumed_tflops=rate / 1e12)


# Dense kernels above this many pairs (2,000 x 2,000) get the sparse mode recommended in their plan message: n² pairs
# are then days on a CPU and hours on an accelerator, while n·k pairs at k = 16 kept 0.97 of the dense FL objective
# (scripts/bench_sparse.py, docs/benchmarks.md).
SPARSE_ADVICE_PAIRS = 4_000_000
SPARSE_ADVICE_K = 16


def sparse_advice(estimate: RunEstimate, n_targets: int, top_k: int | None) -> str | None:
    """One line recommending the sparse mode for a dense run of more than ``SPARSE_ADVICE_PAIRS`` pairs, with its
    projected time (the same seconds per pair for ``n_targets * SPARSE_ADVICE_K`` pairs); None otherwise."""
    if top_k is not None or estimate.n_pairs <= SPARSE_ADVICE_PAIRS:
        return None
    sparse_pairs = n_targets * SPARSE_ADVICE_K
    sparse_hours = estimate.seconds * sparse_pairs / estimate.n_pairs / 3600
    return (f"a dense kernel of {estimate.n_pairs:,} pairs (~{estimate.seconds / 3600:,.1f} h estimated): the sparse "
            f"mode (--top-k {SPARSE_ADVICE_K}) computes {sparse_pairs:,} pairs (~{sparse_hours:,.1f} h plus the "
            f"neighbour search) and kept about 0.97 of the dense facility-location objective in "
            f"scripts/bench_sparse.py; dense is what you asked for, so it runs")


# A block is the unit of crash-safe progress: about this much work, so a crash loses at most about a minute.
BLOCK_TARGET_SECONDS = 60.0
MAX_BLOCK_PAIRS = 1 << 16
DEMONSTRATION_MEMORY_BYTES = 1 << 30  # host memory for the demonstrations one block keeps


def choose_block_pairs(pair_seconds: float, pairs_per_candidate: float, demonstration_nbytes: int) -> int:
    """Pairs per block: a power of two near ``BLOCK_TARGET_SECONDS`` of work, at most ``MAX_BLOCK_PAIRS``, and
    small enough that the demonstrations of a block's candidates fit ``DEMONSTRATION_MEMORY_BYTES``."""
    by_time = BLOCK_TARGET_SECONDS / pair_seconds if pair_seconds > 0 else MAX_BLOCK_PAIRS
    by_memory = max(1.0, DEMONSTRATION_MEMORY_BYTES / max(demonstration_nbytes, 1)) * max(pairs_per_candidate, 1.0)
    wanted = max(1.0, min(by_time, by_memory, MAX_BLOCK_PAIRS))
    return 1 << int(np.floor(np.log2(wanted)))
