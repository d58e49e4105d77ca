"""Results on disk: strict JSON (NaN/inf written as null), written atomically, and a markdown summary table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from delift_jax.atomic_io import atomic_write_text

# Summary columns shown in the markdown table, in this order (those present).
TABLE_COLUMNS = ("rouge1", "rougeL", "embedding_cosine", "token_nll", "perplexity", "accuracy", "contains",
                 "judge_score", "judge_parse_failures", "n_prompt_truncated", "generation_tokens_per_second")


def to_jsonable(value):
    """numpy scalars/arrays to Python, non-finite floats to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as strict, indented JSON; the file appears complete or not at all."""
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def markdown_table(conditions: dict) -> str:
    """One row per condition, one column per summary metric present in any condition."""
    columns = [c for c in TABLE_COLUMNS if any(c in s for s in conditions.values())]
    lines = ["| condition | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, summary in conditions.items():
        cells = [_format(summary.get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)
