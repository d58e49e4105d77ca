"""The train step: loss equals a plain torch computation over response tokens only; gradient accumulation is exact."""

import jax
import numpy as np
import optax
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
U32 = 2.0 ** -24  # float32 unit roundoff


def _full_ft(model, mesh, lr=1e-2, opt=None):
    split, params, frozen = split_model(nnx.clone(model), nnx.Param)
    opt = opt or make_optimizer(lr, 10, schedule="constant", weight_decay=0.1, max_grad_norm=1.0)
    return split, opt, frozen, init_state(params, opt, 0, mesh), make_train_step(split, opt, frozen, mesh,
                                                                                 logits_chunk=16)


def _reorder_bound(reference: dict, n_terms: int) -> dict:
    """Per tensor, the most two summation orders of the same float32 gradient can differ.

    Each gradient entry is a float32 sum over the step's ``n_terms`` scored tokens; device count and micro-batching
    change only the order of that sum. Recursive summation of N terms errs by at most (N - 1) u sum|x_i|
    (Higham, *Accuracy and Stability of Numerical Algorithms*, eq. 4.4), so two orders differ by at most twice that.
    Per-token contributions are taken as no larger than the tensor's largest entry, so sum|x_i| <= N max|g|.
    """
    return {name: 2 * n_terms * U32 * float(np.abs(g).max()) for name, g in reference.items()}


def _sgd_trajectory(model, mesh, sequences, step_rows, micro, per_micro, lr, steps):
    """Losses and parameters after ``steps`` plain SGD steps (no normalization: the update is lr * gradient)."""
    _, _, _, state, step = _full_ft(model, mesh, opt=optax.sgd(lr))
    losses = []
    for _ in range(steps):
        batch = make_batch(sequences, step_rows, micro, padded_rows(per_micro, mesh.size), 128)
        state, metrics = step(state, shard_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), int(metrics["tokens"])


def _assert_same_sgd_run(a, b, original, lr, steps):
    """Two SGD runs that differ only in summation order: losses at ATOL, parameters within the derived bound.

    After T steps the parameters differ by at most sum_t lr |dg_t| (the update is linear in the gradient), plus the
    difference the already-different parameters make to later gradients (a factor (1 + lr L)^T, under 2 here:
    lr = 1e-2 on a tiny model), plus one float32 rounding of each update: nearby values can round one ulp apart,
    and an ulp is at most 2 u |theta|.
    """
    (loss_a, params_a, tokens), (loss_b, params_b, _) = a, b
    np.testing.assert_allclose(loss_a, loss_b, atol=ATOL, rtol=0)
    grads = {name: (np.asarray(original[name]) - params_a[name]) / (lr * steps) for name in params_a}
    bound = _reorder_bound(grads, tokens)
    for name in params_a:
        theta = float(np.abs(params_a[name]).max())
        tol = steps * (2 * lr * bound[name] + 2 * U32 * theta)
        np.testing.assert_allclose(params_a[name], params_b[name], atol=tol, rtol=0, err_msg=name)


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
    """Four micro-batches of one row give the step of one batch of four rows, up to summation order.

    Plain SGD, so the update is proportional to the gradient: a wrong accumulation (a factor, a missed micro-batch)
    shows in the parameters, where Adam's normalized first step would hide it.
    """
    _, _, model, tokenizer = tiny_llama
    mesh = data_mesh()
    sequences = encode_examples(tokenizer, EXAMPLES, 128)
    rows = np.array([1, 2, 4, 6])
    lr = 1e-2
    four_micro = _sgd_trajectory(model, mesh, sequences, rows, 4, 1, lr, 1)
    one_micro = _sgd_trajectory(model, mesh, sequences, rows, 1, 4, lr, 1)
    assert four_micro[2] == one_micro[2]  # scored tokens
    original = split_model(model, nnx.Param)[1]
    _assert_same_sgd_run(four_micro, one_micro, original, lr, 1)
    moved = max(float(np.abs(four_micro[1][n] - np.asarray(original[n])).max()) for n in original)
    assert moved > 1e-5  # the step really updated the parameters


def test_one_and_four_devices_give_the_same_sgd_steps(tiny_llama):
    """Data parallelism changes only the order of the gradient sums: three SGD steps agree within that bound."""
    _, _, model, tokenizer = tiny_llama
    sequences = encode_examples(tokenizer, EXAMPLES, 128)
    rows = np.array([0, 1, 2, 3, 4, 5, 6, -1])
    lr, steps = 1e-2, 3
    one = _sgd_trajectory(model, data_mesh(jax.devices()[:1]), sequences, rows, 2, 4, lr, steps)
    four = _sgd_trajectory(model, data_mesh(jax.devices()[:4]), sequences, rows, 2, 4, lr, steps)
    _assert_same_sgd_run(one, four, split_model(model, nnx.Param)[1], lr, steps)


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
