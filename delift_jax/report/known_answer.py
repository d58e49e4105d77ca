"""Known-answer mixtures: a pool drawn in equal parts from several built-in datasets, with a held-out target set
from one of them, so that the right picks for the target are known (those of the target's source).

Used by ``delift demo`` and ``scripts/bench_recovery.py``. Every source keeps its examples whose prompt has at most
``max_prompt_chars`` characters (the same filter for all sources; it bounds the cost of a pair on a CPU) and one
example per question (case- and whitespace-folded prompt). Per source, one seeded permutation
(``numpy.random.default_rng([seed, source index])``) is cut into three disjoint parts: the pool part, the
selection targets (what a task-specific selection sees) and the test targets (held out for evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.errors import DataError

SOURCES = ("asdiv", "boolq", "nq-open", "commonsenseqa")


@dataclasses.dataclass(frozen=True)
class SourceMixture:
    """pool: the examples of every source's pool part, in a seeded shuffled order (so that no source sits at the
    low indices, which greedy's lowest-index tie-break would favour); pool_source: the source index of each pool
    example; select / test: source name -> that source's selection targets / held-out test targets."""

    sources: tuple
    pool: list
    pool_source: np.ndarray
    select: dict
    test: dict

    @property
    def base_share(self) -> float:
        return 1.0 / len(self.sources)


def _folded(text: str) -> str:
    return " ".join(text.lower().split())


def usable_examples(name: str, max_prompt_chars: int, loader: Callable | None = None) -> list[Example]:
    """The built-in set's examples with a short enough prompt and a non-empty response, one per question."""
    from delift_jax.data import load_builtin

    seen, kept = set(), []
    for example in (loader or load_builtin)(name):
        key = _folded(example.prompt)
        if len(example.prompt) <= max_prompt_chars and example.response.strip() and key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def source_mixture(seed: int, sources: Sequence[str] = SOURCES, *, pool_per_source: int, select_targets: int,
                   test_targets: int, max_prompt_chars: int = 240, loader: Callable | None = None) -> SourceMixture:
    """Per source, a seeded draw of disjoint pool / selection-target / test-target parts (see the module doc)."""
    need = pool_per_source + select_targets + test_targets
    pool, pool_source, select, test = [], [], {}, {}
    for s, name in enumerate(sources):
        examples = usable_examples(name, max_prompt_chars, loader)
        if len(examples) < need:
            raise DataError(f"{name}: only {len(examples)} examples with a prompt of at most {max_prompt_chars} "
                            f"characters; need {need} (lower the part sizes or raise max_prompt_chars)")
        order = np.random.default_rng([seed, s]).permutation(len(examples))[:need]
        drawn = [examples[i] for i in order]
        pool += drawn[:pool_per_source]
        pool_source += [s] * pool_per_source
        select[name] = drawn[pool_per_source:pool_per_source + select_targets]
        test[name] = drawn[pool_per_source + select_targets:]
    # Interleave the sources: greedy breaks exact ties (common among the saturated gains of FL1MI/FLCG) towards the
    # lowest index, so a pool kept in source order would favour the first source. Stream [seed, len(sources)] is
    # disjoint from the per-source draws [seed, s].
    shuffle = np.random.default_rng([seed, len(sources)]).permutation(len(pool))
    return SourceMixture(tuple(sources), [pool[i] for i in shuffle], np.array(pool_source, np.int64)[shuffle],
                         select, test)


def composition(picks: Sequence[int], pool_source: np.ndarray, n_sources: int) -> np.ndarray:
    """How many picks come from each source: int64[n_sources]."""
    return np.bincount(np.asarray(pool_source)[np.asarray(picks, np.int64)], minlength=n_sources)


def precision(picks: Sequence[int], pool_source: np.ndarray, target: int) -> float:
    """Share of the picks that come from source ``target`` (NaN for no picks)."""
    picks = np.asarray(picks, np.int64)
    return float(np.mean(np.asarray(pool_source)[picks] == target)) if picks.size else float("nan")
