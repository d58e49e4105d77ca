"""Known-answer benchmarks: does DELIFT pick what it should, on built-in data whose right answer is known?

Three cases, each seeded, built only from the built-in datasets (``delift_jax.data.load_builtin``):

* task: the pool is an equal mix of ``--sources`` (default asdiv, boolq, nq-open, commonsenseqa: math, yes/no
  with a passage, open factoid, multiple choice). The target is the held-out part of one source, rotating over
  the sources. Known answer: the picks should come from the target's source. Metric: precision (share of picks
  from the target's source) and lift (precision / base share) for DELIFT (the package default, fl2mi with the
  pmi distance, and the variants: rms, FL1MI, ...), DELIFT (SE), LESS-style and Random at budgets 10% and
  30%; then each subset fine-tunes the model (LoRA) and the target's test part is scored: held-out NLL after
  fine-tuning, and the ICL condition (the base model with the k subset examples nearest each test prompt as
  demonstrations, no training). The three task objectives (fl1mi = ``flmi``,
  ``fl2mi``, ``flmi_paper``) are compared on the same kernels with an η sweep.
* continual: the existing data is half of one source's pool part, the new pool is the other half plus as many
  examples of the next source. Known answer: the new source is what the model lacks. Metric: share of novel picks
  under FLCG vs Random; then the novel source's held-out NLL after continuing from the model tuned on the
  existing data. The continual kernels are sub-blocks of the task pool kernel (same pairs, no extra cost);
  they are computed with the base model, not with the model tuned on the existing data.
* instruction: ``--dup-bases`` examples of TruthfulQA, each present ``--dup-copies`` times, lightly perturbed
  (case, spacing, punctuation). Known answer: a good subset holds no duplicates. Metric: distinct bases among the
  picks, and the held-out coverage (mean over held-out examples of the best sentence-embedding cosine to a pick).

Sizes are chosen for 2 CPU cores: every source keeps examples whose prompt has at most ``--max-prompt-chars``
characters (the same filter for all sources; it keeps BoolQ's passages short enough that no pair is truncated),
kernels score at most ``--max-response-tokens`` response tokens. Kernels go to resumable stores under ``--cache``
(rerun the same command to resume after a crash).

The last line is one JSON object (means over seeds; ``*_std`` the standard deviations). Its ``*_delift`` keys are
the package defaults (``default_methods``: task fl2mi at η = 1 with the pmi distance, ``fl2mi_pmi_eta1``; continual
FLCG on row ranks with the quality and novelty terms, ``flcg_pmi_row_rank_quality_novelty_nu1``; duplicates FL on
row ranks with the quality term, ``fl_pmi_row_rank_quality``); the other variants have explicit names (``*_fl2mi_rms``: the paper's distance,
``*_flmi_rms``: the authors' objective and distance, ``*_minmax``: the authors' min-max form, ...). In the per-method
results the names ``delift_rms`` / ``delift_pmi`` are FL1MI (``flmi``, η = 1) in the task case and the authors'
min-max form in the continual and duplicate cases, as in earlier runs' saved results.

    python scripts/bench_recovery.py --seeds 0 1 2                  # the docs/evidence.md figures
    python scripts/bench_recovery.py --seeds 0 --only-kernels       # precompute the kernel stores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from delift_jax.report.known_answer import SOURCES, SourceMixture, precision, source_mixture, usable_examples

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recovery_noise  # noqa: E402  (the planted-noise case, --case noise)

DUP_SOURCE = "truthfulqa"
CACHE = Path("/root/.cache/delift_jax/bench_recovery")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How many examples each part takes (per source for the task case)."""

    pool_per_source: int = 4
    select_targets: int = 2       # target examples the selection sees (kernel rows)
    test_targets: int = 8         # target examples held out for NLL / ICL (never seen by selection)
    dup_bases: int = 4
    dup_copies: int = 3
    dup_held_out: int = 20
    max_prompt_chars: int = 240


@dataclasses.dataclass(frozen=True)
class DupData:
    pool: list
    base_of: np.ndarray   # pool index -> base example id
    held_out: list


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------- data

def task_data(seed: int, sources=SOURCES, sizes: Sizes = Sizes(), loader=None) -> SourceMixture:
    """Per source, a seeded draw of disjoint pool / selection-target / test-target parts."""
    return source_mixture(seed, sources, pool_per_source=sizes.pool_per_source, select_targets=sizes.select_targets,
                          test_targets=sizes.test_targets, max_prompt_chars=sizes.max_prompt_chars, loader=loader)


def perturb(example, copy: int, rng: np.random.Generator):
    """A light, meaning-preserving edit of the prompt (copy 0 is the original)."""
    from delift_jax.data import Example

    if copy == 0:
        return example
    edits = [lambda p: p.replace("Instruction: ", "Instruction:  ", 1),
             lambda p: p.replace("?", " ?", 1) if "?" in p else p + " ",
             lambda p: p.replace("Instruction: ", "Instruction: Please answer: ", 1),
             lambda p: p.rstrip("\n") + " \n",
             lambda p: p[:13] + p[13:14].lower() + p[14:] if len(p) > 14 else p]
    choice = rng.choice(len(edits), size=2, replace=False)
    prompt = example.prompt
    for c in choice:
        prompt = edits[int(c)](prompt)
    response = example.response.rstrip(".") + ("." if copy % 2 else "")
    return Example(prompt, response)


