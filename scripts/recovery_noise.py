"""The planted-noise case of ``scripts/bench_recovery.py`` (``--case noise``): does a selection avoid low-quality
examples (instruction tuning) and find what is new without taking its broken part (continual)?

Data (``delift_jax.report.planted_noise``): per seed, one draw over ``--sources`` with ``--noise-clean`` clean
examples per source and ``--noise-per-kind`` corrupted examples per source for each kind (swapped, truncated,
repeated, contradictory). One square SmolLM2 kernel over the whole draw (both distances; a resumable store) serves
every pool, since U[i, j] depends only on examples i and j:

* instruction pools: 6 clean examples per source + the 8 examples of one kind (25% low quality), one pool per
  kind, and a ``mixed`` pool (2 of each kind). Metric: share of low-quality examples among the picks at 10% and
  30% (Random ≈ 0.25), per kind and per source of the low-quality example.
* continual (rotation r over the sources: seen source r, new source r + 1): existing data = 8 clean examples of
  the seen source; pool = 8 other clean examples of the seen source + 8 of the new source, 2 of them low quality.
  Metrics: novel share of the picks (Random 0.5) and low-quality share (base 0.125).

Then LoRA on each method's 30% subset of the ``mixed`` pool and the held-out NLL of clean test examples of every
source, paired against Random per seed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from delift_jax.report.planted_noise import (CLEAN, NOISE_KINDS, NoisyMixture, continual_split, instruction_pool,
                                             noisy_mixture)

CACHE = Path("/root/.cache/delift_jax/bench_noise")


def log(message: str) -> None:
    import sys

    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mixture_of(seed: int, args, loader=None) -> NoisyMixture:
    return noisy_mixture(seed, args.sources, clean_per_source=args.noise_clean, per_kind=args.noise_per_kind,
                         test_per_source=args.noise_test, max_prompt_chars=args.max_prompt_chars, loader=loader)


def raw_path(cache: Path, seed: int) -> Path:
    return Path(cache) / f"seed{seed}" / "raw_noise.npz"


def noise_kernel(model, tokenizer, seed: int, args, loader=None, compute: bool = True) -> dict | None:
    """{"U_rms", "U_pmi", "seconds"} of the square kernel over the seed's whole draw (resumable store; the raw
    utilities are kept as ``raw_noise.npz``), or None when it is not there and ``compute`` is off."""
    from delift_jax.kernel import KernelConfig, utility_kernel

    path = raw_path(args.noise_cache, seed)
    if path.is_file():
        raw = dict(np.load(path, allow_pickle=False))
        if "information" not in raw:  # stores from before the quality term: 2 passes per example, no kernel
            raw["information"] = information_of(model, tokenizer, mixture_of(seed, args, loader).examples, args)
            np.savez(path, **raw)
        return raw
    if not compute:
        return None
    examples = mixture_of(seed, args, loader).examples
    config = KernelConfig(max_length=args.max_length, max_response_tokens=args.max_response_tokens,
                          block_pairs=args.block_pairs, tokens_per_call=args.tokens_per_call)
    store = path.parent / "pool"
    start = time.perf_counter()
    rms = utility_kernel(model, tokenizer, examples, None, dataclasses.replace(config, distance="rms"),
                         out_dir=store, progress=args.progress)
    seconds = time.perf_counter() - start
    pmi = utility_kernel(model, tokenizer, examples, None, dataclasses.replace(config, distance="pmi"), out_dir=store)
    raw = {"U_rms": np.asarray(rms.utility, np.float64), "U_pmi": np.asarray(pmi.utility, np.float64),
           "seconds": np.float64(seconds), "information": information_of(model, tokenizer, examples, args)}
    np.savez(path, **raw)
    log(f"seed {seed} noise kernel {raw['U_rms'].shape} in {seconds:.0f} s")
    return raw


def information_of(model, tokenizer, examples, args) -> np.ndarray:
    """Prompt information (nats) of every example of the draw, scored as the kernel scores responses."""
    from delift_jax.scoring import ScoringConfig
    from delift_jax.scoring.prompt_information import prompt_information

    return prompt_information(model, tokenizer, examples, ScoringConfig(
        max_length=args.max_length, max_response_tokens=args.max_response_tokens))


def add_arguments(parser) -> None:
    parser.add_argument("--noise-cache", type=Path, default=CACHE, help="planted-noise kernel stores and results")
    parser.add_argument("--noise-clean", type=int, default=16, help="clean examples per source in the draw")
    parser.add_argument("--noise-per-kind", type=int, default=2, help="low-quality examples per source and kind")
    parser.add_argument("--noise-test", type=int, default=8, help="held-out clean test examples per source")




# ------------------------------------------------------------------------------------------------ selection

BUDGETS = (0.1, 0.3)
DISTANCES = ("rms", "pmi")
SCALE_VARIANTS = (("minmax", False), ("minmax", True), ("row_rank", False), ("row_rank", True),
                  ("row_minmax", False), ("row_minmax", True))
NUS = (0.5, 1.0, 1.5, 2.0)


def variant_name(objective: str, distance: str, scale: str, exclude_diagonal: bool, nu: float | None = None,
                 quality: bool = False, novelty: bool = False) -> str:
    return f"{objective}_{distance}_{scale}{'_exdiag' if exclude_diagonal else ''}" + (
        "_quality" if quality else "") + ("_novelty" if novelty else "") + (f"_nu{nu:g}" if nu is not None else "")


def default_variant(use_case: str) -> str:
    """The package defaults under this script's variant names (``*_delift`` keys)."""
    from delift_jax.kernel import KernelConfig
    from delift_jax.methods.delift import DeliftOptions, resolved_kernel_form, resolved_novelty, resolved_quality

    options = DeliftOptions()
    scale, exclude = resolved_kernel_form(options, use_case)
    objective, nu = ("fl", None) if use_case == "instruction" else ("flcg", options.nu)
    quality = resolved_quality(options, use_case) == "prompt_information"
    novelty = resolved_novelty(options, use_case) == "existing_coverage"
    return variant_name(objective, KernelConfig().distance, scale, exclude, nu, quality, novelty)


