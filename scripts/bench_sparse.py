"""How much of the dense facility-location objective does the sparse top-k kernel's selection reach?

Computes the dense square kernel of the ``--examples`` shortest examples of a built-in dataset (``--data``,
default ifbench) with the default model (resumable store
under ``--out``), then, for each k in ``--top-k``, the sparse kernel the sparse mode would build (each target's k
most similar candidates by mean-pooled hidden states of the same model, utilities at those pairs — identical to
the dense entries, as tests/test_kernel.py checks — min-max normalized over the stored entries). Both are
maximized with the lazy greedy at ``--budget``; the sparse selection is scored on the dense kernel. As a control,
the same is done with k candidates drawn at random per target (mean over ``--random-draws`` draws): the gap
between the two columns is what the embedding neighbourhoods are worth.

The dense kernel needs examples² forward passes: on 2 CPU cores the 200 shortest TruthfulQA pairs run at
≈16 pairs/s (43 min for 200²), ifbench's at ≈3.6 (about 3 hours); the store resumes after an interruption.
Last line: one JSON object with the fraction for each k and the random-k control.

``--distance`` (default: the package default, pmi) picks the kernel's distance; the README figures were measured
with ``--distance rms`` (the default then). Both are in the store, so switching only reassembles it.

    python scripts/bench_sparse.py --data truthfulqa --examples 200 --top-k 8 16 32 --out runs/bench_sparse
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ifbench", help="built-in dataset (default ifbench)")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--top-k", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--max-response-tokens", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--random-draws", type=int, default=5, help="draws of the random-k control (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-k control")
    parser.add_argument("--distance", choices=("rms", "pmi"), default=None,
                        help="kernel distance (default: the package default, pmi; README figures: rms)")
    parser.add_argument("--out", default="runs/bench_sparse")
    args = parser.parse_args()

    from delift_jax.data import load_builtin
    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.kernel.embeddings import mean_pooled_embeddings, top_k_pairs
    from delift_jax.kernel.normalize import normalize
    from delift_jax.kernel.pairs import build_pair_sequences
    from delift_jax.models import load_model
    from delift_jax.select import SparseKernel, evaluate, facility_location, maximize

    pool = sorted(load_builtin(args.data), key=lambda e: (len(e.prompt) + len(e.response), e.prompt))
    pool = pool[:args.examples]
    model, tokenizer, _ = load_model()
    config = KernelConfig(max_length=args.max_length, max_response_tokens=args.max_response_tokens, batch_size=16,
                          **({"distance": args.distance} if args.distance else {}))
    start = time.perf_counter()
    dense = utility_kernel(model, tokenizer, pool, config=config, out_dir=args.out, progress=True)
    dense_seconds = time.perf_counter() - start

    dense_objective = facility_location(dense.kernel)
    dense_pick = maximize(dense_objective, args.budget, optimizer="lazy")
    dense_value = float(evaluate(dense_objective, np.asarray(dense_pick.picks)))

    seqs = build_pair_sequences(tokenizer, pool, pool, config)
    embeddings = mean_pooled_embeddings(model, seqs.no_example, max_length=config.max_length)
    fractions, random_fractions = {}, {}
    rng = np.random.default_rng(args.seed)

    def fraction_reached(indices):
        utility = np.take_along_axis(dense.utility, indices, axis=1)
        sparse = SparseKernel(indices, normalize(utility, "minmax"), len(pool))
        picks = np.asarray(maximize(facility_location(sparse), args.budget, optimizer="lazy").picks)
        return float(evaluate(dense_objective, picks)) / dense_value

    print(f"dense kernel {len(pool)}x{len(pool)} ({dense_seconds:.0f} s this run); FL at {args.budget:.0%}: "
          f"{dense_value:.3f}")
    print(f"{'k':>4}  {'entries':>8}  {'f_dense(A_sparse) / f_dense(A_dense)':>38}  {'random k (control)':>18}")
    for k in args.top_k:
        fractions[k] = fraction_reached(top_k_pairs(embeddings, embeddings, k))
        random_fractions[k] = float(np.mean([
            fraction_reached(np.stack([rng.choice(len(pool), size=k, replace=False) for _ in pool]))
            for _ in range(args.random_draws)]))
        print(f"{k:>4}  {len(pool) * k:>8}  {fractions[k]:>38.4f}  {random_fractions[k]:>18.4f}")
    print(json.dumps({"data": args.data, "examples": len(pool), "budget": args.budget,
                      "dense_kernel_seconds": round(dense_seconds, 1),
                      "fraction_of_dense_objective": {str(k): round(v, 4) for k, v in fractions.items()},
                      "random_k_control": {str(k): round(v, 4) for k, v in random_fractions.items()}}))


if __name__ == "__main__":
    main()
