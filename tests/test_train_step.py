"""The train step: loss equals a plain torch computation over response tokens only; gradient accumulation is exact."""

import jax
import numpy as np
import torch
from flax import nnx

from delift_jax.data import DEFAULT_TEMPLATES
from delift_jax.data.tokenize import encode_ids
from delift_jax.sharding import data_mesh
from delift_jax.train.data import encode_examples, make_batch, padded_rows, plan_steps
from delift_jax.train.optim import make_optimizer
from delift_jax.train.step import init_state, make_train_step, shard_batch, split_model
from examples import EXAMPLES

ATOL = 1e-5


def _full_ft(model, mesh, lr=1e-2):
    split, params, frozen = split_model(nnx.clone(model), nnx.Param)
    opt = make_optimizer(lr, 10, schedule="constant", weight_decay=0.1, max_grad_norm=1.0)
    return split, opt, frozen, init_state(params, opt, 0, mesh), make_train_step(split, opt, frozen, mesh,
                                                                                 logits_chunk=16)


def _torch_mean_response_nll(torch_model, tokenizer, examples):
    """Reference: run each sequence alone, -log softmax at the response tokens and the final EOS, token mean."""
    eos = tokenizer.eos_token_id
    total, count = 0.0, 0
    for ex in examples:
        context = encode_ids(tokenizer, DEFAULT_TEMPLATES.context_without_example(ex))
        response = encode_ids(tokenizer, ex.response) + [eos]
        ids = torch.tensor([context + [eos] + response])
        with torch.no_grad():
            logp = torch.log_softmax(torch_model(ids).logits.double(), dim=-1)[0]
        start = len(context) + 1
        for k, token in enumerate(response):
            total -= float(logp[start + k - 1, token])
            count += 1
    return total / count, count


def test_loss_equals_torch_response_only_nll(tiny_llama):
    _, torch_model, model, tokenizer = tiny_llama
    mesh = data_mesh()
    examples = EXAMPLES[:5]
    sequences = encode_examples(tokenizer, examples, 128)
    _, _, _, state, step = _full_ft(model, mesh)
    batch = make_batch(sequences, np.array([0, 1, 2, 3, 4, -1]), 2, padded_rows(3, mesh.size), 128)
    _, metrics = step(state, shard_batch(batch, mesh))
    want, count = _torch_mean_response_nll(torch_model, tokenizer, examples)
    assert int(metrics["tokens"]) == count
    np.testing.assert_allclose(float(metrics["loss"]), want, atol=ATOL, rtol=0)


def test_scored_tokens_are_the_response_and_final_eos(tiny_llama):
    _, _, _, tokenizer = tiny_llama
    sequences = encode_examples(tokenizer, EXAMPLES[:3], 128)
    batch = make_batch(sequences, np.array([0, 1, 2]), 1, 4, 128)
    eos = tokenizer.eos_token_id
    for row, ex in enumerate(EXAMPLES[:3]):
        context = encode_ids(tokenizer, DEFAULT_TEMPLATES.context_without_example(ex))
        response = encode_ids(tokenizer, ex.response) + [eos]
        valid = batch["score_valid"][0, row]
        np.testing.assert_array_equal(batch["score_target"][0, row][valid], response)
        # Every scored position is at or after the separator EOS: no prompt token is ever a target.
        assert batch["score_index"][0, row][valid].min() == len(context)
        np.testing.assert_array_equal(batch["tokens"][0, row, batch["score_index"][0, row][valid] + 1], response)
    assert not batch["score_valid"][0, 3].any() and not batch["valid"][0, 3].any()


def test_gradient_accumulation_4x1_equals_batch_of_4(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    mesh = data_mesh()
    sequences = encode_examples(tokenizer, EXAMPLES, 128)
    rows = np.array([1, 2, 4, 6])
    out = {}
    for micro, per in ((4, 1), (1, 4)):
        split, opt, frozen, state, step = _full_ft(model, mesh)
        batch = make_batch(sequences, rows, micro, padded_rows(per, mesh.size), 128)
        state, metrics = step(state, shard_batch(batch, mesh))
        out[micro] = (jax.device_get(state.params), metrics)
    (p4, m4), (p1, m1) = out[4], out[1]
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), atol=ATOL)
    assert float(m4["tokens"]) == float(m1["tokens"])
    original = split_model(model, nnx.Param)[1]
    moved = 0.0
    for name in p1:
        np.testing.assert_allclose(p4[name], p1[name], atol=ATOL, rtol=0, err_msg=name)
        moved = max(moved, float(np.abs(p1[name] - np.asarray(original[name])).max()))
    assert moved > 1e-3  # the step really updated the parameters


def test_step_is_pure_and_traced_once_per_shape(tiny_llama):
    """Same state and batch give the same result; a second step with the same shapes does not retrace."""
    _, _, model, tokenizer = tiny_llama
    mesh = data_mesh()
    sequences = encode_examples(tokenizer, EXAMPLES, 128)
    plan = plan_steps([len(s) for s in sequences], 2, 2, seed=0, group_by_length=False)
    split, opt, frozen, state, step = _full_ft(model, mesh)
    batch = make_batch(sequences, plan[0], 1, padded_rows(2, mesh.size), 128)
    first, m1 = step(state, shard_batch(batch, mesh))
    first = jax.device_get(first.params)
    _, _, _, again, _ = _full_ft(model, mesh)
    second, m2 = step(again, shard_batch(batch, mesh))
    assert float(m1["loss"]) == float(m2["loss"])
    for name in first:
        np.testing.assert_array_equal(first[name], np.asarray(second.params[name]))
    size = step.jitted._cache_size()
    step(second, shard_batch(batch, mesh))
    assert step.jitted._cache_size() == size


def test_plan_is_seeded_and_covers_every_example_once_per_epoch():
    lengths = np.random.RandomState(0).randint(5, 90, size=23)
    a = plan_steps(lengths, 4, 3, seed=1)
    np.testing.assert_array_equal(a, plan_steps(lengths, 4, 3, seed=1))
    assert not np.array_equal(a, plan_steps(lengths, 4, 3, seed=2))
    per_epoch = len(a) // 3
    for e in range(3):
        epoch = a[e * per_epoch:(e + 1) * per_epoch].reshape(-1)
        assert sorted(epoch[epoch >= 0].tolist()) == list(range(23))
    assert len(plan_steps(lengths, 4, 1, seed=0, max_steps=20)) == 20
