"""``delift demo``: the main job on the built-in model and data, small enough for a laptop CPU.

Scores real ifbench examples with SmolLM2-135M-Instruct (table of per-example distances), computes the DELIFT
utility kernel of the pool against itself, and selects a subset by facility location.
"""

from __future__ import annotations

import argparse
import time

from delift_jax.models.loading import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model (default: built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--data", default="ifbench", help="pool (default: built-in ifbench examples)")
    parser.add_argument("--examples", type=int, default=12,
                        help="pool size: the N shortest examples of --data (default 12)")
    parser.add_argument("--max-response-tokens", type=int, default=32,
                        help="scored response tokens per example (default 32, to fit 2 CPU cores)")
    parser.add_argument("--budget", type=float, default=0.3, help="fraction of the pool to select (default 0.3)")
    parser.add_argument("--out", default="runs/demo", help="kernel directory (resumable; default runs/demo)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from delift_jax.data.sources import load_examples
    from delift_jax.errors import DataError
    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.models import load_model
    from delift_jax.scoring import ScoringConfig, score_examples
    from delift_jax.select import facility_location, maximize

    if args.examples < 2:
        raise DataError(f"--examples {args.examples} must be at least 2")
    pool = sorted(load_examples(args.data), key=lambda e: (len(e.prompt) + len(e.response), e.prompt))
    pool = pool[:args.examples]
    started = time.perf_counter()
    model, tokenizer, config = load_model(args.model)
    print(f"model: {args.model} ({config.num_layers} layers, d={config.hidden_size}, vocab {config.vocab_size}); "
          f"pool: {len(pool)} shortest examples of {args.data}")

    table = score_examples(model, tokenizer, pool, ScoringConfig(max_length=1024,
                                                                 max_response_tokens=args.max_response_tokens))
    print(f"\n1. Teacher-forced distances without an in-context example ({args.max_response_tokens} scored tokens)")
    print(f"{'#':>3}  {'d_rms':>7}  {'mean_logp':>9}  prompt")
    for i, example in enumerate(pool):
        print(f"{i:>3}  {table.rms[i]:>7.4f}  {table.mean_logp[i]:>9.4f}  {' '.join(example.prompt.split())[:64]}")

    kernel_config = KernelConfig(max_length=1024, max_response_tokens=args.max_response_tokens, batch_size=16)
    result = utility_kernel(model, tokenizer, pool, config=kernel_config, out_dir=args.out, progress=True)
    utility = result.utility
    off_diagonal = utility[~np.eye(len(pool), dtype=bool)]
    print(f"\n2. Utility kernel U[i, j] = d(i | none) - d(i | example j): {len(pool)}x{len(pool)} in {args.out}")
    print(f"   diagonal mean {np.mean(np.diag(utility)):+.4f}; off-diagonal in [{off_diagonal.min():+.4f}, "
          f"{off_diagonal.max():+.4f}], mean {off_diagonal.mean():+.4f}")

    selection = maximize(facility_location(result.kernel), args.budget, optimizer="lazy")
    picks = np.asarray(selection.picks)[:int(selection.n_selected)]
    gains = np.asarray(selection.gains)[:len(picks)]
    print(f"\n3. Facility-location selection, budget {args.budget:.0%}: {len(picks)} of {len(pool)} examples")
    print(f"{'order':>5}  {'#':>3}  {'gain':>7}  prompt")
    for order, (pick, gain) in enumerate(zip(picks, gains)):
        print(f"{order:>5}  {pick:>3}  {gain:>7.3f}  {' '.join(pool[pick].prompt.split())[:64]}")
    print(f"\nobjective f(A) = {float(gains.sum()):.3f} of f(V) = "
          f"{float(np.asarray(result.kernel).max(axis=1).sum()):.3f}; total {time.perf_counter() - started:.0f} s")
    return 0
