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
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="HF directory, .gguf file or 'smollm2' (default)")
    parser.add_argument("--data", default="ifbench", help="the pool: built-in dataset name or data file")
    parser.add_argument("--use-case", default="instruction", choices=("instruction", "task", "continual"))
    parser.add_argument("--target", help="task use case: the target (benchmark) set")
    parser.add_argument("--existing", help="continual use case: the data the model already has")
    parser.add_argument("--methods", default="delift,random,full,initial", help="comma-separated method names")
    parser.add_argument("--budgets", nargs="+", default=["0.05", "0.1", "0.3", "0.5"],
                        help="fractions in (0, 1] or whole counts (default 0.05 0.1 0.3 0.5)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default 0 1 2")
    parser.add_argument("--limit", type=int, help="keep the first N pool examples")
    parser.add_argument("--target-limit", type=int, help="keep the first N target examples")
    parser.add_argument("--existing-limit", type=int, help="keep the first N existing examples")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions")
    parser.add_argument("--out", default="runs/ablation", help="output directory (default runs/ablation)")
    group = parser.add_argument_group("pass-through run settings (small values keep CPU ablations short)")
    group.add_argument("--kernel-max-length", type=int, default=2048)
    group.add_argument("--max-response-tokens", type=int, help="kernel: score only the first N response tokens")
    group.add_argument("--distance", choices=("rms", "pmi"), default="rms")
    group.add_argument("--train-method", choices=("lora", "full"), default="lora")
    group.add_argument("--epochs", type=int, default=1)
    group.add_argument("--train-steps", type=int, help="optimizer steps instead of epochs")
    group.add_argument("--learning-rate", type=float, default=2e-4)
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--max-length", type=int, default=1024, help="training / evaluation sequence length")
    group.add_argument("--metrics", default="rouge,nll", help="evaluation metrics (default rouge,nll)")
    group.add_argument("--max-new-tokens", type=int, default=128)
    group.add_argument("--eval-batch-size", type=int, default=8)
    group.add_argument("--checkpoints", action="store_true", help="keep fine-tuning checkpoints (default off)")
    group.add_argument("--progress", action="store_true")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace, budget, seed: int, kernel_dir: Path | None):
    """The RunConfig of one (budget, seed) cell; DELIFT's kernel store is the seed's shared directory."""
    from delift_jax.evaluate.generate import GenerationConfig
    from delift_jax.kernel import KernelConfig
    from delift_jax.pipeline import RunConfig
    from delift_jax.pipeline.config import check_methods
    from delift_jax.train import TrainConfig

    methods = check_methods(args.methods)
    options = {"delift": {"kernel_dir": kernel_dir}} if "delift" in methods and kernel_dir is not None else {}
    return RunConfig(
        use_case=args.use_case, budget=budget, methods=methods, seed=seed,
        split=tuple(float(x) for x in str(args.split).split(",")), limit=args.limit,
        target_limit=args.target_limit, existing_limit=args.existing_limit,
        kernel=KernelConfig(max_length=args.kernel_max_length, max_response_tokens=args.max_response_tokens,
                            distance=args.distance),
        train=TrainConfig(method=args.train_method, epochs=args.epochs, max_steps=args.train_steps,
                          learning_rate=args.learning_rate, batch_size=args.batch_size, max_length=args.max_length,
                          seed=seed),
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_length,
                                    batch_size=args.eval_batch_size, seed=seed),
        metrics=args.metrics, nll_max_length=args.max_length, method_options=options,
        checkpoints=args.checkpoints)


def budget_label(budget) -> str:
    return str(budget)


def write_plots(rows, out: Path, kernel_dir: Path | None, budgets) -> list[Path]:
    """metric_vs_budget_<metric>.png per metric; kernel_heatmap.png and greedy_gains.png from DELIFT's pool
    kernel when ``kernel_dir`` holds one."""
    import numpy as np

    from delift_jax.report import load_pool_kernel, plot_greedy_gains, plot_kernel_heatmap, plot_metric_vs_budget

    written = []
    for metric in dict.fromkeys(r["metric"] for r in rows):
        path = out / f"metric_vs_budget_{metric}.png"
        plot_metric_vs_budget(rows, metric, path)
        written.append(path)
    if kernel_dir is not None and ((kernel_dir / "pool" / "kernel.npy").is_file()
                                   or (kernel_dir / "pool" / "utility_raw.npy").is_file()):
        from delift_jax.select import facility_location, maximize

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
    from delift_jax.errors import DeliftError
    from delift_jax.pipeline.config import parse_budget

    args = parse_args(argv)
    try:
        budgets = [parse_budget(b) for b in args.budgets]
        return ablate(args, budgets)
    except DeliftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def ablate(args: argparse.Namespace, budgets) -> int:
    from delift_jax.models import load_model
    from delift_jax.pipeline import run_use_case
    from delift_jax.atomic_io import atomic_write_text
    from delift_jax.report import markdown_summary, metric_rows, write_csv

    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    # validate every setting before the model loads
    for seed in args.seeds:
        for budget in budgets:
            run_config(args, budget, seed, None)
    print(f"loading model {args.model}", flush=True)
    model, tokenizer, _ = load_model(args.model)
    rows: list[dict] = []
    total = len(budgets) * len(args.seeds)
    cell = 0
    t0 = time.perf_counter()
    for seed in args.seeds:
        kernel_dir = out / "kernels" / f"seed{seed}"
        for budget in budgets:
            cell += 1
            print(f"[{cell}/{total}] budget {budget}, seed {seed}", flush=True)
            config = run_config(args, budget, seed, kernel_dir)
            results = run_use_case(args.model, args.data, use_case=args.use_case, budget=budget,
                                   methods=config.methods, out_dir=out / "runs" / f"b{budget_label(budget)}_s{seed}",
                                   targets=args.target, existing=args.existing, config=config, model=model,
                                   tokenizer=tokenizer, progress=args.progress,
                                   echo=lambda line: print(f"    {line}", flush=True))
            rows += metric_rows(results, budget=budget, seed=seed)
            write_csv(rows, out / "ablation.csv")  # partial results survive a crash of a later cell
    title = (f"ablation: {args.use_case} on {args.data} ({args.model}); methods {args.methods}; "
             f"seeds {' '.join(map(str, args.seeds))}")
    atomic_write_text(out / "ablation.md", markdown_summary(rows, title=title))
    first_kernels = out / "kernels" / f"seed{args.seeds[0]}"
    plots = write_plots(rows, out, first_kernels if first_kernels.is_dir() else None, budgets)
    print((out / "ablation.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'ablation.csv'} ({len(rows)} rows), {out / 'ablation.md'} and {len(plots)} plots "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
