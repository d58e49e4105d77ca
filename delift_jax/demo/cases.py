"""The three known-answer cases of ``delift demo``: built-in data where the right picks are known, each method's
picks, and the held-out NLL after LoRA on each subset.

* task: a pool of equal parts of four built-in datasets; the target is a held-out part of one of them. Right
  answer: picks from the target's source. Methods: DELIFT (FL2MI, the default), DELIFT with the authors' FL1MI on the
  same kernels, DELIFT (SE), Random. NLL of the target's held-out test part.
* instruction: clean examples of four datasets plus a quarter of low-quality ones (one of each kind of
  ``report.planted_noise``: swapped, truncated, repeated, contradictory responses). Right answer: no low-quality
  pick. Methods: DELIFT (its default kernel form, ``row_rank``), DELIFT in the authors' form (one global min-max,
  diagonal kept) on the same kernel, DELIFT (SE), Random. NLL of clean held-out examples of every source.
* continual: the model has seen (and is first fine-tuned on) part of one dataset; the pool holds as many more of it
  and as many of a new dataset, one of those low quality. Right answer: new and sound picks. Methods as for
  instruction (FLCG). NLL of the new dataset's held-out part after continuing from the tuned model.

Each case returns a ``DemoCase``: the pool's groups (what the composition table and plot count), the picks and the
NLL per method, and the square pool kernel of raw utilities for the heatmap.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

TASK_SOURCES = ("asdiv", "boolq", "nq-open", "commonsenseqa")
# Sentence-length responses: a corrupted response is something the model cannot predict, which is what pulled the
# authors' form towards it (docs/noise.md).
INSTRUCTION_SOURCES = ("truthfulqa", "fanoutqa-multihop", "mmlu", "nq-open")
CONTINUAL_SOURCES = ("truthfulqa", "asdiv")  # seen, new
DEMO_KERNEL = dict(max_length=512, max_response_tokens=16)


@dataclasses.dataclass(frozen=True)
class DemoCase:
    """groups: names of the pool's groups (sources, or clean / noise kinds, or seen / new / new low quality);
    pool_group: the group index of each pool example; wanted: the groups a good selection picks from; picks and
    nll per method (nll also "initial", the model the methods start from); kernel: the pool's raw utility kernel
    (rows targets, columns demonstrations) for the heatmap; about: one line on the pool and the right answer;
    nll_of: what the NLL is measured on."""

    use_case: str
    groups: tuple
    pool_group: np.ndarray
    wanted: tuple
    picks: dict
    nll: dict
    kernel: np.ndarray
    about: str
    nll_of: str
    phases: dict  # seconds: "select" (kernels and greedy, every method), "train_and_score"


def _kernel_config():
    from delift_jax.kernel import KernelConfig

    return KernelConfig(**DEMO_KERNEL)


def held_out_nll(model, tokenizer, test) -> float:
    from delift_jax.data import DEFAULT_TEMPLATES
    from delift_jax.evaluate.metrics import response_nll
    from delift_jax.scoring import ScoringConfig

    contexts = [DEFAULT_TEMPLATES.context_without_example(ex) for ex in test]
    return float(response_nll(model, tokenizer, contexts, [ex.response for ex in test],
                              ScoringConfig(max_length=512)).nll)


def nll_after_lora(model, tokenizer, pool, picks: dict, test, steps: int, seed: int) -> dict:
    """Held-out NLL of ``test``: the starting model ("initial"), then after LoRA on each method's subset."""
    from delift_jax.train import TrainConfig, finetune

    nll = {"initial": held_out_nll(model, tokenizer, test)}
    config = TrainConfig(max_steps=steps, batch_size=4, max_length=512, seed=seed)
    for method, chosen in picks.items():
        tuned = finetune(model, tokenizer, [pool[i] for i in chosen], config).model
        nll[method] = held_out_nll(tuned, tokenizer, test)
    return nll


def baseline_picks(pool, k: int, seed: int, **inputs) -> dict:
    from delift_jax.methods import select as run_method

    return {method: np.asarray(run_method(method, pool=pool, budget=k, seed=seed, **inputs).indices, np.int64)
            for method in ("delift_se", "random")}


def task_case(args, model, tokenizer, kernel_dir: Path) -> DemoCase:
    """DELIFT runs once with the authors' FL1MI, which needs the pool kernel K (the heatmap) and Q; the default,
    FL2MI, reads only Q, so it runs on the same scaled Q (FL2MI's greedy does not depend on the common min-max:
    the same picks as a default run)."""
    from delift_jax import select as sel
    from delift_jax.methods import select as run_method
    from delift_jax.report.known_answer import source_mixture
    from delift_jax.select import resolve_budget

    started = time.perf_counter()
    mixture = source_mixture(args.seed, TASK_SOURCES, pool_per_source=args.per_source, select_targets=args.targets,
                             test_targets=args.test)
    k = resolve_budget(args.budget, len(mixture.pool))
    targets = mixture.select[args.target]
    authors = run_method("delift", pool=mixture.pool, budget=k, use_case="task", targets=targets, model=model,
                         tokenizer=tokenizer, seed=args.seed, kernel_dir=str(kernel_dir), task_objective="flmi",
                         kernel_config=_kernel_config())
    fl2mi = sel.maximize(sel.fl_variant_mutual_information(authors.arrays["kernel_Q"]), k)
    picks = {"delift": np.asarray(fl2mi.picks, np.int64)[:k], "delift_flmi": np.asarray(authors.indices, np.int64),
             **baseline_picks(mixture.pool, k, args.seed, use_case="task", targets=targets)}
    selected = time.perf_counter()
    nll = nll_after_lora(model, tokenizer, mixture.pool, picks, mixture.test[args.target], args.train_steps,
                         args.seed)
    about = (f"pool: {len(mixture.pool)} examples, {args.per_source} from each of {', '.join(TASK_SOURCES)}; "
             f"target: {len(targets)} held-out {args.target} examples (selection), {args.test} more for the NLL; "
             f"{k} picks per method; a good selection picks {args.target}")
    return DemoCase("task", TASK_SOURCES, mixture.pool_source, (args.target,), picks, nll,
                    authors.arrays["utility_K"], about, f"held-out {args.target}", _phases(started, selected))


