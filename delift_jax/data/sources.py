"""Read examples from a built-in dataset name or a user's JSON/JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

from delift_jax.data.builtin import BUILTIN_DATASETS, load_builtin
from delift_jax.data.records import Example, example_from_record
from delift_jax.errors import DataError


def read_records(path: Path) -> list[dict]:
    """Records of a ``.jsonl`` (one object per line) or ``.json`` (a list of objects) file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; re-encode it as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} is empty")
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(records, list):
            raise DataError(f"{path} must hold a JSON list of records")
        return records
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {line_no} is not valid JSON ({exc.msg})") from None
    return records


def load_examples(source: str, limit: int | None = None) -> list[Example]:
    """Examples from a built-in dataset name or a JSON/JSONL file path."""
    if source in BUILTIN_DATASETS:
        return load_builtin(source, limit=limit)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data {source!r} is neither a file nor a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    records = read_records(path)
    examples = []
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path} record {row} is not an object")
        examples.append(example_from_record(record, row))
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise DataError(f"{path} holds no records")
    return examples
