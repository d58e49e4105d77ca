"""The packed pair engine: packing layout, exactness against full-sequence scoring, device-count independence."""

import dataclasses

import jax
import numpy as np
import pytest

from delift_jax.data import Example
from delift_jax.data.tokenize import ScoredSequence
from delift_jax.kernel import KernelConfig
from delift_jax.kernel.compute import plan_pairs
from delift_jax.kernel.engine import (CPU_TOKENS_PER_CALL, PairScorer, activation_bytes_per_token,
                                       tokens_per_call_for)
from delift_jax.kernel.packing import Item, PackingSizes, pack_units
from delift_jax.kernel.pairs import build_pair_sequences, full_sequences_for
from delift_jax.scoring import ScoringConfig, TeacherForcedScorer
from delift_jax.sharding import data_mesh
from examples import EXAMPLES

POOL = EXAMPLES[:6] + [Example("Say 84 and a space.", "84 ")]  # the last pair type needs the full-sequence path


def _items(rng, n, n_prefixes):
    out = []
    for k in range(n):
        length = int(rng.integers(3, 40))
        prefix = None if k % 5 == 4 else int(rng.integers(0, n_prefixes))
        out.append(Item(k, prefix, rng.integers(1, 100, length).astype(np.int32), int(rng.integers(1, length))))
    return out


def test_packing_places_every_item_once_with_its_own_positions_and_scores():
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(1, 100, int(rng.integers(5, 30))).astype(np.int32) for _ in range(6)]
    items = _items(rng, 60, len(prefixes)) + [Item(60, 2, rng.integers(1, 100, 300).astype(np.int32), 7)]
    units = pack_units(items, prefixes, PackingSizes(tokens_per_unit=512, max_length=512, min_row=64))
    seen = {}
    for unit in units:
        shape = unit.shape
        assert unit.tokens.shape == (shape.rows, shape.length) and unit.score_index.shape == (shape.scored,)
        assert shape.rows * shape.length <= max(512, shape.length)
        flat_tokens, flat_pos = unit.tokens.reshape(-1), unit.positions.reshape(-1)
        for key, slot, n in unit.placed:
            item = items[key]
            index = unit.score_index[slot:slot + n]
            np.testing.assert_array_equal(unit.score_target[slot:slot + n], item.tokens[len(item.tokens) - n:])
            np.testing.assert_array_equal(flat_tokens[index + 1], unit.score_target[slot:slot + n])
            row = index[0] // shape.length
            window = unit.row_window[row][unit.row_window[row] >= 0]
            expected_start = 0 if item.prefix is None else len(prefixes[item.prefix])
            assert unit.row_window.shape == (shape.rows, shape.window) and len(window) == expected_start
            if item.prefix is not None:  # the row's window holds exactly its candidate's demonstration
                np.testing.assert_array_equal(unit.prefix_tokens[window], prefixes[item.prefix])
                np.testing.assert_array_equal(unit.prefix_positions[window], np.arange(expected_start))
            start = index[0] - (len(item.tokens) - n - 1)
            np.testing.assert_array_equal(flat_tokens[start:start + len(item.tokens)], item.tokens)
            np.testing.assert_array_equal(flat_pos[start:start + len(item.tokens)],
                                          expected_start + np.arange(len(item.tokens)))
            assert len(set(unit.segments.reshape(-1)[start:start + len(item.tokens)])) == 1
            seen[key] = seen.get(key, 0) + 1
    assert seen == {k: 1 for k in range(len(items))}
    assert len({u.shape for u in units}) <= 6  # coarse ladders: few programs to compile


def _joined(seqs, i, j):
    cont = seqs.continuations[i]
    return ScoredSequence(np.concatenate([seqs.prefixes[j], cont.tokens]), cont.n_scored)


