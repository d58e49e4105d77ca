"""``delift run``: one use case end to end — kernels, selection per method, subset export, fine-tuning, evaluation
on a held-out split that selection never sees, ``results.json`` and a markdown table.

    delift run --use-case instruction --model smollm2 --data ifbench --budget 0.3 --methods delift,random,full,initial
    delift run --use-case task --data pool.jsonl --target nq-open --budget 0.3 --methods delift,random
    delift run --use-case continual --data fanoutqa-multihop --existing fanoutqa-singlehop --budget 0.3 ...

``--target`` is used by ``task`` only and ``--existing`` by ``continual`` only; given to another use case they
are ignored with a warning.
"""

from __future__ import annotations

import argparse

from delift_jax.models.loading import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from delift_jax.data.sources import add_data_arguments

    parser.add_argument("--use-case", required=True, choices=("instruction", "task", "continual"),
                        help="instruction (FL), task (FLMI with --target as queries), continual (FLCG vs --existing)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="HF model directory, .gguf file, or 'smollm2' (built in; default)")
    parser.add_argument("--data", required=True, help="the pool: built-in dataset name or a data file")
    parser.add_argument("--target", help="task use case: the target (benchmark) set; its test split is held out")
    parser.add_argument("--existing", help="continual use case: the data the model already has")
    parser.add_argument("--continual-start", choices=("existing", "base"), default="existing",
                        help="continual: fine-tune on --existing first and start every method from that model "
                             "(existing, default) or start from the base model (base)")
    parser.add_argument("--budget", default="0.3",
                        help="fraction of the selection pool in (0, 1] (e.g. 0.3) or a whole count (e.g. 30)")
    parser.add_argument("--methods", default="delift,random,full,initial",
                        help="comma-separated: delift, delift_se, random, full, initial, deft_ucs, selectit, less "
                             "(default delift,random,full,initial)")
    parser.add_argument("--out", default="runs/run", help="output directory (default runs/run)")
    parser.add_argument("--seed", type=int, default=0, help="splits, selection, training and sampling seed")
    parser.add_argument("--split", default="0.8,0.1,0.1",
                        help="train,validation,test fractions of the pool (task: of the target set); default "
                             "0.8,0.1,0.1")
    parser.add_argument("--limit", type=int, help="keep the first N pool examples")
    parser.add_argument("--target-limit", type=int, help="keep the first N target examples")
    parser.add_argument("--existing-limit", type=int, help="keep the first N existing examples")
    group = parser.add_argument_group("kernel (delift)")
    group.add_argument("--kernel-max-length", type=int, default=2048, help="longest kernel sequence (default 2048)")
    group.add_argument("--max-response-tokens", type=int,
                       help="score only the first N response tokens in the kernel (default: all)")
    group.add_argument("--distance", choices=("rms", "pmi"), default="rms", help="kernel distance (default rms)")
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--train-method", choices=("lora", "full"), default="lora", help="default lora")
    group.add_argument("--epochs", type=int, default=1, help="passes over the subset (default 1)")
    group.add_argument("--train-steps", type=int, help="optimizer steps instead of epochs")
    group.add_argument("--learning-rate", type=float, default=2e-4, help="default 2e-4")
    group.add_argument("--batch-size", type=int, default=8, help="training rows per step (default 8)")
    group.add_argument("--max-length", type=int, default=1024,
                       help="longest training / evaluation sequence in tokens (default 1024)")
    group.add_argument("--no-checkpoints", action="store_true", help="do not write fine-tuning checkpoints")
    group = parser.add_argument_group("evaluation")
    group.add_argument("--metrics", default="rouge,nll",
                       help="comma-separated: rouge, embedding, nll, accuracy, judge (default rouge,nll)")
    group.add_argument("--max-new-tokens", type=int, default=128, help="generated tokens per prompt (default 128)")
    group.add_argument("--eval-batch-size", type=int, default=8, help="prompts per generation call (default 8)")
    group.add_argument("--icl", type=int, default=0, metavar="K",
                       help="also evaluate the base model with the K subset examples nearest to each test prompt "
                            "as demonstrations (the paper's ICL setting; default 0 = off)")
    group.add_argument("--export-models", action="store_true",
                       help="write each fine-tuned model (LoRA merged) as a Hugging Face directory <method>/model")
    parser.add_argument("--progress", action="store_true", help="progress bars for kernels, training, generation")
    add_data_arguments(parser)


def config_from_args(args: argparse.Namespace):
    from delift_jax.errors import DataError
    from delift_jax.evaluate.generate import GenerationConfig
    from delift_jax.kernel import KernelConfig
    from delift_jax.pipeline.config import RunConfig, check_methods, parse_budget
    from delift_jax.train import TrainConfig

    try:
        split = tuple(float(x) for x in str(args.split).split(","))
    except ValueError:
        raise DataError(f"--split {args.split!r} must be three comma-separated fractions, e.g. 0.8,0.1,0.1") from None
    return RunConfig(
        use_case=args.use_case, budget=parse_budget(args.budget), methods=check_methods(args.methods),
        seed=args.seed, split=split, limit=args.limit, target_limit=args.target_limit,
        existing_limit=args.existing_limit,
        kernel=KernelConfig(max_length=args.kernel_max_length, max_response_tokens=args.max_response_tokens,
                            distance=args.distance),
        train=TrainConfig(method=args.train_method, epochs=args.epochs, max_steps=args.train_steps,
                          learning_rate=args.learning_rate, batch_size=args.batch_size, max_length=args.max_length,
                          seed=args.seed),
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_length,
                                    batch_size=args.eval_batch_size, seed=args.seed),
        metrics=args.metrics, nll_max_length=args.max_length, checkpoints=not args.no_checkpoints,
        icl_k=args.icl, continual_start=args.continual_start, export_models=args.export_models)


def run(args: argparse.Namespace) -> int:
    from delift_jax.data.sources import data_options
    from delift_jax.pipeline.run import run_use_case

    config = config_from_args(args)  # bad budgets, methods, metrics, splits fail here, before any loading
    options = data_options(args)
    results = run_use_case(args.model, args.data, use_case=config.use_case, budget=config.budget,
                           methods=config.methods, out_dir=args.out, targets=args.target, existing=args.existing,
                           config=config, data_options=options, echo=print, progress=args.progress)
    from pathlib import Path

    print((Path(args.out) / "results.md").read_text(encoding="utf-8"), end="")
    return 0 if results["methods"] else 1
