"""``delift select``: pick a subset from a kernel with submodular maximization and write picks, gains, summary.

    delift select --kernel DIR --objective fl|flmi|fl2mi|flcg --budget 0.3 --optimizer naive|lazy|stochastic \
                  --seed S --out DIR [--query-kernel Q] [--private-kernel P] [--eta 1] [--nu 1] [--devices N]

Writes OUT/picks.npy (int32, pick order), OUT/gains.npy (float32 marginal gains) and OUT/summary.json (objective
value, budget, seed, timings, ...), each atomically.
"""

from __future__ import annotations

import argparse
import time

from delift_jax.errors import SelectionError


def parse_budget(text: str):
    """"0.3" (has a point or exponent) is a fraction of the candidates; "300" is a count."""
    try:
        if any(mark in text.lower() for mark in (".", "e")):
            return float(text)
        return int(text)
    except ValueError:
        raise SelectionError(f"budget must be a fraction like 0.3 or a count like 300, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", help="K: a .npy file or a kernel directory (kernel.npy, or kernel_indices.npy + "
                        "kernel_values.npy + manifest.json); rows = covered elements, columns = candidates")
    parser.add_argument("--objective", default="fl", choices=["fl", "flmi", "fl2mi", "flcg"],
                        help="fl: facility location; flmi: FL mutual information with --query-kernel (FL1MI); "
                        "fl2mi: the FL2MI variant (needs only --query-kernel); flcg: conditional gain against "
                        "--private-kernel")
    parser.add_argument("--budget", required=True, type=str,
                        help="fraction of the candidates in (0, 1] (e.g. 0.3) or a count (e.g. 300)")
    parser.add_argument("--optimizer", default="lazy", choices=["naive", "lazy", "stochastic"])
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (stochastic greedy)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--query-kernel", help="Q (n_rows, n_targets): utility of each pool example for each target")
    parser.add_argument("--private-kernel", help="P (n_rows, n_existing): utility against the existing data")
    parser.add_argument("--eta", type=float, default=1.0, help="η of flmi / fl2mi (default 1)")
    parser.add_argument("--nu", type=float, default=1.0, help="ν of flcg (default 1)")
    parser.add_argument("--epsilon", type=float, default=0.01, help="stochastic greedy ε (sample ⌈(n/k)ln(1/ε)⌉)")
    parser.add_argument("--stop-if-non-positive", action="store_true",
                        help="stop before the first pick whose gain is <= 0 instead of making exactly k picks")
    parser.add_argument("--devices", type=int, default=1,
                        help="shard the kernel rows over this many devices (default 1: no mesh)")


def run(args) -> int:
    import jax
    import numpy as np

    from delift_jax import select as sel
    from delift_jax.select import io

    started = time.perf_counter()
    budget = parse_budget(args.budget)
    if args.kernel is None and args.objective != "fl2mi":
        raise SelectionError(f"objective {args.objective} needs --kernel")
    kernel = None if args.kernel is None else io.load_kernel(args.kernel, "kernel", candidate_major=True)
    query = None if args.query_kernel is None else io.load_kernel(args.query_kernel, "query kernel")
    private = None if args.private_kernel is None else io.load_kernel(args.private_kernel, "private kernel")
    loaded = time.perf_counter()

    objective = sel.make_objective(args.objective, kernel, query_kernel=query, private_kernel=private,
                                   eta=args.eta, nu=args.nu)
    del kernel  # the objective holds the only copy
    n_rows = objective.n_rows  # before any padding for a mesh
    mesh = None
    if args.devices != 1:
        available = jax.devices()
        if not 1 <= args.devices <= len(available):
            raise SelectionError(f"--devices must lie in [1, {len(available)}] (devices available), got {args.devices}")
        mesh = sel.row_mesh(available[: args.devices])
        objective = sel.shard_rows(objective, mesh)
    built = time.perf_counter()

    select = sel.build_selector(objective, budget, optimizer=args.optimizer, epsilon=args.epsilon,
                                stop_if_non_positive=args.stop_if_non_positive, mesh=mesh)
    key = jax.random.key(args.seed)
    compiled = select.lower(objective, key).compile()
    ready = time.perf_counter()
    selection = compiled(objective, key)
    jax.block_until_ready(selection)
    selected = time.perf_counter()

    n_selected = int(selection.n_selected)
    picks = np.asarray(selection.picks)[:n_selected]
    gains = np.asarray(selection.gains)[:n_selected]
    k = sel.resolve_budget(budget, objective.n_candidates)
    summary = {
        "objective": args.objective,
        "objective_value": sel.evaluate(objective, picks),
        "sum_of_gains": float(np.sum(gains, dtype=np.float64)),
        "budget": budget,
        "k": k,
        "n_selected": n_selected,
        "n_candidates": objective.n_candidates,
        "n_rows": n_rows,
        "kernel": args.kernel,
        "kernel_format": "sparse" if isinstance(objective.kernel, sel.SparseKernel) else "dense",
        "kernel_dtype": str(objective.kernel.dtype),
        "query_kernel": args.query_kernel,
        "private_kernel": args.private_kernel,
        "eta": args.eta if args.objective in ("flmi", "fl2mi") else None,
        "nu": args.nu if args.objective == "flcg" else None,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "epsilon": args.epsilon if args.optimizer == "stochastic" else None,
        "stop_if_non_positive": bool(args.stop_if_non_positive),
        "devices": args.devices,
        "tie_rule": "among equal maximal gains the lowest candidate index wins",
        "timings_s": {
            "load": loaded - started,
            "build": built - loaded,
            "compile": ready - built,
            "select": selected - ready,
            "total": time.perf_counter() - started,
        },
    }
    paths = io.write_selection(args.out, picks, gains, summary)
    print(f"selected {n_selected} of {objective.n_candidates} ({args.objective}, {args.optimizer}): "
          f"objective {summary['objective_value']:.6g} in {summary['timings_s']['select']:.3f} s -> {paths['summary']}")
    return 0
