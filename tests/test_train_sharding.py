"""Model-parallel training: parameters placed by logical-axis rules on (data, model) meshes of 8 simulated CPU
devices give the losses of one device; parameter placement follows the rules."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from delift_jax.errors import DeliftError
from delift_jax.sharding import logical_axes, model_mesh, param_partition, parse_mesh

ATOL = 1e-5
TESTS = Path(__file__).parent

# Run in a child process: the parent's JAX already holds 4 devices, these meshes need 8.
CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import jax
jax.config.update("jax_default_matmul_precision", "highest")
from flax import nnx
import jax.numpy as jnp
from delift_jax.models.config import ModelConfig
from delift_jax.models.llama import CausalLM
from delift_jax.sharding import data_mesh, model_mesh
from delift_jax.train import LoRAConfig, TrainConfig, finetune
from examples import EXAMPLES
from tiny import tiny_tokenizer

tokenizer = tiny_tokenizer()
config = ModelConfig(vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16, eos_token_id=tokenizer.eos_token_id)
model = CausalLM(config, rngs=nnx.Rngs(3))
runs = {"lora": TrainConfig(method="lora", lora=LoRAConfig(4, 8.0), learning_rate=1e-2, schedule="constant",
                            batch_size=2, max_length=64, pad_to_max_length=True, max_steps=3),
        "full": TrainConfig(method="full", learning_rate=1e-3, schedule="constant", batch_size=2, max_length=64,
                            pad_to_max_length=True, max_steps=3)}
meshes = {"1": data_mesh(jax.devices()[:1]), "8x1": model_mesh(8, 1), "4x2": model_mesh(4, 2), "2x4": model_mesh(2, 4)}
# Every mesh shape for LoRA; full fine-tuning (every parameter sharded) on the two-axis extreme only.
plan = [("lora", name) for name in meshes] + [("full", "1"), ("full", "2x4")]
out = {f"{method}/{name}": finetune(model, tokenizer, EXAMPLES, runs[method], mesh=meshes[name]).losses
       for method, name in plan}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def losses_by_mesh():  # six compilations of the train step in a child process
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", CHILD, str(TESTS)], capture_output=True, text=True, env=env,
                          timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method, meshes", [("lora", ("8x1", "4x2", "2x4")), ("full", ("2x4",))])
def test_losses_equal_on_every_mesh(losses_by_mesh, method, meshes):
    reference = losses_by_mesh[f"{method}/1"]
    assert len(reference) == 3 and np.all(np.isfinite(reference))
    for name in meshes:
        np.testing.assert_allclose(losses_by_mesh[f"{method}/{name}"], reference, atol=ATOL, rtol=0, err_msg=name)
    assert reference[-1] < reference[0]  # it really trains


def test_rules_place_parameters():
    mesh = model_mesh(2, 2, jax.devices()[:4])
    spec = param_partition(mesh)
    assert spec("layers.attn.q_proj.kernel", (2, 64, 64)) == P(None, "data", "model")
    assert spec("layers.attn.q_proj.base.kernel", (2, 64, 64)) == P(None, "data", "model")
    assert spec("layers.mlp.down_proj.kernel", (2, 96, 64)) == P(None, "model", "data")
    assert spec("layers.attn.o_proj.lora_b", (2, 4, 64)) == P(None, None, "data")
    assert spec("embed.embedding", (328, 64)) == P("model", "data")
    assert spec("embed.embedding", (327, 64)) == P(None, "data")  # 327 rows do not split in two: kept whole
    assert spec("layers.input_norm.scale", (2, 64)) == P()
    assert logical_axes("layers.attn.q_proj.kernel", 2) is None  # wrong rank: no rule applies


def test_parse_mesh_errors():
    assert dict(parse_mesh("data=2,model=2", jax.devices()[:4]).shape) == {"data": 2, "model": 2}
    assert dict(parse_mesh("model=2", jax.devices()[:4]).shape) == {"data": 1, "model": 2}
    with pytest.raises(DeliftError, match="data=N,model=M"):
        parse_mesh("rows=2")
    with pytest.raises(DeliftError, match="needs 16 devices"):
        parse_mesh("data=4,model=4", jax.devices()[:4])
