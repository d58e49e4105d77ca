"""``delift run``: one use case end to end — kernels, selection per method, subset export, fine-tuning, evaluation
on a held-out split that selection never sees, ``results.json`` and a markdown table.

    delift run --use-case instruction --model smollm2 --data ifbench --budget 0.3 --methods delift,random,full,initial
    delift run --use-case task --data pool.jsonl --target nq-open --budget 0.3 --methods delift,random
    delift run --use-case continual --data fanoutqa-multihop --existing fanoutqa-singlehop --budget 0.3 ...
    delift run --config run.toml --seed 1          # a run file; flags given on the command line override it
    delift run --config runs/run/results.json      # repeat an earlier run with its resolved settings

A run file is TOML with RunConfig's fields at the top level, ``[kernel]``, ``[train]``, ``[generation]`` and
``[method_options.<method>]`` tables, and ``[inputs]`` (model, data, target, existing, record options); see
``delift_jax.pipeline.config``. ``--target`` is used by ``task`` only and ``--existing`` by ``continual`` only;
given to another use case they are ignored with a warning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from delift_jax.budget import parse_budget
from delift_jax.data.sources import add_data_arguments
from delift_jax.errors import DataError, NonFiniteError
from delift_jax.kernel.config import DISTANCES, UTILITIES, KernelConfig
from delift_jax.methods.submodular import SCALES
from delift_jax.models.loading import DEFAULT_MODEL
from delift_jax.pipeline.config import RunConfig, RunInputs, check_methods, load_run_file, parse_split
from delift_jax.pipeline.results import failed_methods
from delift_jax.pipeline.run import run_use_case
from delift_jax.progress import show_progress
from delift_jax.sharding import mesh_option

# flag (argparse dest) -> the RunConfig keys it sets (a tuple of keys is a path into a nested table), conversion
CONFIG_FLAGS = {
    "use_case": ((("use_case",),), str), "budget": ((("budget",),), parse_budget),
    "methods": ((("methods",),), check_methods), "seed": ((("seed",), ("train", "seed"), ("generation", "seed")), int),
    "split": ((("split",),), parse_split), "limit": ((("limit",),), int), "target_limit": ((("target_limit",),), int),
    "existing_limit": ((("existing_limit",),), int), "kernel_max_length": ((("kernel", "max_length"),), int),
    "max_response_tokens": ((("kernel", "max_response_tokens"),), int), "distance": ((("kernel", "distance"),), str),
    "train_method": ((("train", "method"),), str), "epochs": ((("train", "epochs"),), int),
    "train_steps": ((("train", "max_steps"),), int), "learning_rate": ((("train", "learning_rate"),), float),
    "batch_size": ((("train", "batch_size"),), int),
    "max_length": ((("train", "max_length"), ("generation", "max_prompt_tokens"), ("nll_max_length",)), int),
    "no_checkpoints": ((("checkpoints",),), lambda flag: not flag), "metrics": ((("metrics",),), str),
    "max_new_tokens": ((("generation", "max_new_tokens"),), int),
    "eval_batch_size": ((("generation", "batch_size"),), int), "icl": ((("icl_k",),), int),
    "export_models": ((("export_models",),), bool), "continual_start": ((("continual_start",),), str),
    "top_k": ((("kernel", "top_k"),), int), "optimizer": ((("method_options", "delift", "optimizer"),), str),
    "exclude_diagonal": ((("method_options", "delift", "exclude_diagonal"),), bool),
    "task_objective": ((("method_options", "delift", "task_objective"),), str),
    "kernel_scale": ((("method_options", "delift", "scale"),), str),
    "quality": ((("method_options", "delift", "quality"),), str),
    "novelty": ((("method_options", "delift", "novelty"),), str),
    "utility": ((("kernel", "utility"),), str), "surrogate_pairs": ((("kernel", "surrogate_pairs"),), int),
    "surrogate_seed": ((("kernel", "surrogate_seed"),), int),
    "refine_rounds": ((("kernel", "refine_rounds"),), int), "refine_pairs": ((("kernel", "refine_pairs"),), int),
}
# flag (argparse dest) -> RunInputs field
INPUT_FLAGS = {"model": "model", "data": "data", "target": "target", "existing": "existing",
               "prompt_field": "prompt_field", "response_field": "response_field", "input_field": "input_field",
               "options_field": "options_field", "context_field": "context_field", "record_format": "format",
               "dedupe": "dedupe", "drop_empty": "drop_empty"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag defaults to None ("not given"), so that a run file's value stands unless a flag overrides it;
    the defaults named in the help are RunConfig's."""
    parser.add_argument("--config", metavar="FILE",
                        help="run file: TOML (RunConfig fields, [kernel]/[train]/[generation]/[method_options.NAME] "
                             "tables, [inputs]) or an earlier run's results.json; flags given here override it")
    parser.add_argument("--use-case", choices=("instruction", "task", "continual"),
                        help="instruction (FL), task (FLMI with --target as queries), continual (FLCG vs --existing);"
                             " required unless the run file sets use_case")
    parser.add_argument("--model", help=f"HF model directory, .gguf file, or 'smollm2' (built in; default "
                                        f"{DEFAULT_MODEL})")
    parser.add_argument("--data", help="the pool: built-in dataset name or a data file (required unless the run "
                                       "file's [inputs] sets data)")
    parser.add_argument("--target", help="task use case: the target (benchmark) set; its test split is held out")
    parser.add_argument("--existing", help="continual use case: the data the model already has")
    parser.add_argument("--continual-start", choices=("existing", "base"),
                        help="continual: fine-tune on --existing first and start every method from that model "
                             "(existing, default) or start from the base model (base)")
    parser.add_argument("--budget", help="fraction of the selection pool in (0, 1] (e.g. 0.3, the default) or a whole "
                                         "count (e.g. 30)")
    parser.add_argument("--methods", help="comma-separated: delift, delift_se, random, full, initial, deft_ucs, "
                                          "selectit, less (default delift,random,full,initial)")
    parser.add_argument("--out", default="runs/run", help="output directory (default runs/run)")
    parser.add_argument("--seed", type=int, help="splits, selection, training and sampling seed (default 0)")
    parser.add_argument("--split", help="train,validation,test fractions of the pool (task: of the target set); "
                                        "default 0.8,0.1,0.1")
    parser.add_argument("--limit", type=int, help="keep the first N pool examples")
    parser.add_argument("--target-limit", type=int, help="keep the first N target examples")
    parser.add_argument("--existing-limit", type=int, help="keep the first N existing examples")
    _add_stage_arguments(parser)
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", action="store_true", default=None,
                          help="progress bars for kernels, training, generation (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_data_arguments(parser)


