"""Teacher-forced response scoring: the probability the model gives each scored response token.

One jitted function per (batch, length, scored-length) bucket; logits are computed only at the positions that
predict scored tokens (never over the whole vocabulary at every position), in chunks so that at most
``logits_chunk x vocab`` float32 logits exist at once. Batches are sharded over the ``"data"`` axis of a device
mesh, so the same code runs on one CPU or many accelerators; on a ``(data, model)`` mesh the parameters are split
by ``sharding.FSDP_TP_RULES`` and each batch runs tensor parallel over its ``model`` devices.

Distances (DESIGN §1.2), over the scored tokens of one sequence:
  rms:   d = sqrt(mean_t (1 - p_t)^2)            (0 if nothing is scored)
  logp:  mean_t log p_t                            (the PMI variant differences these)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.records import Example
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.data.tokenize import (ScoredSequence, bucket_for, build_sequence, encode_ids, eos_token_id,
                                      length_ladder, pad_batch)
from delift_jax.errors import DataError
from delift_jax.sharding import (calls_by_shape, current_mesh, data_size, per_device, place_params, sharded_program,
                                 split_rows)


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """How sequences are built and batched.

    max_length: longest sequence; longer ones lose context from the left (scored tokens are kept).
    max_response_tokens: score only the first N response tokens (None: all; use it to bound cost on CPUs).
    batch_size: rows per device per call.
    logits_chunk: scored positions projected onto the vocabulary at once.
    """

    max_length: int = 2048
    max_response_tokens: int | None = None
    batch_size: int = 8
    logits_chunk: int = 512

    def __post_init__(self):
        if self.max_length < 4:
            raise DataError(f"max_length={self.max_length} is too small; use at least 4")
        if self.max_response_tokens is not None and self.max_response_tokens < 1:
            raise DataError(f"max_response_tokens={self.max_response_tokens} must be at least 1 (or None for all)")
        if self.batch_size < 1:
            raise DataError(f"batch_size={self.batch_size} must be at least 1")


def rms_distance(p: np.ndarray) -> float:
    """sqrt(mean (1 - p)^2) over scored tokens; 0 for an empty sequence."""
    p = np.asarray(p, dtype=np.float64)
    return float(np.sqrt(np.mean((1.0 - p) ** 2))) if p.size else 0.0


def mean_log_prob(logp: np.ndarray) -> float:
    logp = np.asarray(logp, dtype=np.float64)
    return float(np.mean(logp)) if logp.size else 0.0


def target_logprobs(model, hidden_brd: jax.Array, target_br: jax.Array, chunk: int, *,
                    remat: bool = False) -> jax.Array:
    """log softmax(logits)[target] for ``[b, r, d]`` hidden states, ``chunk`` positions at a time (float32).

    remat: recompute each chunk's logits in the backward pass instead of keeping them (for training)."""
    b, r, d = hidden_brd.shape
    n = b * r
    c = min(chunk, n)
    pad = (-n) % c
    flat_h = jnp.pad(hidden_brd.reshape(n, d), ((0, pad), (0, 0))).reshape(-1, c, d)
    flat_t = jnp.pad(target_br.reshape(n), (0, pad)).reshape(-1, c)

    def chunk_logprobs(h_cd, t_c):
        logits_cv = model.logits(h_cd)
        picked = jnp.take_along_axis(logits_cv, t_c[:, None], axis=-1)[:, 0]
        return picked - jax.nn.logsumexp(logits_cv, axis=-1)

    if remat:
        chunk_logprobs = jax.checkpoint(chunk_logprobs)
    return jax.lax.map(lambda args: chunk_logprobs(*args), (flat_h, flat_t)).reshape(-1)[:n].reshape(b, r)


def _response_logprobs(graphdef, mesh, chunk, state, tokens, valid, score_index, score_target):
    def on_device(state, tokens, valid, score_index, score_target):
        model = nnx.merge(graphdef, state)
        hidden_btd, _ = model(tokens, valid_bt=valid)
        hidden_brd = jnp.take_along_axis(hidden_btd, score_index[..., None], axis=1)
        return target_logprobs(model, hidden_brd, score_target, chunk)

    return per_device(on_device, mesh, n_replicated=1)(state, tokens, valid, score_index, score_target)


def make_response_logprobs_fn(max_traces: int | None = None) -> Callable:
    """The scoring function to jit (``sharding.sharded_program``). ``max_traces`` wraps it in
    ``chex.assert_max_traces`` (tests use it); without it the one shared function is returned, so its compiled
    programs outlive any one scorer."""
    return _response_logprobs if max_traces is None else chex.assert_max_traces(_response_logprobs, n=max_traces)


