"""The three reference points: Random, Full data and Initial (the unmodified base model).

* ``random``: the first k of a permutation drawn from ``numpy.random.default_rng(seed)`` (a seeded permutation
  prefix: a smaller budget with the same seed gives a prefix of the larger selection).
* ``full``: every pool index, in order (the budget is ignored; the pipeline fine-tunes on all of the pool).
* ``initial``: no index at all. The downstream pipeline skips fine-tuning for an empty selection and evaluates the
  base model as it is (``info["fine_tune"] is False`` says so explicitly).
"""

from __future__ import annotations

import numpy as np

from delift_jax.methods.base import Selection, budget_count, check_inputs, reject_options


def random_selection(*, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                     tokenizer=None, seed: int = 0, **options) -> Selection:
    check_inputs("random", pool, use_case, targets, existing)
    reject_options("random", options, ())
    k = budget_count(budget, len(pool), "random")
    order = np.random.default_rng(int(seed)).permutation(len(pool))
    return Selection(order[:k], None, {"method": "random", "budget": k, "seed": int(seed), "use_case": use_case,
                                       "fine_tune": True})


def full_selection(*, pool, budget=None, use_case="instruction", targets=None, existing=None, model=None,
                   tokenizer=None, seed: int = 0, **options) -> Selection:
    check_inputs("full", pool, use_case, targets, existing)
    reject_options("full", options, ())
    return Selection(np.arange(len(pool)), None, {"method": "full", "budget": len(pool), "use_case": use_case,
                                                   "fine_tune": True, "budget_ignored": budget is not None})


def initial_selection(*, pool, budget=None, use_case="instruction", targets=None, existing=None, model=None,
                      tokenizer=None, seed: int = 0, **options) -> Selection:
    check_inputs("initial", pool, use_case, targets, existing)
    reject_options("initial", options, ())
    return Selection(np.zeros(0, np.int64), None, {"method": "initial", "budget": 0, "use_case": use_case,
                                                    "fine_tune": False})
