"""How much of the dense objective does a selection on the sparse top-k kernel reach, and how much sooner?

Computes the dense square kernel of the ``--examples`` shortest examples of a built-in dataset (``--data``,
default ifbench) with the default model (resumable store under ``--out``). Every other kernel is a part of it:

* objectives (``--objectives``): ``fl`` (instruction tuning: all examples are the pool), ``flmi`` (FL1MI, the
  authors' task objective) and ``fl2mi`` (our default) with a seeded ``--role-fraction`` of the examples as the
  targets, ``flcg`` (continual) with that part as the existing data; the rest is the pool in each case;
* for each k in ``--top-k`` and each neighbour source (``--neighbours``: ``model`` = mean-pooled hidden states of
  the scoring model, the sparse mode's default; ``encoder`` = the built-in sentence encoder), the sparse kernels
  DELIFT's sparse mode builds (every row keeps its k nearest columns; utilities at those pairs are the dense
  entries, as tests/test_kernel.py checks; ``methods.delift.sparse_kernels``: one min-max scale over the stored
  values, FL1MI caps and FLCG floors from sparse row maxima), and a control with k columns drawn at random per row
  (mean of ``--random-draws``);
* greedy (lazy) at ``--budget`` on each; every sparse selection is scored with the dense objective:
  f_dense(A_sparse) / f_dense(A_dense).

Time to a selection (``--timing-k``, default 16; 0 skips it): ours = a sparse kernel run from nothing (embeddings,
exact neighbour search, n·k pairs, compilation included) plus the greedy, measured; the authors' dense method =
n² + n full sequences at the pairs/s of their procedure in Hugging Face PyTorch float32 (batches of 32 sorted by
length, full logits), measured in the same run on ``--torch-pairs`` pairs drawn from this kernel's pairs, plus the
dense greedy. Projected to ``--project`` sizes from the measured rates: our pairs (n·k) at the measured sparse rate,
exact neighbour search as n² from a blocked search of 10,000 seeded vectors of the model's width timed here, the
greedy linearly from a seeded 10,000-row sparse kernel selected here; the authors' n² pairs at torch's rate.

The dense kernel needs examples² forward passes: the 200 shortest TruthfulQA pairs take most of an hour on 2 CPU
cores; the store resumes after an interruption. Last line: one JSON object.

``--distance`` (default: the package default, pmi); figures of earlier sessions were measured with rms.

    python scripts/bench_sparse.py --data truthfulqa --examples 200 --out runs/bench_sparse
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

OBJECTIVES = ("fl", "flmi", "fl2mi", "flcg")
USE_CASE = {"fl": "instruction", "flmi": "task", "fl2mi": "task", "flcg": "continual"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ifbench", help="built-in dataset (default ifbench)")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--top-k", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--neighbours", nargs="+", default=["model", "encoder"], choices=("model", "encoder"))
    parser.add_argument("--role-fraction", type=float, default=0.25,
                        help="share of the examples that are the targets (flmi, fl2mi) or existing data (flcg)")
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--max-response-tokens", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--random-draws", type=int, default=5, help="draws of the random-k control (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the roles and the random-k control")
    parser.add_argument("--distance", choices=("rms", "pmi"), default=None,
                        help="kernel distance (default: the package default, pmi)")
    parser.add_argument("--timing-k", type=int, default=16, help="k of the timed sparse run (0: no timing)")
    parser.add_argument("--torch-pairs", type=int, default=256, help="pairs timed with the authors' procedure")
    parser.add_argument("--project", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--out", default="runs/bench_sparse")
    return parser.parse_args()


class Cases:
    """The dense raw utilities of each objective and the rows/columns of the square kernel they come from."""

    def __init__(self, utility: np.ndarray, role_fraction: float, seed: int):
        n = utility.shape[0]
        order = np.random.default_rng(seed).permutation(n)
        n_role = max(1, int(round(n * role_fraction)))
        self.utility = utility
        self.all = np.arange(n)
        self.role = np.sort(order[:n_role])
        self.rest = np.sort(order[n_role:])

    def pool(self, objective: str) -> np.ndarray:
        return self.all if objective == "fl" else self.rest

    def blocks(self, objective: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (row examples, column examples) of each raw kernel, rows as the sparse mode lists them
        (K: pool x pool, Q: targets x pool, P: pool x existing)."""
        pool = self.pool(objective)
        return {"fl": {"K": (pool, pool)},
                "flmi": {"K": (pool, pool), "Q": (self.role, pool)},
                "fl2mi": {"Q": (self.role, pool)},
                "flcg": {"K": (pool, pool), "P": (pool, self.role)}}[objective]

    def dense_raw(self, objective: str) -> dict[str, np.ndarray]:
        raw = {name: self.utility[np.ix_(rows, cols)] for name, (rows, cols) in self.blocks(objective).items()}
        if "Q" in raw:  # the objectives take Q as (pool, targets)
            raw["Q"] = raw["Q"].T
        return raw

    def sparse_raw(self, objective: str, neighbours) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """neighbours(rows, cols, k) -> [len(rows), k] column positions (into cols); k is clamped to len(cols)."""
        raw = {}
        for name, (rows, cols) in self.blocks(objective).items():
            positions = neighbours(rows, cols)
            raw[name] = (np.take_along_axis(self.utility[np.ix_(rows, cols)], positions, axis=1),
                         positions.astype(np.int32))
        return raw


