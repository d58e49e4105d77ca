"""What every selection method shares: the result type, the options base class, the use cases, the input checks.

Every method is a function with one keyword-only signature::

    fn(*, pool, budget, use_case, targets, existing, model, tokenizer, seed, options) -> MethodSelection

pool: the candidate examples; the returned indices point into it (dataset indices, never positions inside a
    cluster or a shard). budget: the number of picks k, an int in [1, len(pool)], or a fraction in (0, 1]
    (k = int(fraction * len(pool)), ``delift_jax.budget``). use_case: "instruction" (no targets), "task"
    (``targets`` are the benchmark examples the subset should serve) or "continual" (``existing`` is the data the
    model already has). seed: every random choice of a method derives from it; the same seed gives the same
    selection. options: the method's own frozen ``MethodOptions`` subclass, validated when it is built.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from delift_jax.budget import resolve_budget
from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.options import build_options

USE_CASES = ("instruction", "task", "continual")


@dataclasses.dataclass
class MethodSelection:
    """indices: int64 dataset indices into the pool, in selection order (distinct).
    scores: float64 per pick (the method's score or marginal gain of each pick, aligned with ``indices``), or None.
    info: JSON-friendly facts about the run (method, budget, parameters, counts).
    arrays: larger by-products (kernels, embeddings, per-example scores over the whole pool) for callers that want
    to save them; not needed to use the selection."""

    indices: np.ndarray
    scores: np.ndarray | None
    info: dict
    arrays: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if self.scores.shape != self.indices.shape:
                raise ValueError(f"scores {self.scores.shape} must align with indices {self.indices.shape}")
        if len(np.unique(self.indices)) != len(self.indices):
            raise ValueError("a selection must not repeat an index")

    def subset(self, pool: Sequence[Example]) -> list[Example]:
        """The selected examples, in selection order."""
        return [pool[int(i)] for i in self.indices]


def check_inputs(name: str, pool, use_case: str, targets, existing) -> None:
    """The checks every method shares (one-line DataErrors that say what to pass)."""
    if use_case not in USE_CASES:
        raise DataError(f"use_case {use_case!r} is unknown; choose one of {', '.join(USE_CASES)}")
    if pool is None or len(pool) == 0:
        raise DataError(f"{name}: the pool is empty; there is nothing to select from")
    if use_case == "task" and not targets:
        raise DataError(f"{name}: use_case 'task' needs the target (benchmark) examples: pass targets=[...]")
    if use_case == "continual" and not existing:
        raise DataError(f"{name}: use_case 'continual' needs the existing examples: pass existing=[...]")


def budget_count(budget, n: int, name: str) -> int:
    """k from an int count or a float fraction (``delift_jax.budget.resolve_budget``); errors name the method."""
    if budget is None:
        raise DataError(f"{name}: needs a budget (a count in [1, {n}] or a fraction in (0, 1])")
    try:
        return resolve_budget(budget, n, "pool")
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None


def need_model(name: str, model, tokenizer) -> None:
    if model is None or tokenizer is None:
        raise DataError(f"{name}: needs the model and its tokenizer (pass model=..., tokenizer=...)")


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options: a frozen dataclass whose subclasses check their values in
    ``__post_init__``. ``build`` turns a mapping into one; unknown keys are an error naming the valid ones (a typo
    would otherwise change nothing)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, method: str, options: MethodOptions | Mapping | None = None, **overrides) -> MethodOptions:
        """``options`` (an instance of ``cls`` or a mapping, e.g. a TOML table) with ``overrides`` on top,
        validated; nested configs may be given as mappings."""
        if isinstance(options, MethodOptions) and not isinstance(options, cls):
            raise DataError(f"{method}: options of type {type(options).__name__} given; expected {cls.__name__}")
        if isinstance(options, cls):
            values = {name: getattr(options, name) for name in cls.names()}  # shallow: nested configs stay as they are
        else:
            values = dict(options or {})
        values.update(overrides)
        return build_options(cls, values, method, noun="option")


@dataclasses.dataclass(frozen=True)
class NoOptions(MethodOptions):
    """Options of a method that takes none (random, full, initial)."""


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first; ties go to the lower index (stable)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise DataError(f"{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite; cannot rank them")
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)


def example_text(example: Example) -> str:
    """Prompt and response as one text (for sentence embeddings)."""
    return f"{example.prompt.rstrip()}\n{example.response.strip()}"


def check_choice(method: str, name: str, value, choices: Sequence[str]) -> None:
    """One-line DataError when an option's value is not one of ``choices``."""
    if value not in choices:
        raise DataError(f"{method}: {name} {value!r} is unknown; choose one of {', '.join(choices)}")


def check_fraction(method: str, name: str, value: float) -> None:
    """One-line DataError when an option that is a share of something lies outside [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise DataError(f"{method}: {name} must lie in [0, 1], got {value}")


def check_at_least(method: str, name: str, value, low: int = 1) -> None:
    if value is not None and value < low:
        raise DataError(f"{method}: {name} must be at least {low}, got {value}")
