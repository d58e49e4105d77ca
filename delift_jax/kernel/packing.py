"""Packing scored sequences and their demonstrations into fixed-shape units of work.

A unit is what one device computes in one call: a *prefix row* holding the demonstrations (prefixes) of one or
more candidates side by side, and ``rows x length`` tokens of continuations packed several to a row, every
continuation of a row following the same candidate. Each continuation attends to its own candidate's
demonstration and, causally, to itself (segment ids keep packed sequences apart; positions restart after each
demonstration). A row reaches its demonstration through a *window*: the indices of that demonstration's slots in
the prefix row, so attention to demonstrations costs each token the longest demonstration of the unit, not the
whole prefix row. Scored positions of the whole unit are gathered into one flat list, so logits are computed
only there.

Units depend only on the work and on the packing sizes, never on the number of devices, so any device count
computes bit-identical results. Shapes come from ladders and are shared by groups of units, so a run compiles
only a few programs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from delift_jax.data.tokenize import bucket_for
from delift_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Item:
    """One sequence to score: ``tokens`` (its last ``n_scored`` scored) after candidate ``prefix``'s
    demonstration, or after nothing (``prefix`` None). ``key`` says where its result goes."""

    key: int
    prefix: int | None
    tokens: np.ndarray
    n_scored: int


# The smallest scored-slot count and demonstration window (the fine ladder starts here); units without
# demonstrations carry a window of this size, all slots masked.
MIN_FINE = 16


@dataclasses.dataclass(frozen=True)
class UnitShape:
    """Static shape of one unit: prefix-row length, continuation rows x row length, scored slots, and the
    demonstration window each row attends to."""

    prefix: int
    rows: int
    length: int
    scored: int
    window: int = MIN_FINE


@dataclasses.dataclass(frozen=True)
class Unit:
    """Arrays of one unit (segment id 0 marks padding) and where each item's scores land.

    prefix_*: ``[prefix]``; tokens/positions/segments: ``[rows, length]``; row_window ``[rows, window]``: where
    in the prefix row the demonstration the row's continuations follow lies, slot by slot (-1 past its end, and
    everywhere in a row without one); score_index ``[scored]`` (flat ``row * length + t``) and score_target
    ``[scored]``; placed: ``(key, first slot, n_scored)`` per item.
    """

    shape: UnitShape
    prefix_tokens: np.ndarray
    prefix_positions: np.ndarray
    prefix_segments: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray
    segments: np.ndarray
    row_window: np.ndarray
    score_index: np.ndarray
    score_target: np.ndarray
    placed: tuple


ROW_LADDER = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclasses.dataclass(frozen=True)
class PackingSizes:
    """tokens_per_unit: continuation tokens per unit (rows x length); min_row: shortest row length;
    prefix_share: at most this fraction of a unit's tokens go to its prefix row (unless one demonstration is
    longer); max_length: the longest sequence allowed."""

    tokens_per_unit: int
    max_length: int
    min_row: int = 256
    prefix_share: float = 0.25

    def __post_init__(self):
        if self.tokens_per_unit < 1 or self.min_row < 1:
            raise DataError(f"tokens_per_unit={self.tokens_per_unit} and min_row={self.min_row} must be positive")

    def row_length(self, n_tokens: int) -> int:
        """Row length for a sequence of ``n_tokens``: the smallest power-of-two rung that holds it."""
        for size in ROW_LADDER:
            if size >= max(self.min_row, n_tokens):
                return size
        raise DataError(f"a sequence of {n_tokens} tokens exceeds the longest row {ROW_LADDER[-1]}")

    def rows(self, length: int) -> int:
        return max(1, self.tokens_per_unit // length)


class _Builder:
    """Fills one unit with whole rows; ``add_row`` returns False when the unit has no room for one more."""

    def __init__(self, length: int, rows: int, prefix_cap: int):
        self.length, self.max_rows, self.prefix_cap = length, rows, prefix_cap
        self.prefix: list[np.ndarray] = []          # demonstration token arrays, segment = index + 1
        self.rows: list[list[Item]] = []
        self.row_prefix: list[int] = []              # each row's demonstration segment (0: none)
        self.prefix_used = 0
        self.current: dict[int, int] = {}            # candidate -> its segment here

    def add_row(self, candidate: int | None, demonstration: np.ndarray | None, row: list[Item]) -> bool:
        if len(self.rows) == self.max_rows:
            return False
        if candidate is not None and candidate not in self.current:
            if self.prefix and self.prefix_used + len(demonstration) > self.prefix_cap:
                return False
            self.prefix.append(demonstration)
            self.prefix_used += len(demonstration)
            self.current[candidate] = len(self.prefix)
        self.rows.append(row)
        self.row_prefix.append(0 if candidate is None else self.current[candidate])
        return True


# First-fit looks for room among the most recently opened rows only, which keeps packing linear in the items
# for candidates with thousands of continuations (items come longest first, so older rows are nearly full).
OPEN_ROWS_SEARCHED = 64


def _rows_first_fit_decreasing(group: list[Item], length: int) -> list[list[Item]]:
    """One candidate's continuations packed into rows of ``length`` tokens, longest first (first-fit decreasing)."""
    rows: list[list[Item]] = []
    fill: list[int] = []
    for item in sorted(group, key=lambda i: (-len(i.tokens), i.key)):
        n = len(item.tokens)
        for r in range(max(0, len(rows) - OPEN_ROWS_SEARCHED), len(rows)):
            if fill[r] + n <= length:
                rows[r].append(item)
                fill[r] += n
                break
        else:
            rows.append([item])
            fill.append(n)
    # Longest-first rows hold few items, the last ones many: alternating from both ends spreads scored tokens
    # evenly over the units these rows go to (units share their group's largest scored count).
    return [rows[k // 2] if k % 2 == 0 else rows[-1 - k // 2] for k in range(len(rows))]


def _prefix_len(builder: _Builder, segment: int) -> int:
    return 0 if segment == 0 else len(builder.prefix[segment - 1])


def _shape_of(builder: _Builder, prefix_ladder, fine_ladder) -> UnitShape:
    """The smallest ladder shape that holds the builder's unit."""
    n_scored = sum(item.n_scored for row in builder.rows for item in row)
    rows = len(builder.rows)
    longest = max((len(tokens) for tokens in builder.prefix), default=1)
    return UnitShape(prefix=bucket_for(max(builder.prefix_used, 1), prefix_ladder), rows=rows,
                     length=builder.length,
                     scored=min(bucket_for(max(n_scored, 1), fine_ladder), rows * builder.length),
                     window=bucket_for(longest, fine_ladder))


def _shared_shapes(shapes: Sequence[UnitShape], unit_tokens: int) -> list[UnitShape]:
    """The shape each unit of one rung runs as. Units are grouped by prefix bucket, and a group joins the next
    larger bucket while the padding that adds (units x extra prefix tokens) stays within one unit's tokens, so
    a few odd units never cost a compilation of their own and one long demonstration never pads them all. A
    group runs with the largest rows, scored slots and window among its units: one program per group."""
    prefixes = sorted({s.prefix for s in shapes})
    members = {p: [s.prefix for s in shapes if s.prefix == p] for p in prefixes}  # own prefix of each unit
    merged = {}
    for k, p in enumerate(prefixes):  # from the smallest: a group carries its units up while that is cheap
        if k + 1 < len(prefixes) and sum(prefixes[k + 1] - own for own in members[p]) <= unit_tokens:
            merged[p] = prefixes[k + 1]
            members[prefixes[k + 1]] += members[p]
    final = {}
    for p in reversed(prefixes):
        final[p] = final[merged[p]] if p in merged else p
    groups: dict[int, list[UnitShape]] = {}
    for s in shapes:
        groups.setdefault(final[s.prefix], []).append(s)
    common = {p: UnitShape(prefix=p, rows=max(s.rows for s in group), length=group[0].length,
                           scored=max(s.scored for s in group), window=max(s.window for s in group))
              for p, group in groups.items()}
    return [common[final[s.prefix]] for s in shapes]


def _finish(builder: _Builder, shape: UnitShape) -> Unit:
    """The unit's arrays, padded to ``shape``."""
    p_len = shape.prefix
    prefix_tokens = np.zeros(p_len, np.int32)
    prefix_positions = np.zeros(p_len, np.int32)
    prefix_segments = np.zeros(p_len, np.int32)
    offset, starts = 0, [0]
    for g, tokens in enumerate(builder.prefix):
        prefix_tokens[offset:offset + len(tokens)] = tokens
        prefix_positions[offset:offset + len(tokens)] = np.arange(len(tokens))
        prefix_segments[offset:offset + len(tokens)] = g + 1
        starts.append(offset)
        offset += len(tokens)
    tokens = np.zeros((shape.rows, shape.length), np.int32)
    positions = np.zeros((shape.rows, shape.length), np.int32)
    segments = np.zeros((shape.rows, shape.length), np.int32)
    row_window = np.full((shape.rows, shape.window), -1, np.int32)
    score_index = np.zeros(shape.scored, np.int32)
    score_target = np.zeros(shape.scored, np.int32)
    placed, slot = [], 0
    for r, row in enumerate(builder.rows):
        start_position = _prefix_len(builder, builder.row_prefix[r])
        row_window[r, :start_position] = starts[builder.row_prefix[r]] + np.arange(start_position)
        t = 0
        for s, item in enumerate(row):
            n, k = len(item.tokens), item.n_scored
            tokens[r, t:t + n] = item.tokens
            positions[r, t:t + n] = start_position + np.arange(n)
            segments[r, t:t + n] = s + 1
            score_index[slot:slot + k] = r * shape.length + t + np.arange(n - k - 1, n - 1)
            score_target[slot:slot + k] = item.tokens[n - k:]
            placed.append((item.key, slot, k))
            slot += k
            t += n
    return Unit(shape, prefix_tokens, prefix_positions, prefix_segments, tokens, positions, segments, row_window,
                score_index, score_target, tuple(placed))


def pack_units(items: Sequence[Item], prefixes: Sequence[np.ndarray], sizes: PackingSizes) -> list[Unit]:
    """Pack ``items`` into units, sorted by shape (a deterministic function of the items and ``sizes``).

    Items go to rows of the shortest rung that holds them; within a rung each candidate's continuations fill
    rows first-fit decreasing, and consecutive rows make up units, a candidate's demonstration entering each unit
    that holds one of its rows once. Units of a rung share shapes (``_shared_shapes``): a few compiled
    programs per rung, not one per combination of buckets.
    """
    longest_prefix = max((len(prefixes[i.prefix]) for i in items if i.prefix is not None), default=0)
    prefix_cap = max(longest_prefix, int(sizes.tokens_per_unit * sizes.prefix_share))
    # From 64: a unit without demonstrations (targets alone) then shares the shape of typical pair units.
    prefix_ladder = _quarter_octaves(64, max(sizes.max_length, prefix_cap))
    fine_ladder = _quarter_octaves(MIN_FINE, max(ROW_LADDER[-1], sizes.tokens_per_unit, sizes.max_length))
    by_length: dict[int, list[Item]] = {}
    for item in items:
        if item.n_scored >= len(item.tokens) or item.n_scored < 0:
            raise DataError(f"sequence {item.key} scores {item.n_scored} of {len(item.tokens)} tokens; the first "
                            "token cannot be scored")
        by_length.setdefault(sizes.row_length(len(item.tokens)), []).append(item)
    units: list[Unit] = []
    for length in sorted(by_length):
        builders = _pack_rung(by_length[length], prefixes, length, sizes.rows(length), prefix_cap)
        shapes = _shared_shapes([_shape_of(b, prefix_ladder, fine_ladder) for b in builders],
                                sizes.tokens_per_unit)
        units.extend(_finish(builder, shape) for builder, shape in zip(builders, shapes))
    units.sort(key=lambda u: dataclasses.astuple(u.shape))  # stable: equal shapes keep their packing order
    return units


def _pack_rung(items, prefixes, length, max_rows, prefix_cap) -> list[_Builder]:
    """Rows first (each candidate's continuations first-fit decreasing), then consecutive rows into units of
    equal size: rows spread evenly over the fewest units that hold them, so the last unit is not mostly padding."""
    rows = [(candidate, row) for candidate, group in _groups(items)
            for row in _rows_first_fit_decreasing(group, length)]
    per_unit = math.ceil(len(rows) / math.ceil(len(rows) / max_rows)) if rows else max_rows
    builders = [_Builder(length, per_unit, prefix_cap)]
    for candidate, row in rows:
        demonstration = None if candidate is None else prefixes[candidate]
        if not builders[-1].add_row(candidate, demonstration, row):
            builders.append(_Builder(length, per_unit, prefix_cap))
            builders[-1].add_row(candidate, demonstration, row)
    return [b for b in builders if b.rows]


def _quarter_octaves(smallest: int, limit: int) -> tuple[int, ...]:
    """smallest x 1, 1.25, 1.5, 1.75, 2, 2.5, ... up to the first one >= limit: at most 25% padding of the
    scored slots and windows (units of one group share the largest, so the ladder adds no programs)."""
    ladder, octave = [], smallest
    while not ladder or ladder[-1] < limit:
        ladder.extend(octave * quarters // 4 for quarters in (4, 5, 6, 7))
        octave *= 2
    return tuple(size for k, size in enumerate(ladder) if k == 0 or ladder[k - 1] < limit)


def _groups(items) -> list[tuple[int | None, list[Item]]]:
    """Items grouped by prefix, groups in order of first appearance."""
    groups: dict[int | None, list[Item]] = {}
    for item in items:
        groups.setdefault(item.prefix, []).append(item)
    return list(groups.items())
