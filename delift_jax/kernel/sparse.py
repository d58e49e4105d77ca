"""Where the sparse mode gets each target's candidates: similarity embeddings, then a top-k neighbour search.

``sparse_neighbours`` is the one place the planning path obtains neighbours; the search itself is called once, at
its end.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from delift_jax.errors import DataError
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.embeddings import encoder_embeddings, mean_pooled_embeddings, top_k_pairs
from delift_jax.kernel.pairs import build_pair_sequences


def effective_top_k(config: KernelConfig, n_candidates: int, square: bool) -> KernelConfig:
    """``config`` with top_k clamped to the candidates a target can have (all but itself when the diagonal is
    excluded), warning in one line when it was asked for as many or more."""
    if config.top_k is None:
        return config
    available = n_candidates - int(square and config.exclude_diagonal)
    if config.top_k < available:
        return config
    warnings.warn(f"top_k={config.top_k} is not below the {available} candidates a target can have: clamped to "
                  f"{available} (every candidate; a dense kernel holds the same pairs)", stacklevel=3)
    return dataclasses.replace(config, top_k=available)


def sparse_neighbours(model, tokenizer, seqs, targets, candidates, square: bool, config: KernelConfig,
                      embeddings: tuple[np.ndarray, np.ndarray] | None, mesh) -> np.ndarray:
    """``[n_targets, top_k]`` candidate indices: the most similar candidates of each target."""
    target_emb, candidate_emb = similarity_embeddings(model, tokenizer, seqs, targets, candidates, square, config,
                                                      embeddings, mesh)
    # An excluded diagonal would waste one of each row's k slots on a cell forced to 0.
    return top_k_pairs(target_emb, candidate_emb, config.top_k, exclude_self=square and config.exclude_diagonal)


def similarity_embeddings(model, tokenizer, seqs, targets, candidates, square: bool, config: KernelConfig,
                          embeddings: tuple[np.ndarray, np.ndarray] | None, mesh, progress: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(target, candidate) embeddings of ``config.neighbours`` (or the given ``embeddings``, checked); one array
    serves both sides of a square kernel. progress: a bar for the sentence encoder."""
    if embeddings is not None:
        target_emb, candidate_emb = (np.asarray(e) for e in embeddings)
        if target_emb.shape[0] != len(targets) or candidate_emb.shape[0] != len(candidates):
            raise DataError(f"embeddings have {target_emb.shape[0]} and {candidate_emb.shape[0]} rows; expected "
                            f"{len(targets)} targets and {len(candidates)} candidates")
        return target_emb, candidate_emb
    if config.neighbours == "encoder":
        target_emb = encoder_embeddings(targets, progress=progress)
        return target_emb, target_emb if square else encoder_embeddings(candidates, progress=progress)
    embed = lambda sequences: mean_pooled_embeddings(model, sequences, max_length=config.max_length,
                                                     batch_size=config.batch_size, mesh=mesh)
    target_emb = embed(seqs.no_example)
    # Candidates are embedded like targets (no-example layout); a response too long to fit is capped here
    # (similarity only), where a dense run would truncate the demonstration rather than fail.
    cap = min(config.max_response_tokens or config.max_length, config.max_length // 2)
    candidate_emb = target_emb if square else embed(
        build_pair_sequences(tokenizer, candidates, [], dataclasses.replace(config, max_response_tokens=cap))
        .no_example)
    return target_emb, candidate_emb
