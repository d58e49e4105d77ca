"""``run_method``: one method of a run — select, fine-tune, evaluate — returning a ``MethodResult`` record.

It writes no output file itself: the only directories it hands on are the resumable work areas of the
subsystems it calls (DELIFT's kernel stores, fine-tuning checkpoints), which the ``RunWriter`` chooses and passes in
a ``Workspace``. Everything it produces comes back in the ``MethodResult`` for the writer to save.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from delift_jax.evaluate.pipeline import EvalSetup, evaluate_model
from delift_jax.methods import MethodSelection, get_method
from delift_jax.pipeline.config import RunConfig
from delift_jax.pipeline.splits import Splits
from delift_jax.sharding import current_mesh
from delift_jax.train import finetune, merged_copy


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Where a method's resumable work lives (None: keep nothing): DELIFT's kernel stores, training checkpoints."""

    kernel_dir: Path | None = None
    train_dir: Path | None = None


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every method of a run shares: the model it starts from, its tokenizer, the sentence encoder (or None),
    the evaluation setup and the run's settings."""

    model: object
    tokenizer: object
    encoder: object
    setup: EvalSetup
    config: RunConfig
    progress: bool = False
    echo: Callable[[str], None] = lambda line: None


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """indices: the picks as indices into the loaded pool, in pick order; subset: those examples; model: the
    fine-tuned model (None when nothing was trained); evaluation / icl_evaluation: ``evaluate_model`` results;
    seconds: per stage."""

    name: str
    selection: MethodSelection
    indices: np.ndarray
    subset: tuple
    train_summary: dict | None
    model: object
    evaluation: dict
    icl_evaluation: dict | None
    seconds: dict


def method_defaults(context: RunContext, workspace: Workspace) -> dict:
    """The run's settings a method takes when its options class has the field (the user's options override)."""
    defaults = {"kernel_config": context.config.kernel, "kernel_dir": workspace.kernel_dir,
                "progress": context.progress, "max_length": context.config.train.max_length}
    if context.encoder is not None:
        defaults["encoder"] = context.encoder
    return defaults


def select_subset(name: str, splits: Splits, context: RunContext, workspace: Workspace) -> MethodSelection:
    """Run method ``name`` on the selection pool (indices come back as positions in ``splits.pool``)."""
    options = context.config.options_for(name, method_defaults(context, workspace))
    return get_method(name).function(
        pool=list(splits.pool), budget=splits.budget_k, use_case=splits.use_case,
        targets=list(splits.queries) if splits.queries is not None else None,
        existing=list(splits.existing) if splits.existing is not None else None,
        model=context.model, tokenizer=context.tokenizer, seed=context.config.seed, options=options)


def train_on(subset, context: RunContext, workspace: Workspace):
    """(training summary, merged fine-tuned model) of the run's model fine-tuned on ``subset``, on the run's mesh
    (``sharding.current_mesh``: ``delift run --mesh data=D,model=M`` places parameters by the FSDP + tensor-parallel
    rules; by default a data mesh over this process's devices, as ``finetune``'s own default)."""
    train_config = dataclasses.replace(context.config.train, seed=context.config.seed)
    trained = finetune(context.model, context.tokenizer, list(subset), train_config, out_dir=workspace.train_dir,
                       mesh=current_mesh(), progress=context.progress)
    return trained.summary(), merged_copy(trained.model)


def icl_setup(subset, context: RunContext) -> EvalSetup | None:
    """The evaluation of the base model with the ``icl_k`` subset examples nearest to each test prompt as
    demonstrations (fewer when the subset is smaller); None when ICL is off or nothing was selected."""
    k = min(context.config.icl_k, len(subset))
    if not k:
        return None
    return dataclasses.replace(context.setup, pool=list(subset), k=k, no_icl=False)


def run_method(name: str, splits: Splits, context: RunContext, workspace: Workspace, label: str = "") -> MethodResult:
    """Select with ``name``, fine-tune on the subset (unless the method says not to), evaluate on the test split."""
    echo = lambda text: context.echo(f"{label}{name}: {text}")  # noqa: E731
    echo("selecting")
    t0 = time.perf_counter()
    selection = select_subset(name, splits, context, workspace)
    candidates = np.asarray(splits.candidates, dtype=np.int64)
    indices = candidates[selection.indices] if len(selection.indices) else np.zeros(0, np.int64)
    subset = tuple(splits.pool[int(i)] for i in selection.indices)
    t1 = time.perf_counter()
    train_summary, model = None, None
    if selection.info.get("fine_tune", True) and subset:
        echo(f"fine-tuning on {len(subset)} examples")
        train_summary, model = train_on(subset, context, workspace)
    t2 = time.perf_counter()
    echo(f"evaluating on {len(splits.test)} held-out examples")
    evaluation = evaluate_model(model if model is not None else context.model, context.tokenizer, list(splits.test),
                                context.setup)
    icl, icl_evaluation = icl_setup(subset, context), None
    if icl is not None:
        echo(f"base model with {icl.k} subset demonstrations per test prompt (ICL)")
        icl_evaluation = evaluate_model(context.model, context.tokenizer, list(splits.test), icl)
    seconds = {"select": round(t1 - t0, 3), "train": round(t2 - t1, 3),
               "evaluate": round(time.perf_counter() - t2, 3)}
    return MethodResult(name, selection, indices.astype(np.int64), subset, train_summary, model, evaluation,
                        icl_evaluation, seconds)


def learn_existing(splits: Splits, context: RunContext, train_dir: Path | None) -> tuple[RunContext, dict]:
    """Continual start: the model first fine-tunes on the existing data (FLCG's premise: it already has that data);
    returns the context whose model is the result (selection, every method and ``initial`` start from it) and the
    training summary."""
    context.echo(f"continual: fine-tuning on the {len(splits.existing)} existing examples first")
    t0 = time.perf_counter()
    summary, model = train_on(splits.existing, context, Workspace(train_dir=train_dir))
    return dataclasses.replace(context, model=model), dict(summary, seconds=round(time.perf_counter() - t0, 3))
