"""``RunConfig``: every setting of one ``delift run`` (frozen, validated, JSON-able), with documented defaults.

use_case: ``instruction`` (facility location over the pool kernel), ``task`` (FL mutual information with the
    target set's selection part as queries) or ``continual`` (FL conditional gain against the existing data).
budget: a fraction in (0, 1] of the selection pool (k = int(budget * n), at least one pick) or an int count in
    [1, n]. ``full`` ignores it and ``initial`` selects nothing.
methods: names from ``delift_jax.methods.METHODS`` (aliases like "DELIFT (SE)" are accepted), run in this order.
seed: drives the splits, every method's random choices, fine-tuning (data order, LoRA init) and sampling.
split: (train, validation, test) fractions of the evaluation source, default (0.8, 0.1, 0.1). For ``instruction``
    and ``continual`` the pool is split: selection sees only its train part, the test part is the held-out
    evaluation set, the validation part is reserved (never selected from, never trained on, never evaluated).
    For ``task`` the target (benchmark) set is split: its train + validation parts are the selection queries, its
    test part is the held-out evaluation set; the pool is not split (every pool example is a candidate).
limit / target_limit / existing_limit: keep the first N examples of each input (None: all).
kernel: ``KernelConfig`` of DELIFT's utility kernels (default: the authors' settings; on CPUs cap
    ``max_response_tokens``). train: ``TrainConfig`` of each fine-tuning run (default LoRA, one epoch).
generation: ``GenerationConfig`` of the evaluation (default greedy, 128 new tokens). metrics: evaluation metrics
    (default rouge, nll; see ``delift_jax.evaluate.pipeline.VALID_METRICS``). nll_max_length: longest scored
    sequence for ``nll``. method_options: extra keyword options per method name (e.g. ``{"delift": {"eta": 0.5}}``).
checkpoints: write fine-tuning checkpoints under each method's directory (a rerun resumes); default True.
icl_k: also evaluate the base (not fine-tuned) model with the ``icl_k`` examples of each method's subset nearest to
    each test prompt as in-context demonstrations (the DELIFT paper's ICL setting; fewer when the subset is
    smaller); 0 (default) skips it.
continual_start: ``existing`` (default): in the continual use case the model first fine-tunes on the existing
    data, and selection, every method's fine-tuning and the ``initial`` row start from that model (the model
    "already has" the existing data, as conditional gain assumes); ``base`` starts everything from the base model.
export_models: write each fine-tuned model (LoRA merged) as a Hugging Face directory ``<method>/model``.
"""

from __future__ import annotations

import dataclasses
import numbers

from delift_jax.errors import DataError
from delift_jax.evaluate.generate import GenerationConfig
from delift_jax.kernel import KernelConfig
from delift_jax.methods import METHODS, USE_CASES, canonical_name, get_method
from delift_jax.train import TrainConfig

DEFAULT_METHODS = ("delift", "random", "full", "initial")
DEFAULT_METRICS = ("rouge", "nll")
CONTINUAL_STARTS = ("existing", "base")


def check_budget(budget) -> float | int:
    """A budget that is a fraction in (0, 1] or a count >= 1 (the pool-size check comes with the data)."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise DataError(f"budget {budget!r} must be a fraction in (0, 1] or a whole count of examples")
    if isinstance(budget, numbers.Integral):
        if budget < 1:
            raise DataError(f"budget {budget} is outside (0, 1]: give a fraction in (0, 1] or a count of at least 1")
        return int(budget)
    budget = float(budget)
    if not 0 < budget <= 1:
        raise DataError(f"budget {budget} is outside (0, 1]: give a fraction of the pool in (0, 1] "
                        "(or a whole count such as 30)")
    return budget


def parse_budget(text: str) -> float | int:
    """'0.3' -> 0.3 (a fraction), '30' -> 30 (a count), '1.0' -> 1.0 (all of the pool); a bare '1' is refused as
    ambiguous (one example, or all of them?)."""
    text = str(text).strip()
    if text.lstrip("+") == "1":
        raise DataError("budget '1' is ambiguous: write 1.0 for the whole pool, or a count of at least 2")
    try:
        value: float | int = int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise DataError(f"budget {text!r} is not a number; give a fraction in (0, 1] or a whole count") from None
    return check_budget(value)


def check_methods(methods) -> tuple[str, ...]:
    """Canonical method names (aliases resolved, duplicates dropped); unknown names list the valid ones."""
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if str(m).strip()]
    if not names:
        raise DataError(f"no methods given; valid names: {', '.join(METHODS)}")
    for name in names:
        get_method(name)  # one-line DataError listing the valid names
    return tuple(dict.fromkeys(canonical_name(n) for n in names))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    use_case: str = "instruction"
    budget: float | int = 0.3
    methods: tuple = DEFAULT_METHODS
    seed: int = 0
    split: tuple = (0.8, 0.1, 0.1)
    limit: int | None = None
    target_limit: int | None = None
    existing_limit: int | None = None
    kernel: KernelConfig = KernelConfig()
    train: TrainConfig = TrainConfig()
    generation: GenerationConfig = GenerationConfig()
    metrics: tuple = DEFAULT_METRICS
    nll_max_length: int = 2048
    method_options: dict = dataclasses.field(default_factory=dict)
    checkpoints: bool = True
    icl_k: int = 0
    continual_start: str = "existing"
    export_models: bool = False

    def __post_init__(self):
        if self.use_case not in USE_CASES:
            raise DataError(f"use case {self.use_case!r} is unknown; choose one of {', '.join(USE_CASES)}")
        object.__setattr__(self, "budget", check_budget(self.budget))
        object.__setattr__(self, "methods", check_methods(self.methods))
        from delift_jax.evaluate.pipeline import parse_metrics

        object.__setattr__(self, "metrics", parse_metrics(self.metrics))
        split = tuple(float(f) for f in self.split)
        if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6 or split[2] <= 0:
            raise DataError(f"split fractions {tuple(self.split)} must be (train, validation, test), non-negative, "
                            "summing to 1, with a positive test fraction (the held-out evaluation set)")
        if self.use_case != "task" and split[0] <= 0:
            raise DataError(f"split fractions {split}: the train part is the selection pool and must be positive")
        object.__setattr__(self, "split", split)
        for name in ("limit", "target_limit", "existing_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name}={value} must be at least 1 (or None for all)")
        if isinstance(self.icl_k, bool) or not isinstance(self.icl_k, numbers.Integral) or self.icl_k < 0:
            raise DataError(f"icl_k={self.icl_k!r} must be a whole number of demonstrations >= 0 (0 turns ICL off)")
        if self.continual_start not in CONTINUAL_STARTS:
            raise DataError(f"continual_start {self.continual_start!r} is unknown; choose one of "
                            f"{', '.join(CONTINUAL_STARTS)}")
        unknown = sorted(set(map(canonical_name, self.method_options)) - set(self.methods))
        if unknown:
            raise DataError(f"method_options for {', '.join(unknown)}, which are not among the methods run "
                            f"({', '.join(self.methods)})")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["kernel"] = {k: v for k, v in dataclasses.asdict(self.kernel).items() if k != "templates"}
        out["train"] = self.train.to_dict()
        out["generation"] = dataclasses.asdict(self.generation)
        out["methods"] = list(self.methods)
        out["metrics"] = list(self.metrics)
        out["split"] = list(self.split)
        out["method_options"] = {m: sorted(o) for m, o in self.method_options.items()}
        return out
