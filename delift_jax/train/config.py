"""``TrainConfig``: every setting of a fine-tuning run (frozen, validated, JSON-able for fingerprints)."""

from __future__ import annotations

import dataclasses

from delift_jax.errors import DeliftError
from delift_jax.train.lora import LoRAConfig
from delift_jax.train.optim import SCHEDULES

METHODS = ("lora", "full")
# Settings that do not change what a run computes: a resume may change them.
_BOOKKEEPING = ("save_every", "keep_checkpoints", "log_every", "remat_layers")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A fine-tuning run.

    method: "lora" (train adapters only) or "full" (every parameter).
    batch_size: rows per micro-batch; grad_accum: micro-batches per optimizer step (the loss is the token-weighted
    mean over all of them). epochs: passes over the data, unless max_steps (optimizer steps) is given.
    max_length: longest sequence in tokens; longer contexts are cut from the left, responses never.
    pad_to_max_length: pad every step to max_length (one compiled shape) instead of length buckets.
    save_every: checkpoint every N steps (and at the end) when the run has an output directory.
    log_every: fetch step metrics from the device every N steps (and at checkpoints and the end); steps between
    run without waiting for the host.
    remat_layers: recompute each decoder layer's activations in the backward pass instead of keeping them (less
    memory for long sequences or large models, about one more forward of compute; same results).
    """

    method: str = "lora"
    lora: LoRAConfig = LoRAConfig()
    learning_rate: float = 2e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 1024
    seed: int = 0
    group_by_length: bool = True
    pad_to_max_length: bool = False
    logits_chunk: int = 512
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    remat_layers: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise DeliftError(f"method {self.method!r} unknown; choose from {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise DeliftError(f"schedule {self.schedule!r} unknown; choose from {', '.join(SCHEDULES)}")
        for name in ("batch_size", "grad_accum", "epochs", "logits_chunk", "save_every", "keep_checkpoints",
                     "log_every"):
            if getattr(self, name) < 1:
                raise DeliftError(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise DeliftError(f"max_steps={self.max_steps} must be at least 1")
        if self.max_length < 4:
            raise DeliftError(f"max_length={self.max_length} is too small; use at least 4")
        if not self.learning_rate > 0:
            raise DeliftError(f"learning_rate={self.learning_rate} must be positive")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise DeliftError("warmup_steps and weight_decay must not be negative")

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["lora"]["targets"] = list(self.lora.targets)
        return out

    def fingerprint(self) -> dict:
        """The settings that define what a run computes (bookkeeping excluded; LoRA only under LoRA)."""
        out = {k: v for k, v in self.to_dict().items() if k not in _BOOKKEEPING}
        if self.method != "lora":
            out.pop("lora")
        return out
