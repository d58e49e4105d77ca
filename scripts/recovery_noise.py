"""The planted-noise case of ``scripts/bench_recovery.py`` (``--case noise``): does a selection avoid low-quality
examples (instruction tuning) and find what is new without taking its broken part (continual)?

Data (``delift_jax.report.planted_noise``): per seed, one draw over ``--sources`` with ``--noise-clean`` clean
examples per source and ``--noise-per-kind`` corrupted examples per source for each kind (swapped, truncated,
repeated, contradictory). One square SmolLM2 kernel over the whole draw (both distances; a resumable store) serves
every pool, since U[i, j] depends only on examples i and j:

* instruction pools: 6 clean examples per source + the 8 examples of one kind (25% low quality), one pool per
  kind, and a ``mixed`` pool (2 of each kind). Metric: share of low-quality examples among the picks at 10% and
  30% (Random ≈ 0.25), per kind and per source of the low-quality example.
* continual (rotation r over the sources: seen source r, new source r + 1): existing data = 8 clean examples of
  the seen source; pool = 8 other clean examples of the seen source + 8 of the new source, 2 of them low quality.
  Metrics: novel share of the picks (Random 0.5) and low-quality share (base 0.125).

Then LoRA on each method's 30% subset of the ``mixed`` pool and the held-out NLL of clean test examples of every
source, paired against Random per seed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from delift_jax.report.planted_noise import NOISE_KINDS, NoisyMixture, noisy_mixture

CACHE = Path("/root/.cache/delift_jax/bench_noise")


def log(message: str) -> None:
    import sys

    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mixture_of(seed: int, args, loader=None) -> NoisyMixture:
    return noisy_mixture(seed, args.sources, clean_per_source=args.noise_clean, per_kind=args.noise_per_kind,
                         test_per_source=args.noise_test, max_prompt_chars=args.max_prompt_chars, loader=loader)


def raw_path(cache: Path, seed: int) -> Path:
    return Path(cache) / f"seed{seed}" / "raw_noise.npz"


def noise_kernel(model, tokenizer, seed: int, args, loader=None, compute: bool = True) -> dict | None:
    """{"U_rms", "U_pmi", "seconds"} of the square kernel over the seed's whole draw (resumable store; the raw
    utilities are kept as ``raw_noise.npz``), or None when it is not there and ``compute`` is off."""
    from delift_jax.kernel import KernelConfig, utility_kernel

    path = raw_path(args.noise_cache, seed)
    if path.is_file():
        return dict(np.load(path, allow_pickle=False))
    if not compute:
        return None
    examples = mixture_of(seed, args, loader).examples
    config = KernelConfig(max_length=args.max_length, max_response_tokens=args.max_response_tokens,
                          block_pairs=args.block_pairs, tokens_per_call=args.tokens_per_call)
    store = path.parent / "pool"
    start = time.perf_counter()
    rms = utility_kernel(model, tokenizer, examples, None, dataclasses.replace(config, distance="rms"),
                         out_dir=store, progress=args.progress)
    seconds = time.perf_counter() - start
    pmi = utility_kernel(model, tokenizer, examples, None, dataclasses.replace(config, distance="pmi"), out_dir=store)
    raw = {"U_rms": np.asarray(rms.utility, np.float64), "U_pmi": np.asarray(pmi.utility, np.float64),
           "seconds": np.float64(seconds)}
    np.savez(path, **raw)
    log(f"seed {seed} noise kernel {raw['U_rms'].shape} in {seconds:.0f} s")
    return raw


def add_arguments(parser) -> None:
    parser.add_argument("--noise-cache", type=Path, default=CACHE, help="planted-noise kernel stores and results")
    parser.add_argument("--noise-clean", type=int, default=16, help="clean examples per source in the draw")
    parser.add_argument("--noise-per-kind", type=int, default=2, help="low-quality examples per source and kind")
    parser.add_argument("--noise-test", type=int, default=8, help="held-out clean test examples per source")


def main(model, tokenizer, args) -> None:
    for seed in args.seeds:
        noise_kernel(model, tokenizer, seed, args)
    if args.only_kernels:
        return