def dup_data(seed: int, sizes: Sizes = Sizes(), loader=None, source: str = DUP_SOURCE) -> DupData:
    """``dup_bases`` examples, each ``dup_copies`` times (lightly perturbed), in a seeded order; a held-out part."""
    examples = usable_examples(source, sizes.max_prompt_chars, loader)
    rng = np.random.default_rng([seed, 99])
    order = rng.permutation(len(examples))
    bases = [examples[i] for i in order[:sizes.dup_bases]]
    held_out = [examples[i] for i in order[sizes.dup_bases:sizes.dup_bases + sizes.dup_held_out]]
    items = [(b, c) for b in range(sizes.dup_bases) for c in range(sizes.dup_copies)]
    shuffled = rng.permutation(len(items))
    pool = [perturb(bases[items[i][0]], items[i][1], rng) for i in shuffled]
    return DupData(pool, np.array([items[i][0] for i in shuffled]), held_out)


# ------------------------------------------------------------------------------------------------------ kernels

def kernel_config(args):
    from delift_jax.kernel import KernelConfig

    return KernelConfig(max_length=args.max_length, max_response_tokens=args.max_response_tokens,
                        block_pairs=args.block_pairs, tokens_per_call=args.tokens_per_call)


def store_dirs(cache: Path, seed: int, sources) -> dict:
    """Stores laid out as ``delift`` expects (``<dir>/pool``, ``<dir>/targets``): one pool store per seed, linked
    into each target's directory, so the rotating targets share it."""
    root = cache / f"seed{seed}"
    dirs = {"task_pool": root / "task_pool", "dup": root / "dup"}
    for name in sources:
        dirs[f"task:{name}"] = root / f"task_{name}"
    return dirs


def link_pool(target_dir: Path, pool_store: Path) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    link = target_dir / "pool"
    try:
        link.symlink_to(pool_store.resolve(), target_is_directory=True)
    except FileExistsError:  # made by an earlier run or by a process computing another kernel of this seed
        pass


def raw_path(cache: Path, seed: int, what: str) -> Path:
    return cache / f"seed{seed}" / f"raw_{what.replace(':', '_').replace('#', '_')}.npz"


def kernel_jobs(seed: int, args, sizes: Sizes, loader=None) -> list:
    """(name, kind, rows, columns, store) of every kernel of one seed. A square kernel split into ``row_parts``
    becomes rectangular kernels over row blocks (rows part, columns all): U[i, j] is the same pair score, the
    diagonal included, so the blocks stacked are the square kernel."""
    data = task_data(seed, args.sources, sizes, loader)
    dups = dup_data(seed, sizes, loader)
    dirs = store_dirs(Path(args.cache), seed, args.sources)
    jobs = []
    for name, kind, examples, store in (("task_pool", "pool", data.pool, dirs["task_pool"]),
                                        ("dup_pool", "dup", dups.pool, dirs["dup"] / "pool")):
        if args.row_parts == 1:
            jobs.append((name, kind, examples, None, store))
            continue
        for part, rows in enumerate(np.array_split(np.arange(len(examples)), args.row_parts)):
            jobs.append((f"{name}#{part}of{args.row_parts}", kind, [examples[i] for i in rows], examples,
                         store.parent / f"{store.name}_rows{part}of{args.row_parts}"))
    for name in args.sources:
        link_pool(dirs[f"task:{name}"], dirs["task_pool"])
        jobs.append((f"targets:{name}", "targets", data.select[name], data.pool, dirs[f"task:{name}"] / "targets"))
    return jobs


def default_methods() -> dict:
    """The package defaults under this script's method names: ``task``: DELIFT's default task objective and η with
    KernelConfig's default distance (``fl2mi_pmi_eta1``); ``continual`` (FLCG) and ``dup`` (FL): the kernel form
    and candidate weights of ``methods.delift`` for those use cases, named as in the planted-noise case
    (``flcg_pmi_row_rank_quality_novelty_nu1``, ``fl_pmi_row_rank_quality``). ``delift_rms`` / ``delift_pmi`` in
    the continual and duplicate cases are the authors' form (one min-max over the kernels, diagonal kept)."""
    from delift_jax.kernel import KernelConfig
    from delift_jax.methods.delift import DeliftOptions

    options, distance = DeliftOptions(), KernelConfig().distance
    return {"task": f"{options.task_objective}_{distance}_eta{options.eta:g}",
            "continual": recovery_noise.default_variant("continual"),
            "dup": recovery_noise.default_variant("instruction")}


def default_form(use_case: str) -> tuple[str, bool, bool, bool]:
    """(scale, diagonal excluded, quality term on, novelty term on) of the package's DELIFT for ``use_case``."""
    from delift_jax.methods.delift import DeliftOptions, resolved_kernel_form, resolved_novelty, resolved_quality

    options = DeliftOptions()
    scale, exclude = resolved_kernel_form(options, use_case)
    return (scale, exclude, resolved_quality(options, use_case) == "prompt_information",
            resolved_novelty(options, use_case) == "existing_coverage")


def compute_kernels(model, tokenizer, seed: int, args, sizes: Sizes, loader=None, jobs_wanted=None,
                    part_wanted=None, compute: bool = True) -> dict:
    """Raw utilities (rms and pmi) for one seed: task pool, each source's selection targets, duplicate pool.

    The stores resume a crashed run; the raw utilities are also saved as ``raw_<what>.npz`` (U_rms, U_pmi,
    seconds), which is what the selection phase reads. Row blocks of a split square kernel are stacked once all
    of them are there.
    """
    import dataclasses as dc

    from delift_jax.kernel import utility_kernel

    cache = Path(args.cache)
    config = kernel_config(args)
    raw = {}
    for what, kind, rows, columns, out in kernel_jobs(seed, args, sizes, loader):
        if jobs_wanted is not None and kind not in jobs_wanted:
            continue
        if part_wanted is not None and "#" in what and not what.split("#")[1].startswith(f"{part_wanted}of"):
            continue
        if kind == "targets" and args.only_target and what != f"targets:{args.only_target}":
            continue
        whole = what.split("#")[0]
        path = raw_path(cache, seed, what)
        if raw_path(cache, seed, whole).is_file():
            raw[whole] = dict(np.load(raw_path(cache, seed, whole), allow_pickle=False))
            continue
        if not path.is_file() and not compute:
            continue
        if not path.is_file():
            start = time.perf_counter()
            # Both distances explicitly (the store holds both; the second call only reassembles).
            result = utility_kernel(model, tokenizer, rows, columns, dc.replace(config, distance="rms"), out_dir=out,
                                    progress=args.progress)
            seconds = time.perf_counter() - start
            pmi = utility_kernel(model, tokenizer, rows, columns, dc.replace(config, distance="pmi"), out_dir=out)
            np.savez(path, U_rms=np.asarray(result.utility, np.float64), U_pmi=np.asarray(pmi.utility, np.float64),
                     seconds=np.float64(seconds))
            log(f"seed {seed} kernel {what}: {result.utility.shape} in {seconds:.0f} s")
        raw[what] = dict(np.load(path, allow_pickle=False))
    return stack_row_parts(raw, cache, seed, args.row_parts)


