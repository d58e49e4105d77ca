"""``delift select``: pick a subset from a kernel with submodular maximization and write picks, gains, summary.

    delift select --kernel DIR --objective fl|flmi|fl2mi|flmi_paper|flcg --budget 0.3 --optimizer naive|lazy|stochastic \
                  --seed S --out DIR [--query-kernel Q] [--private-kernel P] [--eta 1] [--nu 1]
                  [--scale row_rank|common|stored]

What each file must hold (rows are the covered elements, DESIGN §1.3; a kernel store is a directory written by
``delift kernel``, whose U[target, candidate] has the --targets (or the pool) as rows and the --data as columns):

* --kernel K: (n_pool, n_pool), K[i, j] = the utility of pool example j as a demonstration for pool example i:
  the store of ``delift kernel --data POOL`` (or a .npy of that orientation).
* --query-kernel Q (flmi, fl2mi, flmi_paper): (n_pool, n_targets), Q[i, q] = the utility of pool example i as a demonstration
  for target q. Give the store of ``delift kernel --data POOL --targets TARGETS`` (it holds U = Qᵀ and is transposed
  here), or a .npy already (n_pool, n_targets).
* --private-kernel P (flcg): (n_pool, n_existing), P[i, p] = the utility of existing example p as a demonstration
  for pool example i. Give the store of ``delift kernel --data EXISTING --targets POOL`` (it holds P as it is), or a
  .npy already (n_pool, n_existing).

A store is oriented from its manifest and the pool size (the rows of K); one made the other way round is used in
the orientation that fits, with a warning; one that fits neither way, or a .npy whose rows are not the pool, is
refused in one line. Scale: fl and flcg default to ``--scale row_rank`` (each pool row's utilities over K's and
P's columns replaced by their percentile ranks in the row, as ``delift run`` does for instruction and continual
tuning; ``--scale common`` is the authors' form). flmi and flcg compare K with η·max Q / ν·max P (flmi_paper
adds η·max Q to K's coverage), so with ``--scale common`` (default for flmi and flmi_paper)
stores that ``delift kernel`` min-max normalized separately are re-normalized jointly from their raw utilities
(one min-max over K and Q / P together, as the pipeline does); ``--scale stored`` keeps the stored values. Stores
of different distances are refused under either scale (``select.io.plan_scale``). A store is checked before use
(``select.stores``: manifest against arrays, checksums, distance from the arrays, pool by data fingerprint), and K
must be square, the pool against itself.

Writes OUT/picks.npy (int32, pick order, indices into the pool), OUT/gains.npy (float32 marginal gains) and
OUT/summary.json (objective value, budget, seed, orientation, scale, timings, ...), each atomically.
"""

from __future__ import annotations

import argparse
import sys
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


