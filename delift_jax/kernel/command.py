"""``delift kernel``: compute a utility kernel into a crash-safe directory (rerun the same command to resume)."""

from __future__ import annotations

import argparse
import sys
import warnings

from delift_jax.kernel.config import DISTANCES, NORMALIZATIONS, UTILITIES, KernelConfig
from delift_jax.data.sources import add_data_arguments
from delift_jax.host_devices import add_host_devices_argument
from delift_jax.models.loading import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="HF model directory, .gguf file, or 'smollm2' (built in; default)")
    parser.add_argument("--data", required=True,
                        help="the pool: built-in dataset name (ifbench) or a JSON/JSONL file; its examples are "
                             "the kernel's rows (targets) and, without --targets, also its columns")
    parser.add_argument("--targets", default=None,
                        help="a second set (name or file) whose examples become the rows; the pool (--data) then "
                             "gives the columns (candidates): U[target, pool example]")
    parser.add_argument("--limit", type=int, default=None, help="use the first N examples of each set")
    parser.add_argument("--out", required=True, help="kernel directory (created; resumed if it exists)")
    parser.add_argument("--distance", choices=DISTANCES, default=None,
                        help=f"rms (the paper's) or pmi (default {KernelConfig.distance})")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="minmax",
                        help="global normalization of U (default minmax, the authors')")
    parser.add_argument("--exclude-diagonal", action="store_true",
                        help="square kernels: leave U[i, i] out of the normalization and the objective")
    parser.add_argument("--max-length", type=int, default=2048, help="longest sequence in tokens (default 2048)")
    parser.add_argument("--max-response-tokens", type=int, default=None,
                        help="score only the first N response tokens (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="continuations per candidate per call (default 8)")
    parser.add_argument("--block-pairs", type=int, default=None,
                        help="pairs per stored block, the unit of crash-safe progress (default: chosen from the "
                             "plan for about a minute of work each, then fixed for the store)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sparse mode: utilities only for each target's K most similar candidates")
    parser.add_argument("--neighbours", choices=("model", "encoder"), default="model",
                        help="sparse mode's similarity: the scoring model's mean-pooled states (default) or the "
                             "built-in sentence encoder")
    parser.add_argument("--utility", choices=UTILITIES, default="exact",
                        help="exact (default: every pair computed) or surrogate (exact pairs on a fixed sample, a "
                             "small network predicts the rest; dense or with --top-k)")
    parser.add_argument("--surrogate-pairs", type=int, default=None, metavar="N",
                        help="--utility surrogate: exact pairs in the sample (default 2,000)")
    parser.add_argument("--surrogate-seed", type=int, default=None, metavar="S",
                        help="--utility surrogate: seed of the sample and the network (default 0)")
    parser.add_argument("--max-pairs", type=int, default=1_000_000,
                        help="refuse to start a plan with more pairs than this (default 1,000,000)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (softmax and log-probs stay float32)")
    parser.add_argument("--coordinator", default=None,
                        help="multi-host: coordinator HOST:PORT for jax.distributed (with --num-processes, "
                             "--process-id); every process writes its share of blocks into the same --out")
    parser.add_argument("--mesh", default=None, metavar="data=D,model=M",
                        help="device mesh of this process's devices (D*M of them): the pair engine splits the "
                             "parameters over 'model' (tensor parallel) and 'data' (FSDP) and runs pairs over "
                             "'data' (default: data parallel over every device, parameters replicated)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    add_host_devices_argument(parser)
    add_data_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from delift_jax.data.sources import data_options, load_examples
    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.models import load_model
    from delift_jax.sharding import mesh_option

    if args.coordinator:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    mesh = mesh_option(args.mesh) if args.mesh else None  # a bad spec fails before anything is loaded
    distance = {} if args.distance is None else {"distance": args.distance}  # None: KernelConfig's default
    config = KernelConfig(**distance, normalization=args.normalization,
                          exclude_diagonal=args.exclude_diagonal, max_length=args.max_length,
                          max_response_tokens=args.max_response_tokens, batch_size=args.batch_size,
                          block_pairs=args.block_pairs, top_k=args.top_k, neighbours=args.neighbours,
                          **surrogate_options(args))
    pool = load_examples(args.data, limit=args.limit, **data_options(args))
    targets = load_examples(args.targets, limit=args.limit, **data_options(args)) if args.targets else pool
    candidates = pool if args.targets else None
    model, tokenizer, _ = load_model(args.model, dtype=getattr(jnp, args.dtype))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            result = utility_kernel(model, tokenizer, targets, candidates, config, out_dir=args.out, mesh=mesh,
                                    max_pairs=args.max_pairs, progress=True)
    except KeyboardInterrupt:  # the progress bar is closed by now, so this line stands on its own
        print(f"interrupted: finished blocks are saved in {args.out}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if result is None:
        print(f"process {jax.process_index()}: my blocks are done; process 0 assembles {args.out}")
        return 0
    shape = result.kernel.shape
    layout = f"sparse top-{shape[1]}" if result.indices is not None else "dense"
    summary = result.summary
    if result.exact is not None:
        scores = summary["surrogate"]
        layout += (f", surrogate: {scores['exact_entries']:,} of {scores['entries']:,} entries exact, held-out "
                   f"R2 {scores.get('held_out_r2', float('nan')):.3f}, Spearman "
                   f"{scores.get('held_out_spearman', float('nan')):.3f}")
    print(f"kernel {shape[0]} x {result.n_candidates} ({layout}) written to {args.out}: U in "
          f"[{summary['utility_min']:.4f}, {summary['utility_max']:.4f}], {summary['pairs_computed_now']} pairs "
          f"computed now in {summary['seconds_computing_pairs']:.1f} s")
    return 0


def surrogate_options(args: argparse.Namespace) -> dict:
    """KernelConfig's surrogate fields from ``--utility``/``--surrogate-pairs``/``--surrogate-seed``; either of the
    last two without ``--utility surrogate`` is a one-line error (checked before anything loads)."""
    from delift_jax.errors import UsageError

    if args.utility != "surrogate":
        for flag in ("surrogate_pairs", "surrogate_seed"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --utility surrogate only; add --utility "
                                 "surrogate")
        return {}
    seed = {} if args.surrogate_seed is None else {"surrogate_seed": args.surrogate_seed}
    return {"utility": "surrogate", "surrogate_pairs": args.surrogate_pairs, **seed}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
