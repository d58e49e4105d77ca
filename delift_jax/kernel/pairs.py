"""Token sequences for every (target, candidate) pair, arranged for prefix reuse.

The with-example context of pair (i, j) is ``demonstration(j) + query(i)`` (DESIGN §1.1). Its token ids are
``prefix_j + continuation_i`` whenever the tokenizer splits the joint string at the seam, which is checked for
every pair by tokenizing the joint string: a pair where the seam merges tokens, or whose sequence must be
truncated to fit ``max_length``, is scored as its own full sequence instead. Either way the sequence scored is
exactly the one the authors' procedure scores.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.data.tokenize import ScoredSequence, build_sequence, eos_token_id
from delift_jax.kernel.config import KernelConfig


@dataclasses.dataclass
class PairSequences:
    """no_example[i]: target i without an example; prefixes[j]: candidate j's demonstration tokens;
    continuations[i]: target i's query + EOS + scored response (its first query_lengths[i] tokens the query)."""

    no_example: list[ScoredSequence]
    prefixes: list[np.ndarray]
    continuations: list[ScoredSequence]
    query_lengths: list[int]
    response_ids: list[list[int]]
    n_empty_responses: int


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def build_pair_sequences(tokenizer, targets: Sequence[Example], candidates: Sequence[Example],
                         config: KernelConfig) -> PairSequences:
    """Every target alone and as a continuation, every candidate's demonstration; no pair fallbacks yet."""
    eos = eos_token_id(tokenizer)
    templates = config.templates
    cap, max_length = config.max_response_tokens, config.max_length

    responses = _ids(tokenizer, [t.response for t in targets])
    no_example_ctx = _ids(tokenizer, [templates.context_without_example(t) for t in targets])
    query_ids = _ids(tokenizer, [templates.query_text(t) for t in targets])
    no_example = [build_sequence(ctx, resp, eos, max_length=max_length, max_response_tokens=cap,
                                 what=f"target {i}")
                  for i, (ctx, resp) in enumerate(zip(no_example_ctx, responses))]
    continuations = [build_sequence(q, resp, eos, max_response_tokens=cap, what=f"target {i}")
                     for i, (q, resp) in enumerate(zip(query_ids, responses))]
    prefixes = [np.asarray(ids, dtype=np.int32)
                for ids in _ids(tokenizer, [templates.demonstration_text(c) for c in candidates])]
    return PairSequences(no_example=no_example, prefixes=prefixes, continuations=continuations,
                         query_lengths=[len(q) for q in query_ids], response_ids=responses,
                         n_empty_responses=sum(1 for r in responses if not r))


def full_sequences_for(tokenizer, targets: Sequence[Example], candidates: Sequence[Example], pairs: np.ndarray,
                       seqs: PairSequences, config: KernelConfig) -> dict[tuple[int, int], ScoredSequence]:
    """The pairs among ``pairs`` (int ``[n, 2]`` of (target, candidate)) that cannot reuse the candidate's prefix
    (the joint string tokenizes differently at the seam, or must be truncated), with their exact sequences."""
    eos = eos_token_id(tokenizer)
    templates = config.templates
    full: dict[tuple[int, int], ScoredSequence] = {}
    for j in np.unique(pairs[:, 1]):
        target_ids = pairs[pairs[:, 1] == j, 0]
        demo = templates.demonstration_text(candidates[j])
        joint = _ids(tokenizer, [demo + templates.query_text(targets[i]) for i in target_ids])
        prefix = seqs.prefixes[j].tolist()
        for i, joint_ids in zip(target_ids, joint):
            cont = seqs.continuations[i]
            query = cont.tokens[:seqs.query_lengths[i]].tolist()
            seam_ok = joint_ids == prefix + query
            fits = len(prefix) + len(cont) <= config.max_length
            if not (seam_ok and fits):
                full[(int(i), int(j))] = build_sequence(
                    joint_ids, seqs.response_ids[i], eos, max_length=config.max_length,
                    max_response_tokens=config.max_response_tokens, what=f"pair (target {i}, candidate {j})")
    return full