ORIENTATION = (
    "Orientation (rows = covered pool examples): K is (n_pool, n_pool); Q is (n_pool, n_targets), Q[i, q] = utility "
    "of pool example i as a demonstration for target q; P is (n_pool, n_existing), P[i, p] = utility of existing "
    "example p as a demonstration for pool example i. Stores written by `delift kernel` hold U[target, candidate] "
    "(rows --targets, columns --data) and are oriented from their manifest: the store of --data POOL --targets "
    "TARGETS becomes Q = U^T, the store of --data EXISTING --targets POOL is P = U. A plain .npy must already have "
    "the orientation above; a mismatch is an error that names the expected shape."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ORIENTATION
    parser.add_argument("--kernel", help="K (n_pool, n_pool), rows = covered pool examples, columns = candidates: "
                        "a .npy file or a kernel directory (the store of `delift kernel --data POOL`, or kernel.npy, "
                        "or kernel_indices.npy + kernel_values.npy + manifest.json)")
    parser.add_argument("--objective", default="fl", choices=["fl", "flmi", "fl2mi", "flmi_paper", "flcg"],
                        help="fl: facility location; flmi: FL mutual information with --query-kernel (FL1MI); "
                        "fl2mi: the FL2MI variant (needs only --query-kernel); flmi_paper: the DELIFT paper's "
                        "written form, facility location over K plus eta times each pick's best utility in "
                        "--query-kernel; flcg: conditional gain against --private-kernel")
    parser.add_argument("--budget", required=True, type=str,
                        help="fraction of the candidates in (0, 1] (e.g. 0.3) or a count (e.g. 300)")
    parser.add_argument("--optimizer", default="lazy", choices=["naive", "lazy", "stochastic"])
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (stochastic greedy)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--query-kernel",
                        help="Q for flmi / fl2mi / flmi_paper, Q[i, q] = utility of pool example i as a demonstration for target "
                        "q: the store of `delift kernel --data POOL --targets TARGETS` (transposed here), or a .npy "
                        "of shape (n_pool, n_targets)")
    parser.add_argument("--private-kernel",
                        help="P for flcg, P[i, p] = utility of existing example p as a demonstration for pool example "
                        "i: the store of `delift kernel --data EXISTING --targets POOL` (used as stored), or a .npy "
                        "of shape (n_pool, n_existing)")
    parser.add_argument("--scale", choices=["row_rank", "common", "stored"], default=None,
                        help="row_rank (default for fl and flcg, as delift run's instruction and continual cases): "
                        "each pool row's utilities over K's and P's columns replaced by their percentile ranks in "
                        "that row (K and P first put on one scale as with common); common (default for flmi and "
                        "flmi_paper; fl and flcg in the authors' form): stores that delift kernel min-max normalized "
                        "separately are re-normalized with one min-max over the raw utilities of K and Q / P "
                        "together; stored keeps each store's own values (a warning says they are not on one "
                        "scale)")
    parser.add_argument("--eta", type=float, default=1.0, help="η of flmi / fl2mi / flmi_paper (default 1)")
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
    kernel, side, notes, layout = _load_inputs(args, io)
    for line in notes:
        print(f"warning: {line}", file=sys.stderr)
    loaded = time.perf_counter()

    role = SIDE_ROLE.get(args.objective)
    objective = sel.make_objective(args.objective, kernel, query_kernel=side if role == "query" else None,
                                   private_kernel=side if role == "private" else None, eta=args.eta, nu=args.nu)
    del kernel, side  # the objective holds the only copies
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
        "eta": args.eta if args.objective in ("flmi", "fl2mi", "flmi_paper") else None,
        "nu": args.nu if args.objective == "flcg" else None,
        **layout,
        "warnings": notes,
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


SIDE_ROLE = {"flmi": "query", "fl2mi": "query", "flmi_paper": "query", "flcg": "private"}
COMMON_SCALE = ("flmi", "flmi_paper", "flcg")  # objectives that add or compare K with Q / P
ROW_RANKED = ("fl", "flcg")  # objectives whose covered rows are the pool over K (and P): row_rank applies


def resolved_scale(objective: str, scale: str | None) -> str | None:
    """The --scale of a run: row_rank for fl and flcg unless given (delift run's instruction / continual default),
    common for flmi and flmi_paper, None (unused) for fl2mi."""
    if scale == "row_rank" and objective not in ROW_RANKED:
        raise SelectionError(f"--scale row_rank ranks each pool row over K (and P); objective {objective} compares "
                             "targets: use --scale common or stored")
    if scale is None:
        scale = "row_rank" if objective in ROW_RANKED else "common"
    return scale if objective in COMMON_SCALE + ROW_RANKED else None


