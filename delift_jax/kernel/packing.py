"""Packing scored sequences and their demonstrations into fixed-shape units of work.

A unit is what one device computes in one call: a *prefix row* holding the demonstrations (prefixes) of one or
more candidates side by side, and ``rows x length`` tokens of continuations packed several to a row. Each
continuation attends to its own candidate's demonstration and, causally, to itself (segment ids keep packed
sequences apart; positions restart after each demonstration). Scored positions of the whole unit are gathered
into one flat list, so logits are computed only there.

Units depend only on the work and on the packing sizes, never on the number of devices, so any device count
computes bit-identical results. Shapes come from coarse ladders, so a run compiles only a few programs.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class UnitShape:
    """Static shape of one unit: prefix-row length, continuation rows x row length, scored slots."""

    prefix: int
    rows: int
    length: int
    scored: int


@dataclasses.dataclass(frozen=True)
class Unit:
    """Arrays of one unit (segment id 0 marks padding) and where each item's scores land.

    prefix_*: ``[prefix]``; tokens/positions/segments: ``[rows, length]``; row_prefix ``[rows]``: the prefix
    segment the row's continuations follow (0: none); score_index ``[scored]`` (flat ``row * length + t``) and
    score_target ``[scored]``; placed: ``(key, first slot, n_scored)`` per item.
    """

    shape: UnitShape
    prefix_tokens: np.ndarray
    prefix_positions: np.ndarray
    prefix_segments: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray
    segments: np.ndarray
    row_prefix: np.ndarray
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
    """Fills one unit; ``add_prefix``/``place`` return False when the unit has no room."""

    def __init__(self, length: int, rows: int, prefix_cap: int):
        self.length, self.max_rows, self.prefix_cap = length, rows, prefix_cap
        self.prefix: list[np.ndarray] = []          # demonstration token arrays, segment = index + 1
        self.rows: list[list[Item]] = []
        self.row_prefix: list[int] = []
        self.row_fill: list[int] = []
        self.prefix_used = 0
        self.current: dict[int | None, int] = {}     # candidate -> its segment here (None -> 0)

    @property
    def empty(self) -> bool:
        return not self.rows and not self.prefix

    def add_prefix(self, candidate: int | None, tokens: np.ndarray | None) -> bool:
        if candidate is None:
            self.current[None] = 0
            return True
        if self.prefix and self.prefix_used + len(tokens) > self.prefix_cap:
            return False
        self.prefix.append(tokens)
        self.prefix_used += len(tokens)
        self.current[candidate] = len(self.prefix)
        return True

    def place(self, item: Item) -> bool:
        segment = self.current[item.prefix]
        n = len(item.tokens)
        for r in range(len(self.rows)):
            if self.row_prefix[r] == segment and self.row_fill[r] + n <= self.length:
                self.rows[r].append(item)
                self.row_fill[r] += n
                return True
        if len(self.rows) == self.max_rows:
            return False
        self.rows.append([item])
        self.row_prefix.append(segment)
        self.row_fill.append(n)
        return True


def _prefix_len(builder: _Builder, segment: int) -> int:
    return 0 if segment == 0 else len(builder.prefix[segment - 1])


def _shape_of(builder: _Builder, prefix_ladder, scored_ladder) -> UnitShape:
    """The smallest ladder shape that holds the builder's unit (a unit short of rows gets fewer of them)."""
    n_scored = sum(item.n_scored for row in builder.rows for item in row)
    rows = min(builder.max_rows, _power_of_two_at_least(len(builder.rows)))
    return UnitShape(prefix=bucket_for(max(builder.prefix_used, 1), prefix_ladder), rows=rows,
                     length=builder.length,
                     scored=min(bucket_for(max(n_scored, 1), scored_ladder), rows * builder.length))


def _shared_shapes(shapes: Sequence[UnitShape], unit_tokens: int) -> list[UnitShape]:
    """The shape each unit of one rung runs as. Units are grouped by prefix bucket, and a group joins the next
    larger bucket while the padding that adds (units x extra prefix tokens) stays within one unit's tokens, so
    a few odd units never cost a compilation of their own and one long demonstration never pads them all. A
    group runs with the largest rows and scored slots among its units: one program per group."""
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
                           scored=max(s.scored for s in group)) for p, group in groups.items()}
    return [common[final[s.prefix]] for s in shapes]