def stack_row_parts(raw: dict, cache: Path, seed: int, n_parts: int) -> dict:
    """Replace complete sets of row blocks by the square kernel they make (saved as its own raw file)."""
    for whole in ("task_pool", "dup_pool"):
        parts = [raw_path(cache, seed, f"{whole}#{p}of{n_parts}") for p in range(n_parts)]
        if whole in raw or n_parts == 1 or not all(p.is_file() for p in parts):
            continue
        loaded = [dict(np.load(p, allow_pickle=False)) for p in parts]
        raw[whole] = {"U_rms": np.vstack([x["U_rms"] for x in loaded]),
                      "U_pmi": np.vstack([x["U_pmi"] for x in loaded]),
                      "seconds": np.float64(sum(float(x["seconds"]) for x in loaded))}
        np.savez(raw_path(cache, seed, whole), **raw[whole])
    return {k: v for k, v in raw.items() if "#" not in k}


# ------------------------------------------------------------------------------------------------ selection

BUDGETS = (0.1, 0.3)
ETAS = (0.1, 0.5, 1.0, 2.0, 10.0)
OBJECTIVES = ("flmi", "fl2mi", "flmi_paper")


def budget_k(fraction: float, n: int) -> int:
    from delift_jax.select import resolve_budget

    return int(resolve_budget(fraction, n))


def common_minmax(kernels: dict, ignore_diagonal_of: str | None = None, clip: bool = False) -> dict:
    """One min-max over the union of the kernels' raw utilities (DELIFT's common scale), optionally after max(U, 0)
    and with the square kernel's diagonal left out of the statistics and set to 0."""
    values = {name: np.maximum(u, 0.0) if clip else np.asarray(u, np.float64) for name, u in kernels.items()}
    masks = {name: np.zeros(u.shape, bool) for name, u in values.items()}
    if ignore_diagonal_of is not None:
        np.fill_diagonal(masks[ignore_diagonal_of], True)
    kept = np.concatenate([u[~masks[name]] for name, u in values.items()])
    lo, hi = float(kept.min()), float(kept.max())
    span = hi - lo if hi > lo else 1.0
    return {name: np.where(masks[name], 0.0, (u - lo) / span).astype(np.float32) for name, u in values.items()}


def greedy(objective_name: str, k: int, kernel=None, query=None, private=None, eta: float = 1.0) -> np.ndarray:
    from delift_jax import select as sel

    objective = sel.make_objective(objective_name, kernel, query_kernel=query, private_kernel=private, eta=eta)
    result = sel.maximize(objective, int(k), optimizer="naive")
    return np.asarray(result.picks, np.int64)[:int(k)]


def registry_picks(method: str, pool, k: int, seed: int, **inputs) -> np.ndarray:
    """Picks of a method from the registry with its default options."""
    from delift_jax.methods import select as run_method

    return np.asarray(run_method(method, pool=pool, budget=int(k), seed=int(seed), **inputs).indices, np.int64)


def share(picks: np.ndarray, labels: np.ndarray, wanted) -> float:
    return precision(picks, labels, wanted)


def delift_task_picks(raw: dict, target: str, k: int, distance: str, objective: str = "flmi", eta: float = 1.0,
                      exclude_diagonal: bool = False, clip: bool = False) -> np.ndarray:
    u_pool = raw["task_pool"][f"U_{distance}"]
    u_targets = raw[f"targets:{target}"][f"U_{distance}"]          # rows targets, columns pool
    scaled = common_minmax({"K": u_pool, "Q": u_targets.T}, "K" if exclude_diagonal else None, clip)
    return greedy(objective, k, scaled["K"], scaled["Q"], eta=eta)


def task_picks(raw: dict, data: SourceMixture, target: str, t: int, k: int, seed: int, model, tokenizer) -> dict:
    """Every method's k picks for one target (greedy, Random and LESS orders: a smaller budget is a prefix)."""
    picks = {
        "delift_rms": delift_task_picks(raw, target, k, "rms"),
        "delift_pmi": delift_task_picks(raw, target, k, "pmi"),
        "delift_rms_exdiag": delift_task_picks(raw, target, k, "rms", exclude_diagonal=True),
        "delift_rms_clip": delift_task_picks(raw, target, k, "rms", clip=True),
        "random": registry_picks("random", data.pool, k, seed * 1000 + t, use_case="task",
                                 targets=data.select[target]),
        "delift_se": registry_picks("delift_se", data.pool, k, seed, use_case="task", targets=data.select[target]),
        "less": registry_picks("less", data.pool, k, seed, use_case="task", targets=data.select[target],
                               model=model, tokenizer=tokenizer),
    }
    for distance in ("rms", "pmi"):
        for objective in OBJECTIVES:
            for eta in ETAS:
                picks[f"{objective}_{distance}_eta{eta:g}"] = delift_task_picks(raw, target, k, distance, objective,
                                                                                eta)
    default = default_methods()["task"]
    if default not in picks:  # a default objective or η outside the sweep
        from delift_jax.kernel import KernelConfig
        from delift_jax.methods.delift import DeliftOptions

        options = DeliftOptions()
        picks[default] = delift_task_picks(raw, target, k, KernelConfig().distance, options.task_objective,
                                           options.eta)
    return picks


