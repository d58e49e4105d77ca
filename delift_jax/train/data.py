"""Training data: examples -> scored sequences (the one shared template) -> a seeded plan of padded steps.

Template: the same as scoring and generation (DESIGN §1.1): ``context + [eos] + response + [eos]`` with the
no-example context ``Templates.context_without_example``. Generation prompts with ``context + [eos]`` and the
model continues with the response until EOS, so training and generation can never disagree on the format.

The *plan* is the data order of a whole run: ``[steps, rows_per_step]`` example indices (``-1`` pads the last
step of an epoch). Each epoch is a permutation drawn from ``numpy.random.default_rng([seed, epoch])``; with
``group_by_length``, the permutation is cut into windows of 16 steps, each window sorted by length (less padding)
and the steps of the epoch shuffled again with the same generator. Checkpoints store the plan, so a resumed run
reads exactly the batches an uninterrupted run would have read.

Packing several examples into one row is not implemented: the model's attention mask (causal & valid) has no
segment ids, so packed examples would attend across their boundaries. Length bucketing keeps padding low instead.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.data.tokenize import (ScoredSequence, bucket_for, build_sequence, encode_ids, eos_token_id,
                                     length_ladder)
from delift_jax.errors import DataError

_WINDOW_STEPS = 16


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int,
                    templates: Templates = DEFAULT_TEMPLATES) -> list[ScoredSequence]:
    """Scored sequences of ``examples`` (response + final EOS scored). A response that alone does not fit
    ``max_length`` is a ``DataError``; an over-long context is cut from the left (``context_dropped``)."""
    if not examples:
        raise DataError("the training set is empty: no examples to fine-tune on")
    eos = eos_token_id(tokenizer)
    return [build_sequence(encode_ids(tokenizer, templates.context_without_example(ex)),
                           encode_ids(tokenizer, ex.response), eos, max_length=max_length,
                           what=f"training example {i}",
                           fix="raise --max-length (the response and its EOS are trained on in full) or leave "
                               "this example out of the training data")
            for i, ex in enumerate(examples)]


def plan_steps(lengths: Sequence[int], rows_per_step: int, epochs: int, seed: int, *,
               max_steps: int | None = None, group_by_length: bool = True) -> np.ndarray:
    """The run's data order: ``[steps, rows_per_step]`` int32 example indices, ``-1`` for empty rows."""
    n = len(lengths)
    if n == 0:
        raise DataError("the training set is empty: no examples to fine-tune on")
    if rows_per_step < 1 or epochs < 1:
        raise DataError(f"rows_per_step={rows_per_step} and epochs={epochs} must be at least 1")
    lengths = np.asarray(lengths)
    steps = []
    epoch = 0
    while (max_steps is None and epoch < epochs) or (max_steps is not None and len(steps) < max_steps):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        if group_by_length:
            window = rows_per_step * _WINDOW_STEPS
            order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                                    for chunk in np.split(order, range(window, n, window))])
        padded = np.full(-(-n // rows_per_step) * rows_per_step, -1, dtype=np.int32)
        padded[:n] = order
        epoch_steps = padded.reshape(-1, rows_per_step)
        if group_by_length:
            epoch_steps = epoch_steps[rng.permutation(len(epoch_steps))]
        steps.extend(epoch_steps)
        epoch += 1
    plan = np.stack(steps).astype(np.int32)
    return plan[:max_steps] if max_steps is not None else plan


def padded_rows(batch_size: int, n_devices: int) -> int:
    """Rows per micro-batch: ``batch_size`` rounded up to a multiple of the device count (extra rows empty)."""
    return -(-batch_size // n_devices) * n_devices


def fixed_shape(sequences: Sequence[ScoredSequence], max_length: int) -> tuple[int, int]:
    """One ``(length, scored length)`` for every step of a run: ``max_length`` and the bucket of the longest
    response (one compilation; for accelerators, or for tests that must not recompile)."""
    return max_length, bucket_for(max(s.n_scored for s in sequences), length_ladder(max_length, smallest=16))


def make_batch(sequences: Sequence[ScoredSequence], step_rows: np.ndarray, micro_batches: int,
               rows_per_micro: int, max_length: int, pad_id: int = 0,
               shape: tuple[int, int] | None = None) -> dict:
    """Host arrays ``[m, b, t]`` / ``[m, b, r]`` for one optimizer step.

    ``step_rows`` (``m * batch_size`` indices, ``-1`` empty) is split into ``m`` consecutive micro-batches, each
    padded to ``rows_per_micro`` rows. Every micro-batch of the step shares one bucketed length ``t`` and one
    bucketed scored length ``r`` (from ``length_ladder``), so a run compiles one program per bucket pair;
    ``shape=(t, r)`` fixes them instead (see ``fixed_shape``).
    """
    chosen = [int(i) for i in step_rows if i >= 0]
    if not chosen:
        raise DataError("a training step has no examples")
    if shape is not None:
        t, r = shape
    else:
        t = bucket_for(max(len(sequences[i]) for i in chosen), length_ladder(max_length))
        r = bucket_for(max(sequences[i].n_scored for i in chosen), length_ladder(max_length, smallest=16))
    per_micro = len(step_rows) // micro_batches
    m, b = micro_batches, rows_per_micro
    tokens = np.full((m, b, t), pad_id, np.int32)
    valid = np.zeros((m, b, t), bool)
    score_index = np.zeros((m, b, r), np.int32)
    score_target = np.zeros((m, b, r), np.int32)
    score_valid = np.zeros((m, b, r), bool)
    for k, index in enumerate(step_rows):
        if index < 0:
            continue
        mi, row = divmod(k, per_micro)
        seq = sequences[int(index)]
        n, s = len(seq), seq.n_scored
        tokens[mi, row, :n] = seq.tokens
        valid[mi, row, :n] = True
        score_index[mi, row, :s] = np.arange(n - s - 1, n - 1)
        score_target[mi, row, :s] = seq.tokens[n - s:]
        score_valid[mi, row, :s] = True
    return {"tokens": tokens, "valid": valid, "score_index": score_index, "score_target": score_target,
            "score_valid": score_valid}
