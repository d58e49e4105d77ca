"""One use case end to end, as a sequence of stages that pass frozen records:

    load sources -> make_splits -> (continual: learn the existing data) -> per method run_method -> RunWriter

``make_splits`` holds the held-out test split out of everything selection sees (``pipeline/splits.py``);
``run_method`` selects, fine-tunes and evaluates one method and returns a ``MethodResult``
(``pipeline/method.py``); ``RunWriter`` alone writes ``out_dir`` (``pipeline/writer.py`` lists the files).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from jax.sharding import Mesh

from delift_jax.budget import resolve_budget as resolve_k  # noqa: F401  (the run's budget rule lives in budget.py)
from delift_jax.errors import DataError
from delift_jax.evaluate.pipeline import EvalSetup
from delift_jax.methods.embeddings import default_encoder
from delift_jax.models import load_model
from delift_jax.pipeline.config import RunConfig
from delift_jax.pipeline.inputs import Source, load_source
from delift_jax.pipeline.method import RunContext, learn_existing, run_method
from delift_jax.pipeline.results import run_record
from delift_jax.pipeline.splits import Splits, make_splits
from delift_jax.pipeline.writer import RunWriter
from delift_jax.progress import show_progress
from delift_jax.scoring import ScoringConfig
from delift_jax.sharding import inference_mesh

log = logging.getLogger("delift_jax.pipeline")
ENCODER_METHODS = ("delift_se", "deft_ucs")


def _given(source) -> bool:
    return source is not None and not (isinstance(source, str) and not source)


def check_use_case_inputs(use_case: str, targets, existing, warn: Callable[[str], None]) -> tuple:
    """(targets, existing) the use case uses; an error when it lacks one, a warning when one is not used."""
    if use_case == "task" and not _given(targets):
        raise DataError("use case 'task' needs a target (benchmark) set: pass --target DATASET_OR_FILE")
    if use_case == "continual" and not _given(existing):
        raise DataError("use case 'continual' needs the existing data: pass --existing DATASET_OR_FILE")
    if _given(targets) and use_case != "task":
        warn(f"--target is used by the task use case only; ignored for {use_case}")
        targets = None
    if _given(existing) and use_case != "continual":
        warn(f"--existing is used by the continual use case only; ignored for {use_case}")
        existing = None
    return (targets if _given(targets) else None), (existing if _given(existing) else None)


def load_sources(config: RunConfig, data, targets, existing, data_options: dict | None) -> dict[str, Source | None]:
    """The pool (with the record options), the target set and the existing data (same dedupe / drop_empty)."""
    other = {k: v for k, v in (data_options or {}).items() if k != "fields"}
    return {"data": load_source(data, config.limit, "data", data_options),
            "target": load_source(targets, config.target_limit, "target set", other) if targets is not None else None,
            "existing": (load_source(existing, config.existing_limit, "existing data", other)
                         if existing is not None else None)}


def describe(splits: Splits, config: RunConfig) -> str:
    """The one progress line that says what the run will select from and evaluate on."""
    return (f"{splits.use_case}: selection pool {len(splits.pool)} examples, budget {config.budget} -> "
            f"{splits.budget_k} picks; held-out test {len(splits.test)} ({splits.evaluation_source})"
            + (f"; {len(splits.queries)} target queries" if splits.queries is not None else "")
            + (f"; {len(splits.existing)} existing examples" if splits.existing is not None else ""))


def make_context(model, tokenizer, config: RunConfig, progress: bool, echo) -> RunContext:
    """What every method shares; the sentence encoder is loaded only when a metric, ICL or a method needs it."""
    needs_encoder = ("embedding" in config.metrics or config.icl_k > 0
                     or any(m in ENCODER_METHODS for m in config.methods))
    encoder = default_encoder() if needs_encoder else None
    setup = EvalSetup(generation=dataclasses.replace(config.generation, seed=config.seed), metrics=config.metrics,
                      encoder=encoder, scoring=ScoringConfig(max_length=config.nll_max_length), progress=progress)
    return RunContext(model, tokenizer, encoder, setup, config, progress, echo)


def run_use_case(model_source, data, *, use_case: str, budget, methods, out_dir, targets=None, existing=None,
                 config: RunConfig | None = None, data_options: dict | None = None, model=None, tokenizer=None,
                 echo: Callable[[str], None] | None = None, progress: bool | None = None, mesh: Mesh | None = None,
                 **settings) -> dict:
    """Run ``methods`` on one use case; returns the results dict also written to ``out_dir/results.json``.

    model_source: HF directory, .gguf or "smollm2" (ignored when ``model`` and ``tokenizer`` are given).
    data: the pool; targets: the target (benchmark) set, required for ``task``; existing: the data the model already
    has, required for ``continual``. Each is a built-in name, a data file, an iterable of mappings or a Hugging
    Face ``datasets.Dataset``. config: a ``RunConfig`` (defaults documented there); ``settings`` override its
    fields. data_options: ``load_dataset`` keywords (fields, dedupe, drop_empty) for the pool (the target and
    existing sets are read with format detection and the same dedupe / drop_empty). echo: progress lines (default:
    none). progress: progress bars (default: on when stderr is a terminal). mesh: the device mesh of the kernels,
    teacher-forced scoring, fine-tuning and generation (``sharding.inference_mesh``; a ``(data, model)`` mesh splits
    the parameters); None: data parallel over this process's devices.
    """
    with inference_mesh(mesh):
        return _run_use_case(model_source, data, use_case, budget, methods, out_dir, targets, existing, config,
                             data_options, model, tokenizer, echo, progress, settings)


def _run_use_case(model_source, data, use_case, budget, methods, out_dir, targets, existing, config, data_options,
                  model, tokenizer, echo, progress, settings) -> dict:
    echo = echo or (lambda line: None)
    progress = show_progress(progress)
    config = dataclasses.replace(config or RunConfig(), use_case=use_case, budget=budget, methods=methods,
                                 **settings)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.warning(message)
        echo(f"warning: {message}")

    targets, existing = check_use_case_inputs(use_case, targets, existing, warn)
    sources = load_sources(config, data, targets, existing, data_options)
    splits = make_splits(use_case, sources["data"], sources["target"], sources["existing"], fractions=config.split,
                         seed=config.seed, budget=config.budget)
    writer = RunWriter(out_dir)
    writer.write_splits(splits)
    echo(describe(splits, config))
    if model is None or tokenizer is None:
        echo(f"loading model {model_source}")
        model, tokenizer, _ = load_model(model_source)
    context = make_context(model, tokenizer, config, progress, echo)
    results = run_record(model_source, config, sources, splits, data_options, warnings)
    if use_case == "continual" and config.continual_start == "existing":
        context, results["existing_training"] = learn_existing(splits, context,
                                                               writer.existing_train_dir(config.checkpoints))
    for step, name in enumerate(config.methods, 1):
        result = run_method(name, splits, context, writer.workspace(name, config.checkpoints),
                            label=f"[{step}/{len(config.methods)}] ")
        results["methods"][name] = writer.write_method(result, sources["data"], tokenizer, config.export_models)
        writer.write_results(results)  # partial results survive a crash of a later method
    echo(f"wrote {writer.results_path} and {writer.out / 'results.md'}")
    return results