def delift_picks(raw: dict, use_case: str, k: int, scale: str, exclude_diagonal: bool, nu: float = 1.0,
                 information: np.ndarray | None = None, novelty: bool = False):
    """The package's selection on raw utilities (``methods.delift.select_from_raw``): one greedy's k picks, the
    candidates weighted by their prompt information's ranks where ``information`` is given and by their novelty's
    (how little the existing data covers them) where ``novelty`` is on."""
    from delift_jax.methods.delift import DeliftOptions, select_from_raw

    options = DeliftOptions(scale=scale, exclude_diagonal=exclude_diagonal, nu=nu, optimizer="naive",
                            quality="none" if information is None else "prompt_information",
                            novelty="existing_coverage" if novelty else "none")
    picks, _, _, _ = select_from_raw(raw, use_case, k, options, information=information)
    return np.asarray(picks, np.int64)


def registry_picks(method: str, pool, k: int, seed: int, **inputs) -> np.ndarray:
    from delift_jax.methods import select as run_method

    return np.asarray(run_method(method, pool=pool, budget=int(k), seed=int(seed), **inputs).indices, np.int64)


def instruction_selection(raw: dict, mixture: NoisyMixture, seed: int) -> dict:
    """Low-quality share of each method's picks per pool (one per noise kind, one per source, mixed) and budget."""
    out = {"share": {}, "picks": {}}
    pools = NOISE_KINDS + tuple(mixture.sources) + ("mixed",)
    for p, noise in enumerate(pools):
        pool = instruction_pool(mixture, noise, seed)
        low = mixture.kind[pool] != CLEAN
        k_max = int(max(BUDGETS) * len(pool))
        examples = [mixture.examples[i] for i in pool]
        picks = {"delift_se": registry_picks("delift_se", examples, k_max, seed)}
        for distance in DISTANCES:
            u = raw[f"U_{distance}"][np.ix_(pool, pool)]
            for scale, exclude in SCALE_VARIANTS:
                picks[variant_name("fl", distance, scale, exclude)] = delift_picks({"K": u}, "instruction", k_max,
                                                                                    scale, exclude)
            picks[variant_name("fl", distance, "row_rank", False, quality=True)] = delift_picks(
                {"K": u}, "instruction", k_max, "row_rank", False, information=raw["information"][pool])
        for method, chosen in picks.items():
            for fraction in BUDGETS:
                prefix = chosen[:int(fraction * len(pool))]
                out["share"].setdefault(method, {}).setdefault(f"{fraction:g}", {})[noise] = float(low[prefix].mean())
                out["picks"].setdefault(method, {}).setdefault(f"{fraction:g}", {})[noise] = pool[prefix].tolist()
        draws = random_draws(examples, k_max, seed, p)
        for fraction in BUDGETS:
            k = int(fraction * len(pool))
            out["share"].setdefault("random", {}).setdefault(f"{fraction:g}", {})[noise] = float(
                np.mean([low[d[:k]].mean() for d in draws]))
            out["picks"].setdefault("random", {}).setdefault(f"{fraction:g}", {})[noise] = pool[draws[0][:k]].tolist()
    return out


