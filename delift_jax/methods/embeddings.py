"""Sentence embeddings of examples (prompt + response) for DELIFT (SE) and DEFT-UCS.

The encoder is all-MiniLM-L6-v2 in JAX (``delift_jax.models.bert.load_sentence_encoder``), loaded once per
process. A method accepts ``encoder=`` (anything with ``encode(texts) -> [n, d]``) or precomputed
``embeddings=`` instead.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.methods.base import example_text
from delift_jax.models.bert import load_sentence_encoder


@functools.lru_cache(maxsize=1)
def default_encoder():
    """all-MiniLM-L6-v2, loaded on first use and shared by every caller of this process."""
    return load_sentence_encoder()


def embed_examples(examples: Sequence[Example], encoder=None) -> np.ndarray:
    """Unit-norm float32 embeddings ``[n, d]`` of ``prompt + "\\n" + response`` of each example."""
    encoder = encoder if encoder is not None else default_encoder()
    vectors = np.asarray(encoder.encode([example_text(e) for e in examples]), dtype=np.float32)
    return normalize_rows(vectors)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or not np.all(np.isfinite(vectors)):
        raise DataError(f"embeddings must be a finite 2-D array; got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def given_embeddings(name: str, value, key: str, n: int) -> np.ndarray | None:
    """Precomputed embeddings (the option ``key`` of method ``name``) checked to have ``n`` rows; None if absent."""
    if value is None:
        return None
    value = np.asarray(value, dtype=np.float64)
    if value.ndim != 2 or value.shape[0] != n:
        raise DataError(f"{name}: {key} has shape {value.shape}; expected ({n}, d)")
    return value
