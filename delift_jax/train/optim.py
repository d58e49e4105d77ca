"""The optimizer: an explicit Optax chain.

    clip_by_global_norm(max_grad_norm)
    -> adamw(schedule, b1, b2, eps, weight_decay, mask=decay_mask)

schedule: linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then cosine decay to
``learning_rate * final_lr_ratio`` at ``total_steps`` ("cosine") or flat ("constant").

Weight decay applies to matrices only: LoRA A/B and linear kernels. Biases, RMSNorm scales and the embedding
table (also the tied output head) are never decayed. Parameters are addressed by their dotted NNX path
(``layers.attn.q_proj.lora_a``), so the mask is a plain function of names.

Gradient accumulation is not an Optax wrapper here: the train step sums per-token gradients over its micro-batches
and divides by the total number of scored tokens, so k micro-batches of b rows equal one batch of k*b rows.
"""

from __future__ import annotations

import dataclasses

import optax

from delift_jax.errors import DeliftError

SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                           kind: str = "cosine", final_lr_ratio: float = 0.0) -> optax.Schedule:
    """Warmup + cosine or warmup + constant; ``total_steps`` counts optimizer updates."""
    if kind not in SCHEDULES:
        raise DeliftError(f"schedule {kind!r} unknown; choose from {', '.join(SCHEDULES)}")
    if learning_rate <= 0:
        raise DeliftError(f"learning rate {learning_rate} must be positive")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise DeliftError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")
    if kind == "constant":
        if warmup_steps == 0:
            return optax.constant_schedule(learning_rate)
        return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps),
                                     optax.constant_schedule(learning_rate)], [warmup_steps])
    return optax.warmup_cosine_decay_schedule(0.0 if warmup_steps else learning_rate, learning_rate,
                                              warmup_steps, max(total_steps, warmup_steps + 1),
                                              end_value=learning_rate * final_lr_ratio)


def decays(name: str) -> bool:
    """Whether weight decay applies to the parameter at dotted path ``name``."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("lora_a", "lora_b"):
        return True
    if leaf == "kernel":
        return not name.startswith("embed.")
    return False  # bias, scale (norms), embedding


def decay_mask(params: dict) -> dict:
    """The AdamW mask for a flat ``{dotted name: array}`` parameter dict."""
    return {name: decays(name) for name in params}


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optimizer's settings; behaves as an ``optax.GradientTransformation`` (``init``/``update``).

    Equal settings compare and hash equal, so a jitted step that takes the optimizer as a static argument is
    compiled once per model structure and settings, not once per run.
    """

    learning_rate: float
    total_steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        learning_rate_schedule(self.learning_rate, self.total_steps, self.warmup_steps, self.schedule,
                               self.final_lr_ratio)  # validates

    def transform(self) -> optax.GradientTransformation:
        lr = learning_rate_schedule(self.learning_rate, self.total_steps, self.warmup_steps, self.schedule,
                                    self.final_lr_ratio)
        parts = []
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            parts.append(optax.clip_by_global_norm(self.max_grad_norm))
        parts.append(optax.adamw(lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay,
                                 mask=decay_mask))
        return optax.chain(*parts)

    def init(self, params):
        return self.transform().init(params)

    def update(self, grads, state, params=None):
        return self.transform().update(grads, state, params)


def make_optimizer(learning_rate: float, total_steps: int, *, warmup_steps: int = 0, schedule: str = "cosine",
                   final_lr_ratio: float = 0.0, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """``clip_by_global_norm -> adamw`` for flat parameter dicts (see the module docstring)."""
    if schedule == "constant" and warmup_steps == 0:
        total_steps = 1  # the schedule does not depend on it: equal optimizers (and one compilation)
    return Optimizer(learning_rate, total_steps, warmup_steps, schedule, final_lr_ratio, weight_decay,
                     max_grad_norm, b1, b2, eps)
