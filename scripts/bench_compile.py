"""Compile time of the jitted programs a run builds, on SmolLM2-135M-Instruct (30 layers): one scoring bucket,
one pair-engine unit of the kernel, and the first LoRA training step, with the decoder layers scanned and
unrolled (same parameters, same process).

Each program is lowered and compiled ahead of time (``jit(...).lower(...).compile()``), so the figures are
compilation alone, with no execution. The last line is one JSON object of seconds per program and mode.

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
    parser.add_argument("--programs", nargs="+", default=PROGRAMS, choices=PROGRAMS)
    parser.add_argument("--skip", nargs="*", default=(), choices=("scanned", "unrolled"),
                        help="leave out a layer mode (both are measured by default, in this order)")
    return parser.parse_args(argv)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 2)


def scoring_bucket(model, mesh, args) -> float:
    from delift_jax.scoring import ScoringConfig, TeacherForcedScorer

    scorer = TeacherForcedScorer(model, ScoringConfig(batch_size=args.batch), mesh=mesh)  # its jitted program
    b, t, r = args.batch * mesh.size, args.length, args.scored
    ints = lambda *shape: jnp.zeros(shape, jnp.int32)
    return _seconds(lambda: scorer._fn.lower(scorer.state, ints(b, t), jnp.ones((b, t), bool), ints(b, r),
                                             ints(b, r)).compile())


def kernel_bucket(model, mesh, args) -> float:
    """One unit of the pair engine: demonstrations' keys/values and the continuations' scored log-probabilities."""
    from flax import nnx

    from delift_jax.kernel import engine
    from delift_jax.kernel.packing import UnitShape
    from delift_jax.sharding import replicate

    graphdef, state = nnx.split(model)
    state = replicate(state, mesh)
    shape = UnitShape(prefix=2 * args.length, rows=args.batch * 2, length=args.length, scored=2 * args.length)
    unit = engine._empty_unit(shape)
    arrays = [jnp.asarray(np.stack([getattr(unit, f)] * mesh.size)) for f in engine._UNIT_FIELDS]
    return _seconds(lambda: engine._UNIT_LOGPROBS.lower(graphdef, mesh, 512, state, *arrays).compile())


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


PROGRAMS = ("scoring", "kernel", "train")


def measure(model, mesh, args, mode: str) -> dict:
    """Seconds per program; each figure is printed as soon as it is known (compiles can take minutes)."""
    fns = {"scoring": scoring_bucket, "kernel": kernel_bucket, "train": train_step}
    out = {}
    for name in args.programs:
        out[name] = fns[name](model, mesh, args)
        print(f"{mode} {name}: {out[name]} s", flush=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    from delift_jax.models import load_model
    from delift_jax.sharding import data_mesh

    model, _, _ = load_model(args.model, with_tokenizer=False)
    mesh = data_mesh(jax.local_devices()[:1])
    result = {"layers": model.config.num_layers, "length": args.length, "batch": args.batch,
              "backend": jax.default_backend()}
    for mode, scan in (("scanned", True), ("unrolled", False)):
        if mode in args.skip:
            continue
        model.scan_layers = scan
        result[mode] = measure(model, mesh, args, mode)
    if "scanned" in result and "unrolled" in result:
        result["scanned_over_unrolled"] = {k: round(result["scanned"][k] / result["unrolled"][k], 3)
                                           for k in result["scanned"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
