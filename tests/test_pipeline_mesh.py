"""``delift run --mesh data=D,model=M`` (``run_use_case(mesh=...)``) fine-tunes on that mesh too: on a (2, 2)
mesh of the 4 simulated CPU devices the run's training state is placed by the FSDP + tensor-parallel rules, and
the run's losses equal those of the same fine-tuning (same examples, same settings) on the 1-D data mesh.

Tolerance: the two differ only in the order of float32 sums (tensor-parallel contractions over heads, MLP width
and vocabulary; the gradient all-reduce over 2 instead of 4 row groups; FSDP gathers are exact). The first loss is
a forward pass only: a token-weighted mean of log p, each within the LOGP_ATOL = 1e-5 derived for these meshes and
this model in test_model_parallel_kernel (a weighted mean of values within a bound stays within it). Later losses
also carry the rounding of the updates (lr * m / (sqrt(v) + eps): relative error a few u per component) through
the steps; test_train_sharding bounds exactly this comparison (LoRA steps, mesh vs data parallel) by ATOL = 1e-5,
and this test reuses that bound for 2 steps at a tenth of its learning rate.
"""

import numpy as np
from jax.sharding import PartitionSpec as P

from delift_jax.evaluate.generate import GenerationConfig
from delift_jax.kernel import KernelConfig
from delift_jax.pipeline import RunConfig, run_use_case
from delift_jax.pipeline import method as method_module
from delift_jax.sharding import data_mesh, model_mesh, param_partition
from delift_jax.train import TrainConfig
from delift_jax.train import loop as train_loop
from test_model_parallel_kernel import LOGP_ATOL
from test_pipeline_common import ifbench_records
from test_train_sharding import ATOL

LORA_B = "layers.attn.q_proj.lora_b"


def test_run_fine_tunes_on_the_run_mesh(tiny_llama, tmp_path, monkeypatch):
    _, _, model, tokenizer = tiny_llama
    calls, placed = [], []
    real_finetune, real_init_state = method_module.finetune, train_loop.init_state

    def spy_finetune(*args, **kwargs):
        calls.append((args, kwargs))
        return real_finetune(*args, **kwargs)

    def spy_init_state(*args, **kwargs):  # the placed state, recorded before the first step donates it
        state = real_init_state(*args, **kwargs)
        placed.append({name: (leaf.sharding, leaf.shape, leaf.addressable_shards[0].data.shape)
                       for name, leaf in state.params.items()})
        return state

    monkeypatch.setattr(method_module, "finetune", spy_finetune)
    monkeypatch.setattr(train_loop, "init_state", spy_init_state)
    config = RunConfig(train=TrainConfig(max_steps=2, batch_size=4, max_length=128, learning_rate=1e-3,
                                         schedule="constant"),
                       checkpoints=False, generation=GenerationConfig(max_new_tokens=2, max_prompt_tokens=256),
                       metrics=("rouge",), kernel=KernelConfig(max_length=160, max_response_tokens=8))
    mesh = model_mesh(2, 2)
    results = run_use_case("tiny", ifbench_records(12), use_case="instruction", budget=4, methods=("random",),
                           out_dir=tmp_path / "run", config=config, model=model, tokenizer=tokenizer, mesh=mesh)

    assert len(calls) == 1 and calls[0][1]["mesh"] is mesh and len(placed) == 1
    spec = param_partition(mesh)
    for name, (sharding, shape, _) in placed[0].items():  # every LoRA adapter where the rules put it
        assert sharding.mesh == mesh and sharding.spec == spec(name, shape), name
    sharding, shape, shard_shape = placed[0][LORA_B]
    assert sharding.spec == P(None, None, "model")  # really split over the model axis (q heads)
    assert shard_shape == shape[:-1] + (shape[-1] // 2,)

    (args, kwargs), = calls  # the same fine-tuning on the 1-D data mesh of the 4 devices
    reference = real_finetune(*args, **dict(kwargs, mesh=data_mesh(), out_dir=None))
    assert placed[1][LORA_B][0].spec == P() and placed[1][LORA_B][0].mesh.axis_names == ("data",)
    losses = results["methods"]["random"]["train"]["losses"]
    assert len(losses) == 2 and np.all(np.isfinite(reference.losses))
    np.testing.assert_allclose(losses[0], reference.losses[0], atol=LOGP_ATOL, rtol=0)
    np.testing.assert_allclose(losses, reference.losses, atol=ATOL, rtol=0)

