"""finetune: learning on real data, 1 vs 4 devices, resume after an interruption, bad input."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from delift_jax.data import Example, load_builtin
from delift_jax.errors import DataError
from delift_jax.sharding import data_mesh
from delift_jax.train import (CheckpointMismatchError, LoRAConfig, TrainConfig, TrainingDivergedError, finetune,
                              split_model)
from delift_jax.train.checkpoint import Checkpointer
from delift_jax.train.data import encode_examples, make_batch, padded_rows
from delift_jax.train.step import eval_nll, shard_batch
from examples import EXAMPLES

ATOL = 1e-5
# One shape and one optimizer for most tests, so the train step compiles once per mesh (compiles dominate here).
LORA_SMALL = TrainConfig(method="lora", lora=LoRAConfig(4, 8.0, dropout=0.1), learning_rate=1e-2,
                         schedule="constant", weight_decay=0.1, batch_size=2, max_length=128, pad_to_max_length=True,
                         max_steps=6, save_every=2)


def _params(model, method="lora"):
    _, params, _ = split_model(model, nnx.LoRAParam if method == "lora" else nnx.Param)
    return jax.device_get(params)


def _mean_nll(model, tokenizer, examples, max_length):
    mesh = data_mesh()
    sequences = encode_examples(tokenizer, examples, max_length)
    split, params, frozen = split_model(model, nnx.Param)
    rows = np.arange(len(sequences))
    batch = shard_batch(make_batch(sequences, rows, 1, padded_rows(len(rows), mesh.size), max_length), mesh)
    total, count = eval_nll(split, 64, frozen, params, batch)
    return float(total) / float(count)


def test_loss_decreases_on_real_data(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    # 16 real ifbench pairs, shortened so the byte-level tiny tokenizer keeps them under 256 tokens.
    examples = [Example(e.prompt[:150], e.response[:120]) for e in load_builtin("ifbench", limit=16)]
    config = TrainConfig(method="lora", lora=LoRAConfig(8, 16.0), learning_rate=1e-2, schedule="constant",
                         max_steps=30, batch_size=4, max_length=256, pad_to_max_length=True)
    before = _mean_nll(model, tokenizer, examples, 256)
    result = finetune(model, tokenizer, examples, config)
    after = _mean_nll(result.model, tokenizer, examples, 256)
    assert len(result.losses) == 30
    assert after < 0.85 * before, (before, after)
    assert np.mean(result.losses[-5:]) < 0.85 * np.mean(result.losses[:5])


def test_one_and_four_devices_train_the_same(tiny_llama):
    """The training loop on 1 and 4 devices: the same run up to the order of the gradient sums.

    Adam's update m / (sqrt(v) + eps) turns a rounding-level gradient difference into a difference up to lr for an
    entry whose gradient is near eps (with eps = 1e-8 that bounds nothing), so this test sets eps = 1, where the
    update is Lipschitz in the gradient: |du| <= |dm| / eps + |m| |d sqrt(v)| / eps^2 <= 2 max|dg| for |g| <= 1,
    which clip_by_global_norm(1.0) guarantees. A reordered float32 sum of N per-token terms, each within max|g|,
    moves by at most 2 N u max|g| (tests/test_train_step.py: _reorder_bound), N <= rows per step x max_length.
    So after T steps |d theta| <= T (2 lr 2 N u + 2 u |theta|): the second term is one rounding of each update.
    The gradients and plain-SGD steps themselves are compared across device counts in tests/test_train_step.py.
    """
    _, _, model, tokenizer = tiny_llama
    config = dataclasses.replace(LORA_SMALL, max_steps=3, grad_accum=2, adam_eps=1.0)
    one = finetune(model, tokenizer, EXAMPLES, config, mesh=data_mesh(jax.devices()[:1]))
    four = finetune(model, tokenizer, EXAMPLES, config, mesh=data_mesh(jax.devices()[:4]))
    u32 = 2.0 ** -24
    n_terms = config.rows_per_step * config.max_length
    for loss_one, loss_four in zip(one.losses, four.losses):  # a mean of positive per-token NLLs: sum|x| = sum
        assert abs(loss_one - loss_four) <= 2 * n_terms * u32 * loss_one, (one.losses, four.losses)
    p1, p4 = _params(one.model), _params(four.model)
    steps = config.max_steps
    for name in p1:
        tol = steps * (2 * config.learning_rate * 2 * n_terms * u32 + 2 * u32 * float(np.abs(p1[name]).max()))
        np.testing.assert_allclose(p1[name], p4[name], atol=tol, rtol=0, err_msg=name)
    # lora_b starts at zero: its size is how far the run moved, far beyond the tolerance.
    assert max(float(np.abs(p1[n]).max()) for n in p1 if n.endswith("lora_b")) > 10 * tol


class _Interrupt(Exception):
    pass


def test_resume_continues_the_same_run(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    config = LORA_SMALL
    reference = finetune(model, tokenizer, EXAMPLES, config)

    def stop_after_3(step, metrics):
        if step == 3:
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        finetune(model, tokenizer, EXAMPLES, config, tmp_path / "run", on_step=stop_after_3)
    resumed = finetune(model, tokenizer, EXAMPLES, config, tmp_path / "run")
    assert resumed.resumed_from == 2
    np.testing.assert_allclose(resumed.losses, reference.losses, atol=ATOL, rtol=0)
    ref, got = _params(reference.model), _params(resumed.model)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], atol=ATOL, rtol=0, err_msg=name)
    # A finished run resumed again does nothing and reports the same curve.
    again = finetune(model, tokenizer, EXAMPLES, config, tmp_path / "run")
    assert again.resumed_from == 6 and again.losses == resumed.losses


def test_checkpoint_directory_of_another_run_is_refused(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    config = dataclasses.replace(LORA_SMALL, max_steps=1)
    finetune(model, tokenizer, EXAMPLES, config, tmp_path / "run")
    other_config = dataclasses.replace(config, lora=LoRAConfig(2, 8.0))
    with pytest.raises(CheckpointMismatchError, match="belongs to another run .*config"):
        finetune(model, tokenizer, EXAMPLES, other_config, tmp_path / "run")
    other_model = nnx.clone(model)
    other_model.norm.scale.set_value(other_model.norm.scale[...] * 1.01)
    with pytest.raises(CheckpointMismatchError, match="belongs to another run .*model"):
        finetune(other_model, tokenizer, EXAMPLES, config, tmp_path / "run")
    with pytest.raises(CheckpointMismatchError, match="belongs to another run .*data"):
        finetune(model, tokenizer, EXAMPLES[:4], config, tmp_path / "run")
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointMismatchError, match="not empty"):
        finetune(model, tokenizer, EXAMPLES, config, tmp_path / "stranger")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    # lr 1e30 with no clipping: the first update sends weights to ~1e30 and the next forward overflows.
    config = TrainConfig(method="full", learning_rate=1e30, max_grad_norm=None, max_steps=5, save_every=1,
                         max_length=128, batch_size=2, schedule="constant", pad_to_max_length=True)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan .* step 2; the last good checkpoint \(step 1\)"):
        finetune(model, tokenizer, EXAMPLES, config, tmp_path / "run")
    fingerprint = json.loads((tmp_path / "run" / "run.json").read_text())
    checkpointer = Checkpointer(tmp_path / "run", fingerprint)
    assert checkpointer.latest_step() == 1
    assert checkpointer.manager.all_steps() == [1]
    checkpointer.close()


def test_bad_training_input(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    config = dataclasses.replace(LORA_SMALL, max_steps=1)
    with pytest.raises(DataError, match="training set is empty"):
        finetune(model, tokenizer, [], config)
    long = Example("Name a color.", " blue" * 200)
    with pytest.raises(DataError, match="training example 1: .* do not fit max_length=128"):
        finetune(model, tokenizer, [EXAMPLES[0], long], config)
    # A long context is cut from the left, never the response; the run reports it.
    result = finetune(model, tokenizer, [Example("word " * 300, " Blue.")] + EXAMPLES[:2], config)
    assert result.n_truncated == 1
