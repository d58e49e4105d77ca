"""Accelerator throughput of delift_jax with a 1-2B model built from a random config of a real architecture
(Llama-3.2-1B shapes by default; no download): teacher-forced scoring tokens/s, utility-kernel pairs/s and LoRA
fine-tuning tokens/s, in bfloat16, with model FLOP utilization (MFU) against ``--peak-tflops`` and the peak
device memory. Texts are synthetic (seeded), tokenized by the tiny byte-level tokenizer of ``tests/tiny.py``.

    python scripts/device_bench.py [--layers 16] [--examples 64] [--peak-tflops 989]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the chip (H100/H200 SXM)")
    return parser.parse_args(argv)


def random_model(args):
    from flax import nnx

    from delift_jax.models.config import ModelConfig
    from delift_jax.models.llama import CausalLM

    config = ModelConfig(vocab_size=49152, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_layers=args.layers, num_heads=args.hidden // 64,
                         num_kv_heads=min(8, args.hidden // 64), head_dim=64,
                         rope_theta=500000.0, tie_word_embeddings=True, eos_token_id=0)
    return CausalLM(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), config


def synthetic_examples(n: int, seed: int = 0):
    from delift_jax.data import Example

    rng = np.random.RandomState(seed)
    words = "the a sea tide time query example answer prime color capital poem clock sentence number".split()
    text = lambda k: " ".join(rng.choice(words, size=k))
    return [Example(f"Instruction: {text(rng.randint(10, 60))}\nInput: \n", " " + text(rng.randint(5, 40)))
            for _ in range(n)]


def peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import tiny_tokenizer

    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.scoring import ScoringConfig, score_examples
    from delift_jax.train import LoRAConfig, TrainConfig, finetune

    tokenizer = tiny_tokenizer()
    model, config = random_model(args)
    flops_per_token = 2 * config.param_count()
    examples = synthetic_examples(args.examples)
    out = {"params": config.param_count(), "layers": config.num_layers, "backend": jax.default_backend()}

    scoring = ScoringConfig(max_length=args.max_length, batch_size=args.batch_size)
    score_examples(model, tokenizer, examples[:8], scoring)  # compile
    table = score_examples(model, tokenizer, examples, scoring)
    out["scoring_tok_per_s"] = round(table.n_tokens / table.seconds, 1)
    out["scoring_mfu"] = round(out["scoring_tok_per_s"] * flops_per_token / (args.peak_tflops * 1e12), 4)

    kernel_config = KernelConfig(max_length=args.max_length, max_response_tokens=64)
    n = min(24, len(examples))
    utility_kernel(model, tokenizer, examples[:4], config=kernel_config)  # compile
    start = time.perf_counter()
    utility_kernel(model, tokenizer, examples[:n], config=kernel_config)
    out["kernel_pairs_per_s"] = round(n * n / (time.perf_counter() - start), 2)

    train = TrainConfig(method="lora", lora=LoRAConfig(16, 32.0, 0.05), learning_rate=1e-4, schedule="constant",
                        batch_size=args.batch_size, max_length=args.max_length, max_steps=args.train_steps + 1,
                        pad_to_max_length=True, log_every=args.train_steps + 1)
    finetune(model, tokenizer, examples, dataclasses.replace(train, max_steps=1))  # compiles the step
    result = finetune(model, tokenizer, examples, train)  # equal settings: the compiled step is reused
    out["train_tok_per_s"] = round(result.tokens / result.seconds, 1)
    # LoRA: forward (2 N) and the backward to the activations (2 N) per token; frozen weights get no gradient.
    out["train_mfu"] = round(out["train_tok_per_s"] * 2 * flops_per_token / (args.peak_tflops * 1e12), 4)
    out["train_final_loss"] = result.losses[-1]
    out["peak_device_bytes"] = peak_memory()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
