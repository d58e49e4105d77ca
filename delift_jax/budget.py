"""Selection budgets: a fraction of the candidates or a whole count, resolved to a number of picks k.

A float in (0, 1] is a fraction (k = int(fraction · n), DESIGN §1.3, after absorbing float artefacts); an int >= 1
is the count k itself. ``check_budget`` validates the form before the candidates are known, ``resolve_budget`` turns
it into k for n candidates, ``parse_budget`` reads the command-line spelling. Every budget error is a
``BudgetError``, which is both a ``DataError`` (bad run input) and a ``SelectionError`` (bad optimizer input), so
each layer catches the class it already expects.
"""

from __future__ import annotations

import math
import numbers

from delift_jax.errors import DataError, SelectionError


class BudgetError(DataError, SelectionError):
    """A budget that is not a fraction in (0, 1] or a count the candidates can meet."""


def fraction_count(fraction: float, n: int) -> int:
    """int(fraction * n) as DESIGN §1.3 says, after absorbing float artefacts (0.29 * 100 = 28.999...96: 29 picks)."""
    return int(fraction * n + 1e-9)


def check_budget(budget) -> float | int:
    """A budget that is a fraction in (0, 1] or a count >= 1 (whether the candidates can meet it comes later)."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise BudgetError(f"budget {budget!r} must be a fraction in (0, 1] or a whole count of examples")
    if isinstance(budget, numbers.Integral):
        if budget < 1:
            raise BudgetError(f"budget {budget} is outside (0, 1]: give a fraction in (0, 1] or a count of at least 1")
        return int(budget)
    fraction = float(budget)
    if not math.isfinite(fraction) or not 0 < fraction <= 1:
        raise BudgetError(f"budget {fraction} is outside (0, 1]: give a fraction of the pool in (0, 1] "
                          "(or a whole count such as 30)")
    return fraction


def resolve_budget(budget, n_candidates: int, what: str = "candidates") -> int:
    """Number of picks for ``budget`` over ``n_candidates``; ``what`` names the candidates in the errors."""
    budget = check_budget(budget)
    if isinstance(budget, int):
        if budget > n_candidates:
            raise BudgetError(f"budget {budget} is above the {what} ({n_candidates} examples); the count must lie in "
                              f"[1, {n_candidates}]")
        return budget
    k = fraction_count(budget, n_candidates)
    if k < 1:
        raise BudgetError(f"budget {budget} of the {what} ({n_candidates} examples) selects nothing; raise the budget")
    return k


def parse_budget(text: str) -> float | int:
    """'0.3' -> 0.3 (a fraction), '30' -> 30 (a count), '1.0' -> 1.0 (all of the pool); a bare '1' is refused as
    ambiguous (one example, or all of them?)."""
    text = str(text).strip()
    if text.lstrip("+") == "1":
        raise BudgetError("budget '1' is ambiguous: write 1.0 for the whole pool, or a count of at least 2")
    try:
        value: float | int = int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise BudgetError(f"budget {text!r} is not a number; give a fraction in (0, 1] or a whole count") from None
    return check_budget(value)
