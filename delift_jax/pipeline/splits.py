"""``make_splits``: the held-out test split and what selection may see, with the leakage checks (pure).

instruction / continual: the pool is split (train, validation, test); selection sees only the train part, the test
part is the held-out evaluation set, the validation part is reserved. task: the target set is split; its train +
validation parts are the selection queries, its test part the evaluation set; every pool example is a candidate.
Pool, query and existing examples asking a held-out question (same prompt, case- and whitespace-folded) are dropped,
and ``check_disjoint`` asserts it before anything is selected.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from delift_jax.budget import resolve_budget
from delift_jax.data.records import Example
from delift_jax.data.splits import check_disjoint, prompt_key, shared_examples, split_indices
from delift_jax.errors import DataError
from delift_jax.pipeline.inputs import Source

log = logging.getLogger("delift_jax.pipeline")


@dataclasses.dataclass(frozen=True)
class Splits:
    """What selection, training and evaluation may use; indices point into the loaded inputs.

    candidates / pool: the selection pool (indices into the loaded pool, and those examples). queries: the target
    set's selection part (task), existing: the existing data kept (continual); None where the use case has none.
    test_indices / test: the held-out evaluation set, from ``evaluation_source`` ("pool" or "target").
    budget_k: picks for the run's budget. dropped: pool examples dropped as asking a held-out question.
    record: every split as 0-based indices (``splits.json``)."""

    use_case: str
    candidates: tuple[int, ...]
    pool: tuple[Example, ...]
    queries: tuple[Example, ...] | None
    existing: tuple[Example, ...] | None
    test_indices: tuple[int, ...]
    test: tuple[Example, ...]
    evaluation_source: str
    budget_k: int
    dropped: int
    record: dict

    def summary(self) -> dict:
        """Sizes for ``results.json``."""
        return {"selection_pool": len(self.pool), "budget_k": self.budget_k,
                "selection_queries": len(self.queries) if self.queries is not None else None,
                "existing": len(self.existing) if self.existing is not None else None,
                "evaluation_source": self.evaluation_source, "test": len(self.test),
                "dropped_as_test_duplicates": self.dropped}


def split_source(source: Source, fractions, seed: int, what: str) -> tuple[list[int], list[int], list[int]]:
    """Seeded (train, validation, test) indices of ``source``; one question (folded prompt) stays in one split."""
    try:
        return split_indices(len(source.examples), fractions, seed, [prompt_key(e) for e in source.examples])
    except DataError as exc:
        raise DataError(f"{what} {source.name!r}: {exc}") from None


def drop_shared(indices: list[int], source: Source, held_out: Sequence[Example], what: str) -> tuple[list[int], int]:
    """Indices whose prompt (case- and whitespace-folded) is no held-out test prompt, and how many were dropped
    (with a warning): a pool example asking a test question leaks its answer even with another response."""
    shared = set(shared_examples(held_out, [source.examples[i] for i in indices], prompt_key))
    if shared:
        log.warning("%s: %d example(s) asking a held-out test question were dropped from selection",
                    what, len(shared))
    return [i for pos, i in enumerate(indices) if pos not in shared], len(shared)


def _kept(source: Source, indices: list[int], test: Sequence[Example], what: str
          ) -> tuple[tuple[Example, ...], list[int]]:
    """(examples, indices) of ``source`` at ``indices`` that ask no held-out question; an error if none is left."""
    kept, _ = drop_shared(indices, source, test, what)
    if not kept:
        raise DataError(f"{what} {source.name!r}: every example duplicates a held-out test example")
    examples = tuple(source.examples[i] for i in kept)
    check_disjoint(examples, test, what="held-out test", key=prompt_key)
    return examples, kept


def make_splits(use_case: str, pool: Source, target: Source | None, prior: Source | None, *, fractions,
                seed: int, budget) -> Splits:
    """The run's splits (see the module docstring); one-line DataErrors for inputs that leave nothing to do."""
    record: dict = {"seed": seed, "fractions": list(fractions)}
    queries = query_indices = None
    if use_case == "task":
        t_train, t_val, t_test = split_source(target, fractions, seed, "target set")
        query_indices = sorted(t_train + t_val)
        if not query_indices:
            raise DataError(f"target set {target.name!r}: no examples left for selection after holding out the test "
                            f"split ({len(t_test)} of {len(target.examples)}); raise the train/validation fractions")
        test_source, test_indices, candidates = target, t_test, list(range(len(pool.examples)))
        record["target"] = {"n": len(target.examples), "train": t_train, "validation": t_val, "test": t_test}
    else:
        p_train, p_val, p_test = split_source(pool, fractions, seed, "data")
        test_source, test_indices, candidates = pool, p_test, p_train
        record["pool"] = {"n": len(pool.examples), "train": p_train, "validation": p_val, "test": p_test}
    test = tuple(test_source.examples[i] for i in test_indices)
    candidates, dropped = drop_shared(candidates, pool, test, "pool")
    if not candidates:
        raise DataError(f"data {pool.name!r}: the selection pool is empty after holding out the test split")
    pool_examples = tuple(pool.examples[i] for i in candidates)
    check_disjoint(pool_examples, test, what="held-out test", key=prompt_key)
    if query_indices is not None:
        queries, query_indices = _kept(target, query_indices, test, "target set")
    existing = None
    if prior is not None:
        existing, used = _kept(prior, list(range(len(prior.examples))), test, "existing data")
        record["existing"] = {"n": len(prior.examples), "used": used}
    source = "target" if use_case == "task" else "pool"
    k = resolve_budget(budget, len(pool_examples), "selection pool (after holding out the test split)")
    record.update(selection_pool=candidates, selection_queries=query_indices,
                  evaluation={"source": source, "indices": test_indices})
    return Splits(use_case, tuple(candidates), pool_examples, queries, existing, tuple(test_indices), test, source,
                  k, dropped, record)
