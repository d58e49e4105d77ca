"""Benchmark facility-location greedy selection: ours (naive, lazy, stochastic) against submodlib and apricot.

Dense random kernels in [0, 1] (float32), budget 30% of n, all selectors in the same run on the same CPU. Every
selector's picks are scored with the same float64 facility-location evaluation, so "objective" is comparable.
Our compile time is reported apart from the run time. Naive greedy is O(k·n²) for everyone; it is skipped above
--naive-max-n (default 5,000), and submodlib's (single-threaded, 376 s at n = 5,000 here) above
--submodlib-naive-max-n (default 1,000), to keep the whole run near 10 minutes on 2 cores.

The last line is one JSON object for the largest n:
  n, ours_exact_s (our fastest exact greedy), peer_exact_s (fastest exact greedy of submodlib/apricot), ratio,
  objective_rel (ours/peer), ours_stochastic_s, submodlib_stochastic_s.

Usage: python scripts/bench_select.py [--sizes 1000 5000 10000] [--budget 0.3] [--epsilon 0.1] [--naive-max-n 5000]
                                     [--submodlib-naive-max-n 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", category=DeprecationWarning)


def fl_value(kernel: np.ndarray, picks) -> float:
    """f(A) = Σ_i max_{j∈A} K[i, j] in float64, rows = covered elements (floor 0, as everywhere)."""
    picks = np.asarray(list(picks), dtype=np.int64)
    if picks.size == 0:
        return 0.0
    best = np.zeros(kernel.shape[0])
    for start in range(0, picks.size, 512):  # column blocks: no n × k float64 temporary at n = 10k
        best = np.maximum(best, kernel[:, picks[start:start + 512]].max(axis=1))
    return float(best.sum())


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_ours(kernel, k, optimizer, epsilon, seed=0):
    import jax

    from delift_jax import select as sel

    objective = sel.facility_location(kernel)
    jax.block_until_ready(objective)
    select = sel.build_selector(objective, k, optimizer=optimizer, epsilon=epsilon)
    key = jax.random.key(seed)
    compiled, compile_s = timed(lambda: select.lower(objective, key).compile())
    selection, run_s = timed(lambda: jax.block_until_ready(compiled(objective, key)))
    return np.asarray(selection.picks), run_s, compile_s


def run_submodlib(kernel, k, optimizer, epsilon):
    from submodlib import FacilityLocationFunction

    function = FacilityLocationFunction(n=kernel.shape[0], mode="dense", sijs=kernel, separate_rep=False)
    result, run_s = timed(lambda: function.maximize(budget=k, optimizer=optimizer, stopIfZeroGain=False,
                                                    stopIfNegativeGain=False, epsilon=epsilon, verbose=False,
                                                    show_progress=False))
    return [index for index, _ in result], run_s


def run_apricot(kernel_t, k, optimizer):
    from apricot import FacilityLocationSelection

    # apricot's precomputed matrix is candidate-major (X[j, i]); checked against our objective on small kernels.
    model = FacilityLocationSelection(k, metric="precomputed", optimizer=optimizer, verbose=False)
    _, run_s = timed(lambda: model.fit(kernel_t))
    return list(model.ranking), run_s


def warm_up_peers():
    """apricot compiles its numba kernels on first use; do that outside the timings."""
    rng = np.random.default_rng(0)
    small = rng.random((60, 60), dtype=np.float32)
    for optimizer in ("lazy", "naive"):
        run_apricot(np.ascontiguousarray(small.T), 10, optimizer)
    run_submodlib(small, 10, "LazyGreedy", 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--epsilon", type=float, default=0.1, help="stochastic greedy ε, ours and submodlib's")
    parser.add_argument("--naive-max-n", type=int, default=5000, help="skip naive greedy above this n")
    parser.add_argument("--submodlib-naive-max-n", type=int, default=1000, help="skip submodlib NaiveGreedy above n")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    warm_up_peers()
    print(f"{'n':>6} {'k':>5}  {'selector':<26} {'run s':>9} {'compile s':>9} {'objective':>14} {'rel':>8}",
          flush=True)
    final = None
    for n in args.sizes:
        k = int(args.budget * n)
        kernel = np.random.default_rng(args.seed).random((n, n), dtype=np.float32)
        kernel_t = np.ascontiguousarray(kernel.T)
        rows = []  # (family, name, exact, run_s, compile_s, objective)

        def record(family, name, exact, picks, run_s, compile_s=None):
            assert len(set(int(p) for p in picks)) == k, f"{name} made {len(set(picks))} distinct picks, not {k}"
            rows.append((family, name, exact, run_s, compile_s, fl_value(kernel, picks)))

        for optimizer in ("lazy", "stochastic", "naive"):
            if optimizer == "naive" and n > args.naive_max_n:
                continue
            picks, run_s, compile_s = run_ours(kernel, k, optimizer, args.epsilon, args.seed)
            record("ours", f"ours {optimizer}", optimizer != "stochastic", picks, run_s, compile_s)
        for optimizer in ("LazyGreedy", "StochasticGreedy", "NaiveGreedy"):
            if optimizer == "NaiveGreedy" and n > min(args.naive_max_n, args.submodlib_naive_max_n):
                continue
            picks, run_s = run_submodlib(kernel, k, optimizer, args.epsilon)
            record("submodlib", f"submodlib {optimizer}", optimizer != "StochasticGreedy", picks, run_s)
        for optimizer in ("lazy", "naive"):
            if optimizer == "naive" and n > args.naive_max_n:
                continue
            picks, run_s = run_apricot(kernel_t, k, optimizer)
            record("apricot", f"apricot {optimizer}", True, picks, run_s)

        best_value = max(row[5] for row in rows)
        for family, name, exact, run_s, compile_s, value in rows:
            compile_text = f"{compile_s:9.2f}" if compile_s is not None else f"{'-':>9}"
            print(f"{n:>6} {k:>5}  {name:<26} {run_s:9.2f} {compile_text} {value:14.4f} {value / best_value:8.5f}",
                  flush=True)

        ours_exact = min((r for r in rows if r[0] == "ours" and r[2]), key=lambda r: r[3])
        peer_exact = min((r for r in rows if r[0] != "ours" and r[2]), key=lambda r: r[3])
        ours_stochastic = next(r for r in rows if r[1] == "ours stochastic")
        peer_stochastic = next(r for r in rows if r[1] == "submodlib StochasticGreedy")
        final = {
            "n": n,
            "ours_exact_s": round(ours_exact[3], 3),
            "peer_exact_s": round(peer_exact[3], 3),
            "ratio": round(ours_exact[3] / peer_exact[3], 4),
            "objective_rel": round(ours_exact[5] / peer_exact[5], 6),
            "ours_stochastic_s": round(ours_stochastic[3], 3),
            "submodlib_stochastic_s": round(peer_stochastic[3], 3),
            "ours_exact": ours_exact[1],
            "peer_exact": peer_exact[1],
            "ours_stochastic_objective_rel": round(ours_stochastic[5] / ours_exact[5], 6),
            "submodlib_stochastic_objective_rel": round(peer_stochastic[5] / ours_exact[5], 6),
            "epsilon": args.epsilon,
            "sample_size": int(min(n, math.ceil(n / k * math.log(1 / args.epsilon)))),
        }
        del kernel, kernel_t
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
