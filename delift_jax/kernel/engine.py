"""Score (target, candidate) pairs with prefix reuse, sharded over the devices of a mesh.

Each candidate's demonstration runs once; its keys/values are kept and every batch of target continuations
attends to them (shared by the batch, not copied per row); logits are computed only at scored positions. Calls
run ``candidates_per_device`` units per device under ``shard_map`` over the mesh axis ``"data"``; padding units
and rows make every count fit, whatever the number of devices.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from delift_jax.data.tokenize import ScoredSequence, bucket_for, length_ladder, pad_batch
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.pairs import PairSequences
from delift_jax.models.llama import KVPrefix
from delift_jax.scoring import ScoringConfig, TeacherForcedScorer, mean_log_prob, rms_distance, target_logprobs
from delift_jax.sharding import calls_by_shape, data_mesh, per_device, replicate, split_rows


def _demonstration_kv(graphdef, mesh, state, prefix_tokens_gp, prefix_valid_gp):
    """Keys and values of each candidate's demonstration: ``[g, layers, p, kv_heads, head_dim]`` each."""

    def on_device(state, tokens_gp, valid_gp):
        model = nnx.merge(graphdef, state)

        def one_candidate(tokens_p, valid_p):
            positions = jnp.arange(tokens_p.shape[0], dtype=jnp.int32)[None]
            _, kv = model(tokens_p[None], positions_bt=positions, valid_bt=valid_p[None])
            return jnp.stack([k[0] for k, _ in kv]), jnp.stack([v[0] for _, v in kv])

        return jax.vmap(one_candidate)(tokens_gp, valid_gp)

    return per_device(on_device, mesh, n_replicated=1)(state, prefix_tokens_gp, prefix_valid_gp)


def _continuation_logprobs(graphdef, mesh, chunk, state, keys_glpkh, values_glpkh, prefix_valid_gp, cont_tokens_gbt,
                           cont_valid_gbt, score_index_gbr, score_target_gbr):
    """log p of every scored continuation token, ``[g, b, r]``, each batch after its candidate's demonstration
    (its keys/values shared by the whole batch, not copied per row)."""

    def on_device(state, *unit_arrays):
        model = nnx.merge(graphdef, state)

        def one_candidate(keys_lpkh, values_lpkh, prefix_valid_p, cont_bt, cont_valid_bt, index_br, target_br):
            p = prefix_valid_p.shape[0]
            prefix = KVPrefix(keys=tuple(keys_lpkh[:, None]), values=tuple(values_lpkh[:, None]),
                              positions=jnp.arange(p, dtype=jnp.int32)[None], valid=prefix_valid_p[None])
            start = jnp.sum(prefix_valid_p, dtype=jnp.int32)  # continuations follow the real (unpadded) prefix
            b, t = cont_bt.shape
            positions = start + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            hidden_btd, _ = model(cont_bt, positions_bt=positions, valid_bt=cont_valid_bt, prefix=prefix)
            hidden_brd = jnp.take_along_axis(hidden_btd, index_br[..., None], axis=1)
            return target_logprobs(model, hidden_brd, target_br, chunk)

        return jax.vmap(one_candidate)(*unit_arrays)

    return per_device(on_device, mesh, n_replicated=1)(state, keys_glpkh, values_glpkh, prefix_valid_gp,
                                                        cont_tokens_gbt, cont_valid_gbt, score_index_gbr,
                                                        score_target_gbr)


_DEMONSTRATION_KV = jax.jit(_demonstration_kv, static_argnums=(0, 1))
_CONTINUATION_LOGPROBS = jax.jit(_continuation_logprobs, static_argnums=(0, 1, 2))


