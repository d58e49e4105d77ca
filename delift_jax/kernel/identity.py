"""What a kernel store is tied to: the weights, the text, the token ids and the settings that change the numbers."""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.data.tokenize import eos_token_id
from delift_jax.fingerprints import model_fingerprint
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.store import FORMAT_VERSION


def data_fingerprint(targets: Sequence[Example], candidates: Sequence[Example] | None) -> str:
    payload = {"targets": [[e.prompt, e.response] for e in targets],
               "candidates": None if candidates is None else [[e.prompt, e.response] for e in candidates]}
    return hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()


def tokens_fingerprint(seqs, eos_id) -> str:
    """SHA-256 over every token id the kernel scores (no-example sequences, demonstration prefixes, continuations),
    so a store is tied to the tokenizer as well as to the text and the weights."""
    digest = hashlib.sha256(f"eos:{eos_id}".encode())
    for sequence in list(seqs.no_example) + list(seqs.continuations):
        digest.update(np.asarray(sequence.tokens, np.int64).tobytes() + f"|{sequence.n_scored}|".encode())
    for prefix in seqs.prefixes:
        digest.update(np.asarray(prefix, np.int64).tobytes() + b"|")
    return digest.hexdigest()


def kernel_identity(model, tokenizer, targets: Sequence[Example], candidates: Sequence[Example], square: bool,
                    seqs, config: KernelConfig) -> dict:
    """The manifest fields known before planning (the block grid joins them once planned)."""
    return {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint(model),
        "data_sha256": data_fingerprint(targets, None if square else candidates),
        "tokens_sha256": tokens_fingerprint(seqs, eos_token_id(tokenizer)),
        "compute_fingerprint": config.compute_fingerprint({"dtype": str(model.dtype)}),
        "n_targets": len(targets), "n_candidates": len(candidates), "square": square,
        "mode": "dense" if config.top_k is None else "sparse", "top_k": config.top_k,
        **({"utility": "surrogate"} if config.utility == "surrogate" else {}),  # exact stores keep their identity
    }
