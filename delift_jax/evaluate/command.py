"""``delift evaluate``: generate for a test set (without and with the selected subset's nearest examples as
demonstrations), compute metrics, write results JSON and print a markdown table.

The test set must stay out of the selection: every test example is checked against the whole ``--pool`` (the
selection's ground set, not only the subset; same prompt and response), and an overlap is refused unless
``--allow-overlap`` is given. With one file for both, hold the selection's rows out of the test set::

    delift kernel --data pool.jsonl --limit 200 --out runs/k
    delift select --kernel runs/k --budget 0.3 --out runs/sel
    delift evaluate --model runs/ft/model --data pool.jsonl --skip 200 --pool pool.jsonl --pool-limit 200 \
        --indices runs/sel --out runs/eval.json

``--indices`` index into ``--pool`` as loaded (after ``--pool-limit`` and the data options ``--dedupe``,
``--drop-empty``, ``--format`` / field mapping, which apply to ``--data`` as well): give the same ones as the
``delift kernel`` run; a ``delift select`` output is checked against its kernel (see ``delift finetune``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from delift_jax.cli_checks import refuse_nonfinite_metrics
from delift_jax.data.builtin import BUILTIN_DATASETS
from delift_jax.data.sources import add_data_arguments, data_options, data_options_summary, load_examples
from delift_jax.data.splits import SplitError, shared_examples
from delift_jax.errors import DataError
from delift_jax.evaluate.generate import GenerationConfig
from delift_jax.evaluate.icl import subset_from_indices
from delift_jax.evaluate.judge import JudgeConfig
from delift_jax.evaluate.pipeline import EvalSetup, evaluate_model, parse_metrics
from delift_jax.evaluate.report import markdown_table, write_json
from delift_jax.models import load_model
from delift_jax.models.loading import DEFAULT_MODEL
from delift_jax.progress import show_progress
from delift_jax.scoring import ScoringConfig
from delift_jax.select.provenance import check_selection_data, examples_sha256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="HF model directory, .gguf file, or 'smollm2' (built in; default)")
    parser.add_argument("--data", default="ifbench",
                        help="test set: built-in dataset name or a JSON/JSONL file (default: ifbench)")
    parser.add_argument("--skip", type=int, default=0,
                        help="skip the first N test examples (after --dedupe/--drop-empty; default 0); with --data "
                             "equal to --pool, skip past the examples the selection was made from")
    parser.add_argument("--limit", type=int, default=16, help="evaluate N test examples after --skip (default 16)")
    parser.add_argument("--pool", help="examples the selection was made from (dataset name or file): the ICL "
                                       "demonstrations, and the ground set no test example may occur in (give it "
                                       "for a model fine-tuned on the selection too, so the test set is checked)")
    parser.add_argument("--pool-limit", type=int, default=None,
                        help="use the first N examples of --pool (the --limit of 'delift kernel'; default all)")
    parser.add_argument("--indices",
                        help="selected subset: picks.npy (or a 'delift select' output directory, or .json list) of "
                             "indices into --pool as loaded (same --pool-limit and data options as 'delift kernel'); "
                             "without it the whole pool serves as demonstrations")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="evaluate even when test examples also occur in --pool (warns; leaks the test set)")
    parser.add_argument("--k", type=int, default=5, help="demonstrations per test prompt for ICL (default 5)")
    parser.add_argument("--metrics", default="rouge,embedding,nll",
                        help="comma-separated: rouge, embedding, nll, accuracy, judge (default rouge,embedding,nll)")
    parser.add_argument("--judge-model", help="judge model (default: the evaluated model); a small-judge approximation")
    parser.add_argument("--judge-max-new-tokens", type=int, default=128,
                        help="judge feedback length in tokens before its [RESULT] score (default 128)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generated tokens per prompt (default 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1: off)")
    parser.add_argument("--min-p", type=float, default=0.0, help="min-p sampling threshold (default 0: off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation call (default 8)")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="longest prompt / scored sequence in tokens; longer contexts lose their left end")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--out", default="results.json", help="results JSON path (default results.json)")
    add_data_arguments(parser)


def load_indices(location: str):
    """Subset indices from a .npy file, a directory holding picks.npy, or a .json list."""
    path = Path(location).expanduser()
    if path.is_dir():
        path = path / "picks.npy"
    if not path.is_file():
        raise DataError(f"subset indices {path} do not exist; pass picks.npy from 'delift select'")
    try:
        if path.suffix == ".json":
            return np.asarray(json.loads(path.read_text(encoding="utf-8")))
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read subset indices from {path} ({exc})") from None


def _source_options(args: argparse.Namespace) -> tuple[dict, dict]:
    """``load_examples`` keywords for --data and for --pool: the same data options for both; field mapping and
    --format apply to data files only, so a built-in dataset on one side loads without them."""
    options = data_options(args)
    sources = [s for s in (args.data, args.pool) if s]
    if options["fields"] is not None and all(s in BUILTIN_DATASETS for s in sources):
        raise DataError("--format/--prompt-field/--response-field apply to data files; --data and --pool are "
                        "built-in datasets")
    plain = dict(options, fields=None)
    return tuple(plain if s in BUILTIN_DATASETS else options for s in (args.data, args.pool or ""))


def overlap_message(n_shared: int, n_test: int, first: int, pool: str) -> str:
    return (f"{n_shared} of {n_test} test examples also occur in the selection pool --pool {pool} (e.g. test "
            f"example {first} of --data), so the selection and its demonstrations saw them; evaluate on held-out "
            "data (another --data, or --skip past the examples the selection was made from, with --pool-limit "
            "set to the kernel's --limit), or pass --allow-overlap to evaluate anyway")


def check_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The metrics; one-line errors for settings that cannot work together."""
    metrics = parse_metrics(args.metrics)
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit {args.limit} must be at least 1")
    if args.skip < 0:
        raise DataError(f"--skip {args.skip} must be >= 0")
    if args.pool_limit is not None and (args.pool_limit < 1 or not args.pool):
        raise DataError(f"--pool-limit {args.pool_limit} needs --pool and must be at least 1")
    if args.indices and not args.pool:
        raise DataError("--indices index into --pool; give the pool the selection was made from")
    return metrics


