"""What every selection method shares: the result type, the use cases, and the input checks.

Every method is a function with one keyword-only signature::

    fn(*, pool, budget, use_case, targets, existing, model, tokenizer, seed, **options) -> Selection

pool: the candidate examples; the returned indices point into it (dataset indices, never positions inside a
    cluster or a shard). budget: the number of picks k, an int in [1, len(pool)], or a fraction in (0, 1]
    (k = int(fraction * len(pool))). use_case: "instruction" (no targets), "task" (``targets`` are the benchmark
    examples the subset should serve) or "continual" (``existing`` is the data the model already has).
seed: every random choice of a method derives from it; the same seed gives the same selection.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.select.maximize import resolve_budget

USE_CASES = ("instruction", "task", "continual")


@dataclasses.dataclass
class Selection:
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
    """k from an int count or a float fraction (see ``select.resolve_budget``); errors name the method."""
    if budget is None:
        raise DataError(f"{name}: needs a budget (a count in [1, {n}] or a fraction in (0, 1])")
    try:
        return resolve_budget(budget, n)
    except Exception as exc:  # SelectionError: re-raise as a DataError naming the method
        raise DataError(f"{name}: {exc}") from None


def need_model(name: str, model, tokenizer) -> None:
    if model is None or tokenizer is None:
        raise DataError(f"{name}: needs the model and its tokenizer (pass model=..., tokenizer=...)")


def reject_options(name: str, options: dict, allowed: Sequence[str]) -> None:
    """Unknown keyword options are an error, not silently ignored (a typo would otherwise change nothing)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; valid options: "
                        f"{', '.join(sorted(allowed)) or 'none'}")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first; ties go to the lower index (stable)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise DataError(f"{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite; cannot rank them")
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)


def example_text(example: Example) -> str:
    """Prompt and response as one text (for sentence embeddings)."""
    return f"{example.prompt.rstrip()}\n{example.response.strip()}"
