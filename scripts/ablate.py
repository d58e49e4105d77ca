"""Ablations: methods × budgets × seeds of one use case (``delift_jax.pipeline.run_use_case`` per budget and seed)
-> ``ablation.csv``, ``ablation.md`` and PNG plots.

    python scripts/ablate.py --data ifbench --limit 40 --methods delift,random,full,initial \\
        --budgets 0.05 0.1 0.3 0.5 --seeds 0 1 2 --max-response-tokens 32 --train-steps 8 --out runs/ablation
    python scripts/ablate.py --use-case task --data pool.jsonl --target nq-open --methods delift,random ...

Output directory (``--out``)::

    ablation.csv                    one row per method × budget × seed × metric (use_case, method, budget, seed,
                                    selected, metric, value)
    ablation.md                     per metric, a method × budget table of mean ± std over seeds
    metric_vs_budget_<metric>.png   one line per method, error bars = std over seeds
    kernel_heatmap.png              DELIFT's pool kernel (first seed; min-max normalized), selected columns marked
    greedy_gains.png                marginal gain per greedy step of facility location on that kernel
                                    (``maximize(facility_location(K), largest budget)``)
    runs/b<budget>_s<seed>/         each run_use_case directory (results.json, results.md, per-method artifacts)
    kernels/seed<seed>/             DELIFT's kernel stores, shared by every budget of a seed: the selection pool
                                    depends only on the seed's split, so the kernels are computed once per seed
                                    and every later budget resumes the complete store

The model is loaded once. The heatmap and gain curve need ``delift`` among the methods (skipped otherwise).
Every ``delift run`` flag is accepted, and so are its run files: ``--config run.toml`` gives the settings of every
cell (flags override it), ``--budgets`` and ``--seeds`` span the grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from delift_jax.budget import parse_budget
from delift_jax.errors import DeliftError
from delift_jax.models import load_model
from delift_jax.pipeline import RunConfig, run_use_case
from delift_jax.pipeline import command as run_command
from delift_jax.progress import show_progress
from delift_jax.report import (load_pool_kernel, markdown_summary, metric_rows, plot_greedy_gains, plot_kernel_heatmap,
                               plot_metric_vs_budget, write_csv)
from delift_jax.select import facility_location, maximize

DEFAULT_BUDGETS = ["0.05", "0.1", "0.3", "0.5"]


def parse_args(argv=None) -> argparse.Namespace:
    """``delift run``'s flags and run files (``--config run.toml``; flags override the file), plus the grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run_command.add_arguments(parser)
    parser.add_argument("--budgets", nargs="+", default=DEFAULT_BUDGETS,
                        help="fractions in (0, 1] or whole counts (default 0.05 0.1 0.3 0.5); replaces the run "
                             "file's budget")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="default 0 1 2; replaces the run file's seed")
    parser.add_argument("--checkpoints", action="store_true", help="keep fine-tuning checkpoints (default off)")
    parser.set_defaults(out="runs/ablation")
    return parser.parse_args(argv)


def base_config(args: argparse.Namespace):
    """(RunConfig, RunInputs) shared by every cell: the run file and flags, with this script's defaults
    (instruction on ifbench, no checkpoints) beneath them."""
    if args.checkpoints:  # --checkpoints overrides the run file, as --no-checkpoints does
        args = argparse.Namespace(**dict(vars(args), no_checkpoints=False))
    defaults = {"use_case": "instruction", "checkpoints": False}
    return run_command.resolve_run(args, defaults=defaults, input_defaults={"data": "ifbench"})


def run_config(base: RunConfig, budget, seed: int, kernel_dir: Path | None) -> RunConfig:
    """The RunConfig of one (budget, seed) cell; DELIFT's kernel store is the seed's shared directory."""
    options = {name: dict(values) for name, values in base.method_options.items()}
    if "delift" in base.methods and kernel_dir is not None:
        options["delift"] = dict(options.get("delift", {}), kernel_dir=kernel_dir)
    return dataclasses.replace(base, budget=budget, seed=seed, method_options=options,
                               train=dataclasses.replace(base.train, seed=seed),
                               generation=dataclasses.replace(base.generation, seed=seed))


