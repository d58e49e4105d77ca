"""``finetune``: tokenize, plan, step, checkpoint, resume. The host-side rim around the pure train step."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.records import Example
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.errors import DeliftError
from delift_jax.fingerprints import model_fingerprint
from delift_jax.sharding import DATA_AXIS, MODEL_AXIS, data_mesh, param_partition
from delift_jax.train.checkpoint import Checkpointer, CheckpointMismatchError, sequences_fingerprint
from delift_jax.train.config import TrainConfig
from delift_jax.train.data import encode_examples, fixed_shape, make_batch, padded_rows, plan_steps
from delift_jax.train.lora import apply_lora
from delift_jax.train.optim import make_optimizer
from delift_jax.train.step import init_state, make_train_step, shard_batch, split_model


class TrainingDivergedError(DeliftError):
    """The loss or the gradient became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    """The trained model (LoRA adapters still attached under LoRA; see ``export``), and the run's record."""

    model: nnx.Module
    losses: list[float]
    grad_norms: list[float]
    steps: int
    scored_tokens: int
    tokens: int
    seconds: float
    resumed_from: int | None
    n_truncated: int
    n_examples: int

    def summary(self) -> dict:
        return {"steps": self.steps, "examples": self.n_examples, "first_loss": _first(self.losses),
                "final_loss": _last(self.losses), "losses": self.losses, "tokens": self.tokens,
                "scored_tokens": self.scored_tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds > 0 else None,
                "resumed_from": self.resumed_from, "truncated_contexts": self.n_truncated}


def _first(values):
    return values[0] if values else None


def _last(values):
    return values[-1] if values else None