class PairScorer:
    """Computes d(i | example j) for lists of pairs: RMS of (1 - p) and mean log p over i's scored tokens.

    A unit of work is one candidate with a batch of up to ``batch_size`` of its targets, padded to buckets that
    depend only on that unit; each device runs ``candidates_per_device`` units per call. Results are therefore
    identical for any number of devices.
    """

    def __init__(self, model, config: KernelConfig, *, mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh or data_mesh()
        self.units_per_call = self.mesh.size * config.candidates_per_device
        self.graphdef, state = nnx.split(model)
        self.state = replicate(state, self.mesh)
        self.ladder = length_ladder(config.max_length)
        self.scored_ladder = length_ladder(config.max_length, smallest=16)
        self.full_scorer = TeacherForcedScorer(
            model, ScoringConfig(max_length=config.max_length, batch_size=config.batch_size,
                                 logits_chunk=config.logits_chunk), mesh=self.mesh)

    def score(self, pairs: np.ndarray, seqs: PairSequences, full: dict[tuple[int, int], ScoredSequence],
              on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rms, mean_logp) for each row (target, candidate) of ``pairs``, in order. ``full``: the pairs that
        cannot reuse their candidate's prefix, with their own sequences (see ``pairs.full_sequences_for``)."""
        rms = np.full(len(pairs), np.nan)
        logp = np.full(len(pairs), np.nan)
        full_rows = [r for r, (i, j) in enumerate(pairs) if (int(i), int(j)) in full]
        if full_rows:
            full_seqs = [full[(int(pairs[r, 0]), int(pairs[r, 1]))] for r in full_rows]
            for r, lp in zip(full_rows, self.full_scorer.logprobs(full_seqs)):
                rms[r], logp[r] = rms_distance(np.exp(lp)), mean_log_prob(lp)
            if on_progress:
                on_progress(len(full_rows))

        units = self._units(pairs, seqs, set(full_rows))
        demonstrations = self._demonstrations(sorted({j for j, _, _ in units}), seqs)
        for shape, call_units in calls_by_shape(units, lambda unit: unit[2], self.units_per_call):
            out = self._run(shape, call_units, pairs, seqs, demonstrations)
            for u, (_, rows, _) in enumerate(call_units):
                for b, r in enumerate(rows):
                    lp = out[u, b, :seqs.continuations[pairs[r, 0]].n_scored]
                    rms[r], logp[r] = rms_distance(np.exp(lp)), mean_log_prob(lp)
            if on_progress:
                on_progress(sum(len(rows) for _, rows, _ in call_units))
        return rms, logp

    def _units(self, pairs, seqs, skip: set[int]) -> list[tuple[int, list[int], tuple[int, int, int]]]:
        """(candidate, pair rows, (prefix, continuation, scored) bucket) per unit, sorted by shape."""
        by_candidate: dict[int, list[int]] = defaultdict(list)
        for r, j in enumerate(pairs[:, 1]):
            if r not in skip:
                by_candidate[int(j)].append(r)
        units = []
        for j, rows in by_candidate.items():
            rows.sort(key=lambda r: (len(seqs.continuations[pairs[r, 0]]), r))  # little padding per batch
            p_len = bucket_for(len(seqs.prefixes[j]), self.ladder)
            for start in range(0, len(rows), self.config.batch_size):
                chunk = rows[start:start + self.config.batch_size]
                conts = [seqs.continuations[pairs[r, 0]] for r in chunk]
                shape = (p_len, bucket_for(max(len(c) for c in conts), self.ladder),
                         bucket_for(max(c.n_scored for c in conts), self.scored_ladder))
                units.append((j, chunk, shape))
        units.sort(key=lambda unit: (unit[2], unit[0], unit[1][0]))
        return units

    def _demonstrations(self, candidates: list[int], seqs: PairSequences) -> dict[int, tuple]:
        """Each candidate's demonstration run once: (keys, values, valid) on the host, padded to its bucket."""
        buckets = sorted(((bucket_for(len(seqs.prefixes[j]), self.ladder), j) for j in candidates))
        out = {}
        for p_len, group in calls_by_shape([j for _, j in buckets],
                                           lambda j: bucket_for(len(seqs.prefixes[j]), self.ladder),
                                           self.units_per_call):
            tokens = np.zeros((self.units_per_call, p_len), np.int32)
            valid = np.zeros((self.units_per_call, p_len), bool)
            for g, j in enumerate(group):
                tokens[g, :len(seqs.prefixes[j])] = seqs.prefixes[j]
                valid[g, :len(seqs.prefixes[j])] = True
            keys, values = _DEMONSTRATION_KV(self.graphdef, self.mesh, self.state, split_rows(tokens, self.mesh),
                                             split_rows(valid, self.mesh))
            keys, values = np.asarray(keys), np.asarray(values)
            for g, j in enumerate(group):
                out[j] = (keys[g], values[g], valid[g])
        return out

    def _run(self, shape, call_units, pairs: np.ndarray, seqs: PairSequences, demonstrations: dict) -> np.ndarray:
        p_len, t_len, r_len = shape
        g_size, b_size = self.units_per_call, self.config.batch_size
        layers, _, kv_heads, head_dim = next(iter(demonstrations.values()))[0].shape
        keys = np.zeros((g_size, layers, p_len, kv_heads, head_dim), next(iter(demonstrations.values()))[0].dtype)
        values = np.zeros_like(keys)
        prefix_valid = np.zeros((g_size, p_len), bool)
        cont_tokens = np.zeros((g_size, b_size, t_len), np.int32)
        cont_valid = np.zeros((g_size, b_size, t_len), bool)
        score_index = np.zeros((g_size, b_size, r_len), np.int32)
        score_target = np.zeros((g_size, b_size, r_len), np.int32)
        for g, (j, rows, _) in enumerate(call_units):
            keys[g], values[g], prefix_valid[g] = demonstrations[j]
            batch = pad_batch([seqs.continuations[pairs[r, 0]] for r in rows], b_size, t_len, r_len)
            cont_tokens[g], cont_valid[g] = batch.tokens, batch.valid
            score_index[g], score_target[g] = batch.score_index, batch.score_target
        put = lambda a: split_rows(a, self.mesh)
        out = _CONTINUATION_LOGPROBS(self.graphdef, self.mesh, self.config.logits_chunk, self.state, put(keys),
                                     put(values), put(prefix_valid), put(cont_tokens), put(cont_valid),
                                     put(score_index), put(score_target))
        return np.asarray(out)
