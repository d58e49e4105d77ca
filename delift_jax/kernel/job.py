"""One kernel run's job (the checked arguments of ``utility_kernel``), its tokenized pair sequences and the scorer of
one block of pairs: shared by the exact run (kernel/compute.py) and the surrogate's exact sample
(kernel/surrogate_run.py)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from jax.sharding import Mesh

from delift_jax.kernel.blocks import BlockScores
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.engine import PairScorer
from delift_jax.kernel.pairs import build_pair_sequences, full_sequences_for


@dataclasses.dataclass(frozen=True, eq=False)
class Job:
    """What one kernel run computes and how (the arguments of ``utility_kernel``, checked)."""

    model: object
    tokenizer: object
    targets: list
    candidates: list
    square: bool
    config: KernelConfig
    mesh: Mesh
    embeddings: tuple | None
    max_pairs: int | None
    progress: bool
    wait_timeout_s: float


def pair_sequences(job: Job):
    seqs = build_pair_sequences(job.tokenizer, job.targets, job.candidates, job.config)
    if seqs.n_empty_responses:
        warnings.warn(f"{seqs.n_empty_responses} responses tokenize to nothing; only their final EOS is scored",
                      stacklevel=4)
    n_truncated = int(sum(s.context_dropped > 0 for s in seqs.no_example))
    if n_truncated:
        warnings.warn(f"{n_truncated} targets exceed max_length={job.config.max_length} without an example; "
                      "their contexts are truncated from the left (scored tokens are kept)", stacklevel=4)
    return seqs, n_truncated


def block_scorer(job: Job, seqs):
    """Score one block's pairs: the prefix-reuse engine, plus the pairs that need their own full sequence."""
    engine: list[PairScorer] = []  # built on the first block: a resumed, finished run never needs it

    def score(pairs: np.ndarray, on_progress) -> BlockScores:
        if not engine:
            engine.append(PairScorer(job.model, job.config, mesh=job.mesh))
        full = full_sequences_for(job.tokenizer, job.targets, job.candidates, pairs, seqs, job.config)
        rms, logp = engine[0].score(pairs, seqs, full, on_progress=on_progress)
        return BlockScores(rms, logp, n_full=len(full),
                           n_truncated=int(sum(seq.context_dropped > 0 for seq in full.values())))

    return score