def _finish(builder: _Builder, shape: UnitShape) -> Unit:
    """The unit's arrays, padded to ``shape``."""
    p_len = shape.prefix
    prefix_tokens = np.zeros(p_len, np.int32)
    prefix_positions = np.zeros(p_len, np.int32)
    prefix_segments = np.zeros(p_len, np.int32)
    offset = 0
    for g, tokens in enumerate(builder.prefix):
        prefix_tokens[offset:offset + len(tokens)] = tokens
        prefix_positions[offset:offset + len(tokens)] = np.arange(len(tokens))
        prefix_segments[offset:offset + len(tokens)] = g + 1
        offset += len(tokens)
    tokens = np.zeros((shape.rows, shape.length), np.int32)
    positions = np.zeros((shape.rows, shape.length), np.int32)
    segments = np.zeros((shape.rows, shape.length), np.int32)
    row_prefix = np.zeros(shape.rows, np.int32)
    score_index = np.zeros(shape.scored, np.int32)
    score_target = np.zeros(shape.scored, np.int32)
    placed, slot = [], 0
    for r, row in enumerate(builder.rows):
        row_prefix[r] = builder.row_prefix[r]
        start_position = _prefix_len(builder, builder.row_prefix[r])
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
    return Unit(shape, prefix_tokens, prefix_positions, prefix_segments, tokens, positions, segments, row_prefix,
                score_index, score_target, tuple(placed))


def pack_units(items: Sequence[Item], prefixes: Sequence[np.ndarray], sizes: PackingSizes) -> list[Unit]:
    """Pack ``items`` into units, sorted by shape (a deterministic function of the items and ``sizes``).

    Items go to rows of the shortest rung that holds them; within a rung a candidate's demonstration enters a
    unit once and its continuations fill rows first-fit. A candidate whose continuations overflow a unit starts
    the next one with its demonstration again. Units of a rung share shapes (``_shared_shapes``): a few compiled
    programs per rung, not one per combination of buckets.
    """
    longest_prefix = max((len(prefixes[i.prefix]) for i in items if i.prefix is not None), default=0)
    prefix_cap = max(longest_prefix, int(sizes.tokens_per_unit * sizes.prefix_share))
    # From 64: a unit without demonstrations (targets alone) then shares the shape of typical pair units.
    prefix_ladder = _powers_of_two(64, max(sizes.max_length, prefix_cap))
    scored_ladder = _powers_of_two(64, max(ROW_LADDER[-1], sizes.tokens_per_unit))
    by_length: dict[int, list[Item]] = {}
    for item in items:
        if item.n_scored >= len(item.tokens) or item.n_scored < 0:
            raise DataError(f"sequence {item.key} scores {item.n_scored} of {len(item.tokens)} tokens; the first "
                            "token cannot be scored")
        by_length.setdefault(sizes.row_length(len(item.tokens)), []).append(item)
    units: list[Unit] = []
    for length in sorted(by_length):
        builders = _pack_rung(by_length[length], prefixes, length, sizes.rows(length), prefix_cap)
        shapes = _shared_shapes([_shape_of(b, prefix_ladder, scored_ladder) for b in builders],
                                sizes.tokens_per_unit)
        units.extend(_finish(builder, shape) for builder, shape in zip(builders, shapes))
    units.sort(key=lambda u: dataclasses.astuple(u.shape))  # stable: equal shapes keep their packing order
    return units


def _pack_rung(items, prefixes, length, rows, prefix_cap) -> list[_Builder]:
    builders = [_Builder(length, rows, prefix_cap)]
    for candidate, group in _groups(items):
        tokens = None if candidate is None else prefixes[candidate]
        if not builders[-1].add_prefix(candidate, tokens):
            builders.append(_Builder(length, rows, prefix_cap))
            builders[-1].add_prefix(candidate, tokens)
        for item in sorted(group, key=lambda i: (-len(i.tokens), i.key)):  # first-fit decreasing
            if not builders[-1].place(item):
                builders.append(_Builder(length, rows, prefix_cap))
                builders[-1].add_prefix(candidate, tokens)
                builders[-1].place(item)
    return [b for b in builders if not b.empty]


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _powers_of_two(smallest: int, limit: int) -> tuple[int, ...]:
    """Bucket sizes smallest, 2 x smallest, ... up to the first one >= limit (at most 2x padding, few shapes)."""
    ladder = [smallest]
    while ladder[-1] < limit:
        ladder.append(ladder[-1] * 2)
    return tuple(ladder)


def _groups(items) -> list[tuple[int | None, list[Item]]]:
    """Items grouped by prefix, groups in order of first appearance."""
    groups: dict[int | None, list[Item]] = {}
    for item in items:
        groups.setdefault(item.prefix, []).append(item)
    return list(groups.items())
