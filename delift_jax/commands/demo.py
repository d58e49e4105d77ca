"""``delift demo``: the main job on the built-in model and data, small enough for 2 CPU cores.

Instruction tuning end to end with SmolLM2-135M-Instruct on real TruthfulQA pairs (built in): a seeded split,
DELIFT against Random, Full data and the untuned model (Initial), LoRA fine-tuning on each subset, evaluation on
the held-out split; prints the comparison table and writes plots (metric per method, kernel heatmap, greedy
gain curve). Everything is a thin wrapper over ``delift run`` with small settings. Each run starts fresh: the
outputs of an earlier demo in ``--out`` (possibly from another version, whose kernel store would be refused) are
replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from delift_jax.models.loading import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model (default: built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--data", default="truthfulqa", help="pool (default: built-in TruthfulQA pairs)")
    parser.add_argument("--examples", type=int, default=30, help="pool size: the first N examples (default 30)")
    parser.add_argument("--budget", type=float, default=0.3, help="fraction of the pool to select (default 0.3)")
    parser.add_argument("--train-steps", type=int, default=3, help="LoRA steps per method (default 3)")
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")


METHODS = ("delift", "random", "full", "initial")
PLOTS = ("rougeL_per_method.png", "kernel_heatmap.png", "greedy_gains.png")


def clear_previous_demo(out: Path) -> bool:
    """Remove what an earlier demo wrote to ``out`` (only those names); True if there was any."""
    found = False
    for name in METHODS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            found = True
    for name in ("results.json", "results.md", "splits.json") + PLOTS:
        if (out / name).is_file():
            (out / name).unlink()
            found = True
    return found


def run(args: argparse.Namespace) -> int:
    from delift_jax.pipeline import command as pipeline_command

    out = Path(args.out)
    if clear_previous_demo(out):
        print(f"replacing the previous demo outputs in {out}")
    parser = argparse.ArgumentParser()
    pipeline_command.add_arguments(parser)
    run_args = parser.parse_args([
        "--use-case", "instruction", "--model", str(args.model), "--data", str(args.data),
        "--limit", str(args.examples), "--split", "0.6,0.1,0.3", "--budget", str(args.budget),
        "--methods", ",".join(METHODS), "--train-steps", str(args.train_steps),
        "--max-response-tokens", "16", "--max-new-tokens", "16", "--metrics", "rouge,nll", "--no-checkpoints",
        "--out", str(out),
    ])
    status = pipeline_command.run(run_args)
    if status:
        return status
    for path in write_plots(out, args.budget):
        print(f"plot: {path}")
    return 0


def write_plots(out: Path, budget: float) -> list[Path]:
    """Metric per method, the DELIFT pool kernel as a heatmap with its greedy picks, the greedy gain curve."""
    import numpy as np

    from delift_jax.report.plots import (load_pool_kernel, plot_greedy_gains, plot_kernel_heatmap,
                                         plot_method_metrics)
    from delift_jax.select import facility_location, maximize

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    paths = [out / name for name in PLOTS]
    plot_method_metrics(results, "rougeL", paths[0])
    kernel = load_pool_kernel(out / "delift" / "kernels")
    selection = maximize(facility_location(kernel.astype(np.float32)), budget, optimizer="lazy")
    picks = np.asarray(selection.picks)[:int(selection.n_selected)]
    plot_kernel_heatmap(kernel, paths[1], picks=picks)
    plot_greedy_gains(np.asarray(selection.gains)[:len(picks)], paths[2])
    return paths