def _add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("kernel (delift)")
    group.add_argument("--kernel-max-length", type=int, help="longest kernel sequence (default 2048)")
    group.add_argument("--max-response-tokens", type=int,
                       help="score only the first N response tokens in the kernel (default: all)")
    group.add_argument("--distance", choices=DISTANCES, help=f"kernel distance (default {KernelConfig.distance})")
    group.add_argument("--mesh", metavar="data=D,model=M",
                       help="device mesh for the kernels, teacher-forced scoring, fine-tuning and generation "
                            "(D*M = this process's devices): parameters split over 'model' (tensor parallel) and "
                            "'data' (FSDP); default: data parallel, parameters replicated")
    group.add_argument("--top-k", type=int, metavar="K",
                       help="sparse mode: score only each example's K most similar candidates (n*K pairs instead of "
                            "n^2; default: dense)")
    group.add_argument("--utility", choices=UTILITIES,
                       help="DELIFT's kernels: exact (default) or surrogate (exact pairs on a fixed sample, a small "
                            "network predicts the rest, then the picks' entries are computed exactly; "
                            "docs/surrogate.md)")
    group.add_argument("--surrogate-pairs", type=int, metavar="N",
                       help="--utility surrogate: exact pairs in each kernel's sample (default 2,000)")
    group.add_argument("--surrogate-seed", type=int, metavar="S",
                       help="--utility surrogate: seed of each kernel's sample and network (default 0)")
    group.add_argument("--refine-rounds", type=int, metavar="R",
                       help="--utility surrogate: rounds of computing the picks' entries exactly and selecting "
                            "again while the picks change (default 3; 0: none)")
    group.add_argument("--refine-pairs", type=int, metavar="N",
                       help="--utility surrogate: most exact pairs one refinement round adds per kernel (default "
                            "half of --surrogate-pairs)")
    group.add_argument("--optimizer", choices=("lazy", "naive", "stochastic"), help="DELIFT's greedy (default lazy)")
    group.add_argument("--exclude-diagonal", action="store_true", default=None,
                       help="leave each example's own cell out of DELIFT's pool kernel")
    group.add_argument("--kernel-scale", choices=SCALES,
                       help="how DELIFT maps utilities to its kernels (default: the use case's, chosen on evidence: "
                            "row_rank for instruction and continual, minmax for task; minmax with the diagonal kept "
                            "is the authors' form; see docs/evidence.md)")
    group.add_argument("--quality", choices=("prompt_information", "none"),
                       help="weight DELIFT's candidates by how much each prompt tells about its response (default: "
                            "prompt_information for instruction and continual, none for task, chosen on planted "
                            "noise; none is the authors' form; see docs/noise.md)")
    group.add_argument("--novelty", choices=("existing_coverage", "none"),
                       help="continual: also weight DELIFT's candidates by how little the existing data covers them "
                            "(default existing_coverage, chosen on planted new sources; none is the authors' form; "
                            "see docs/noise.md)")
    group.add_argument("--task-objective", choices=("flmi", "fl2mi", "flmi_paper"),
                       help="DELIFT's task-specific objective (default fl2mi, chosen on evidence; flmi is the "
                            "authors' code; see docs/evidence.md)")
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--train-method", choices=("lora", "full"), help="default lora")
    group.add_argument("--epochs", type=int, help="passes over the subset (default 1)")
    group.add_argument("--train-steps", type=int, help="optimizer steps instead of epochs")
    group.add_argument("--learning-rate", type=float, help="default 2e-4")
    group.add_argument("--batch-size", type=int, help="training rows per step (default 8)")
    group.add_argument("--max-length", type=int,
                       help="longest training / evaluation / NLL sequence in tokens (default 1024)")
    group.add_argument("--no-checkpoints", action="store_true", default=None,
                       help="do not write fine-tuning checkpoints")
    group = parser.add_argument_group("evaluation")
    group.add_argument("--metrics", help="comma-separated: rouge, embedding, nll, accuracy, judge (default rouge,nll)")
    group.add_argument("--max-new-tokens", type=int, help="generated tokens per prompt (default 128)")
    group.add_argument("--eval-batch-size", type=int, help="prompts per generation call (default 8)")
    group.add_argument("--icl", type=int, metavar="K",
                       help="also evaluate the base model with the K subset examples nearest to each test prompt "
                            "as demonstrations (the paper's ICL setting; default 0 = off)")
    group.add_argument("--export-models", action="store_true", default=None,
                       help="write each fine-tuned model (LoRA merged) as a Hugging Face directory <method>/model")