class TeacherForcedScorer:
    """Scores ``ScoredSequence``s with a model: per-token log-probabilities of their scored tokens.

    Sequences are sorted by length and cut into batches of ``batch_size`` rows, each padded to its own bucket;
    a call runs one batch per device (see ``delift_jax.sharding``), so results do not depend on the device count.
    """

    def __init__(self, model, config: ScoringConfig = ScoringConfig(), *, mesh: Mesh | None = None,
                 max_traces: int | None = None):
        self.config = config
        self.mesh = mesh or current_mesh()
        self.graphdef, state = nnx.split(model)
        self.state = place_params(state, self.mesh)  # replicated on a data mesh, split by the rules otherwise
        self.length_buckets = length_ladder(config.max_length)
        self.scored_buckets = length_ladder(config.max_length, smallest=16)
        self._fn = sharded_program(make_response_logprobs_fn(max_traces),
                                   (self.graphdef, self.mesh, config.logits_chunk), self.mesh, self.state, 4)

    def plan(self, sequences: Sequence[ScoredSequence]) -> list[tuple[list[int], int, int]]:
        """Length-sorted batches: (row indices, bucket length, bucket scored length)."""
        order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), sequences[i].n_scored, i))
        batches = []
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            length = bucket_for(max(len(sequences[i]) for i in rows), self.length_buckets)
            scored = bucket_for(max(sequences[i].n_scored for i in rows), self.scored_buckets)
            batches.append((rows, length, scored))
        return batches

    def logprobs(self, sequences: Sequence[ScoredSequence], progress: bool = False) -> list[np.ndarray]:
        """log p of every scored token, one float32 array per sequence (input order)."""
        out: list[np.ndarray | None] = [None] * len(sequences)
        with _progress_bar(sum(len(s) for s in sequences), progress, "scoring") as bar:  # closed on Ctrl-C too
            size = self.config.batch_size
            calls = calls_by_shape(self.plan(sequences), lambda batch: batch[1:], data_size(self.mesh))
            for (length, scored), batches in calls:
                padded = [pad_batch([sequences[i] for i in rows], size, length, scored) for rows, _, _ in batches]
                padded += [pad_batch([], size, length, scored)] * (data_size(self.mesh) - len(padded))
                stack = lambda field: split_rows(np.concatenate([getattr(p, field) for p in padded]), self.mesh)
                logp = np.asarray(self._fn(self.state, stack("tokens"), stack("valid"), stack("score_index"),
                                           stack("score_target")))
                for b, (rows, _, _) in enumerate(batches):
                    for row, i in enumerate(rows):
                        out[i] = logp[b * size + row, :sequences[i].n_scored].astype(np.float32)
                    bar.update(sum(len(sequences[i]) for i in rows))
        return out


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not enabled, smoothing=0.1)


@dataclasses.dataclass(frozen=True)
class ScoreTable:
    """Per-example results of scoring responses without an in-context example."""

    rms: np.ndarray
    mean_logp: np.ndarray
    n_scored: np.ndarray
    n_truncated: int
    seconds: float
    n_tokens: int


def no_example_sequences(tokenizer, examples: Sequence[Example], config: ScoringConfig,
                         templates: Templates = DEFAULT_TEMPLATES) -> list[ScoredSequence]:
    eos = eos_token_id(tokenizer)
    return [build_sequence(encode_ids(tokenizer, templates.context_without_example(ex)),
                           encode_ids(tokenizer, ex.response), eos, max_length=config.max_length,
                           max_response_tokens=config.max_response_tokens, what=f"example {i}")
            for i, ex in enumerate(examples)]


def score_examples(model, tokenizer, examples: Sequence[Example], config: ScoringConfig = ScoringConfig(), *,
                   templates: Templates = DEFAULT_TEMPLATES, mesh: Mesh | None = None,
                   progress: bool = False) -> ScoreTable:
    """d(i | no example) for every example: RMS of (1 - p) and mean log p over its scored tokens."""
    if not examples:
        raise DataError("no examples to score")
    sequences = no_example_sequences(tokenizer, examples, config, templates)
    scorer = TeacherForcedScorer(model, config, mesh=mesh)
    start = time.perf_counter()
    logps = scorer.logprobs(sequences, progress=progress)
    seconds = time.perf_counter() - start
    return ScoreTable(
        rms=np.array([rms_distance(np.exp(lp)) for lp in logps]),
        mean_logp=np.array([mean_log_prob(lp) for lp in logps]),
        n_scored=np.array([s.n_scored for s in sequences]),
        n_truncated=sum(s.context_dropped > 0 for s in sequences),
        seconds=seconds,
        n_tokens=sum(len(s) for s in sequences),
    )