def task_selection(raw: dict, data: SourceMixture, seed: int, model, tokenizer) -> dict:
    """Precision (share of picks from the target's source) per method, target and budget; picks for later stages.

    Each method runs once at the largest budget; a smaller budget takes the prefix of its picks (what a greedy,
    a seeded permutation and a top-k ranking give when run at that budget)."""
    n = len(data.pool)
    out = {"precision": {}, "picks": {}}
    k_max = max(budget_k(fraction, n) for fraction in BUDGETS)
    for t, target in enumerate(data.sources):
        if f"targets:{target}" not in raw:
            continue
        for method, chosen in task_picks(raw, data, target, t, k_max, seed, model, tokenizer).items():
            for fraction in BUDGETS:
                prefix = chosen[:budget_k(fraction, n)]
                out["precision"].setdefault(method, {}).setdefault(f"{fraction:g}", {})[target] = share(
                    prefix, data.pool_source, t)
                out["picks"].setdefault(method, {}).setdefault(f"{fraction:g}", {})[target] = prefix.tolist()
        log(f"seed {seed} task target {target}: precision @10%/@30% " + ", ".join(
            f"{m} {out['precision'][m]['0.1'][target]:.2f}/{out['precision'][m]['0.3'][target]:.2f}"
            for m in (default_methods()["task"], "fl2mi_rms_eta1", "delift_rms", "delift_se", "less", "random")))
    return out


def continual_split(data: SourceMixture, t: int):
    """(existing pool indices, new pool indices, novel flag per new index) for rotation t (A = t, B = t + 1)."""
    a, b = t, (t + 1) % len(data.sources)
    in_a, in_b = np.flatnonzero(data.pool_source == a), np.flatnonzero(data.pool_source == b)
    half = len(in_a) // 2
    existing = in_a[:half]
    new = np.sort(np.concatenate([in_a[half:], in_b[:half]]))  # pool order, which interleaves A and B
    return existing, new, np.isin(new, in_b)


def continual_selection(raw: dict, data: SourceMixture, seed: int, fraction: float = 0.5) -> dict:
    """Novel share of each method's picks per rotation: the authors' form (``delift_<distance>``, one min-max) and
    the package default (``default_methods()["continual"]``)."""
    from delift_jax.kernel import KernelConfig
    from delift_jax.methods.delift import DeliftOptions

    out = {"novel": {}, "picks": {}}
    for t, name in enumerate(data.sources):
        existing, new, novel = continual_split(data, t)
        k = budget_k(fraction, len(new))
        pool = [data.pool[i] for i in new]
        picks = {"random": registry_picks("random", pool, k, seed * 1000 + 500 + t, use_case="continual",
                                          existing=[data.pool[i] for i in existing]),
                 "delift_se": registry_picks("delift_se", pool, k, seed, use_case="continual",
                                             existing=[data.pool[i] for i in existing])}
        for distance in ("rms", "pmi"):
            u = raw["task_pool"][f"U_{distance}"]
            scaled = common_minmax({"K": u[np.ix_(new, new)], "P": u[np.ix_(new, existing)]})
            picks[f"delift_{distance}"] = greedy("flcg", k, scaled["K"], private=scaled["P"])
        scale, exclude, quality, novelty = default_form("continual")
        u = raw["task_pool"][f"U_{KernelConfig().distance}"]
        picks[default_methods()["continual"]] = recovery_noise.delift_picks(
            {"K": u[np.ix_(new, new)], "P": u[np.ix_(new, existing)]}, "continual", k, scale, exclude,
            DeliftOptions().nu, information=raw["task_pool"]["information"][new] if quality else None,
            novelty=novelty)
        for method, chosen in picks.items():
            out["novel"].setdefault(method, {})[name] = float(np.mean(novel[chosen]))
            out["picks"].setdefault(method, {})[name] = [int(new[i]) for i in chosen]
    return out


def dup_selection(raw: dict, dups: DupData, seed: int, encoder) -> dict:
    """Distinct bases among the picks and held-out coverage at k = dup_bases and at 50%: the authors' form
    (``delift_<distance>``, one min-max), its variants, and the package default (``default_methods()["dup"]``:
    row ranks and, where the raw store holds the pool's prompt information, the quality term)."""
    from delift_jax.kernel import KernelConfig

    u = raw["dup_pool"]
    n = len(dups.pool)
    n_bases = len(np.unique(dups.base_of))
    emb_pool = unit_rows(encoder.encode([e.prompt + e.response for e in dups.pool]))
    emb_held = unit_rows(encoder.encode([e.prompt + e.response for e in dups.held_out]))
    scale, exclude, quality, _ = default_form("instruction")
    out = {"distinct": {}, "coverage": {}}
    for label, k in (("k=bases", n_bases), ("50%", budget_k(0.5, n))):
        picks = {"random": registry_picks("random", dups.pool, k, seed * 1000 + 900),
                 "delift_se": registry_picks("delift_se", dups.pool, k, seed)}
        for distance in ("rms", "pmi"):
            for variant, kw in (("", {}), ("_exdiag", {"ignore_diagonal_of": "K"}), ("_clip", {"clip": True})):
                scaled = common_minmax({"K": u[f"U_{distance}"]}, **kw)
                picks[f"delift_{distance}{variant}"] = greedy("fl", k, scaled["K"])
        if not quality or "information" in u:
            picks[default_methods()["dup"]] = recovery_noise.delift_picks(
                {"K": u[f"U_{KernelConfig().distance}"]}, "instruction", k, scale, exclude,
                information=u["information"] if quality else None)
        for method, chosen in picks.items():
            out["distinct"].setdefault(method, {})[label] = len(set(dups.base_of[chosen].tolist())) / len(chosen)
            out["coverage"].setdefault(method, {})[label] = float(np.mean(np.max(emb_held @ emb_pool[chosen].T, 1)))
    return out