def _load_inputs(args, io):
    """(K or None, Q / P oriented with rows = pool or None, warning lines, summary fields) for the objective."""
    from delift_jax.select import stores

    objective = args.objective
    if args.kernel is None and objective != "fl2mi":
        raise SelectionError(f"objective {objective} needs --kernel")
    role = SIDE_ROLE.get(objective)
    side_location = {"query": args.query_kernel, "private": args.private_kernel, None: None}[role]
    if role == "query" and side_location is None:
        raise SelectionError(f"objective {objective} needs a query kernel Q (--query-kernel)")
    if role == "private" and side_location is None:
        raise SelectionError("objective flcg needs a private kernel P (--private-kernel)")
    notes = [f"{flag} is not used by objective {objective}; ignored"
             for flag, value, used in (("--query-kernel", args.query_kernel, role == "query"),
                                       ("--private-kernel", args.private_kernel, role == "private"))
             if value is not None and not used]

    kernel_source = None if args.kernel is None else io.open_kernel(args.kernel, "kernel K")
    side_source = None if role is None else io.open_kernel(side_location, io.ROLES[role])
    if objective != "fl2mi":  # fl2mi reads only K's column count (the pool size)
        _check_square(kernel_source, io)
    notes += [n for n in map(stores.unverified_note, (kernel_source, side_source)) if n]
    scale = resolved_scale(objective, args.scale)
    scalings = [None, None]
    if objective in COMMON_SCALE:
        scalings, note = io.plan_scale([kernel_source, side_source], "stored" if scale == "stored" else "common")
        notes += [note] if note else []
    kernel = None
    if objective == "fl2mi":  # K only gives the pool size to check Q against
        n_pool = None if kernel_source is None else int(io.kernel_shape(kernel_source)[-1])
    else:
        kernel = io.load_kernel(kernel_source, candidate_major=True, scaling=scalings[0])
        n_pool = int(kernel.shape[0])
    layout = {"scale": scale,
              "common_scale_range": None if scalings[0] is None else [scalings[0].low, scalings[0].high]}
    side = None
    if role is not None:
        pool_sha256 = None if kernel_source is None else kernel_source.side_sha256("candidates")
        side, how, note = io.load_oriented(side_source, role, n_pool, scalings[1], pool_sha256)
        notes += [note] if note else []
        layout[f"{role}_kernel_orientation"] = how
    if scale == "row_rank":
        kernel, side = _row_ranked(kernel, side, kernel_source.exclude_diagonal)
    return kernel, side, notes, layout


def _row_ranked(kernel, side, exclude_diagonal: bool):
    """K (candidate-major DenseKernel or SparseKernel) and P (None, (n_pool, m) or SparseKernel) as each pool row's
    percentile ranks over K's and P's (stored) columns together (``kernel.normalize.row_normalize``). Ranks do not
    change under the increasing maps a store's normalization applies, so K's stored values serve; an excluded
    diagonal stays out and 0."""
    import numpy as np

    from delift_jax import select as sel
    from delift_jax.kernel.normalize import row_normalize

    sparse = isinstance(kernel, sel.SparseKernel)
    parts = {"K": np.asarray(kernel.values if sparse else kernel.columns.T, np.float64)}
    if side is not None:
        parts["P"] = np.asarray(side.values if isinstance(side, sel.SparseKernel) else side, np.float64)
    ignore = {"K": np.eye(len(parts["K"]), dtype=bool)} if exclude_diagonal and not sparse else None
    ranked = row_normalize(parts, "row_rank", ignore)
    kernel = (sel.SparseKernel(np.asarray(kernel.indices), ranked["K"], kernel.n_candidates) if sparse
              else sel.DenseKernel(np.ascontiguousarray(ranked["K"].T)))
    if isinstance(side, sel.SparseKernel):
        side = sel.SparseKernel(np.asarray(side.indices), ranked["P"], side.n_candidates)
    elif side is not None:
        side = ranked["P"]
    return kernel, side


def _check_square(source, io) -> None:
    """K covers the pool with the pool: (n_pool, n_pool), and a store of it is the pool against itself. A
    rectangular K (or the store of two different sets) would make every objective cover other rows than it picks
    from; one line names the fix."""
    shape = io.kernel_shape(source)
    if len(shape) != 2:
        raise SelectionError(f"kernel must be 2-D (n_rows, n_candidates), got shape {shape}")
    rows, columns = shape
    other_sets = source.is_store and not source.manifest["square"] and (
        source.side_sha256("targets") is None or source.side_sha256("targets") != source.side_sha256("candidates"))
    if rows == columns and not other_sets:
        return
    what = (f"is {rows} x {columns}" if rows != columns
            else "is the store of two different sets (made with --targets)")
    raise SelectionError(f"kernel K {source.path} {what}, but K must be the pool against itself, (n_pool, n_pool): "
                         "compute it with `delift kernel --data POOL` (no --targets); a target set's kernel goes to "
                         "--query-kernel (flmi, fl2mi, flmi_paper), existing data's to --private-kernel (flcg)")
