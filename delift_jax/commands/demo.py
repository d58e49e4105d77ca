"""``delift demo``: does the selection pick what it should? A task-specific case whose answer is known.

The pool mixes equal parts of four built-in datasets of different kinds (ASDiv math word problems, BoolQ yes/no
questions over a passage, NQ-open factoid questions, CommonsenseQA multiple choice). The target is a held-out part
of one of them (``--target``, default ASDiv): a selection that serves the target should pick mostly from the
target's source. Each method selects ``--budget`` of the pool (DELIFT with its default task objective, FL2MI;
DELIFT with the authors' FL1MI on the same kernels; DELIFT (SE); Random). Then LoRA fine-tunes
SmolLM2-135M-Instruct on each subset and scores the target's held-out test part (NLL; the untuned model as the
reference).

Printed and written to ``--out``: the composition of each method's picks (``composition.png``, stacked bars), the
held-out NLL per method (``nll_per_method.png``), the DELIFT pool kernel ordered by source
(``kernel_by_source.png``) and ``results.json``. One seed and a few test examples: the NLL differences are
noisy, and the demo says so; ``scripts/bench_recovery.py`` measures the same over targets and seeds.
Each run starts fresh: what an earlier demo wrote to ``--out`` is replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from delift_jax.models.loading import DEFAULT_MODEL

SOURCES = ("asdiv", "boolq", "nq-open", "commonsenseqa")
METHODS = ("delift", "delift_flmi", "delift_se", "random")
OUTPUTS = ("results.json", "composition.png", "nll_per_method.png", "kernel_by_source.png")
LEGACY_OUTPUTS = ("results.md", "splits.json", "rougeL_per_method.png", "kernel_heatmap.png", "greedy_gains.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model (default: built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--target", default="asdiv", choices=SOURCES, help="the source the target set comes from")
    parser.add_argument("--per-source", type=int, default=4, help="pool examples per source (default 4)")
    parser.add_argument("--targets", type=int, default=3, help="target examples the selection sees (default 3)")
    parser.add_argument("--test", type=int, default=8, help="held-out target examples scored (default 8)")
    parser.add_argument("--budget", type=float, default=0.25, help="fraction of the pool to select (default 0.25)")
    parser.add_argument("--train-steps", type=int, default=4, help="LoRA steps per method (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")


def clear_previous_demo(out: Path) -> bool:
    """Remove what an earlier demo wrote to ``out`` (only those names); True if there was any."""
    found = False
    for name in METHODS + ("delift", "full", "initial", "kernels"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            found = True
    for name in OUTPUTS + LEGACY_OUTPUTS:
        if (out / name).is_file():
            (out / name).unlink()
            found = True
    return found


def select_all(mixture, target: str, k: int, model, tokenizer, seed: int, kernel_dir: Path) -> tuple[dict, dict]:
    """(picks per method, DELIFT's arrays). DELIFT runs once with the authors' FL1MI, which needs the pool kernel K
    (shown as the heatmap) and Q; DELIFT's default, FL2MI, reads only Q, so it runs on the same scaled Q and differs
    only in the objective (FL2MI's greedy does not depend on the common min-max: same picks as the default run)."""
    from delift_jax import select as sel
    from delift_jax.kernel import KernelConfig
    from delift_jax.methods import select as run_method

    targets = mixture.select[target]
    authors = run_method("delift", pool=mixture.pool, budget=k, use_case="task", targets=targets, model=model,
                         tokenizer=tokenizer, seed=seed, kernel_dir=str(kernel_dir), task_objective="flmi",
                         kernel_config=KernelConfig(max_length=512, max_response_tokens=16))
    fl2mi = sel.maximize(sel.fl_variant_mutual_information(authors.arrays["kernel_Q"]), k)
    picks = {"delift": np.asarray(fl2mi.picks)[:k], "delift_flmi": authors.indices}
    for method in ("delift_se", "random"):
        picks[method] = run_method(method, pool=mixture.pool, budget=k, use_case="task", targets=targets,
                                   seed=seed).indices
    return {m: np.asarray(p, np.int64) for m, p in picks.items()}, authors.arrays


def held_out_nll(model, tokenizer, test) -> float:
    from delift_jax.data import DEFAULT_TEMPLATES
    from delift_jax.evaluate.metrics import response_nll
    from delift_jax.scoring import ScoringConfig

    contexts = [DEFAULT_TEMPLATES.context_without_example(ex) for ex in test]
    return float(response_nll(model, tokenizer, contexts, [ex.response for ex in test],
                              ScoringConfig(max_length=512)).nll)


def nll_per_method(model, tokenizer, mixture, target: str, picks: dict, steps: int, seed: int) -> dict:
    """Held-out NLL of the target's test part: the untuned model, then after LoRA on each method's subset."""
    from delift_jax.train import TrainConfig, finetune

    test = mixture.test[target]
    nll = {"initial": held_out_nll(model, tokenizer, test)}
    config = TrainConfig(max_steps=steps, batch_size=4, max_length=512, seed=seed)
    for method, chosen in picks.items():
        tuned = finetune(model, tokenizer, [mixture.pool[i] for i in chosen], config).model
        nll[method] = held_out_nll(tuned, tokenizer, test)
    return nll


def summary_lines(mixture, target: str, picks: dict, nll: dict, seconds: float) -> list[str]:
    """What was measured, in plain words (composition table, NLL table, the caveats)."""
    from delift_jax.report.known_answer import composition, precision

    t = mixture.sources.index(target)
    k = len(next(iter(picks.values())))
    lines = [f"pool: {len(mixture.pool)} examples, {len(mixture.pool) // len(mixture.sources)} from each of "
             f"{', '.join(mixture.sources)}; target: {len(mixture.select[target])} held-out {target} examples "
             f"(selection), {len(mixture.test[target])} more for the NLL; {k} picks per method",
             "", "| method | " + " | ".join(mixture.sources) + f" | share from {target} |",
             "|---|" + "---|" * (len(mixture.sources) + 1)]
    for method, chosen in picks.items():
        counts = composition(chosen, mixture.pool_source, len(mixture.sources))
        lines.append(f"| {method} | " + " | ".join(str(c) for c in counts)
                     + f" | {precision(chosen, mixture.pool_source, t):.2f} |")
    lines += ["", f"base share (what a random pick gets on average): {mixture.base_share:.2f}", "",
              f"| model | held-out {target} NLL |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in nll.items()]
    lines += ["", f"One seed, {len(mixture.test[target])} test examples and a few LoRA steps: NLL differences of a "
              "few hundredths are within noise. scripts/bench_recovery.py measures this over targets and seeds "
              "(README, 'Does it work?').", f"demo time: {seconds:.0f} s"]
    return lines


def run(args: argparse.Namespace) -> int:
    from delift_jax.models.loading import load_model
    from delift_jax.report.known_answer import composition, source_mixture
    from delift_jax.report.plots import plot_composition, plot_kernel_by_group, plot_values
    from delift_jax.atomic_io import atomic_write_text
    from delift_jax.select import resolve_budget

    started = time.perf_counter()
    out = Path(args.out)
    if clear_previous_demo(out):
        print(f"replacing the previous demo outputs in {out}")
    out.mkdir(parents=True, exist_ok=True)
    mixture = source_mixture(args.seed, SOURCES, pool_per_source=args.per_source, select_targets=args.targets,
                             test_targets=args.test)
    phases = {}  # seconds per stage, in results.json: where a demo's time goes
    model, tokenizer, _ = load_model(None if args.model == DEFAULT_MODEL else args.model)
    phases["load"] = time.perf_counter() - started
    k = resolve_budget(args.budget, len(mixture.pool))
    picks, arrays = select_all(mixture, args.target, k, model, tokenizer, args.seed, out / "kernels")
    phases["select"] = time.perf_counter() - started - sum(phases.values())
    nll = nll_per_method(model, tokenizer, mixture, args.target, picks, args.train_steps, args.seed)
    phases["train_and_score"] = time.perf_counter() - started - sum(phases.values())
    seconds = time.perf_counter() - started
    lines = summary_lines(mixture, args.target, picks, nll, seconds)
    print("\n".join(lines))

    counts = {m: composition(p, mixture.pool_source, len(SOURCES)).tolist() for m, p in picks.items()}
    paths = [out / name for name in OUTPUTS]
    plot_composition(counts, SOURCES, paths[1], highlight=args.target,
                     title=f"picks by source (target: {args.target})")
    plot_values({m: v for m, v in nll.items() if m != "initial"}, f"held-out {args.target} NLL", paths[2],
                title="after LoRA on each subset (dashed: untuned model)", reference=nll["initial"],
                reference_label="initial")
    plot_kernel_by_group(arrays["utility_K"], mixture.pool_source, SOURCES, paths[3],
                         title="DELIFT utility U[i, j] of the pool, by source")
    result = {"target": args.target, "sources": list(SOURCES), "budget": k, "seed": args.seed,
              "picks": {m: p.tolist() for m, p in picks.items()}, "composition": counts, "nll": nll,
              "pool_source": mixture.pool_source.tolist(), "seconds": round(seconds, 1),
              "seconds_by_phase": {name: round(value, 1) for name, value in phases.items()}}
    atomic_write_text(paths[0], json.dumps(result, indent=1))
    for path in paths:
        print(f"wrote {path}")
    return 0
