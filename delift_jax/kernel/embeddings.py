"""Similarity for the sparse top-k mode: embeddings (mean-pooled final hidden states of the scoring model, or the
built-in sentence encoder) and their cosine top-k (kernel/neighbours.py)."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.tokenize import ScoredSequence, bucket_for, length_ladder
from delift_jax.kernel import neighbours
from delift_jax.sharding import calls_by_shape, data_mesh, per_device, replicate, split_rows


@functools.partial(jax.jit, static_argnums=(0, 1))
def _mean_pooled(graphdef, mesh, state, tokens, valid):
    def on_device(state, tokens, valid):
        model = nnx.merge(graphdef, state)
        hidden_btd, _ = model(tokens, valid_bt=valid)
        weights = valid.astype(jnp.float32)[..., None]
        total = jnp.sum(hidden_btd.astype(jnp.float32) * weights, axis=1)
        return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

    return per_device(on_device, mesh, n_replicated=1)(state, tokens, valid)


def mean_pooled_embeddings(model, sequences: Sequence[ScoredSequence], *, max_length: int, batch_size: int = 8,
                           mesh: Mesh | None = None) -> np.ndarray:
    """``[n, d]`` float32: the mean of the final (normed) hidden states over each sequence's tokens."""
    mesh = mesh or data_mesh()
    graphdef, state = nnx.split(model)
    state = replicate(state, mesh)
    ladder = length_ladder(max_length)
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    shaped = [(rows, bucket_for(max(len(sequences[i]) for i in rows), ladder)) for rows in batches]
    out = np.zeros((len(sequences), model.config.hidden_size), np.float32)
    for length, calls in calls_by_shape(shaped, lambda batch: batch[1], mesh.size):
        tokens = np.zeros((mesh.size * batch_size, length), np.int32)
        valid = np.zeros((mesh.size * batch_size, length), bool)
        for b, (rows, _) in enumerate(calls):
            for r, i in enumerate(rows):
                tokens[b * batch_size + r, :len(sequences[i])] = sequences[i].tokens
                valid[b * batch_size + r, :len(sequences[i])] = True
        pooled = np.asarray(_mean_pooled(graphdef, mesh, state, split_rows(tokens, mesh), split_rows(valid, mesh)))
        for b, (rows, _) in enumerate(calls):
            out[rows] = pooled[b * batch_size:b * batch_size + len(rows)]
    return out


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
