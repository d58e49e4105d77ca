"""Tokenize (context, response) pairs into scored sequences, and pack them into length-bucketed batches.

Sequence layout (DESIGN §1.1): ``context_ids + [eos] + response_ids + [eos]``, context and response tokenized
separately without special tokens (no BOS). The scored tokens are the response and the final EOS; token t is
predicted from the logits at position t - 1, so the first response token is predicted from the separator EOS.
A sequence longer than ``max_length`` loses context tokens from the left (the query end is kept); scored tokens
are never dropped silently.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from delift_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class ScoredSequence:
    """Token ids of one sequence; the last ``n_scored`` tokens are scored."""

    tokens: np.ndarray
    n_scored: int
    context_dropped: int = 0  # context tokens removed from the left to fit max_length

    def __len__(self) -> int:
        return len(self.tokens)


def eos_token_id(tokenizer) -> int:
    """The tokenizer's EOS id: the separator after the context and the terminator after the response."""
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token; every sequence (kernel, training, generation) needs one as "
                        "the separator and terminator")
    return int(tokenizer.eos_token_id)


def encode_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_sequence(context_ids: Sequence[int], response_ids: Sequence[int], eos_id: int, *,
                   max_length: int | None = None, max_response_tokens: int | None = None,
                   what: str = "example",
                   fix: str = "raise max_length or cap scored tokens with max_response_tokens") -> ScoredSequence:
    """Assemble one scored sequence from token ids.

    max_response_tokens: score only the first N response tokens. The final EOS is then scored only if the
    response really ends within the cap (an EOS after a cut response would be a token the data never had).
    fix: the remedy the error names when the scored tokens alone exceed ``max_length`` (callers without a
    response cap name their own options).
    """
    response_ids = list(response_ids)
    scored = response_ids + [eos_id]
    if max_response_tokens is not None and len(response_ids) > max_response_tokens:
        scored = response_ids[:max_response_tokens]
    context_ids = list(context_ids)
    dropped = 0
    if max_length is not None and len(context_ids) + 1 + len(scored) > max_length:
        keep = max_length - 1 - len(scored)
        if keep < 0:
            raise DataError(f"{what}: {len(scored)} scored response tokens do not fit max_length={max_length}; {fix}")
        dropped = len(context_ids) - keep
        context_ids = context_ids[len(context_ids) - keep:]
    tokens = np.asarray(context_ids + [eos_id] + scored, dtype=np.int32)
    return ScoredSequence(tokens=tokens, n_scored=len(scored), context_dropped=dropped)


def length_ladder(limit: int, smallest: int = 32) -> tuple[int, ...]:
    """Static bucket lengths: 32, 48, 64, 96, 128, 192, ... (at most 1.5x padding), capped by ``limit``."""
    ladder = []
    size = smallest
    while size < limit:
        ladder.append(size)
        if size * 3 // 2 < limit:
            ladder.append(size * 3 // 2)
        size *= 2
    ladder.append(limit)
    return tuple(sorted(set(ladder)))


def bucket_for(length: int, ladder: Sequence[int]) -> int:
    for size in ladder:
        if length <= size:
            return size
    raise DataError(f"length {length} exceeds the largest bucket {ladder[-1]}")


@dataclasses.dataclass(frozen=True)
class PaddedBatch:
    """Arrays for one jitted call. Rows past ``n_rows`` are padding (all invalid).

    tokens/valid: ``[b, t]``; score_index: ``[b, r]`` positions whose logits predict ``score_target``;
    score_valid: ``[b, r]`` False for padding.
    """

    tokens: np.ndarray
    valid: np.ndarray
    score_index: np.ndarray
    score_target: np.ndarray
    score_valid: np.ndarray
    n_rows: int


def pad_batch(sequences: Sequence[ScoredSequence], batch_size: int, length: int, n_scored: int,
              pad_id: int = 0) -> PaddedBatch:
    """Right-pad ``sequences`` into a ``[batch_size, length]`` batch with ``n_scored`` score slots per row."""
    tokens = np.full((batch_size, length), pad_id, dtype=np.int32)
    valid = np.zeros((batch_size, length), dtype=bool)
    score_index = np.zeros((batch_size, n_scored), dtype=np.int32)
    score_target = np.zeros((batch_size, n_scored), dtype=np.int32)
    score_valid = np.zeros((batch_size, n_scored), dtype=bool)
    for row, seq in enumerate(sequences):
        n = len(seq)
        tokens[row, :n] = seq.tokens
        valid[row, :n] = True
        first = n - seq.n_scored
        score_index[row, :seq.n_scored] = np.arange(first - 1, n - 1)
        score_target[row, :seq.n_scored] = seq.tokens[first:]
        score_valid[row, :seq.n_scored] = True
    return PaddedBatch(tokens, valid, score_index, score_target, score_valid, len(sequences))
