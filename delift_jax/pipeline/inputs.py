"""The inputs of a run as loaded records: ``Source`` (examples, and the raw records and input rows behind them)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from delift_jax.data.builtin import BUILTIN_DATASETS
from delift_jax.data.records import Example
from delift_jax.data.sources import load_dataset, source_name
from delift_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Source:
    """One loaded input: examples, and for a data file or in-memory records the raw records and 0-based input rows
    aligned with them (None for a built-in dataset or ``Example`` objects)."""

    name: str
    examples: list[Example]
    records: list | None
    rows: list[int] | None
    format: str

    def export_records(self, indices: Sequence[int]) -> list[dict]:
        """The records at ``indices`` in the input's own schema (prompt/response records for a built-in)."""
        if self.records is not None:
            return [dict(self.records[i]) for i in indices]
        return [{"prompt": self.examples[i].prompt, "response": self.examples[i].response} for i in indices]


def load_source(source, limit: int | None, what: str, data_options: dict | None = None) -> Source:
    """Load ``source`` (built-in name, data file, iterable of mappings or ``datasets.Dataset``); DataErrors name
    the input (``what``)."""
    options = dict(data_options or {})
    if isinstance(source, str) and source in BUILTIN_DATASETS and options.get("fields") is None:
        options.pop("fields", None)
    try:
        loaded = load_dataset(source, limit, **options)
    except DataError as exc:
        raise DataError(f"{what} {source_name(source)!r}: {exc}") from None
    rows = loaded.rows if loaded.records is not None else None
    return Source(source_name(source), list(loaded.examples), loaded.records, rows, loaded.report.format)
