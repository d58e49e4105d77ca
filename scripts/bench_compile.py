"""Compile time of the jitted programs a run builds, on SmolLM2-135M-Instruct (30 layers): one scoring bucket,
one kernel bucket (demonstration keys/values and continuation scoring), and the first LoRA training step.

Each program is lowered and compiled ahead of time (``jit(...).lower(...).compile()``), so the figures are
compilation alone, with no execution. The last line is one JSON object of seconds per program.

    python scripts/bench_compile.py [--length 256] [--scored 32] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--length", type=int, default=256, help="sequence bucket (tokens)")
    parser.add_argument("--scored", type=int, default=32, help="scored-token bucket")
    parser.add_argument("--batch", type=int, default=8, help="rows per call")
    parser.add_argument("--unrolled", action="store_true", help="run the layers as an unrolled Python loop")
    return parser.parse_args(argv)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 2)


def scoring_bucket(model, mesh, args) -> float:
    from flax import nnx

    from delift_jax.scoring import make_response_logprobs_fn
    from delift_jax.sharding import replicate

    graphdef, state = nnx.split(model)
    state = replicate(state, mesh)
    b, t, r = args.batch * mesh.size, args.length, args.scored
    ints = lambda *shape: jnp.zeros(shape, jnp.int32)
    fn = make_response_logprobs_fn()
    return _seconds(lambda: fn.lower(graphdef, mesh, 512, state, ints(b, t), jnp.ones((b, t), bool), ints(b, r),
                                     ints(b, r)).compile())


def kernel_bucket(model, mesh, args) -> dict:
    from flax import nnx

    from delift_jax.kernel import engine
    from delift_jax.sharding import replicate

    cfg = model.config
    graphdef, state = nnx.split(model)
    state = replicate(state, mesh)
    g, b, p, t, r = mesh.size, args.batch, args.length, args.length // 2, args.scored
    ints = lambda *shape: jnp.zeros(shape, jnp.int32)
    demo = _seconds(lambda: engine._DEMONSTRATION_KV.lower(graphdef, mesh, state, ints(g, p),
                                                           jnp.ones((g, p), bool)).compile())
    kv = jnp.zeros((g, cfg.num_layers, p, cfg.num_kv_heads, cfg.head_dim), jnp.float32)
    cont = _seconds(lambda: engine._CONTINUATION_LOGPROBS.lower(
        graphdef, mesh, 512, state, kv, kv, jnp.ones((g, p), bool), ints(g, b, t), jnp.ones((g, b, t), bool),
        ints(g, b, r), ints(g, b, r)).compile())
    return {"kernel_demonstration_s": demo, "kernel_continuation_s": cont}


def train_step(model, mesh, args) -> float:
    from flax import nnx

    from delift_jax.train.lora import LoRAConfig, apply_lora
    from delift_jax.train.optim import make_optimizer
    from delift_jax.train.step import init_state, make_train_step, shard_batch, split_model

    lora_model = apply_lora(nnx.clone(model), LoRAConfig(rank=8, alpha=16.0, dropout=0.05))
    split, params, frozen = split_model(lora_model, nnx.LoRAParam)
    optimizer = make_optimizer(2e-4, 10, schedule="constant")
    state = init_state(params, optimizer, 0, mesh)
    step = make_train_step(split, optimizer, frozen, mesh, dropout=True)
    b, t = 4, args.length
    batch = {"tokens": np.zeros((1, b, t), np.int32), "valid": np.ones((1, b, t), bool),
             "score_index": np.zeros((1, b, 64), np.int32), "score_target": np.zeros((1, b, 64), np.int32),
             "score_valid": np.ones((1, b, 64), bool)}
    batch = shard_batch(batch, mesh)
    return _seconds(lambda: step.lower(state, batch).compile())


def main(argv=None):
    args = parse_args(argv)
    from delift_jax.models import load_model
    from delift_jax.sharding import data_mesh

    model, _, _ = load_model(args.model, with_tokenizer=False)
    if args.unrolled:
        model.scan_layers = False
    mesh = data_mesh(jax.local_devices()[:1])
    result = {"scoring_bucket_s": scoring_bucket(model, mesh, args)}
    result.update(kernel_bucket(model, mesh, args))
    result["train_first_step_compile_s"] = train_step(model, mesh, args)
    result.update(layers=model.config.num_layers, length=args.length, batch=args.batch,
                  scan_layers=getattr(model, "scan_layers", False), backend=jax.default_backend())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
