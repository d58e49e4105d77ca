"""Long-format metric rows (one per method × budget × seed × metric), CSV I/O and mean ± std markdown tables."""

from __future__ import annotations

import csv
import math
import numbers
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

CSV_FIELDS = ("use_case", "method", "budget", "seed", "selected", "metric", "value")


def metric_rows(results: Mapping, budget=None, seed=None) -> list[dict]:
    """One row per (method, metric) of a ``run_use_case`` results dict: every finite numeric metric of the
    held-out evaluation. ``budget`` / ``seed`` default to the run's own config values."""
    config = results.get("config", {})
    budget = config.get("budget") if budget is None else budget
    seed = config.get("seed") if seed is None else seed
    rows = []
    for method, entry in results.get("methods", {}).items():
        for metric, value in (entry.get("metrics") or {}).items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                continue
            rows.append({"use_case": results.get("use_case"), "method": method, "budget": budget, "seed": seed,
                         "selected": entry.get("selected"), "metric": metric, "value": float(value)})
    return rows


def write_csv(rows: Iterable[Mapping], path) -> Path:
    """Write the rows atomically (a crash leaves the previous CSV or the new one, never a cut file)."""
    import io

    from delift_jax.atomic_io import atomic_write_text

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return atomic_write_text(path, buffer.getvalue())


def read_csv(path) -> list[dict]:
    """Rows written by ``write_csv`` with budget / seed / selected / value parsed back to numbers."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            budget = row["budget"]
            row["budget"] = int(budget) if budget.lstrip("+-").isdigit() else float(budget)
            row["seed"] = int(row["seed"])
            row["selected"] = int(row["selected"]) if row["selected"] not in ("", "None") else None
            row["value"] = float(row["value"])
            rows.append(row)
    return rows


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def summarize(rows: Sequence[Mapping]) -> dict:
    """{metric: {method: {budget: (mean, std, n)}}} over seeds (std: population std, 0 for one seed);
    methods and metrics in first-seen order, budgets sorted."""
    groups: dict = defaultdict(list)
    for row in rows:
        groups[(row["metric"], row["method"], row["budget"])].append(float(row["value"]))
    out: dict = {}
    for metric in _ordered(r["metric"] for r in rows):
        out[metric] = {}
        for method in _ordered(r["method"] for r in rows):
            budgets = sorted({r["budget"] for r in rows if r["metric"] == metric and r["method"] == method})
            cells = {}
            for budget in budgets:
                values = np.asarray(groups[(metric, method, budget)])
                cells[budget] = (float(values.mean()), float(values.std()), int(values.size))
            if cells:
                out[metric][method] = cells
    return out


def markdown_summary(rows: Sequence[Mapping], metrics: Sequence[str] | None = None, digits: int = 4,
                     title: str | None = None) -> str:
    """One markdown table per metric: rows = methods, columns = budgets, cells ``mean ± std (n seeds)``."""
    summary = summarize(rows)
    lines = [f"# {title}", ""] if title else []
    for metric in metrics or list(summary):
        if metric not in summary:
            continue
        budgets = sorted({b for cells in summary[metric].values() for b in cells})
        lines += [f"## {metric}", "", "| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method, cells in summary[metric].items():
            row = []
            for budget in budgets:
                if budget in cells:
                    mean, std, n = cells[budget]
                    row.append(f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})")
                else:
                    row.append("-")
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)
