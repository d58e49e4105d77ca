"""Similarity for the sparse top-k mode: embeddings (mean-pooled final hidden states of the scoring model, or the
built-in sentence encoder) and their cosine top-k (kernel/neighbours.py).

The mean-pooled embeddings run like teacher-forced scoring (scoring/): batches of ``batch_size`` rows padded to a
bucket of the length ladder, one batch per ``"data"`` index of the mesh; on a ``(data, model)`` mesh the parameters
are placed by ``sharding.FSDP_TP_RULES`` and each batch runs tensor parallel over its ``model`` devices. Batches
never depend on the mesh, so for a given ``model`` size the embeddings do not depend on ``data`` (``model=1``
equals the data mesh bit for bit)."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.tokenize import ScoredSequence, bucket_for, length_ladder
from delift_jax.kernel import neighbours
from delift_jax.sharding import (calls_by_shape, current_mesh, data_size, per_device, place_params, sharded_program,
                                 split_rows)


def _mean_pooled(graphdef, mesh, state, tokens, valid):
    def on_device(state, tokens, valid):
        model = nnx.merge(graphdef, state)
        hidden_btd, _ = model(tokens, valid_bt=valid)
        weights = valid.astype(jnp.float32)[..., None]
        total = jnp.sum(hidden_btd.astype(jnp.float32) * weights, axis=1)
        return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

    return per_device(on_device, mesh, n_replicated=1)(state, tokens, valid)


class MeanPooler:
    """Mean-pooled final hidden states of a model placed on ``mesh`` (default ``sharding.current_mesh()``, so
    ``delift run --mesh`` reaches the sparse mode's embeddings): replicated on a data mesh, split by the rules on a
    ``(data, model)`` mesh."""

    def __init__(self, model, *, mesh: Mesh | None = None):
        self.mesh = mesh or current_mesh()
        self.hidden_size = model.config.hidden_size
        self.graphdef, state = nnx.split(model)
        self.state = place_params(state, self.mesh)
        self._program = sharded_program(_mean_pooled, (self.graphdef, self.mesh), self.mesh, self.state, 2)

    def embed(self, sequences: Sequence[ScoredSequence], *, max_length: int, batch_size: int = 8) -> np.ndarray:
        """``[n, d]`` float32, input order. Batches are length-sorted and depend only on the sequences."""
        ladder = length_ladder(max_length)
        order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
        batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        shaped = [(rows, bucket_for(max(len(sequences[i]) for i in rows), ladder)) for rows in batches]
        out = np.zeros((len(sequences), self.hidden_size), np.float32)
        n_data = data_size(self.mesh)
        for length, calls in calls_by_shape(shaped, lambda batch: batch[1], n_data):
            tokens = np.zeros((n_data * batch_size, length), np.int32)  # a short call's last batches are filler
            valid = np.zeros((n_data * batch_size, length), bool)
            for b, (rows, _) in enumerate(calls):
                for r, i in enumerate(rows):
                    tokens[b * batch_size + r, :len(sequences[i])] = sequences[i].tokens
                    valid[b * batch_size + r, :len(sequences[i])] = True
            pooled = np.asarray(self._program(self.state, split_rows(tokens, self.mesh), split_rows(valid, self.mesh)))
            for b, (rows, _) in enumerate(calls):
                out[rows] = pooled[b * batch_size:b * batch_size + len(rows)]
        return out


def mean_pooled_embeddings(model, sequences: Sequence[ScoredSequence], *, max_length: int, batch_size: int = 8,
                           mesh: Mesh | None = None) -> np.ndarray:
    """``[n, d]`` float32: the mean of the final (normed) hidden states over each sequence's tokens, on ``mesh``
    (default ``sharding.current_mesh()``; see ``MeanPooler``)."""
    return MeanPooler(model, mesh=mesh).embed(sequences, max_length=max_length, batch_size=batch_size)


def top_k_pairs(target_embeddings: np.ndarray, candidate_embeddings: np.ndarray, k: int, *,
                exclude_self: bool = False, search: str = "exact") -> np.ndarray:
    """For each target, its ``k`` most cosine-similar candidates. Returns ``[n_t, k]`` int32.

    search: "exact" (blocked on the devices, ties: lowest index, never an n x n array; neighbours.py) or
    "approximate" (faiss HNSW, optional extra). exclude_self: targets and candidates are the same pool; target i
    never gets candidate i (k <= n - 1).
    """
    return neighbours.top_k(target_embeddings, candidate_embeddings, k, exclude_self=exclude_self, search=search)


def encoder_embeddings(examples, *, progress: bool = False) -> np.ndarray:
    """``[n, 384]`` float32 embeddings of each example's prompt and response by the built-in sentence encoder
    (all-MiniLM-L6-v2): a similarity that does not depend on the scoring model."""
    from delift_jax.models.bert import load_sentence_encoder

    texts = [f"{example.prompt}{example.response}" for example in examples]
    return np.asarray(load_sentence_encoder().encode(texts, progress=progress), np.float32)
