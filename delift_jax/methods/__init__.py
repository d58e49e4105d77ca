"""Data-selection methods behind one signature: DELIFT, DELIFT (SE), Random, Full, Initial, DEFT-UCS, SelectIT and
LESS-style.

    from delift_jax.methods import select
    selection = select("delift", pool=pool, budget=30, use_case="task", targets=bench, model=model,
                       tokenizer=tokenizer, seed=0, eta=0.5)
    subset = selection.subset(pool)          # selection.indices are dataset indices into pool, in pick order

Every method: ``fn(*, pool, budget, use_case, targets, existing, model, tokenizer, seed, options)
-> MethodSelection`` with ``options`` its own frozen options class (``METHODS[name].options``, e.g.
``DeliftOptions``), validated when built. ``initial`` returns no indices: the pipeline then skips fine-tuning and
evaluates the base model (``selection.info["fine_tune"] is False``). ``full`` returns every index (the budget is
ignored). Unknown options raise a one-line DataError listing the valid ones.
"""

from delift_jax.methods.base import USE_CASES, MethodOptions, MethodSelection, NoOptions
from delift_jax.methods.deft_ucs import DeftUcsOptions
from delift_jax.methods.delift import DeliftOptions
from delift_jax.methods.delift_se import DeliftSeOptions
from delift_jax.methods.less import LessOptions
from delift_jax.methods.registry import METHODS, Method, canonical_name, get_method, method_options, select
from delift_jax.methods.selectit import SelectItOptions

# The name under which earlier releases exported the result type (``delift_jax.select`` has its own greedy result).
Selection = MethodSelection

__all__ = ["METHODS", "USE_CASES", "DeftUcsOptions", "DeliftOptions", "DeliftSeOptions", "LessOptions", "Method",
           "MethodOptions", "MethodSelection", "NoOptions", "SelectItOptions", "Selection", "canonical_name",
           "get_method", "method_options", "select"]
