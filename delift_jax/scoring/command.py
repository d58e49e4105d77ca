"""``delift score``: teacher-forced distances of each example's response with no in-context example."""

from __future__ import annotations

import argparse

from delift_jax.data.sources import add_data_arguments
from delift_jax.models.loading import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="HF model directory, .gguf file, or 'smollm2' (built in; default)")
    parser.add_argument("--data", default="ifbench",
                        help="built-in dataset name or a JSONL file of prompt/response or Alpaca records "
                             "(default: ifbench)")
    parser.add_argument("--limit", type=int, default=16, help="score the first N examples (default 16)")
    parser.add_argument("--max-length", type=int, default=1024, help="longest sequence in tokens (default 1024)")
    parser.add_argument("--max-response-tokens", type=int, default=None,
                        help="score only the first N response tokens (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (softmax and log-probs stay float32)")
    add_data_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    import numpy as np

    from delift_jax.data.sources import data_options, load_examples
    from delift_jax.errors import NonFiniteError
    from delift_jax.models import load_model
    from delift_jax.scoring import ScoringConfig, score_examples  # the package's: tests patch it there

    # Count options (--limit, --batch-size, ...) are checked by the CLI before this runs (cli_checks).
    config = ScoringConfig(max_length=args.max_length, max_response_tokens=args.max_response_tokens,
                           batch_size=args.batch_size)
    examples = load_examples(args.data, limit=args.limit, **data_options(args))
    model, tokenizer, _ = load_model(args.model, dtype=getattr(jnp, args.dtype))
    table = score_examples(model, tokenizer, examples, config, progress=True)
    bad = np.flatnonzero(~(np.isfinite(table.rms) & np.isfinite(table.mean_logp)))
    if bad.size:
        raise NonFiniteError(f"example {int(bad[0])} (and {bad.size - 1} more) scored NaN/inf: the model produced "
                             "non-finite probabilities (damaged weights, or an overflow in --dtype bfloat16)")

    print(f"{'#':>4}  {'scored':>6}  {'d_rms':>8}  {'mean_logp':>9}  prompt")
    for i, example in enumerate(examples):
        prompt = " ".join(example.prompt.split())[:60]
        print(f"{i:>4}  {table.n_scored[i]:>6}  {table.rms[i]:>8.4f}  {table.mean_logp[i]:>9.4f}  {prompt}")
    print(f"{len(examples)} examples, {table.n_tokens} tokens in {table.seconds:.1f} s "
          f"({table.n_tokens / table.seconds:.0f} tok/s incl. compilation); "
          f"{table.n_truncated} had context truncated to fit --max-length")
    return 0