@dataclasses.dataclass(frozen=True)
class EvalInputs:
    """test: the examples evaluated; ground: the whole --pool (None without it); pool: the demonstrations (the
    selected subset of ground, or all of it); overlap: test positions that also occur in ground."""

    test: list
    ground: list | None
    pool: list | None
    overlap: list
    selection_check: str | None
    data_options: dict


def load_inputs(args: argparse.Namespace) -> EvalInputs:
    """The test set and the selection's pool; a test set overlapping the pool is refused (or warned about)."""
    data_opts, pool_opts = _source_options(args)
    examples = load_examples(args.data, **data_opts)[args.skip:]
    test = examples[:args.limit] if args.limit is not None else examples
    if not test:
        raise DataError(f"no test examples in {args.data!r} after skipping {args.skip}")
    if not args.pool:
        return EvalInputs(test, None, None, [], None, data_opts)
    ground = load_examples(args.pool, limit=args.pool_limit, **pool_opts)
    overlap = shared_examples(ground, test)
    if overlap and not args.allow_overlap:
        raise SplitError(overlap_message(len(overlap), len(test), args.skip + overlap[0], args.pool))
    if overlap:
        print(f"warning: {len(overlap)} of {len(test)} test examples also occur in the selection pool --pool "
              f"{args.pool} (e.g. test example {args.skip + overlap[0]}); evaluating anyway (--allow-overlap), "
              "the scores are not held-out scores", file=sys.stderr)
    pool, selection_check = ground, None
    if args.indices:
        selection_check = check_selection_data(args.indices, ground, "--pool")
        pool = subset_from_indices(ground, load_indices(args.indices))
    return EvalInputs(test, ground, pool, overlap, selection_check, data_opts)


def eval_setup(args: argparse.Namespace, metrics, pool) -> EvalSetup:
    """Generation, metrics, demonstrations and the judge (loaded when asked for) of the evaluation."""
    generation = GenerationConfig(temperature=args.temperature, top_p=args.top_p, min_p=args.min_p,
                                  max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_length,
                                  batch_size=args.batch_size, seed=args.seed)
    judge_model = judge_tokenizer = None
    if "judge" in metrics and args.judge_model:
        judge_model, judge_tokenizer, _ = load_model(args.judge_model, dtype=getattr(jnp, args.dtype))
    return EvalSetup(generation=generation, metrics=metrics, pool=pool, k=args.k, judge_model=judge_model,
                     judge_tokenizer=judge_tokenizer,
                     judge_config=JudgeConfig(max_new_tokens=args.judge_max_new_tokens, batch_size=args.batch_size,
                                              max_prompt_tokens=2 * args.max_length),
                     scoring=ScoringConfig(max_length=2 * args.max_length), progress=show_progress())


def results_payload(args: argparse.Namespace, metrics, inputs: EvalInputs, setup: EvalSetup, results: dict,
                    seconds: float) -> dict:
    """The results JSON: what was evaluated, against which pool, with which settings, and the results."""
    test, ground, pool = inputs.test, inputs.ground, inputs.pool
    return {
        "model": args.model, "data": args.data, "skip": args.skip, "n_test": len(test), "metrics": list(metrics),
        "data_options": data_options_summary(inputs.data_options), "test_sha256": examples_sha256(test),
        "pool": args.pool, "pool_limit": args.pool_limit, "indices": args.indices,
        "pool_size": None if pool is None else len(pool),
        "ground_size": None if ground is None else len(ground),
        "pool_sha256": None if ground is None else examples_sha256(ground),
        "subset_sha256": None if pool is None else examples_sha256(pool), "selection_check": inputs.selection_check,
        "test_pool_overlap": len(inputs.overlap), "allow_overlap": bool(args.allow_overlap),
        "generation": dataclasses.asdict(setup.generation),
        "judge": ({"model": args.judge_model or args.model, "label": "small-judge approximation"}
                  if "judge" in metrics else None),
        "seconds": round(seconds, 2), **results,
    }


def run(args: argparse.Namespace) -> int:
    metrics = check_args(args)
    inputs = load_inputs(args)
    start = time.perf_counter()
    model, tokenizer, _ = load_model(args.model, dtype=getattr(jnp, args.dtype))
    setup = eval_setup(args, metrics, inputs.pool)
    results = evaluate_model(model, tokenizer, inputs.test, setup)
    refuse_nonfinite_metrics(results["conditions"])  # a NaN NLL is a failure, not a null in a results file
    path = write_json(args.out, results_payload(args, metrics, inputs, setup, results, time.perf_counter() - start))
    print(markdown_table(results["conditions"]))
    if "judge" in metrics:
        print("judge scores are a small-judge approximation (Prometheus-style rubric graded by "
              f"{args.judge_model or args.model}), not Prometheus-2 grades")
    print(f"results: {path}")
    return 0