def with_information(model, tokenizer, raw: dict, what: str, examples, seed: int, args) -> dict:
    """Add the prompt information of kernel ``what``'s examples (2 passes per example) to its raw store, once."""
    entry = raw.get(what)
    if entry is None or "information" in entry:
        return raw
    entry["information"] = recovery_noise.information_of(model, tokenizer, examples, args)
    np.savez(raw_path(Path(args.cache), seed, what), **entry)
    return raw


def unit_rows(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dup_only(model, tokenizer, encoder, seed: int, args, sizes: Sizes) -> dict:
    """The instruction case alone, from an already computed duplicate-pool kernel: picks and kernel statistics."""
    raw = compute_kernels(model, tokenizer, seed, args, sizes, compute=False)
    if "dup_pool" not in raw:
        raise SystemExit(f"seed {seed}: the duplicate-pool kernel is not there yet")
    dups = dup_data(seed, sizes)
    raw = with_information(model, tokenizer, raw, "dup_pool", dups.pool, seed, args)
    stats = {}
    for distance in ("rms", "pmi"):
        u = raw["dup_pool"][f"U_{distance}"]
        eye = np.eye(len(u), dtype=bool)
        same = (dups.base_of[:, None] == dups.base_of[None, :]) & ~eye
        stats[distance] = {"diag_mean": float(np.diag(u).mean()), "copy_mean": float(u[same].mean()),
                           "other_mean": float(u[~same & ~eye].mean()), "other_std": float(u[~same & ~eye].std()),
                           "other_min": float(u[~same & ~eye].min()), "other_max": float(u[~same & ~eye].max())}
    return {"seed": seed, "dup": dup_selection(raw, dups, seed, encoder), "dup_stats": stats,
            "kernel_seconds": float(raw["dup_pool"]["seconds"])}


def kernel_stats(raw: dict, data: SourceMixture, dups: DupData) -> dict:
    """Diagonal vs off-diagonal scale, row spread, and the known-answer structure: same-source vs other-source."""
    stats = {}
    for distance in ("rms", "pmi"):
        for name in ("task_pool", "dup_pool"):
            if name not in raw:
                continue
            u = raw[name][f"U_{distance}"]
            off = u[~np.eye(len(u), dtype=bool)]
            same = (data.pool_source[:, None] == data.pool_source[None, :]) if name == "task_pool" else \
                (dups.base_of[:, None] == dups.base_of[None, :])
            same_off = same & ~np.eye(len(u), dtype=bool)
            stats[f"{name}_{distance}"] = {
                "diag_mean": float(np.mean(np.diag(u))), "off_mean": float(off.mean()), "off_std": float(off.std()),
                "off_min": float(off.min()), "off_max": float(off.max()),
                "row_spread": float(np.mean(np.std(np.where(np.eye(len(u), dtype=bool), np.nan, u), axis=1,
                                                   where=~np.eye(len(u), dtype=bool)))),
                "same_group_off_mean": float(u[same_off].mean()), "other_group_mean": float(u[~same].mean()),
                "share_negative_off": float(np.mean(off < 0)),
                "diag_over_off_max": float(np.mean(np.diag(u)) / max(abs(off.max()), 1e-12)),
            }
        target_same, target_other = [], []
        for t, target in enumerate(data.sources):
            if f"targets:{target}" not in raw:
                continue
            u = raw[f"targets:{target}"][f"U_{distance}"]
            target_same.append(float(u[:, data.pool_source == t].mean()))
            target_other.append(float(u[:, data.pool_source != t].mean()))
        stats[f"targets_{distance}"] = {"same_source_mean": target_same, "other_source_mean": target_other}
    return stats


# ---------------------------------------------------------------------------------------- training and ICL

def held_out_nll(model, tokenizer, test, args, contexts=None) -> float:
    """Token-weighted NLL of the test responses (no-example template unless ``contexts`` are given)."""
    from delift_jax.data import DEFAULT_TEMPLATES
    from delift_jax.evaluate.metrics import response_nll
    from delift_jax.scoring import ScoringConfig

    contexts = contexts or [DEFAULT_TEMPLATES.context_without_example(ex) for ex in test]
    config = ScoringConfig(max_length=args.icl_max_length, max_response_tokens=args.max_response_tokens)
    return float(response_nll(model, tokenizer, contexts, [ex.response for ex in test], config).nll)


def train_config(args, seed: int):
    from delift_jax.train import TrainConfig

    return TrainConfig(max_steps=args.train_steps, batch_size=args.train_batch, max_length=args.max_length,
                       seed=seed)


def finetuned(model, tokenizer, subset, args, seed: int):
    """The model after LoRA fine-tuning on ``subset`` with the adapters merged (a plain model to continue from)."""
    from delift_jax.train import finetune, merged_copy

    return merged_copy(finetune(model, tokenizer, subset, train_config(args, seed)).model)


def icl_nll(model, tokenizer, encoder, subset, test, args) -> float:
    """The ICL condition: the base model with the k subset examples nearest each test prompt as demonstrations."""
    from delift_jax.evaluate.icl import icl_contexts

    contexts, _ = icl_contexts(encoder, test, subset, min(args.icl_k, len(subset)))
    return held_out_nll(model, tokenizer, test, args, contexts)


def task_training(results: dict, save, model, tokenizer, encoder, data: SourceMixture, seed: int, args) -> None:
    """Held-out NLL of each target's test part: base model, ICL with each subset, and after fine-tuning on it."""
    picks = results["task"]["picks"]
    for target in results["targets_measured"]:
        test = data.test[target]
        unit = results.setdefault("task_nll", {}).setdefault(target, {})
        if "initial" not in unit:
            unit["initial"] = held_out_nll(model, tokenizer, test, args)
            save()
        for method in args.train_methods:
            subset = [data.pool[i] for i in picks[method][f"{args.train_budget:g}"][target]]
            if f"icl:{method}" not in unit:
                unit[f"icl:{method}"] = icl_nll(model, tokenizer, encoder, subset, test, args)
                save()
            if f"ft:{method}" not in unit:
                start = time.perf_counter()
                unit[f"ft:{method}"] = held_out_nll(finetuned(model, tokenizer, subset, args, seed), tokenizer,
                                                    test, args)
                log(f"seed {seed} task {target} {method}: ft NLL {unit[f'ft:{method}']:.3f} "
                    f"(initial {unit['initial']:.3f}, icl {unit[f'icl:{method}']:.3f}) "
                    f"{time.perf_counter() - start:.0f} s")
                save()


def continual_training(results: dict, save, model, tokenizer, data: SourceMixture, seed: int, args) -> None:
    """The novel source's held-out NLL after continuing, from the model tuned on the existing part, on the picks."""
    for t, name in enumerate(data.sources[:args.continual_rotations]):
        novel_source = data.sources[(t + 1) % len(data.sources)]
        test = data.test[novel_source]
        unit = results.setdefault("continual_nll", {}).setdefault(name, {})
        methods = continual_methods(args.train_methods, results["continual"]["picks"])
        if all(f"ft:{m}" in unit for m in methods) and "existing_only" in unit:
            continue
        existing, _, _ = continual_split(data, t)
        start_model = finetuned(model, tokenizer, [data.pool[i] for i in existing], args, seed)
        unit["existing_only"] = held_out_nll(start_model, tokenizer, test, args)
        for method in methods:
            subset = [data.pool[i] for i in results["continual"]["picks"][method][name]]
            unit[f"ft:{method}"] = held_out_nll(finetuned(start_model, tokenizer, subset, args, seed), tokenizer,
                                                test, args)
        log(f"seed {seed} continual {name}->{novel_source}: " + ", ".join(f"{k} {v:.3f}" for k, v in unit.items()))
        save()


def continual_methods(train_methods, continual_picks) -> list:
    """The continual case's methods for ``--train-methods``: names it has (random, delift_rms, ...) as they are, and
    the task default (``fl2mi_pmi_eta1``) as the continual default (``delift_pmi``)."""
    names = default_methods()
    mapped = [names["continual"] if m == names["task"] else m for m in train_methods]
    return [m for m in dict.fromkeys(mapped) if m in continual_picks]


def sentence_encoder():
    try:
        from delift_jax.models.bert import load_sentence_encoder
    except ImportError:
        from delift_jax.models.bert import load_sentence_encoder
    return load_sentence_encoder()


def run_seed(model, tokenizer, encoder, seed: int, args, sizes: Sizes) -> dict:
    """Everything for one seed; results are saved after each unit of work, so a rerun resumes."""
    from delift_jax.atomic_io import atomic_write_text

    raw = compute_kernels(model, tokenizer, seed, args, sizes, compute=not args.no_new_kernels)
    if "task_pool" not in raw:
        raise SystemExit(f"seed {seed}: the task pool kernel is not there yet; run without --no-new-kernels")
    data, dups = task_data(seed, args.sources, sizes), dup_data(seed, sizes)
    raw = with_information(model, tokenizer, raw, "dup_pool", dups.pool, seed, args)
    raw = with_information(model, tokenizer, raw, "task_pool", data.pool, seed, args)
    path = Path(args.cache) / f"seed{seed}" / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    save = lambda: atomic_write_text(path, json.dumps(results, indent=1))
    if "task" not in results:
        results["kernel_seconds"] = {k: float(v["seconds"]) for k, v in raw.items()}
        results["stats"] = kernel_stats(raw, data, dups)
        results["task"] = task_selection(raw, data, seed, model, tokenizer)
        results["continual"] = continual_selection(raw, data, seed)
        results["dup"] = dup_selection(raw, dups, seed, encoder) if "dup_pool" in raw else None
        results["targets_measured"] = [t for t in data.sources if f"targets:{t}" in raw]
        save()
    if not args.no_training:
        task_training(results, save, model, tokenizer, encoder, data, seed, args)
        continual_training(results, save, model, tokenizer, data, seed, args)
    return results


# ------------------------------------------------------------------------------------------------ reporting

def _mean_over_targets(by_target: dict) -> float:
    return float(np.mean([v for v in by_target.values()]))


def per_seed(results: list, getter) -> np.ndarray:
    """One value per seed (getter returns None where a seed lacks it; those seeds are left out)."""
    values = [getter(r) for r in results]
    return np.array([v for v in values if v is not None], np.float64)


def fmt(values: np.ndarray, digits: int = 2) -> str:
    if values.size == 0:
        return "—"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def _get(results, *keys):
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def _cell(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.2f}" if values else "—"


def precision_of(method: str, budget: str):
    return lambda r: _mean_over_targets(r["task"]["precision"][method][budget])


def nll_of(section: str, key: str):
    def get(r):
        units = _get(r, section)
        if not units or not all(key in u for u in units.values()):
            return None
        return float(np.mean([u[key] for u in units.values()]))
    return get


def main_methods() -> tuple:
    """The task table's rows: the package default first, fl2mi with the paper's distance, then FL1MI (``delift_rms``,
    ``delift_pmi``: flmi at η = 1) and the baselines."""
    return (default_methods()["task"], "fl2mi_rms_eta1", "delift_rms", "delift_pmi", "delift_se", "less", "random",
            "delift_rms_exdiag", "delift_rms_clip")


def report(results: list, seeds: list, sources, base_share: float) -> tuple[str, dict]:
    """(markdown tables, summary dict) over seeds (mean ± std of per-seed means over the targets)."""
    names = default_methods()
    main = main_methods()
    lines = [f"Seeds {seeds}; precision = share of picks from the target's source (base share {base_share:.2f}); "
             f"lift = precision / base share. Package defaults: task {names['task']}, continual {names['continual']}, "
             f"duplicates {names['dup']}; delift_rms / delift_pmi are FL1MI (flmi, η = 1) in the task case and the "
             f"authors' min-max form in the continual and duplicate cases.", "",
             "| method | precision @10% | lift @10% | precision @30% | lift @30% |", "|---|---|---|---|---|"]
    for method in main:
        p10, p30 = per_seed(results, precision_of(method, "0.1")), per_seed(results, precision_of(method, "0.3"))
        lines.append(f"| {method} | {fmt(p10)} | {fmt(p10 / base_share)} | {fmt(p30)} | {fmt(p30 / base_share)} |")
    lines += ["", "Per target source, precision @10% (mean over seeds):", "",
              "| method | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for method in main[:7]:
        cells = [_cell([r['task']['precision'][method]['0.1'].get(t) for r in results]) for t in sources]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Task objectives, precision @10% / @30% by η:", "",
              "| objective | distance | " + " | ".join(f"η={e:g}" for e in ETAS) + " |",
              "|---|---|" + "---|" * len(ETAS)]
    for objective in OBJECTIVES:
        for distance in ("rms", "pmi"):
            cells = []
            for eta in ETAS:
                name = f"{objective}_{distance}_eta{eta:g}"
                cells.append(f"{per_seed(results, precision_of(name, '0.1')).mean():.2f} / "
                             f"{per_seed(results, precision_of(name, '0.3')).mean():.2f}")
            lines.append(f"| {objective} | {distance} | " + " | ".join(cells) + " |")
    lines += ["", "Continual (FLCG, budget 50% of the new pool): share of novel picks (Random expects 0.50):", "",
              "| method | novel share |", "|---|---|"]
    for method in (names["continual"], "delift_pmi", "delift_rms", "delift_se", "random"):
        lines.append(f"| {method} | {fmt(per_seed(results, lambda r: _mean_over_targets(r['continual']['novel'][method])))} |")
    lines += ["", "Instruction (planted near-duplicates): distinct bases among the picks / held-out coverage:", "",
              "| method | distinct @k=bases | distinct @50% | coverage @k=bases |", "|---|---|---|---|"]
    dup_results = [r for r in results if r.get("dup")]
    for method in (dup_results[0]["dup"]["distinct"] if dup_results else []):
        lines.append(f"| {method} | {fmt(per_seed(dup_results, lambda r: r['dup']['distinct'][method]['k=bases']))} | "
                     f"{fmt(per_seed(dup_results, lambda r: r['dup']['distinct'][method]['50%']))} | "
                     f"{fmt(per_seed(dup_results, lambda r: r['dup']['coverage'][method]['k=bases']), 3)} |")
    nll_rows = [("initial (base model)", "task_nll", "initial")]
    for method in (names["task"], "fl2mi_rms_eta1", "delift_rms", "random", "delift_se", "delift_pmi", "less"):
        nll_rows += [(f"fine-tuned on {method}", "task_nll", f"ft:{method}"), (f"ICL from {method}", "task_nll",
                                                                              f"icl:{method}")]
    nll_rows += [("continual: existing only", "continual_nll", "existing_only")]
    nll_rows += [(f"continual: + {m}", "continual_nll", f"ft:{m}")
                 for m in dict.fromkeys((names["continual"], "delift_pmi", "delift_rms", "random"))]
    lines += ["", "Held-out NLL of the target's test part (lower is better; budget 30%):", "",
              "| condition | NLL | seeds |", "|---|---|---|"]
    for label, section, key in nll_rows:
        values = per_seed(results, nll_of(section, key))
        if values.size:
            lines.append(f"| {label} | {fmt(values, 3)} | {values.size} |")

    def stat(method, budget="0.1"):
        return per_seed(results, precision_of(method, budget))
    def novel(method):
        return per_seed(results, lambda r: _mean_over_targets(r["continual"]["novel"][method]))

    def distinct(method):
        return per_seed(results, lambda r: _get(r, "dup", "distinct", method, "k=bases"))

    # *_delift: the package defaults (names above); every other variant under its own name.
    task, continual, dup = names["task"], names["continual"], names["dup"]
    summary = {
        "task_precision_delift": stat(task), "task_precision_delift_30": stat(task, "0.3"),
        "task_precision_fl2mi_rms": stat("fl2mi_rms_eta1"),
        "task_precision_fl2mi_rms_30": stat("fl2mi_rms_eta1", "0.3"),
        "task_precision_flmi_rms": stat("delift_rms"), "task_precision_flmi_rms_30": stat("delift_rms", "0.3"),
        "task_precision_flmi_pmi": stat("delift_pmi"),
        "task_precision_se": stat("delift_se"), "task_precision_less": stat("less"),
        "task_precision_random": stat("random"), "task_precision_random_30": stat("random", "0.3"),
        "continual_novel_delift": novel(continual), "continual_novel_delift_minmax": novel("delift_pmi"),
        "continual_novel_delift_rms": novel("delift_rms"),
        "continual_novel_random": novel("random"),
        "dup_distinct_delift": distinct(dup), "dup_distinct_delift_minmax": distinct("delift_pmi"),
        "dup_distinct_delift_rms": distinct("delift_rms"),
        "dup_distinct_random": distinct("random"),
        "task_nll_delift": per_seed(results, nll_of("task_nll", f"ft:{task}")),
        "task_nll_fl2mi_rms": per_seed(results, nll_of("task_nll", "ft:fl2mi_rms_eta1")),
        "task_nll_flmi_rms": per_seed(results, nll_of("task_nll", "ft:delift_rms")),
        "task_nll_random": per_seed(results, nll_of("task_nll", "ft:random")),
        "task_nll_initial": per_seed(results, nll_of("task_nll", "initial")),
        "task_icl_nll_delift": per_seed(results, nll_of("task_nll", f"icl:{task}")),
        "task_icl_nll_random": per_seed(results, nll_of("task_nll", "icl:random")),
        "continual_nll_delift": per_seed(results, nll_of("continual_nll", f"ft:{continual}")),
        "continual_nll_delift_rms": per_seed(results, nll_of("continual_nll", "ft:delift_rms")),
        "continual_nll_random": per_seed(results, nll_of("continual_nll", "ft:random")),
    }
    out = {}
    for key, values in summary.items():
        out[key] = round(float(values.mean()), 4) if values.size else None
        out[f"{key}_std"] = round(float(values.std()), 4) if values.size else None
    out.update(seeds=seeds, base_share=base_share, n_seeds_with_training=int(summary["task_nll_delift"].size),
               targets_measured={str(seed): r.get("targets_measured") for seed, r in zip(seeds, results)})
    return "\n".join(lines), out


# --------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-length", type=int, default=384, help="kernel and training sequence length")
    parser.add_argument("--icl-max-length", type=int, default=1024, help="NLL scoring length (ICL contexts)")
    parser.add_argument("--max-response-tokens", type=int, default=32)
    parser.add_argument("--block-pairs", type=int, default=96, help="pairs per stored kernel block")
    parser.add_argument("--tokens-per-call", type=int, default=1024, help="continuation tokens per kernel call")
    parser.add_argument("--train-methods", nargs="+", default=[default_methods()["task"], "random"],
                        help="methods whose subsets are fine-tuned and used for ICL (default: the package default, "
                        "fl2mi_pmi_eta1, and random; in the continual case the default is delift_pmi)")
    parser.add_argument("--train-budget", type=float, default=0.3)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--icl-k", type=int, default=3, help="demonstrations per test prompt in the ICL condition")
    parser.add_argument("--continual-rotations", type=int, default=4, help="continual fine-tunes for the first N")
    parser.add_argument("--no-training", action="store_true", help="selection metrics only")
    parser.add_argument("--no-new-kernels", action="store_true",
                        help="use only the kernels already computed (targets without one are left out)")
    parser.add_argument("--cache", default=str(CACHE), help="kernel stores and per-seed results (resumable)")
    parser.add_argument("--only-kernels", action="store_true", help="compute the kernel stores and stop")
    parser.add_argument("--kernel-jobs", default="pool,targets,dup",
                        help="with --only-kernels: which kernels (pool: the task pool, targets: the target rows, "
                        "dup: the duplicate pool), so separate processes can share the work")
    parser.add_argument("--report-only", action="store_true", help="print the report from saved per-seed results")
    parser.add_argument("--dup-only", action="store_true",
                        help="only the instruction (duplicates) case, from kernels already computed")
    parser.add_argument("--row-parts", type=int, default=1,
                        help="split the square kernels into this many row blocks (one process each: --row-part)")
    parser.add_argument("--row-part", type=int, default=None, help="with --only-kernels: compute only this block")
    parser.add_argument("--only-target", default=None, help="with --only-kernels: only this source's target rows")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--case", choices=["known", "noise"], default="known",
                        help="known: task, continual and duplicates (the default); noise: planted low-quality "
                        "examples (scripts/recovery_noise.py)")
    recovery_noise.add_arguments(parser)
    for field in dataclasses.fields(Sizes):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    return parser.parse_args(argv)


