"""``delift demo``: does the selection pick what it should? A known-answer case per use case on built-in data.

    delift demo                          # task (the default): a target domain hidden in a mixture of four datasets
    delift demo --use-case instruction   # a pool with a quarter of low-quality examples
    delift demo --use-case continual     # data the model has seen, new data, and one broken new example

Each method selects ``--budget`` of the pool (``delift_jax.demo.cases``); then LoRA fine-tunes SmolLM2-135M-Instruct
on each subset and scores held-out examples (NLL; the model the methods start from as the reference). Printed and
written to ``--out``: the composition of each method's picks (``composition.png``, stacked bars), the held-out NLL
per method (``nll_per_method.png``), the DELIFT pool kernel ordered by group (``kernel_by_group.png``) and
``results.json`` (with the seconds per phase). One seed and a few test examples: the NLL differences are noisy, and
the demo says so; ``scripts/bench_recovery.py`` measures the same over seeds and sources. Each run starts fresh:
what an earlier demo wrote to ``--out`` is replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from delift_jax.models.loading import DEFAULT_MODEL

METHODS = ("delift", "delift_flmi", "delift_authors", "delift_se", "random")
OUTPUTS = ("results.json", "composition.png", "nll_per_method.png", "kernel_by_group.png")
LEGACY_OUTPUTS = ("results.md", "splits.json", "rougeL_per_method.png", "kernel_heatmap.png", "greedy_gains.png",
                  "kernel_by_source.png")
# Pool examples per source (task, instruction) or per half of the pool (continual), when --per-source is not given.
PER_SOURCE = {"task": 4, "instruction": 3, "continual": 6}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from delift_jax.demo.cases import TASK_SOURCES

    parser.add_argument("--use-case", default="task", choices=("task", "instruction", "continual"),
                        help="which known-answer case (default task)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model (default: built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--target", default="asdiv", choices=TASK_SOURCES,
                        help="task: the source the target set comes from (default asdiv)")
    parser.add_argument("--per-source", type=int, default=None,
                        help="pool examples per source (task 4, instruction 3) or per half of the pool (continual 6)")
    parser.add_argument("--targets", type=int, default=3, help="task: target examples the selection sees (default 3)")
    parser.add_argument("--test", type=int, default=8, help="held-out examples scored (default 8)")
    parser.add_argument("--budget", type=float, default=0.25, help="fraction of the pool to select (default 0.25)")
    parser.add_argument("--train-steps", type=int, default=4, help="LoRA steps per method (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")


def clear_previous_demo(out: Path) -> bool:
    """Remove what an earlier demo wrote to ``out`` (only those names); True if there was any."""
    found = False
    for name in METHODS + ("full", "initial", "kernels"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            found = True
    for name in OUTPUTS + LEGACY_OUTPUTS:
        if (out / name).is_file():
            (out / name).unlink()
            found = True
    return found


def summary_lines(case, seconds: float) -> list[str]:
    """What was measured, in plain words (composition table, NLL table, the caveats)."""
    import numpy as np

    from delift_jax.report.known_answer import composition

    wanted = [case.groups.index(g) for g in case.wanted]
    share_label = "share " + (f"from {case.wanted[0]}" if len(case.wanted) == 1 else "wanted")
    lines = [case.about, "", "| method | " + " | ".join(case.groups) + f" | {share_label} |",
             "|---|" + "---|" * (len(case.groups) + 1)]
    for method, chosen in case.picks.items():
        counts = composition(chosen, case.pool_group, len(case.groups))
        share = float(np.isin(case.pool_group[chosen], wanted).mean())
        lines.append(f"| {method} | " + " | ".join(str(c) for c in counts) + f" | {share:.2f} |")
    base = float(np.isin(case.pool_group, wanted).mean())
    lines += ["", f"base share (what a random pick gets on average): {base:.2f}", "",
              f"| model | NLL of {case.nll_of} |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in case.nll.items()]
    lines += ["", "One seed, a few test examples and a few LoRA steps: NLL differences of a few hundredths are within "
              "noise. scripts/bench_recovery.py measures this over seeds and sources (docs/noise.md).",
              f"demo time: {seconds:.0f} s"]
    return lines


def write_outputs(case, out: Path, phases: dict, seconds: float, seed: int) -> list[Path]:
    from delift_jax.atomic_io import atomic_write_text
    from delift_jax.report.known_answer import composition
    from delift_jax.report.plots import plot_composition, plot_kernel_by_group, plot_values

    counts = {m: composition(p, case.pool_group, len(case.groups)).tolist() for m, p in case.picks.items()}
    paths = [out / name for name in OUTPUTS]
    plot_composition(counts, case.groups, paths[1], highlight=case.wanted[0] if len(case.wanted) == 1 else None,
                     title=f"picks by group ({case.use_case}; outlined: wanted)")
    plot_values({m: v for m, v in case.nll.items() if m != "initial"}, f"NLL of {case.nll_of}", paths[2],
                title="after LoRA on each subset (dashed: the starting model)", reference=case.nll["initial"],
                reference_label="initial")
    plot_kernel_by_group(case.kernel, case.pool_group, case.groups, paths[3],
                         title="DELIFT utility U[i, j] of the pool, by group")
    result = {"use_case": case.use_case, "groups": list(case.groups), "wanted": list(case.wanted), "seed": seed,
              "budget": len(next(iter(case.picks.values()))), "picks": {m: p.tolist() for m, p in case.picks.items()},
              "composition": counts, "nll": case.nll, "pool_group": case.pool_group.tolist(),
              "seconds": round(seconds, 1), "seconds_by_phase": {name: round(v, 1) for name, v in phases.items()}}
    atomic_write_text(paths[0], json.dumps(result, indent=1))
    return paths


def run(args: argparse.Namespace) -> int:
    from delift_jax.demo.cases import CASES
    from delift_jax.models.loading import load_model

    started = time.perf_counter()
    out = Path(args.out)
    if clear_previous_demo(out):
        print(f"replacing the previous demo outputs in {out}")
    out.mkdir(parents=True, exist_ok=True)
    if args.per_source is None:
        args.per_source = PER_SOURCE[args.use_case]
    phases = {}  # seconds per stage, in results.json: where a demo's time goes
    model, tokenizer, _ = load_model(None if args.model == DEFAULT_MODEL else args.model)
    phases["load"] = time.perf_counter() - started
    case = CASES[args.use_case](args, model, tokenizer, out / "kernels")
    phases.update(case.phases)
    seconds = time.perf_counter() - started
    print("\n".join(summary_lines(case, seconds)))
    for path in write_outputs(case, out, phases, seconds, args.seed):
        print(f"wrote {path}")
    return 0
