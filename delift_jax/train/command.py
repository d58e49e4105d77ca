"""``delift finetune``: fine-tune a model (LoRA or full) on a dataset or a selected subset of it.

Writes to ``--out``: ``run.json`` and ``checkpoints/`` (resumable: run the same command again after an
interruption), ``results.json`` (the loss curve and throughput), and, unless ``--no-export``, ``model/``: the
merged model as a Hugging Face directory. The results JSON is also printed as the last line.

``--indices`` index into the examples of ``--data`` *as loaded*: after ``--limit`` and the data options
(``--dedupe``, ``--drop-empty``, ``--format`` / field mapping). Give the same ``--data``, ``--limit`` and data
options as the ``delift kernel`` run the selection was made on, or the indices pick other examples. A
``delift select`` output (``picks.npy`` beside its ``summary.json``) is checked: its candidate count must equal the
number of loaded examples and, when its square kernel directory is found, the examples must hash to the kernel's
``data_sha256``. ``results.json`` records ``data_sha256`` (all loaded examples, comparable with that manifest field)
and ``examples_sha256`` (the examples trained on, in order).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.atomic_io import atomic_save_json, atomic_save_npz, remove_staging_leftovers
from delift_jax.data.sources import add_data_arguments, data_options, data_options_summary, load_examples
from delift_jax.errors import DataError
from delift_jax.models import load_model
from delift_jax.models.loading import DEFAULT_MODEL
from delift_jax.progress import show_progress
from delift_jax.select.provenance import check_selection_data, examples_sha256
from delift_jax.train.config import TrainConfig
from delift_jax.train.export import export_hf
from delift_jax.train.lora import LoRAConfig
from delift_jax.train.loop import finetune
from delift_jax.train.step import split_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF model directory, .gguf file or 'smollm2' (default)")
    parser.add_argument("--data", default="ifbench", help="built-in dataset name or JSON/JSONL file (default ifbench)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use the first N examples of --data (after --dedupe / --drop-empty)")
    parser.add_argument("--indices", default=None,
                        help="a .npy/.json/.txt file of example indices (e.g. picks.npy of 'delift select', or "
                             "that command's output directory) into "
                             "--data as loaded: give the same --limit, --dedupe, --drop-empty and field options as "
                             "'delift kernel' (a select output is checked against its kernel)")
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
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a bar when stderr is a terminal)")
    parser.add_argument("--save-params", default=None, help=argparse.SUPPRESS)  # tests: trainable params as .npz
    parser.add_argument("--sleep-per-step", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow a run
    add_data_arguments(parser)


def select_examples(examples: list, indices_path: str | None) -> list:
    """``examples`` restricted to the indices in ``indices_path`` (order kept as given, duplicates refused)."""
    if indices_path is None:
        return examples
    path = Path(indices_path).expanduser()
    if path.is_dir():  # a `delift select` output directory stands for its picks.npy (as check_selection_data reads it)
        if not (path / "picks.npy").is_file():
            raise DataError(f"--indices {path} is a directory without picks.npy; pass a .npy/.json/.txt file of "
                            "indices or the output directory of 'delift select'")
        path = path / "picks.npy"
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return TrainConfig(method=args.method, lora=LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout, targets),
                       learning_rate=args.lr, schedule=args.schedule, warmup_steps=args.warmup_steps,
                       weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm or None, epochs=args.epochs,
                       max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       max_length=args.max_length, seed=args.seed, pad_to_max_length=args.pad_to_max_length,
                       save_every=args.save_every, keep_checkpoints=args.keep)


def resume_hint(out: Path) -> str:
    """Where an interrupted run stands: the newest checkpoint step under ``out/checkpoints``, if any."""
    directory = out / "checkpoints"
    steps = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()) \
        if directory.is_dir() else []
    if not steps:
        return f"no checkpoint was written yet in {directory} (one is written every --save-every steps)"
    return f"the newest checkpoint (step {steps[-1]}) is kept in {directory}"


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    options = data_options(args)
    loaded = load_examples(args.data, limit=args.limit, **options)
    selection_check = check_selection_data(args.indices, loaded)
    examples = select_examples(loaded, args.indices)
    model, tokenizer, _ = load_model(args.model, dtype=getattr(jnp, args.dtype))
    out = Path(args.out).expanduser()
    remove_staging_leftovers(out / "model")  # a partial export of a crashed run (hundreds of MB)
    on_step = (lambda step, metrics: time.sleep(args.sleep_per_step)) if args.sleep_per_step > 0 else None
    try:
        result = finetune(model, tokenizer, examples, config, out,
                          progress=show_progress(False if args.no_progress else None), on_step=on_step)
    except KeyboardInterrupt:
        print(f"interrupted: {resume_hint(out)}; rerun the same command to resume", file=sys.stderr)
        return 130

    summary = {"model": str(args.model), "data": str(args.data), "limit": args.limit,
               "data_options": data_options_summary(options), "data_sha256": examples_sha256(loaded),
               "indices": args.indices, "selection_check": selection_check,
               "examples_sha256": examples_sha256(examples),
               "out": str(out), **result.summary(), "config": config.to_dict()}
    if not args.no_export:
        summary["export"] = str(export_hf(result.model, tokenizer, out / "model"))
    if args.save_params:
        _, params, _ = split_model(result.model, nnx.LoRAParam if config.method == "lora" else nnx.Param)
        atomic_save_npz(args.save_params, **{k: np.asarray(v) for k, v in params.items()})
    text = json.dumps(summary)
    atomic_save_json(out / "results.json", summary, indent=1, sort_keys=False)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m delift_jax.train.command ...``: ``delift finetune ...`` without importing the other commands
    (same up-front checks of counts and output paths, same one-line errors)."""
    from delift_jax.cli import run_parsed  # here, not at the top: the cli imports this module

    parser = argparse.ArgumentParser(prog="delift finetune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run_parsed("finetune", args, run)


if __name__ == "__main__":
    sys.exit(main())
