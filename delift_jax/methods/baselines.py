"""The three reference points: Random, Full data and Initial (the unmodified base model).

* ``random``: the first k of a permutation drawn from ``numpy.random.default_rng([seed, RANDOM_STREAM])`` (a seeded
  permutation prefix: a smaller budget with the same seed gives a prefix of the larger selection). The stream is its
  own: the splits draw from ``default_rng(seed)``, and a Random subset taken from that same stream was the first k of
  the very permutation that had cut the pool, so its picks were tied to the split (the same seed gave the same
  order). No other stream of the package uses ``RANDOM_STREAM`` as its second word.
* ``full``: every pool index, in order (the budget is ignored; the pipeline fine-tunes on all of the pool).
* ``initial``: no index at all. The downstream pipeline skips fine-tuning for an empty selection and evaluates the
  base model as it is (``info["fine_tune"] is False`` says so explicitly).

None of them takes options (``NoOptions``).
"""

from __future__ import annotations

import numpy as np

from delift_jax.methods.base import MethodSelection, NoOptions, budget_count, check_inputs

RANDOM_STREAM = 0x72616E64  # "rand" in ASCII: the Random baseline's stream, independent of the splits' default_rng(seed)


def random_selection(*, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                     tokenizer=None, seed: int = 0, options: NoOptions = NoOptions()) -> MethodSelection:
    check_inputs("random", pool, use_case, targets, existing)
    k = budget_count(budget, len(pool), "random")
    order = np.random.default_rng([int(seed), RANDOM_STREAM]).permutation(len(pool))
    info = {"method": "random", "budget": k, "seed": int(seed), "use_case": use_case, "fine_tune": True}
    return MethodSelection(order[:k], None, info)


def full_selection(*, pool, budget=None, use_case="instruction", targets=None, existing=None, model=None,
                   tokenizer=None, seed: int = 0, options: NoOptions = NoOptions()) -> MethodSelection:
    check_inputs("full", pool, use_case, targets, existing)
    info = {"method": "full", "budget": len(pool), "use_case": use_case, "fine_tune": True,
            "budget_ignored": budget is not None}
    return MethodSelection(np.arange(len(pool)), None, info)


def initial_selection(*, pool, budget=None, use_case="instruction", targets=None, existing=None, model=None,
                      tokenizer=None, seed: int = 0, options: NoOptions = NoOptions()) -> MethodSelection:
    check_inputs("initial", pool, use_case, targets, existing)
    info = {"method": "initial", "budget": 0, "use_case": use_case, "fine_tune": False}
    return MethodSelection(np.zeros(0, np.int64), None, info)
