"""Exact neighbour search at scale: seconds, peak RSS, and bit-identity across device counts and search paths.

Seeded clustered vectors (``bench_scale.clustered_vectors``: n × 384 float32, synthetic), top-16 of the pool
against itself. Every run is a subprocess (its own peak RSS; ``--devices D`` simulates D CPU devices with
XLA_FLAGS=--xla_force_host_platform_device_count=D) that saves its indices and similarities; the driver compares
them bit for bit. ``--general-queries Q`` also times the general (non-symmetric) path on Q sampled queries against
the whole pool and checks those rows agree. The last line is one JSON object; figures on a busy machine are
contended.

    python scripts/bench_neighbours.py [--n 100000] [--devices 1 4] [--general-queries 5000] [--block 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K = 16


def phase(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import jax

    from bench_scale import clustered_vectors
    from delift_jax.kernel import neighbours as N

    x = clustered_vectors(args.n)
    queries, symmetric = x, None
    if args.queries:
        queries, symmetric = x[np.random.default_rng(1).choice(args.n, args.queries, replace=False)], False
    start = time.perf_counter()
    indices, values = N.exact_top_k(queries, x, K, block=args.block, symmetric=symmetric)
    seconds = time.perf_counter() - start
    np.save(f"{args.save}_indices.npy", indices)
    np.save(f"{args.save}_values.npy", values)
    return {"seconds": seconds, "devices": len(jax.devices()),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def child(args, devices: int, save: str, queries: int = 0) -> dict | None:
    command = [sys.executable, __file__, "--phase", "--n", str(args.n), "--block", str(args.block), "--save", save,
               "--queries", str(queries)]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    print(f"[bench_neighbours] n={args.n} devices={devices} queries={queries or 'all'}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        print(f"[bench_neighbours]   failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"[bench_neighbours]   {result}", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--general-queries", type=int, default=5000, help="0 skips the general path")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default="runs/bench_neighbours")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = {"contended": True, "n": args.n, "d": 384, "k": K, "block": args.block,
              "data": "seeded clustered synthetic vectors (bench_scale.clustered_vectors)"}
    saved = {}
    for devices in args.devices:
        result = child(args, devices, f"{args.out}/d{devices}")
        report[f"exact_{devices}dev_s"] = result and result["seconds"]
        report[f"exact_{devices}dev_peak_rss_gb"] = result and result["peak_rss_gb"]
        if result:
            saved[devices] = [np.load(f"{args.out}/d{devices}_{part}.npy", allow_pickle=False)
                              for part in ("indices", "values")]
    if len(saved) > 1:
        first, *rest = saved.values()
        report["bit_identical_across_devices"] = all(
            np.array_equal(i, first[0]) and np.array_equal(v.view(np.uint32), first[1].view(np.uint32))
            for i, v in rest)
    if args.general_queries and saved:
        result = child(args, 1, f"{args.out}/general", args.general_queries)
        if result:
            rows = np.random.default_rng(1).choice(args.n, args.general_queries, replace=False)
            indices, values = (np.load(f"{args.out}/general_{part}.npy", allow_pickle=False)
                               for part in ("indices", "values"))
            reference = next(iter(saved.values()))
            report["general_queries"] = args.general_queries
            report["general_s"] = result["seconds"]
            report["general_projected_full_s"] = result["seconds"] * args.n / args.general_queries
            report["general_equals_symmetric_rows"] = bool(
                np.array_equal(indices, reference[0][rows])
                and np.array_equal(values.view(np.uint32), reference[1][rows].view(np.uint32)))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