def sizes_of(args) -> Sizes:
    return Sizes(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)})


def main(argv=None):
    args = parse_args(argv)
    sizes = sizes_of(args)
    if not args.report_only:
        from delift_jax.cli import enable_compilation_cache
        from delift_jax.models.loading import load_model

        # Repeated fine-tunes and scorings compile the same programs: keep them across runs and seeds (the CLI's
        # rule: off with several simulated CPU devices, e.g. inside the test suite, where a warm cache aborted).
        enable_compilation_cache(Path(args.cache) / "xla")

        model, tokenizer, _ = load_model(None if args.model == "smollm2" else args.model)
        if args.case == "noise":
            return recovery_noise.main(model, tokenizer, args)
        encoder = None if args.only_kernels else sentence_encoder()
        if args.dup_only:
            for seed in args.seeds:
                print(json.dumps(dup_only(model, tokenizer, encoder, seed, args, sizes)))
            return
        for seed in args.seeds:
            if args.only_kernels:
                compute_kernels(model, tokenizer, seed, args, sizes, jobs_wanted=args.kernel_jobs.split(","),
                                part_wanted=args.row_part)
            else:
                run_seed(model, tokenizer, encoder, seed, args, sizes)
        if args.only_kernels:
            return
    paths = [Path(args.cache) / f"seed{seed}" / "results.json" for seed in args.seeds]
    results = [json.loads(p.read_text()) for p in paths if p.is_file()]
    seeds = [seed for seed, p in zip(args.seeds, paths) if p.is_file()]
    if not results:
        raise SystemExit("no per-seed results yet; run without --report-only first")
    table, summary = report(results, seeds, list(args.sources), 1.0 / len(args.sources))
    print(table)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
