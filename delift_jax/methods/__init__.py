"""Data-selection methods behind one signature (issue 6): DELIFT, DELIFT (SE), Random, Full, Initial, DEFT-UCS,
SelectIT and LESS-style.

    from delift_jax.methods import select
    selection = select("delift", pool=pool, budget=30, use_case="task", targets=bench, model=model,
                       tokenizer=tokenizer, seed=0)
    subset = selection.subset(pool)          # selection.indices are dataset indices into pool, in pick order

Every method: ``fn(*, pool, budget, use_case, targets, existing, model, tokenizer, seed, **options) -> Selection``.
``initial`` returns no indices: the pipeline then skips fine-tuning and evaluates the base model
(``selection.info["fine_tune"] is False``). ``full`` returns every index (the budget is ignored).
Unknown options raise a one-line DataError listing the valid ones.
"""

from delift_jax.methods.base import USE_CASES, Selection
from delift_jax.methods.registry import METHODS, canonical_name, get_method, select

__all__ = ["METHODS", "USE_CASES", "Selection", "canonical_name", "get_method", "select"]