RANDOM_DRAWS = 20


def random_draws(examples, k: int, seed: int, unit: int, **inputs) -> list:
    """Random's picks for ``RANDOM_DRAWS`` seeds: its figures are the mean over them (the expectation, close to the
    base share, instead of one draw's noise); the first draw is the subset that gets fine-tuned."""
    return [registry_picks("random", examples, k, seed * 10_000 + unit * 100 + d, **inputs)
            for d in range(RANDOM_DRAWS)]


def continual_selection(raw: dict, mixture: NoisyMixture, seed: int, clean_per_source: int) -> dict:
    """Per rotation and budget: the novel share and the low-quality share of each method's picks. Existing data and
    each half of the pool take half a source's clean examples; a quarter of the new half is low quality."""
    out = {"novel": {}, "low": {}, "picks": {}}
    half = clean_per_source // 2
    for rotation in range(len(mixture.sources)):
        split = continual_split(mixture, rotation, per_half=half, noisy=max(1, half // 4), existing=half)
        pool = [mixture.examples[i] for i in split.pool]
        existing = [mixture.examples[i] for i in split.existing]
        k_max = int(max(BUDGETS) * len(pool))
        picks = {"delift_se": registry_picks("delift_se", pool, k_max, seed, use_case="continual",
                                             existing=existing)}
        for distance in DISTANCES:
            u = raw[f"U_{distance}"]
            kernels = {"K": u[np.ix_(split.pool, split.pool)], "P": u[np.ix_(split.pool, split.existing)]}
            for scale, exclude in SCALE_VARIANTS:
                for nu in NUS:
                    picks[variant_name("flcg", distance, scale, exclude, nu)] = delift_picks(
                        kernels, "continual", k_max, scale, exclude, nu)
            information = raw["information"][split.pool]
            for nu in NUS:
                for quality, novelty in ((True, False), (False, True), (True, True)):
                    picks[variant_name("flcg", distance, "row_rank", False, nu, quality, novelty)] = delift_picks(
                        kernels, "continual", k_max, "row_rank", False, nu,
                        information=information if quality else None, novelty=novelty)
        for method, chosen in picks.items():
            for fraction in BUDGETS:
                prefix = chosen[:max(1, int(fraction * len(pool)))]
                key = f"{fraction:g}"
                out["novel"].setdefault(method, {}).setdefault(key, {})[str(rotation)] = float(
                    split.novel[prefix].mean())
                out["low"].setdefault(method, {}).setdefault(key, {})[str(rotation)] = float(
                    split.low_quality[prefix].mean())
                out["picks"].setdefault(method, {}).setdefault(key, {})[str(rotation)] = split.pool[prefix].tolist()
        draws = random_draws(pool, k_max, seed, 50 + rotation, use_case="continual", existing=existing)
        for fraction in BUDGETS:
            key, k = f"{fraction:g}", max(1, int(fraction * len(pool)))
            for what, flags in (("novel", split.novel), ("low", split.low_quality)):
                out[what].setdefault("random", {}).setdefault(key, {})[str(rotation)] = float(
                    np.mean([flags[d[:k]].mean() for d in draws]))
    return out


def kernel_stats(raw: dict, mixture: NoisyMixture) -> dict:
    """Per distance and example kind: the diagonal, the row mean over clean columns (how much demonstrations help
    the example) and the column mean over clean rows (how much the example helps clean ones), off the diagonal."""
    stats = {}
    clean = mixture.kind == CLEAN
    for distance in DISTANCES:
        u = raw[f"U_{distance}"]
        off = np.where(np.eye(len(u), dtype=bool), np.nan, u)
        for kind in (CLEAN,) + NOISE_KINDS:
            mine = mixture.kind == kind
            stats.setdefault(distance, {})[kind] = {
                "diag": float(np.diag(u)[mine].mean()),
                "row_mean_clean_columns": float(np.nanmean(off[np.ix_(mine, clean)])),
                "column_mean_clean_rows": float(np.nanmean(off[np.ix_(clean, mine)])),
                "row_max_off_diagonal": float(np.nanmax(off[mine], axis=1).mean())}
    return stats


# ------------------------------------------------------------------------------------------------ training

def held_out_nll(model, tokenizer, test, args) -> float:
    from delift_jax.data import DEFAULT_TEMPLATES
    from delift_jax.evaluate.metrics import response_nll
    from delift_jax.scoring import ScoringConfig

    contexts = [DEFAULT_TEMPLATES.context_without_example(ex) for ex in test]
    config = ScoringConfig(max_length=args.max_length, max_response_tokens=args.max_response_tokens)
    return float(response_nll(model, tokenizer, contexts, [ex.response for ex in test], config).nll)


def training(results: dict, save, model, tokenizer, mixture: NoisyMixture, seed: int, args) -> None:
    """Held-out NLL of every source's clean test examples after LoRA on each method's subset of the mixed pool at
    ``--train-budget`` (resumable: each value is saved as it comes)."""
    from delift_jax.train import TrainConfig, finetune

    test = [e for part in mixture.test.values() for e in part]
    unit = results.setdefault("nll", {})
    if "initial" not in unit:
        unit["initial"] = held_out_nll(model, tokenizer, test, args)
        save()
    config = TrainConfig(max_steps=args.train_steps, batch_size=args.train_batch, max_length=args.max_length,
                         seed=seed)
    for method in noise_train_methods():
        if method in unit:
            continue
        picks = results["instruction"]["picks"][method][f"{args.train_budget:g}"]["mixed"]
        tuned = finetune(model, tokenizer, [mixture.examples[i] for i in picks], config).model
        unit[method] = held_out_nll(tuned, tokenizer, test, args)
        save()
        log(f"seed {seed} noise NLL {method}: {unit[method]:.3f}")


def noise_train_methods() -> tuple:
    """The package default first, then the authors' form with each distance, row ranks with each distance (those
    not already the default), DELIFT (SE) and Random."""
    default = default_variant("instruction")
    variants = [v for v in ("fl_rms_minmax", "fl_pmi_minmax", "fl_rms_row_rank", "fl_pmi_row_rank",
                            "fl_pmi_row_rank_quality") if v != default]
    return (default, *variants, "delift_se", "random")


# ------------------------------------------------------------------------------------------------ reporting

def _mean(by_unit: dict) -> float:
    return float(np.mean(list(by_unit.values())))


def summary(results: list) -> tuple[list, dict]:
    """(markdown lines, JSON dict): means over seeds (each seed: mean over pools / rotations)."""
    instruction_default, continual_default = default_variant("instruction"), default_variant("continual")
    methods = list(results[0]["instruction"]["share"])
    lines = ["Instruction tuning, planted low-quality examples (25% of a 32-example pool): share of low-quality "
             "picks (lower is better; Random ≈ 0.25); per noise kind, then per source of the low-quality part.", "",
             "| method | budget | " + " | ".join(NOISE_KINDS) + " | mixed | " + " | ".join(
                 results[0]["sources"]) + " | mean (kinds) |", "|---|---|" + "---|" * (len(NOISE_KINDS) + 2 + len(
                     results[0]["sources"]))]
    out = {}
    for method in methods:
        for fraction in BUDGETS:
            key = f"{fraction:g}"
            cells = [np.mean([r["instruction"]["share"][method][key][p] for r in results])
                     for p in NOISE_KINDS + ("mixed",) + tuple(results[0]["sources"])]
            kinds_mean = float(np.mean(cells[:len(NOISE_KINDS)]))
            lines.append(f"| {method} | {fraction:.0%} | " + " | ".join(f"{c:.2f}" for c in cells)
                         + f" | {kinds_mean:.2f} |")
            out.setdefault(method, {})[key] = {"by_kind": dict(zip(NOISE_KINDS, map(float, cells))),
                                               "mixed": float(cells[len(NOISE_KINDS)]),
                                               "by_source": dict(zip(results[0]["sources"], map(
                                                   float, cells[len(NOISE_KINDS) + 1:]))),
                                               "mean_kinds": kinds_mean, "max_kinds": float(max(
                                                   cells[:len(NOISE_KINDS)]))}
    continual = {}
    lines += ["", "Continual (existing: 8 examples of the seen source; pool: 8 seen + 8 new, 2 of the new low "
              "quality): novel share (Random 0.5) / low-quality share (base 0.125)", "",
              "| method | novel @10% | low @10% | novel @30% | low @30% |", "|---|---|---|---|---|"]
    for method in results[0]["continual"]["novel"]:
        row = {}
        for fraction in BUDGETS:
            key = f"{fraction:g}"
            row[key] = {"novel": float(np.mean([_mean(r["continual"]["novel"][method][key]) for r in results])),
                        "low": float(np.mean([_mean(r["continual"]["low"][method][key]) for r in results]))}
        continual[method] = row
        lines.append(f"| {method} | {row['0.1']['novel']:.2f} | {row['0.1']['low']:.2f} | {row['0.3']['novel']:.2f}"
                     f" | {row['0.3']['low']:.2f} |")
    sources = results[0]["sources"]
    lines += ["", f"Continual, the default ({continual_default}) per new source: novel / low-quality share at 10%, "
              "then 30%", "", "| new source | 10% | 30% |", "|---|---|---|"]
    for rotation in range(len(sources)):
        cells = [" / ".join(f"{np.mean([r['continual'][what][continual_default][key][str(rotation)] for r in results]):.2f}"
                            for what in ("novel", "low")) for key in ("0.1", "0.3")]
        lines.append(f"| {sources[(rotation + 1) % len(sources)]} | {cells[0]} | {cells[1]} |")
    lines += ["", "Kernel statistics of the raw utility U[i, j] (row i predicted with demonstration j), mean over "
              "seeds: the diagonal, the row mean over clean columns (how much demonstrations help the example), the "
              "column mean over clean rows (how much the example helps clean ones) and the row maximum off the "
              "diagonal", "", "| distance | kind | diagonal | row mean | column mean | row max off-diagonal |",
              "|---|---|---|---|---|---|"]
    for distance in DISTANCES:
        for kind in (CLEAN,) + NOISE_KINDS:
            cells = [np.mean([r["stats"][distance][kind][stat] for r in results]) for stat in (
                "diag", "row_mean_clean_columns", "column_mean_clean_rows", "row_max_off_diagonal")]
            lines.append(f"| {distance} | {kind} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    nll = [r.get("nll", {}) for r in results]
    nll_rows = {}
    if all(nll):
        lines += ["", "Held-out NLL of clean test examples after LoRA on the 30% subset of the mixed pool "
                  "(mean ± std over seeds; paired difference to Random per seed):", "",
                  "| method | NLL | minus Random |", "|---|---|---|"]
        for method in ("initial",) + noise_train_methods():
            values = np.array([n[method] for n in nll if method in n])
            paired = np.array([n[method] - n["random"] for n in nll if method in n and "random" in n])
            nll_rows[method] = {"mean": float(values.mean()), "std": float(values.std()),
                                "minus_random": float(paired.mean()), "minus_random_std": float(paired.std())}
            lines.append(f"| {method} | {values.mean():.3f} ± {values.std():.3f} | {paired.mean():+.3f} ± "
                         f"{paired.std():.3f} |")
    summary = {"noise_share_delift": out[instruction_default]["0.1"]["mean_kinds"],
               "noise_share_delift_30": out[instruction_default]["0.3"]["mean_kinds"],
               "noise_share_random": out["random"]["0.1"]["mean_kinds"],
               "noise_share_random_30": out["random"]["0.3"]["mean_kinds"],
               "noise_share_se": out["delift_se"]["0.1"]["mean_kinds"],
               "noise_share_se_30": out["delift_se"]["0.3"]["mean_kinds"]}
    for method in out:
        if method not in ("random", "delift_se"):
            summary[f"noise_share_{method}"] = [out[method]["0.1"]["mean_kinds"], out[method]["0.3"]["mean_kinds"]]
    summary.update(noise_delift_detail=out[instruction_default], noise_random_detail=out["random"],
                   continual_novel_delift=[continual[continual_default][k]["novel"] for k in ("0.1", "0.3")],
                   continual_low_delift=[continual[continual_default][k]["low"] for k in ("0.1", "0.3")],
                   continual_novel_random=[continual["random"][k]["novel"] for k in ("0.1", "0.3")],
                   continual_low_random=[continual["random"][k]["low"] for k in ("0.1", "0.3")],
                   continual=continual, instruction_default=instruction_default,
                   continual_default=continual_default, seeds=[r["seed"] for r in results])
    if nll_rows:
        summary["noise_nll_delift_minus_random"] = [nll_rows[instruction_default]["minus_random"],
                                                    nll_rows[instruction_default]["minus_random_std"]]
        summary["noise_nll"] = nll_rows
    return lines, summary


def run_seed(model, tokenizer, seed: int, args) -> dict | None:
    """Everything for one seed, resumable (results saved after each unit of work)."""
    import json

    from delift_jax.atomic_io import atomic_write_text

    raw = noise_kernel(model, tokenizer, seed, args, compute=not args.no_new_kernels)
    if raw is None:
        return None
    mixture = mixture_of(seed, args)
    path = raw_path(args.noise_cache, seed).parent / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    save = lambda: atomic_write_text(path, json.dumps(results, indent=1))
    defaults = (default_variant("instruction"), default_variant("continual"))
    if "instruction" not in results or defaults[0] not in results["instruction"]["share"] or \
            defaults[1] not in results["continual"]["novel"]:  # new variants: select again (the NLLs stay)
        results.update(seed=seed, sources=list(mixture.sources), stats=kernel_stats(raw, mixture),
                       instruction=instruction_selection(raw, mixture, seed),
                       continual=continual_selection(raw, mixture, seed, args.noise_clean), kernel_seconds=float(raw["seconds"]))
        save()
    if not args.no_training:
        training(results, save, model, tokenizer, mixture, seed, args)
    return results


def main(model, tokenizer, args) -> None:
    import json

    results = []
    for seed in args.seeds:
        if args.only_kernels:
            noise_kernel(model, tokenizer, seed, args)
            continue
        result = run_seed(model, tokenizer, seed, args)
        if result is not None:
            results.append(result)
    if args.only_kernels:
        return
    if not results:
        raise SystemExit("no planted-noise kernel yet; run without --no-new-kernels first")
    lines, out = summary(results)
    print("\n".join(lines))
    print(json.dumps(out))