def objective_of(name: str, kernels: dict):
    from delift_jax.select import make_objective

    return make_objective(name, kernels.get("K"), query_kernel=kernels.get("Q"), private_kernel=kernels.get("P"))


def greedy(objective, budget: int) -> np.ndarray:
    from delift_jax.select import maximize

    return np.asarray(maximize(objective, budget, optimizer="lazy").picks)


def retention(cases: Cases, objective: str, budget_fraction: float, k_values, sources: dict, random_draws: int,
              rng) -> tuple[dict, dict]:
    """({source: {k: fraction}}, {k: random-control fraction}) for one objective."""
    from delift_jax.methods.base import budget_count
    from delift_jax.methods.delift import scaled_kernels, sparse_kernels
    from delift_jax.select import evaluate

    pool, blocks = cases.pool(objective), cases.blocks(objective)
    budget = budget_count(budget_fraction, len(pool), "bench_sparse")
    dense = objective_of(objective, scaled_kernels(cases.dense_raw(objective)))
    dense_value = float(evaluate(dense, greedy(dense, budget)))
    n_role = len(cases.role)

    def fraction(neighbours) -> float:
        raw = cases.sparse_raw(objective, neighbours)
        kernels = sparse_kernels(raw, len(pool), n_role if "Q" in blocks else 0, n_role if "P" in blocks else 0,
                                 dense_query=objective == "fl2mi")
        return float(evaluate(dense, greedy(objective_of(objective, kernels), budget))) / dense_value

    found = {name: {} for name in sources}
    control = {}
    for k in k_values:
        for name, embeddings in sources.items():
            found[name][k] = fraction(lambda rows, cols: nearest(embeddings, rows, cols, k))
        control[k] = float(np.mean([
            fraction(lambda rows, cols: np.stack([rng.choice(len(cols), size=min(k, len(cols)), replace=False)
                                                  for _ in rows]))
            for _ in range(random_draws)]))
    return found, control


