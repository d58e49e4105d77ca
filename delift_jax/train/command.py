"""``delift finetune``: fine-tune a model (LoRA or full) on a dataset or a selected subset of it.

Writes to ``--out``: ``run.json`` and ``checkpoints/`` (resumable: run the same command again after an
interruption), ``results.json`` (the loss curve and throughput), and, unless ``--no-export``, ``model/``: the
merged model as a Hugging Face directory. The results JSON is also printed as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from delift_jax.models.loading import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF model directory, .gguf file or 'smollm2' (default)")
    parser.add_argument("--data", default="ifbench", help="built-in dataset name or JSON/JSONL file (default ifbench)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N examples of --data")
    parser.add_argument("--indices", default=None,
                        help="a .npy/.json/.txt file of example indices (e.g. the output of 'delift select')")
    parser.add_argument("--out", required=True, help="run directory: checkpoints, results.json, model/")
    parser.add_argument("--method", choices=("lora", "full"), default="lora", help="default: lora")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                        help="comma-separated projections to adapt (default: all attention and MLP projections)")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping (0: off)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch (default 8)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pad-to-max-length", action="store_true",
                        help="pad every batch to --max-length (one compiled shape; good on accelerators)")
    parser.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    parser.add_argument("--keep", type=int, default=2, help="checkpoints to keep (default 2)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--no-export", action="store_true", help="do not write the merged model to OUT/model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--save-params", default=None, help=argparse.SUPPRESS)  # tests: trainable params as .npz
    parser.add_argument("--sleep-per-step", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow a run


def select_examples(examples: list, indices_path: str | None) -> list:
    """``examples`` restricted to the indices in ``indices_path`` (order kept as given, duplicates refused)."""
    from delift_jax.errors import DataError

    if indices_path is None:
        return examples
    import numpy as np

    path = Path(indices_path).expanduser()
    if not path.is_file():
        raise DataError(f"indices file {path} does not exist")
    try:
        if path.suffix == ".npy":
            indices = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
            indices = np.asarray(raw["indices"] if isinstance(raw, dict) else raw)
        else:
            indices = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read indices from {path} ({exc})") from None
    indices = np.asarray(indices).reshape(-1)
    if indices.size == 0:
        raise DataError(f"{path} selects no examples (the budget selected nothing); nothing to fine-tune on")
    if not np.issubdtype(indices.dtype, np.integer):
        raise DataError(f"{path} must hold integer example indices, not {indices.dtype}")
    bad = indices[(indices < 0) | (indices >= len(examples))]
    if bad.size:
        raise DataError(f"{path} has index {int(bad[0])} outside the {len(examples)} examples of the data")
    if len(set(indices.tolist())) != indices.size:
        raise DataError(f"{path} repeats example indices")
    return [examples[int(i)] for i in indices]


def config_from_args(args: argparse.Namespace):
    from delift_jax.train.config import TrainConfig
    from delift_jax.train.lora import LoRAConfig

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return TrainConfig(method=args.method, lora=LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout, targets),
                       learning_rate=args.lr, schedule=args.schedule, warmup_steps=args.warmup_steps,
                       weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm or None, epochs=args.epochs,
                       max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       max_length=args.max_length, seed=args.seed, pad_to_max_length=args.pad_to_max_length, save_every=args.save_every,
                       keep_checkpoints=args.keep)


def run(args: argparse.Namespace) -> int:
    import time

    import jax.numpy as jnp
    import numpy as np

    from delift_jax.data.sources import load_examples
    from delift_jax.models import load_model
    from delift_jax.train.export import export_hf
    from delift_jax.train.loop import finetune

    config = config_from_args(args)
    examples = select_examples(load_examples(args.data, limit=args.limit), args.indices)
    model, tokenizer, _ = load_model(args.model, dtype=getattr(jnp, args.dtype))
    out = Path(args.out).expanduser()
    on_step = (lambda step, metrics: time.sleep(args.sleep_per_step)) if args.sleep_per_step > 0 else None
    result = finetune(model, tokenizer, examples, config, out, progress=not args.no_progress, on_step=on_step)

    summary = {"model": str(args.model), "data": str(args.data), "indices": args.indices, "out": str(out),
               **result.summary(), "config": config.to_dict()}
    if not args.no_export:
        summary["export"] = str(export_hf(result.model, tokenizer, out / "model"))
    if args.save_params:
        from delift_jax.train.step import split_model
        from flax import nnx

        _, params, _ = split_model(result.model, nnx.LoRAParam if config.method == "lora" else nnx.Param)
        np.savez(args.save_params, **{k: np.asarray(v) for k, v in params.items()})
    text = json.dumps(summary)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m delift_jax.train.command ...`` (same as ``delift finetune ...``)."""
    from delift_jax.errors import DeliftError

    parser = argparse.ArgumentParser(prog="delift finetune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DeliftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
