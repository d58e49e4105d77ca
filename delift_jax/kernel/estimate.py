"""Up-front cost estimates for a kernel run: forward passes, tokens, memory, time; and FLOP accounting."""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

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


def estimate_run(model, seqs, pairs: np.ndarray, config, mesh) -> RunEstimate:
    cfg = model.config
    prefix_lens = np.array([len(p) for p in seqs.prefixes])
    cont_lens = np.array([len(c) for c in seqs.continuations])
    scored = np.array([c.n_scored for c in seqs.continuations])
    candidates = np.unique(pairs[:, 1])
    tokens = int(cont_lens[pairs[:, 0]].sum() + prefix_lens[candidates].sum() + sum(len(s) for s in seqs.no_example))
    flops = (forward_flops(cfg, int(cont_lens[pairs[:, 0]].sum()), int(scored[pairs[:, 0]].sum()),
                           context=int(prefix_lens.mean()))
             + forward_flops(cfg, int(prefix_lens[candidates].sum()), 0)
             + forward_flops(cfg, sum(len(s) for s in seqs.no_example), int(scored.sum())))
    param_bytes = cfg.param_count() * jnp.dtype(model.dtype).itemsize
    group = mesh.size * config.candidates_per_device
    t_max = int(cont_lens.max()) if len(cont_lens) else 1
    p_max = int(prefix_lens.max()) if len(prefix_lens) else 1
    activations = group * config.batch_size * t_max * (cfg.hidden_size * 8 + cfg.intermediate_size * 3) * 4
    kv = group * cfg.num_layers * 2 * p_max * cfg.num_kv_heads * cfg.head_dim * 4
    logits = config.logits_chunk * cfg.vocab_size * 4 * 2
    attention = group * config.batch_size * cfg.num_heads * t_max * (t_max + p_max) * 4
    peak = measured_matmul_flops() * mesh.size
    return RunEstimate(n_pairs=int(len(pairs)), forward_passes=int(len(pairs) + len(candidates) + len(seqs.no_example)),
                       tokens=tokens, flops=flops, memory_mb=(param_bytes + activations + kv + logits + attention) / 2**20,
                       seconds=flops / (peak * ASSUMED_EFFICIENCY), assumed_tflops=peak * ASSUMED_EFFICIENCY / 1e12)
