"""The method registry: names -> functions of one signature, and ``select`` to call one by name."""

from __future__ import annotations

import re
from typing import Callable

from delift_jax.errors import DataError
from delift_jax.methods.base import Selection
from delift_jax.methods.baselines import full_selection, initial_selection, random_selection
from delift_jax.methods.deft_ucs import deft_ucs_selection
from delift_jax.methods.delift import delift_selection
from delift_jax.methods.delift_se import delift_se_selection
from delift_jax.methods.less import less_selection
from delift_jax.methods.selectit import selectit_selection

METHODS: dict[str, Callable[..., Selection]] = {
    "delift": delift_selection,
    "delift_se": delift_se_selection,
    "random": random_selection,
    "full": full_selection,
    "initial": initial_selection,
    "deft_ucs": deft_ucs_selection,
    "selectit": selectit_selection,
    "less": less_selection,
}


def canonical_name(name: str) -> str:
    """"DELIFT (SE)" -> "delift_se", "DEFT-UCS" -> "deft_ucs", "LESS-style" -> "less"."""
    key = re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
    return {"less_style": "less", "full_data": "full", "deftucs": "deft_ucs", "deliftse": "delift_se"}.get(key, key)


def get_method(name: str) -> Callable[..., Selection]:
    key = canonical_name(name)
    if key not in METHODS:
        raise DataError(f"unknown selection method {name!r}; valid names: {', '.join(METHODS)}")
    return METHODS[key]


def select(method_name: str, *, pool, budget=None, use_case: str = "instruction", targets=None, existing=None,
           model=None, tokenizer=None, seed: int = 0, **options) -> Selection:
    """Run the selection method ``method_name`` (see ``METHODS``); returns dataset indices into ``pool``."""
    return get_method(method_name)(pool=pool, budget=budget, use_case=use_case, targets=targets, existing=existing,
                                   model=model, tokenizer=tokenizer, seed=seed, **options)
