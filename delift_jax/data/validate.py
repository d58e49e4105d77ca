"""Validation of mapped examples: empty responses and exact duplicates are counted and reported, never dropped
silently. ``drop_empty=True`` (``--drop-empty``) drops examples whose response is blank; ``dedupe=True``
(``--dedupe``) keeps the first of each group of identical (prompt, response) examples. A dataset whose responses are
all blank is an error. The messages name the command-line flag first (most readers run ``delift``), the keyword second.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Sequence

from delift_jax.data.records import Example
from delift_jax.errors import DataError

log = logging.getLogger("delift_jax.data")


class EmptyResponsesError(DataError):
    """Every response of a dataset is empty."""


@dataclasses.dataclass(frozen=True)
class DataReport:
    """What loading found. Row numbers are 1-based positions in the source (before anything was dropped)."""

    source: str
    format: str
    n_records: int
    empty_rows: tuple[int, ...] = ()
    duplicate_groups: tuple[tuple[int, ...], ...] = ()   # rows of each group of identical examples, first kept
    dropped_empty: bool = False
    deduplicated: bool = False
    n_examples: int = 0

    @property
    def n_duplicates(self) -> int:
        """Examples that repeat an earlier one exactly (extra copies, not counting the first)."""
        return sum(len(group) - 1 for group in self.duplicate_groups)

    def messages(self) -> list[str]:
        """One line per finding (empty when the data is clean)."""
        lines = []
        if self.empty_rows:
            rows = ", ".join(map(str, self.empty_rows[:5])) + (", ..." if len(self.empty_rows) > 5 else "")
            action = "dropped (drop_empty)" if self.dropped_empty else "kept; drop them with --drop-empty (drop_empty=True in Python)"
            lines.append(f"{self.source}: {len(self.empty_rows)} of {self.n_records} examples have an empty response "
                         f"(rows {rows}); {action}")
        if self.duplicate_groups:
            first = self.duplicate_groups[0]
            action = ("removed, first copy kept (dedupe)" if self.deduplicated
                      else "kept; remove them with --dedupe (dedupe=True in Python)")
            lines.append(f"{self.source}: {self.n_duplicates} duplicate examples (identical prompt and response) in "
                         f"{len(self.duplicate_groups)} group(s), e.g. rows {', '.join(map(str, first[1:4]))} repeat "
                         f"row {first[0]}; {action}")
        return lines

    def log(self) -> None:
        for line in self.messages():
            log.warning(line)


def is_blank(text: str) -> bool:
    return not text.strip()


def duplicate_groups(examples: Sequence[Example], first_row: int = 1) -> tuple[tuple[int, ...], ...]:
    """Groups (of 2 or more rows) of identical examples, in order of first appearance."""
    rows = defaultdict(list)
    for i, example in enumerate(examples):
        rows[(example.prompt, example.response)].append(i + first_row)
    return tuple(tuple(group) for group in rows.values() if len(group) > 1)


def validate_examples(examples: Sequence[Example], *, source: str = "data", format: str = "",
                      dedupe: bool = False, drop_empty: bool = False) -> tuple[list[Example], DataReport]:
    """Check examples; return those kept and the report. Raises ``DataError`` for no examples or all-empty
    responses."""
    if not examples:
        raise DataError(f"{source} holds no records")
    empty = tuple(i + 1 for i, e in enumerate(examples) if is_blank(e.response))
    if len(empty) == len(examples):
        raise EmptyResponsesError(f"{source}: all {len(examples)} responses are empty; check the response field "
                                  "(--response-field)")
    groups = duplicate_groups(examples)
    drop = set(empty) if drop_empty else set()
    if dedupe:
        drop.update(row for group in groups for row in group[1:])
    kept = [e for i, e in enumerate(examples, 1) if i not in drop]
    report = DataReport(source, format, len(examples), empty, groups, drop_empty and bool(empty), dedupe and
                        bool(groups), len(kept))
    return kept, report
