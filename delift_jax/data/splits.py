"""Seeded, disjoint train / validation / test splits.

Splits are made over indices, so they are disjoint and together cover the data by construction:
a permutation from ``numpy.random.default_rng(seed)`` orders the items (groups of identical examples when
``group_duplicates=True``, the default, so an example and its exact copy never land in two splits); the first
items fill the test split, the next the validation split, the rest is training. Each split keeps the original
order. Sizes: ``round(fraction * n)`` for validation and test (at least 1 when the fraction is positive), training
gets the rest; with duplicate groups a split may exceed its size by less than one group.
The same data, fractions and seed give the same splits on every machine (NumPy's PCG64 stream is stable).
"""

from __future__ import annotations

from typing import Hashable, Sequence, TypeVar

import numpy as np

from delift_jax.data.records import Example
from delift_jax.errors import DataError

T = TypeVar("T")
SPLIT_NAMES = ("train", "validation", "test")


class SplitError(DataError):
    """Bad split fractions, too little data to split, or splits that share examples."""


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise SplitError(f"split fractions must be (train, validation, test), got {tuple(fractions)}")
    train, val, test = (float(f) for f in fractions)
    if min(train, val, test) < 0 or abs(train + val + test - 1.0) > 1e-6:
        raise SplitError(f"split fractions {tuple(fractions)} must be non-negative and sum to 1")
    return train, val, test


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  groups: Sequence[Hashable] | None = None) -> tuple[list[int], list[int], list[int]]:
    """Sorted index lists (train, validation, test) over ``range(n)``: disjoint, covering, deterministic for a seed.

    ``groups`` (one key per index) keeps all indices with the same key in the same split.
    """
    train_f, val_f, test_f = _check_fractions(fractions)
    if groups is not None and len(groups) != n:
        raise SplitError(f"{len(groups)} group keys for {n} items")
    sizes = [0 if f == 0 else max(1, int(round(f * n))) for f in (test_f, val_f)]
    if n - sum(sizes) < (1 if train_f > 0 else 0):
        raise SplitError(f"{n} examples are too few for split fractions {tuple(fractions)}: validation and test "
                         f"would take {sizes[1]} and {sizes[0]}, leaving no training example")
    if groups is None:
        units = [[i] for i in range(n)]
    else:
        first_seen: dict = {}
        for i, key in enumerate(groups):
            first_seen.setdefault(key, []).append(i)
        units = list(first_seen.values())
    order = np.random.default_rng(seed).permutation(len(units))
    out: list[list[int]] = [[], [], []]           # test, validation, train
    slot = 0
    for u in order:
        while slot < 2 and len(out[slot]) >= sizes[slot]:
            slot += 1
        out[slot].extend(units[u])
    test, val, train = (sorted(part) for part in out)
    return train, val, test


def example_key(example: Example) -> tuple[str, str]:
    return example.prompt, example.response


def prompt_key(example: Example) -> str:
    """The prompt, case- and whitespace-folded: two examples asking the same thing share it (whatever their
    responses), so the stricter leakage checks use it."""
    return " ".join(example.prompt.lower().split())


def split_examples(examples: Sequence[T], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, *,
                   group_duplicates: bool = True) -> tuple[list[T], list[T], list[T]]:
    """(train, validation, test) lists of examples; see the module docstring. Examples keep their order."""
    keys = [example_key(e) for e in examples] if group_duplicates else None
    parts = split_indices(len(examples), fractions, seed, keys)
    return tuple([examples[i] for i in part] for part in parts)  # type: ignore[return-value]


def shared_examples(a: Sequence[Example], b: Sequence[Example], key=example_key) -> list[int]:
    """Indices into ``b`` of examples that also occur in ``a`` (same ``key``: by default prompt and response;
    ``prompt_key`` matches the same question whatever its response)."""
    seen = {key(e) for e in a}
    return [i for i, e in enumerate(b) if key(e) in seen]


def check_disjoint(pool: Sequence[Example], held_out: Sequence[Example], *, what: str = "held-out",
                   key=example_key) -> None:
    """Raise ``SplitError`` if any held-out example also occurs (same ``key``) in the pool used for selection or
    training."""
    shared = shared_examples(pool, held_out, key)
    if shared:
        raise SplitError(f"{len(shared)} of {len(held_out)} {what} examples also occur in the selection pool "
                         f"(e.g. {what} example {shared[0]}); the held-out data must stay out of selection")