def finetune(model, tokenizer, examples: Sequence[Example], config: TrainConfig = TrainConfig(),
             out_dir: str | Path | None = None, *, mesh: Mesh | None = None,
             templates: Templates = DEFAULT_TEMPLATES, progress: bool = False,
             on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Fine-tune a copy of ``model`` on ``examples``; the caller's model is never modified.

    With ``out_dir``, checkpoints are written every ``config.save_every`` steps and at the end, and a run that
    finds checkpoints of the same run there continues from the newest one (same data order, same keys, same
    loss curve). A NaN/inf loss stops the run with ``TrainingDivergedError``; the last good checkpoint stays.
    """
    mesh = mesh or data_mesh()
    sequences = encode_examples(tokenizer, examples, config.max_length, templates)
    plan = plan_steps([len(s) for s in sequences], config.rows_per_step, config.epochs, config.seed,
                      max_steps=config.max_steps, group_by_length=config.group_by_length)
    total_steps = len(plan)

    checkpointer = None
    if out_dir is not None:
        fingerprint = {"model": model_fingerprint(model), "config": config.fingerprint(),
                       "data": sequences_fingerprint(sequences), "examples": len(sequences)}
        checkpointer = Checkpointer(Path(out_dir), fingerprint, keep=config.keep_checkpoints)

    model = nnx.clone(model)
    model.remat_layers = config.remat_layers
    if config.method == "lora":
        apply_lora(model, config.lora, seed=config.seed)
        trainable = nnx.LoRAParam
    else:
        trainable = nnx.Param
    split, params, frozen = split_model(model, trainable)
    optimizer = make_optimizer(config.learning_rate, total_steps, warmup_steps=min(config.warmup_steps, total_steps),
                               schedule=config.schedule, final_lr_ratio=config.final_lr_ratio,
                               weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                               b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    # A mesh with a "model" axis places parameters by the FSDP + tensor-parallel rules; a data mesh replicates.
    param_spec = param_partition(mesh) if MODEL_AXIS in mesh.axis_names else None
    state = init_state(params, optimizer, config.seed, mesh, param_spec)
    step_fn = make_train_step(split, optimizer, frozen, mesh, logits_chunk=config.logits_chunk,
                              dropout=config.method == "lora" and config.lora.dropout > 0, param_spec=param_spec)

    record = _Record()
    resumed_from = None
    if checkpointer is not None and checkpointer.latest_step() is not None:
        resumed_from = checkpointer.latest_step()
        state, record = _resume(checkpointer, resumed_from, state, plan, mesh, out_dir)

    rows = padded_rows(config.batch_size, mesh.shape[DATA_AXIS])
    shape = fixed_shape(sequences, config.max_length) if config.pad_to_max_length else None
    bar = _progress_bar(total_steps, int(state.step), progress)
    try:
        for step in range(int(state.step), total_steps):
            host_batch = make_batch(sequences, plan[step], config.grad_accum, rows, config.max_length,
                                    pad_id=int(tokenizer.eos_token_id), shape=shape)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, shard_batch(host_batch, mesh))  # dispatched; runs asynchronously
            record.add_pending(step, metrics, int(host_batch["valid"].sum()))
            bar.update(1)
            if on_step is not None:
                on_step(step + 1, metrics)
            done = step + 1
            saving = checkpointer is not None and (done % config.save_every == 0 or done == total_steps)
            if saving or done % config.log_every == 0 or done == total_steps:
                record.fetch(checkpointer)  # the only host sync: on logging and checkpoint steps
                bar.set_postfix(loss=f"{record.losses[-1]:.4f}", tok_s=f"{record.tokens_per_s():.0f}")
            record.seconds += time.perf_counter() - t0
            if saving:
                checkpointer.save(done, {"train": state, "plan": plan}, record.meta(done))
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.close()

    params = jax.tree.map(lambda x: jax.numpy.asarray(np.asarray(x)), state.params)  # off the mesh
    return TrainResult(model=split.merge(params, frozen), losses=record.losses, grad_norms=record.grad_norms,
                       steps=total_steps, scored_tokens=record.scored, tokens=record.tokens, seconds=record.seconds,
                       resumed_from=resumed_from, n_truncated=sum(s.context_dropped > 0 for s in sequences),
                       n_examples=len(sequences))


@dataclasses.dataclass
class _Record:
    """The run's curve and totals. Step metrics stay on the device until ``fetch`` (one transfer for many steps).

    seconds: time from dispatching each step until the loop moves on (host batch building and checkpoint writes
    excluded; device work overlapping the next step's host work is counted once)."""

    losses: list = dataclasses.field(default_factory=list)
    grad_norms: list = dataclasses.field(default_factory=list)
    scored: int = 0
    tokens: int = 0
    seconds: float = 0.0
    pending: list = dataclasses.field(default_factory=list)

    def add_pending(self, step: int, metrics: dict, n_tokens: int) -> None:
        self.pending.append((step, metrics, n_tokens))

    def fetch(self, checkpointer) -> None:
        """Bring pending metrics to the host; a non-finite step stops the run (its update was not applied)."""
        fetched = jax.device_get([metrics for _, metrics, _ in self.pending])
        for (step, _, n_tokens), metrics in zip(self.pending, fetched):
            if not bool(metrics["finite"]):
                _raise_diverged(step, metrics, checkpointer)
            self.losses.append(float(metrics["loss"]))
            self.grad_norms.append(float(metrics["grad_norm"]))
            self.scored += int(metrics["tokens"])
            self.tokens += n_tokens
        self.pending.clear()

    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def meta(self, done: int) -> dict:
        # Whole-run totals: a resumed run reports the tokens and step time of every step, not only its own.
        return {"losses": self.losses, "grad_norms": self.grad_norms, "scored_tokens": self.scored,
                "tokens": self.tokens, "seconds": self.seconds, "step": done}


def _raise_diverged(step: int, metrics: dict, checkpointer) -> None:
    if checkpointer is not None:
        checkpointer.wait()  # an asynchronous save of the last good step finishes first
    kept = checkpointer.latest_step() if checkpointer is not None else None
    where = (f"the last good checkpoint (step {kept}) is kept in {checkpointer.directory}"
             if kept is not None else "no checkpoint was written")
    raise TrainingDivergedError(
        f"loss became {float(metrics['loss'])} (grad norm {float(metrics['grad_norm'])}) at step {step + 1}; "
        f"{where}; lower the learning rate or check the data")


def _resume(checkpointer, resumed_from: int, state, plan, mesh, out_dir) -> tuple:
    """The state and record of the newest checkpoint, checked against this run's data order."""
    restored, meta = checkpointer.restore(resumed_from, {"train": state, "plan": plan})
    if not np.array_equal(np.asarray(restored["plan"]), plan):
        raise CheckpointMismatchError(f"checkpoint in {out_dir} has another data order; use a new directory")
    state = jax.device_put(restored["train"], jax.tree.map(lambda a: a.sharding, state))
    record = _Record(list(meta["losses"]), list(meta["grad_norms"]), int(meta["scored_tokens"]),
                     int(meta.get("tokens", 0)), float(meta.get("seconds", 0.0)))
    if int(state.step) != resumed_from:
        raise CheckpointMismatchError(f"checkpoint {resumed_from} in {out_dir} holds step {int(state.step)}")
    return state, record


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="finetune", disable=not enabled, smoothing=0.1)