@pytest.mark.parametrize("tokens_per_call", [64, 256, 4096])
def test_packed_pairs_equal_full_sequence_scoring(tiny_llama, tokens_per_call):
    """Small units force candidates to overflow into several units and several candidates to share one."""
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, tokens_per_call=tokens_per_call)
    seqs = build_pair_sequences(tokenizer, POOL, POOL, config)
    pairs = plan_pairs(len(POOL), len(POOL), None)
    full = full_sequences_for(tokenizer, POOL, POOL, pairs, seqs, config)
    assert full  # the full-sequence path is exercised
    scorer = PairScorer(model, config)
    rms, logp = scorer.score(pairs, seqs, full)
    sequences = [full.get((int(i), int(j))) or _joined(seqs, i, j) for i, j in pairs]
    direct = TeacherForcedScorer(model, ScoringConfig(max_length=256, batch_size=4)).logprobs(sequences)
    np.testing.assert_allclose(logp, [np.mean(lp.astype(np.float64)) for lp in direct], atol=1e-5, rtol=0)
    np.testing.assert_allclose(rms, [np.sqrt(np.mean((1 - np.exp(lp.astype(np.float64))) ** 2)) for lp in direct],
                               atol=1e-5, rtol=0)


def test_score_sequences_equals_teacher_forced_scorer(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, tokens_per_call=128)
    seqs = build_pair_sequences(tokenizer, POOL, POOL, config)
    ours = PairScorer(model, config).score_sequences(seqs.no_example)
    direct = TeacherForcedScorer(model, ScoringConfig(max_length=256, batch_size=4)).logprobs(seqs.no_example)
    for a, b in zip(ours, direct):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_devices", [1, 3])
def test_device_counts_give_bit_identical_pair_scores(tiny_llama, n_devices):
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, tokens_per_call=128)
    seqs = build_pair_sequences(tokenizer, POOL, POOL, config)
    pairs = plan_pairs(len(POOL), len(POOL), None)
    full = full_sequences_for(tokenizer, POOL, POOL, pairs, seqs, config)
    four = PairScorer(model, config, mesh=data_mesh(jax.devices())).score(pairs, seqs, full)
    other = PairScorer(model, config, mesh=data_mesh(jax.devices()[:n_devices])).score(pairs, seqs, full)
    np.testing.assert_array_equal(other[0], four[0])
    np.testing.assert_array_equal(other[1], four[1])


def test_tokens_per_call_sized_from_device_memory(tiny_llama):
    _, _, model, _ = tiny_llama

    class FakeDevice:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    class FakeMesh:
        def __init__(self, device):
            self.devices = np.array([device])

    per_token = activation_bytes_per_token(model.config, model.dtype)
    cpu = tokens_per_call_for(model.config, FakeMesh(FakeDevice(None)), model.dtype)  # CPUs report no memory
    assert cpu == CPU_TOKENS_PER_CALL
    big = FakeDevice({"bytes_limit": 2 ** 40, "bytes_in_use": 0})
    assert tokens_per_call_for(model.config, FakeMesh(big), model.dtype) == 65536
    mid = FakeDevice({"bytes_limit": 50_000 * per_token + 5, "bytes_in_use": 5})
    assert tokens_per_call_for(model.config, FakeMesh(mid), model.dtype) == 16384  # 0.4 * 50,000 -> 16384


def test_units_of_a_rung_share_shapes_unless_one_long_demonstration_would_pad_them_all():
    from delift_jax.kernel.packing import UnitShape, _shared_shapes

    shape = lambda prefix, rows=4, scored=512: UnitShape(prefix, rows, 256, scored)
    # Three short-prefix units and two partial ones join the 256 group (padding 3 x 128 <= 1024 tokens); the
    # unit with a 2048-token demonstration keeps its own shape instead of padding every unit to 2048.
    shapes = _shared_shapes([shape(128)] * 3 + [shape(256, 2, 256)] * 2 + [shape(2048)], 1024)
    assert shapes == [shape(256)] * 5 + [shape(2048)]
    # Many short-prefix units would pay more padding than one unit holds: they keep their own program.
    shapes = _shared_shapes([shape(128)] * 10 + [shape(256)] * 2, 1024)
    assert shapes == [shape(128)] * 10 + [shape(256)] * 2