def budget_label(budget) -> str:
    return str(budget)


def write_plots(rows, out: Path, kernel_dir: Path | None, budgets) -> list[Path]:
    """metric_vs_budget_<metric>.png per metric; kernel_heatmap.png and greedy_gains.png from DELIFT's pool
    kernel when ``kernel_dir`` holds one."""
    written = []
    for metric in dict.fromkeys(r["metric"] for r in rows):
        path = out / f"metric_vs_budget_{metric}.png"
        plot_metric_vs_budget(rows, metric, path)
        written.append(path)
    if kernel_dir is not None and ((kernel_dir / "pool" / "kernel.npy").is_file()
                                   or (kernel_dir / "pool" / "utility_raw.npy").is_file()):
        kernel = load_pool_kernel(kernel_dir)
        largest = max(budgets, key=lambda b: b if isinstance(b, int) else b * kernel.shape[1])
        k = min(largest, kernel.shape[1]) if isinstance(largest, int) else max(1, int(largest * kernel.shape[1]))
        selection = maximize(facility_location(kernel.astype(np.float32)), k)
        picks = np.asarray(selection.picks)[: int(selection.n_selected)]
        plot_kernel_heatmap(kernel, out / "kernel_heatmap.png", picks=picks,
                            title=f"DELIFT pool kernel ({kernel.shape[0]} examples; red: {k} FL picks)")
        plot_greedy_gains(np.asarray(selection.gains)[: int(selection.n_selected)], out / "greedy_gains.png",
                          title=f"facility location greedy gains (k = {k})")
        written += [out / "kernel_heatmap.png", out / "greedy_gains.png"]
    return written


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        budgets = [parse_budget(b) for b in args.budgets]
        return ablate(args, budgets)
    except DeliftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def ablate(args: argparse.Namespace, budgets) -> int:
    base, inputs = base_config(args)
    out = Path(args.out).expanduser()
    # validate every setting before the model loads
    for seed in args.seeds:
        for budget in budgets:
            run_config(base, budget, seed, None)
    out.mkdir(parents=True, exist_ok=True)
    print(f"loading model {inputs.model}", flush=True)
    model, tokenizer, _ = load_model(inputs.model)
    progress = show_progress(args.progress)
    rows: list[dict] = []
    total, cell, t0 = len(budgets) * len(args.seeds), 0, time.perf_counter()
    for seed in args.seeds:
        kernel_dir = out / "kernels" / f"seed{seed}"
        for budget in budgets:
            cell += 1
            print(f"[{cell}/{total}] budget {budget}, seed {seed}", flush=True)
            config = run_config(base, budget, seed, kernel_dir)
            results = run_use_case(inputs.model, inputs.data, use_case=config.use_case, budget=budget,
                                   methods=config.methods, out_dir=out / "runs" / f"b{budget_label(budget)}_s{seed}",
                                   targets=inputs.target, existing=inputs.existing, config=config,
                                   data_options=inputs.data_options(), model=model, tokenizer=tokenizer,
                                   progress=progress, echo=lambda line: print(f"    {line}", flush=True))
            rows += metric_rows(results, budget=budget, seed=seed)
            write_csv(rows, out / "ablation.csv")  # partial results survive a crash of a later cell
    title = (f"ablation: {base.use_case} on {inputs.data} ({inputs.model}); methods {','.join(base.methods)}; "
             f"seeds {' '.join(map(str, args.seeds))}")
    (out / "ablation.md").write_text(markdown_summary(rows, title=title), encoding="utf-8")
    first_kernels = out / "kernels" / f"seed{args.seeds[0]}"
    plots = write_plots(rows, out, first_kernels if first_kernels.is_dir() else None, budgets)
    print((out / "ablation.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'ablation.csv'} ({len(rows)} rows), {out / 'ablation.md'} and {len(plots)} plots "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