def delift_two_forms(pool, k: int, model, tokenizer, seed: int, kernel_dir: Path, **inputs) -> tuple[dict, dict]:
    """(picks of DELIFT's default kernel form and of the authors' form, DELIFT's arrays): one kernel computation,
    the authors' form selected again on the same raw utilities."""
    from delift_jax.methods import select as run_method
    from delift_jax.methods.delift import DeliftOptions, select_from_raw

    default = run_method("delift", pool=pool, budget=k, model=model, tokenizer=tokenizer, seed=seed,
                         kernel_dir=str(kernel_dir), kernel_config=_kernel_config(), **inputs)
    raw = {name[len("utility_"):]: u for name, u in default.arrays.items() if name.startswith("utility_")}
    authors, _, _, _ = select_from_raw(raw, inputs.get("use_case", "instruction"), k,
                                       DeliftOptions(scale="minmax", exclude_diagonal=False, quality="none",
                                                     novelty="none"), seed)
    return {"delift": np.asarray(default.indices, np.int64), "delift_authors": np.asarray(authors, np.int64)}, \
        default.arrays


def instruction_case(args, model, tokenizer, kernel_dir: Path) -> DemoCase:
    from delift_jax.report.planted_noise import CLEAN, NOISE_KINDS, instruction_pool, noisy_mixture
    from delift_jax.select import resolve_budget

    started = time.perf_counter()
    mixture = noisy_mixture(args.seed, INSTRUCTION_SOURCES, clean_per_source=args.per_source, per_kind=1,
                            test_per_source=max(1, args.test // len(INSTRUCTION_SOURCES)))
    n_clean = args.per_source * len(INSTRUCTION_SOURCES)
    index = instruction_pool(mixture, "mixed", args.seed, clean_per_source=args.per_source, noisy=n_clean // 3)
    pool = [mixture.examples[i] for i in index]
    groups = (CLEAN,) + NOISE_KINDS
    pool_group = np.asarray([groups.index(kind) for kind in mixture.kind[index]], np.int64)
    k = resolve_budget(args.budget, len(pool))
    picks, arrays = delift_two_forms(pool, k, model, tokenizer, args.seed, kernel_dir, use_case="instruction")
    picks.update(baseline_picks(pool, k, args.seed))
    test = [e for part in mixture.test.values() for e in part]
    selected = time.perf_counter()
    nll = nll_after_lora(model, tokenizer, pool, picks, test, args.train_steps, args.seed)
    low = int(np.sum(pool_group != 0))
    about = (f"pool: {len(pool)} examples of {', '.join(INSTRUCTION_SOURCES)}, {low} of them low quality (one of each "
             f"kind: {', '.join(NOISE_KINDS)}); {k} picks per method; a good selection picks clean examples")
    return DemoCase("instruction", groups, pool_group, (CLEAN,), picks, nll, arrays["utility_K"], about,
                    f"clean held-out examples of {', '.join(INSTRUCTION_SOURCES)}", _phases(started, selected))


def continual_case(args, model, tokenizer, kernel_dir: Path) -> DemoCase:
    """The methods start from the model fine-tuned on the existing data; the kernels are computed with it too."""
    from delift_jax.report.planted_noise import continual_split, noisy_mixture
    from delift_jax.select import resolve_budget
    from delift_jax.train import TrainConfig, finetune, merged_copy

    started = time.perf_counter()
    per_half = args.per_source
    mixture = noisy_mixture(args.seed, CONTINUAL_SOURCES, clean_per_source=2 * per_half, per_kind=1,
                            test_per_source=args.test)
    split = continual_split(mixture, 0, per_half=per_half, noisy=1, existing=per_half)
    pool = [mixture.examples[i] for i in split.pool]
    existing = [mixture.examples[i] for i in split.existing]
    seen, new = CONTINUAL_SOURCES
    groups = (f"seen ({seen})", f"new ({new})", f"new, low quality ({new})")
    pool_group = np.where(split.low_quality, 2, np.where(split.novel, 1, 0)).astype(np.int64)
    config = TrainConfig(max_steps=args.train_steps, batch_size=4, max_length=512, seed=args.seed)
    start = merged_copy(finetune(model, tokenizer, existing, config).model)
    k = resolve_budget(args.budget, len(pool))
    picks, arrays = delift_two_forms(pool, k, start, tokenizer, args.seed, kernel_dir, use_case="continual",
                                     existing=existing)
    picks.update(baseline_picks(pool, k, args.seed, use_case="continual", existing=existing))
    selected = time.perf_counter()
    nll = nll_after_lora(start, tokenizer, pool, picks, mixture.test[new], args.train_steps, args.seed)
    about = (f"seen: {len(existing)} {seen} examples (the model is fine-tuned on them first); pool: {per_half} more "
             f"{seen} and {per_half} {new}, one of those low quality; {k} picks per method; a good selection picks "
             f"new, sound examples")
    return DemoCase("continual", groups, pool_group, (groups[1],), picks, nll, arrays["utility_K"], about,
                    f"held-out {new} (after the existing data)", _phases(started, selected))


def _phases(started: float, selected: float) -> dict:
    return {"select": selected - started, "train_and_score": time.perf_counter() - selected}


CASES = {"task": task_case, "instruction": instruction_case, "continual": continual_case}