def nearest(embeddings: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Positions (into cols) of each row's min(k, len(cols)) most cosine-similar columns (the sparse mode's search)."""
    from delift_jax.kernel.embeddings import top_k_pairs

    return top_k_pairs(embeddings[rows], embeddings[cols], min(k, len(cols)))


def torch_rate(tokenizer, examples, config, n_pairs: int, seed: int) -> float:
    """Pairs per second of the authors' procedure in PyTorch float32 on ``n_pairs`` pairs of this kernel (seeded),
    no-example sequences excluded."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench_kernel import torch_pair_distances  # scripts/ is on sys.path when a script runs
    from delift_jax.data.tokenize import ScoredSequence
    from delift_jax.kernel.pairs import build_pair_sequences, full_sequences_for
    from delift_jax.models import default_model_path

    n = len(examples)
    flat = np.random.default_rng(seed).choice(n * n, size=min(n_pairs, n * n), replace=False)
    pairs = np.stack([flat // n, flat % n], axis=1)
    seqs = build_pair_sequences(tokenizer, examples, examples, config)
    full = full_sequences_for(tokenizer, examples, examples, pairs, seqs, config)
    sequences = [full.get((int(i), int(j))) or ScoredSequence(np.concatenate([seqs.prefixes[j],
                                                                               seqs.continuations[i].tokens]),
                                                              seqs.continuations[i].n_scored)
                 for i, j in pairs]
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    torch_pair_distances(model, sequences[:2], 2, torch.float32)  # warm-up
    _, seconds, _ = torch_pair_distances(model, sequences, 32, torch.float32)
    return len(sequences) / seconds


def synthetic_scale_rates(width: int, k: int, seed: int) -> tuple[float, float]:
    """(seconds of an exact blocked top-k search of 10,000 seeded clustered vectors of ``width`` against
    themselves, seconds of the lazy FL greedy at 10% on a seeded 10,000-row top-k kernel), each after a warm-up."""
    from delift_jax.kernel.neighbours import exact_top_k
    from delift_jax.select import SparseKernel, facility_location, maximize

    n = 10_000
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 200, width))
    vectors = (centres[np.arange(n) // 200] + 0.3 * rng.normal(size=(n, width))).astype(np.float32)
    exact_top_k(vectors[:512], vectors[:512], k)
    start = time.perf_counter()
    exact_top_k(vectors, vectors, k)
    search_s = time.perf_counter() - start
    indices = (np.arange(n)[:, None] // 200) * 200 + np.argsort(rng.random((n, 200)), axis=1)[:, :k]
    kernel = SparseKernel(indices.astype(np.int32), rng.random((n, k)).astype(np.float32), n)
    maximize(facility_location(kernel), n // 10, optimizer="lazy")
    start = time.perf_counter()
    maximize(facility_location(kernel), n // 10, optimizer="lazy")
    return search_s, time.perf_counter() - start


def time_to_selection(model, tokenizer, examples, config, dense_timing, args, objective_ratio):
    """Measured at n = len(examples) and projected; see the module docstring."""
    import dataclasses

    from delift_jax.kernel import utility_kernel
    from delift_jax.methods.base import budget_count
    from delift_jax.methods.delift import sparse_kernels
    from delift_jax.select import make_objective

    n, k = len(examples), args.timing_k
    budget = budget_count(args.budget, n, "bench_sparse")
    start = time.perf_counter()
    result = utility_kernel(model, tokenizer, examples, config=dataclasses.replace(config, top_k=k),
                            progress=True)
    kernel_s = time.perf_counter() - start
    raw = {"K": (np.asarray(result.utility, np.float64), np.asarray(result.indices))}
    k = raw["K"][1].shape[1]  # clamped to n - 1 or n by the kernel when n is small
    start = time.perf_counter()
    greedy(make_objective("fl", sparse_kernels(raw, n, 0, 0)["K"]), budget)
    select_s = time.perf_counter() - start
    ours_s = kernel_s + select_s
    ours_rate = n * k / kernel_s  # compilation, embeddings and search charged to the pairs: conservative

    torch_pairs_per_s = torch_rate(tokenizer, examples, config, args.torch_pairs, args.seed)
    authors_s = (n * n + n) / torch_pairs_per_s + dense_timing["select_s"]
    search_10k_s, select_10k_s = synthetic_scale_rates(model.config.hidden_size, k, args.seed)
    projected = {}
    for size in args.project:
        ours = size * k / ours_rate + search_10k_s * (size / 10_000) ** 2 + select_10k_s * size / 10_000
        authors = (size * size + size) / torch_pairs_per_s
        projected[str(size)] = {"ours_h": round(ours / 3600, 2), "authors_h": round(authors / 3600, 1),
                                "ratio": round(authors / ours, 1)}
    return {"n": n, "k": k, "ours_kernel_s": round(kernel_s, 1), "ours_select_s": round(select_s, 2),
            "ours_s": round(ours_s, 1), "ours_sparse_pairs_per_s": round(ours_rate, 3),
            "ours_dense_pairs_per_s": dense_timing.get("rate"),
            "torch_f32_pairs_per_s": round(torch_pairs_per_s, 3), "authors_s": round(authors_s, 1),
            "ratio": round(authors_s / ours_s, 2), "objective_ratio_fl": objective_ratio,
            "search_10k_s": round(search_10k_s, 2), "select_10k_s": round(select_10k_s, 2),
            "projected": projected}


def shortest_examples(data: str, n: int) -> list:
    """The ``n`` shortest examples (prompt + response characters, then prompt) of a built-in dataset."""
    from delift_jax.data import load_builtin

    return sorted(load_builtin(data), key=lambda e: (len(e.prompt) + len(e.response), e.prompt))[:n]


def dense_kernel(model, tokenizer, data: str, n: int, out, max_length: int = 1024, max_response_tokens: int = 16,
                 distance: str | None = None):
    """(examples, config, result, seconds) of the dense square kernel of the ``n`` shortest examples of ``data``
    in the resumable store ``out`` (also used by scripts/bench_surrogate.py, so both share one store)."""
    from delift_jax.kernel import KernelConfig, utility_kernel

    examples = shortest_examples(data, n)
    config = KernelConfig(max_length=max_length, max_response_tokens=max_response_tokens, batch_size=16,
                          **({"distance": distance} if distance else {}))
    start = time.perf_counter()
    dense = utility_kernel(model, tokenizer, examples, config=config, out_dir=out, progress=True)
    return examples, config, dense, time.perf_counter() - start


def main():
    args = parse_args()
    from delift_jax.kernel.embeddings import encoder_embeddings, mean_pooled_embeddings
    from delift_jax.kernel.pairs import build_pair_sequences
    from delift_jax.methods.base import budget_count
    from delift_jax.methods.delift import scaled_kernels
    from delift_jax.models import load_model
    from delift_jax.select import make_objective

    model, tokenizer, _ = load_model()
    examples, config, dense, dense_seconds = dense_kernel(model, tokenizer, args.data, args.examples, args.out,
                                                          args.max_length, args.max_response_tokens, args.distance)
    computed = dense.summary.get("pairs_computed_now")
    utility = np.asarray(dense.utility, np.float64)
    n = len(examples)
    print(f"dense kernel {n}x{n} ({dense_seconds:.0f} s this run), distance {config.distance}", flush=True)

    sources, embed_s = {}, {}
    if "model" in args.neighbours:
        start = time.perf_counter()
        seqs = build_pair_sequences(tokenizer, examples, examples, config)
        sources["model"] = mean_pooled_embeddings(model, seqs.no_example, max_length=config.max_length)
        embed_s["model"] = round(time.perf_counter() - start, 1)
    if "encoder" in args.neighbours:
        start = time.perf_counter()
        sources["encoder"] = encoder_embeddings(examples)
        embed_s["encoder"] = round(time.perf_counter() - start, 1)

    cases = Cases(utility, args.role_fraction, args.seed)
    rng = np.random.default_rng(args.seed)
    results, controls = {}, {}
    header = "  ".join(f"{f'k={k}':>7}" for k in args.top_k)
    print(f"f_dense(A_sparse) / f_dense(A_dense), greedy at {args.budget:.0%}; "
          f"{len(cases.role)} of {n} examples are targets (flmi, fl2mi) / existing (flcg)")
    print(f"{'objective':<10} {'neighbours':<16} {header}")
    for objective in args.objectives:
        results[objective], controls[objective] = retention(cases, objective, args.budget, args.top_k, sources,
                                                            args.random_draws, rng)
        rows = {**results[objective], f"random (mean {args.random_draws})": controls[objective]}
        for name, by_k in rows.items():
            print(f"{objective:<10} {name:<16} " + "  ".join(f"{by_k[k]:>7.4f}" for k in args.top_k), flush=True)

    summary = {"data": args.data, "examples": n, "budget": args.budget, "distance": config.distance,
               "role_fraction": args.role_fraction, "dense_kernel_seconds": round(dense_seconds, 1),
               "embedding_seconds": embed_s,
               "retention": {obj: {src: {str(k): round(v, 4) for k, v in by_k.items()} for src, by_k in r.items()}
                             for obj, r in results.items()},
               "random_k_control": {obj: {str(k): round(v, 4) for k, v in c.items()} for obj, c in controls.items()}}
    if "fl" in results and "model" in results["fl"]:
        summary["fraction_of_dense_objective"] = summary["retention"]["fl"]["model"]

    if args.timing_k:
        budget = budget_count(args.budget, n, "bench_sparse")
        fl_dense = make_objective("fl", scaled_kernels({"K": utility})["K"])
        start = time.perf_counter()
        greedy(fl_dense, budget)
        dense_timing = {"select_s": time.perf_counter() - start}
        if computed == n * n:  # the whole dense kernel ran in this process: its rate is a measurement too
            dense_timing["rate"] = round(n * n / dense_seconds, 3)
        ratio = results.get("fl", {}).get("model", {}).get(args.timing_k)
        timing = time_to_selection(model, tokenizer, examples, config, dense_timing, args, ratio)
        print(f"time to a selection at n = {n}, k = {timing['k']}: ours {timing['ours_s']} s "
              f"({timing['ours_sparse_pairs_per_s']} pairs/s, everything included) against the authors' dense "
              f"{timing['authors_s']} s (torch float32 {timing['torch_f32_pairs_per_s']} pairs/s): "
              f"{timing['ratio']}x; projected " + ", ".join(f"{size}: {p['ratio']}x ({p['ours_h']} h vs "
                                                              f"{p['authors_h']} h)"
                                                              for size, p in timing["projected"].items()))
        summary["time_to_selection"] = timing
        summary["time_to_selection_ratio_vs_authors"] = timing["ratio"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
