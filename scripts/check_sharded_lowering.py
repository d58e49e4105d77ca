"""Plan and lower the LoRA train step of an 8B-shaped Llama (Llama-3-8B shapes, random weights never built,
bfloat16) on a simulated CPU mesh, and report the per-device memory XLA plans for it.

No weights are allocated: the model is built with ``nnx.eval_shape``, parameters are placed by the FSDP +
tensor-parallel rules of ``delift_jax.sharding`` on a ``(data, model)`` mesh, and the step is lowered and compiled
ahead of time. ``compiled.memory_analysis()`` gives the bytes of arguments (parameters, optimizer state, batch),
outputs and temporaries per device; the replicated size is the whole model's parameter bytes.

    python scripts/check_sharded_lowering.py [--data 2 --model 4] [--layers 32] [--length 512]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=int, default=2)
    parser.add_argument("--model", type=int, default=4)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--length", type=int, default=512, help="tokens per row")
    parser.add_argument("--rows", type=int, default=2, help="rows per data shard")
    parser.add_argument("--replicated", action="store_true", help="ignore the rules: replicate every parameter")
    return parser.parse_args(argv)


def llama3_8b(layers: int):
    from delift_jax.models.config import ModelConfig

    return ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=layers,
                       num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0)


def main(argv=None):
    args = parse_args(argv)
    n_devices = args.data * args.model
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n_devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    jax.config.update("jax_platforms", "cpu")
    from delift_jax.models.llama import CausalLM
    from delift_jax.sharding import model_mesh, param_partition
    from delift_jax.train.lora import LoRAConfig, apply_lora
    from delift_jax.train.optim import make_optimizer
    from delift_jax.train.step import BATCH_FIELDS, abstract_state, make_train_step, split_model, tree_shardings

    config = llama3_8b(args.layers)
    mesh = model_mesh(args.data, args.model, jax.devices("cpu"))
    build = lambda: apply_lora(CausalLM(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
                                        remat_layers=True), LoRAConfig(rank=16, alpha=32.0))
    split, _, frozen = split_model(nnx.eval_shape(build), nnx.LoRAParam)
    optimizer = make_optimizer(1e-4, 100)
    spec = None if args.replicated else param_partition(mesh)
    step = make_train_step(split, optimizer, frozen, mesh, logits_chunk=512, param_spec=spec)
    state = abstract_state(split, optimizer)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                         tree_shardings(state, mesh, spec))
    rows, t, r = args.rows * args.data, args.length, args.length // 2
    shapes = {"tokens": (t, jnp.int32), "valid": (t, bool), "score_index": (r, jnp.int32),
              "score_target": (r, jnp.int32), "score_valid": (r, bool)}
    batch = {k: jax.ShapeDtypeStruct((1, rows, shapes[k][0]), shapes[k][1]) for k in BATCH_FIELDS}

    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    leaves = jax.tree.leaves(frozen) + jax.tree.leaves(state.params)
    replicated = sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in leaves)
    per_device_params = sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(step.frozen) + jax.tree.leaves(state.params))
    result = {"mesh": dict(mesh.shape), "layers": config.num_layers, "param_count": config.param_count(),
              "replicated_param_bytes": replicated, "per_device_param_bytes": per_device_params,
              "per_device_param_fraction": round(per_device_params / replicated, 4),
              "argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
              "temp_bytes": memory.temp_size_in_bytes, "compile_s": round(seconds, 1)}
    print(json.dumps(result))
    return 0 if result["per_device_param_fraction"] <= 0.25 or args.replicated else 1


if __name__ == "__main__":
    sys.exit(main())
