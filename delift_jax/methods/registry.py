"""The method registry: each name maps to its function and its options class; ``select`` runs one by name."""

from __future__ import annotations

import re
from typing import Callable, Mapping, NamedTuple

from delift_jax.errors import DataError
from delift_jax.methods.base import MethodOptions, MethodSelection, NoOptions
from delift_jax.methods.baselines import full_selection, initial_selection, random_selection
from delift_jax.methods.deft_ucs import DeftUcsOptions, deft_ucs_selection
from delift_jax.methods.delift import DeliftOptions, delift_selection
from delift_jax.methods.delift_se import DeliftSeOptions, delift_se_selection
from delift_jax.methods.less import LessOptions, less_selection
from delift_jax.methods.selectit import SelectItOptions, selectit_selection


class Method(NamedTuple):
    """A selection method: ``function(*, pool, budget, ..., options) -> MethodSelection`` and the frozen options
    class its ``options`` must be."""

    function: Callable[..., MethodSelection]
    options: type[MethodOptions]


METHODS: dict[str, Method] = {
    "delift": Method(delift_selection, DeliftOptions),
    "delift_se": Method(delift_se_selection, DeliftSeOptions),
    "random": Method(random_selection, NoOptions),
    "full": Method(full_selection, NoOptions),
    "initial": Method(initial_selection, NoOptions),
    "deft_ucs": Method(deft_ucs_selection, DeftUcsOptions),
    "selectit": Method(selectit_selection, SelectItOptions),
    "less": Method(less_selection, LessOptions),
}


def canonical_name(name: str) -> str:
    """"DELIFT (SE)" -> "delift_se", "DEFT-UCS" -> "deft_ucs", "LESS-style" -> "less"."""
    key = re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
    return {"less_style": "less", "full_data": "full", "deftucs": "deft_ucs", "deliftse": "delift_se"}.get(key, key)


def get_method(name: str) -> Method:
    """The registry entry of ``name`` (aliases accepted); unknown names are a one-line error listing the valid ones."""
    key = canonical_name(name)
    if key not in METHODS:
        raise DataError(f"unknown selection method {name!r}; valid names: {', '.join(METHODS)}")
    return METHODS[key]


def method_options(name: str, options: MethodOptions | Mapping | None = None, **overrides) -> MethodOptions:
    """The validated options of method ``name`` from an options object or a mapping, with ``overrides`` on top."""
    return get_method(name).options.build(canonical_name(name), options, **overrides)


def select(method_name: str, *, pool, budget=None, use_case: str = "instruction", targets=None, existing=None,
           model=None, tokenizer=None, seed: int = 0, options: MethodOptions | Mapping | None = None,
           **option_values) -> MethodSelection:
    """Run the selection method ``method_name`` (see ``METHODS``); returns dataset indices into ``pool``.

    Options come as ``options`` (the method's options object or a mapping) and/or as keywords, e.g.
    ``select("delift", ..., eta=0.5)``; unknown ones are a one-line error naming the valid ones."""
    method = get_method(method_name)
    resolved = method_options(method_name, options, **option_values)
    return method.function(pool=pool, budget=budget, use_case=use_case, targets=targets, existing=existing,
                           model=model, tokenizer=tokenizer, seed=seed, options=resolved)