def _set(values: dict, path: tuple, value) -> None:
    """values[path[0]][path[1]]... = value, copying nested tables so the run file's mapping is left as it was."""
    if len(path) == 1:
        values[path[0]] = value
        return
    table = dict(values.get(path[0]) or {})
    _set(table, path[1:], value)
    values[path[0]] = table


def resolve_run(args: argparse.Namespace, defaults: dict | None = None, input_defaults: dict | None = None
                ) -> tuple[RunConfig, RunInputs]:
    """The run file's settings (if any) with the flags given on the command line on top, validated. ``defaults``
    and ``input_defaults`` (a script's own defaults) lie under both."""
    config_values, input_values = load_run_file(args.config) if args.config else ({}, {})
    config_values = {**(defaults or {}), **config_values}
    input_values = {**(input_defaults or {}), **input_values}
    for dest, (paths, convert) in CONFIG_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            for path in paths:
                _set(config_values, path, convert(value))
    input_values.update({field: getattr(args, dest) for dest, field in INPUT_FLAGS.items()
                         if getattr(args, dest, None) is not None})
    if "use_case" not in config_values:
        raise DataError("no use case: pass --use-case instruction|task|continual (or set use_case in the run file)")
    if "nll_max_length" not in config_values:  # delift run scores NLL at the training length unless told otherwise
        config_values["nll_max_length"] = (config_values.get("train") or {}).get("max_length", RunConfig.train.max_length)
    inputs = RunInputs.from_dict(input_values)
    if inputs.data is None:
        raise DataError("no data: pass --data DATASET_OR_FILE (or set data under [inputs] in the run file)")
    return RunConfig.from_dict(config_values), inputs


def run(args: argparse.Namespace) -> int:
    config, inputs = resolve_run(args)  # bad settings fail here, before any loading
    mesh = mesh_option(args.mesh) if getattr(args, "mesh", None) else None
    results = run_use_case(inputs.model, inputs.data, use_case=config.use_case, budget=config.budget,
                           methods=config.methods, out_dir=args.out, targets=inputs.target, existing=inputs.existing,
                           config=config, data_options=inputs.data_options(), echo=print,
                           progress=show_progress(args.progress), mesh=mesh)
    print((Path(args.out) / "results.md").read_text(encoding="utf-8"), end="")
    failed = failed_methods(results)
    if failed:
        name, status = next(iter(failed.items()))
        raise NonFiniteError(f"method {name} {status} (diverged training or damaged weights); results.json marks "
                             f"{len(failed)} method(s) as failed — rerun them with a lower --learning-rate")
    return 0 if results["methods"] else 1
