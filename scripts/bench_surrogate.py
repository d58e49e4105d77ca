"""The utility surrogate: how much of the dense objective it keeps, and how soon it reaches a selection at n = 10,000.

Three parts (each skippable), all with the package's own functions; the last line is one JSON object.

1. Retention on real dense kernels. The dense square kernel of the ``--examples`` shortest examples of ``--data``
   (``scripts/bench_sparse.py``'s store and code path: the same store serves both scripts), split into roles as
   bench_sparse does (``fl``: all examples are the pool; ``fl2mi``: a seeded quarter are the targets, the rest the
   pool; ``flcg``: that quarter is the existing data). For each objective, each share of exact pairs
   (``--pcts``: of the pairs the dense objective reads, K for fl, U(targets, pool) for fl2mi, K and P for flcg) and
   each sample seed, every kernel the objective reads is replaced by a surrogate kernel as the surrogate mode builds
   it (``sample_pairs``: diagonal, neighbour and random pairs; ``fit_surrogate`` on the sentence encoder's
   embeddings; predictions, exact values at the sampled pairs) with the exact values taken from the dense kernel
   (the engine computes the same numbers for the same pairs). Greedy (lazy) at ``--budget`` on it, scored with the
   dense objective: f_dense(A_surrogate) / f_dense(A_dense). Then the refinement loop (``methods/refine.py``'s
   ``refine_loop`` and ``refinement_pairs``: the picks' entries made exact, greedy again while the picks change),
   reported with the exact pairs it added. Controls: random subsets of the same size. Spearman of predicted vs
   exact over the entries not sampled, and the held-out R² / Spearman the run itself reports. Objectives that read
   two kernels (flcg) also report each kernel exact in turn with the other one the surrogate
   (``retention_exact_K``, ``retention_exact_P``: which kernel's surrogate costs the objective). ``--p-floor-share``:
   P's sample spends that share on each pool row's nearest existing examples first (``sample_pairs``' floor
   stratum; off by default, as in the library).
   ``--noise-kernels``: also any dense known-answer kernels (``*.npz`` with a square ``utility`` and, optionally,
   ``embeddings``) found there, fl only (the other engineer's bench_noise stores, when they exist).
2. Known answer (task): a pool of ``--ka-pool-per-source`` examples of each of asdiv, boolq, nq-open and
   commonsenseqa (``report.known_answer.source_mixture``, seed 0) and ``--ka-targets`` held-out targets per
   source; one exact kernel U(all targets, pool) (resumable store). Per target source, FL2MI at ``--ka-budget``
   on its targets' rows: precision = share of picks from the target's source, with the exact kernel, with the
   surrogate (a ``--ka-pct`` sample of the whole U(targets, pool), seeds ``--seeds``; refined and not) and Random.
3. End to end at ``--e2e-n`` (default 10,000) examples of built-in data (every built-in set, exact duplicates
   removed, examples of at most ``--e2e-max-chars`` characters of prompt + response, a seeded draw): DELIFT's
   instruction selection (FL at ``--e2e-budget``) in the sparse surrogate mode (k = ``--e2e-top-k``, sentence
   encoder, ``--e2e-pairs`` exact pairs, ``--e2e-refine-rounds``), through ``delift_selection`` with a resumable
   kernel directory (``--out``/e2e); seconds per stage from the store's manifest (every stage's time as it really
   ran, kept across resumed runs), peak RSS, and each stage projected to 100k and 1M from its measured rate
   (embeddings, tokenization and prediction linear in n; exact neighbour search n² from its time here; the exact
   sample and the training fixed; greedy linear, as measured by scripts/bench_scale.py).

Timing is labelled ``contended`` with the load average when the machine had other work (1-minute load average
above 1.5 at the start or the end of the part).

    python scripts/bench_surrogate.py --out runs/bench_surrogate            # everything (hours on 2 cores)
    python scripts/bench_surrogate.py --parts e2e --out runs/bench_surrogate  # the 10k run alone (resumable)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_sparse

CACHE = Path("/root/.cache/delift_jax")
OBJECTIVES = ("fl", "fl2mi", "flcg")
SAMPLE_OPTIONS: dict = {}  # experiments only
BLOCK_SAMPLE_OPTIONS: dict = {}  # kernel name -> sample_pairs options for that kernel only (--p-floor-share)
BLOCKS = {"fl": ("K",), "fl2mi": ("Q",), "flcg": ("K", "P")}  # the kernels each objective reads
BY = {"K": "column", "Q": "column", "P": "row"}  # methods/refine.py's refined_kernels: which entries of the picks


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["retention", "known", "e2e"],
                        choices=("retention", "known", "e2e"))
    parser.add_argument("--out", default="runs/bench_surrogate")
    parser.add_argument("--data", default="truthfulqa")
    parser.add_argument("--examples", type=int, default=120)
    parser.add_argument("--dense-store", default=str(CACHE / "bench_surrogate" / "truthfulqa120"),
                        help="the dense kernel's store (bench_sparse.py --out of the same kernel)")
    parser.add_argument("--pcts", type=float, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="surrogate sample seeds")
    parser.add_argument("--role-fraction", type=float, default=0.25)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--refine-rounds", type=int, default=3)
    parser.add_argument("--within-pcts", type=float, nargs="*", default=[5],
                        help="shares at which refinement also runs inside the budget (60%% sample + 40%% rounds)")
    parser.add_argument("--random-draws", type=int, default=20)
    parser.add_argument("--p-floor-share", type=float, default=0.0,
                        help="flcg: share of P's sample spent on each pool row's nearest existing examples "
                             "(sample_pairs' floor stratum; 0: none, the library's default)")
    parser.add_argument("--p-floor-k", type=int, default=1, help="nearest existing examples per row (floor pairs)")
    parser.add_argument("--noise-kernels", default=str(CACHE / "bench_noise"))
    parser.add_argument("--ka-pool-per-source", type=int, default=24)
    parser.add_argument("--ka-targets", type=int, default=8)
    parser.add_argument("--ka-budget", type=float, default=0.1)
    parser.add_argument("--ka-pct", type=float, default=5)
    parser.add_argument("--ka-store", default=str(CACHE / "bench_surrogate" / "known_answer"))
    parser.add_argument("--e2e-n", type=int, default=10_000)
    parser.add_argument("--e2e-max-chars", type=int, default=400)
    parser.add_argument("--e2e-top-k", type=int, default=16)
    parser.add_argument("--e2e-pairs", type=int, default=2000)
    parser.add_argument("--e2e-budget", type=float, default=0.1)
    parser.add_argument("--e2e-refine-rounds", type=int, default=0)
    parser.add_argument("--e2e-max-response-tokens", type=int, default=16)
    parser.add_argument("--e2e-max-length", type=int, default=512)
    parser.add_argument("--project", type=int, nargs="+", default=[100_000, 1_000_000])
    return parser.parse_args(argv)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def contention(before: float, after: float) -> dict:
    """Contended when the machine was busy before the run: the load after it counts this run's own work (as in
    bench_kernel.py)."""
    return {"contended": bool(before > 1.5), "load_average": [before, after]}


# ---------------------------------------------------------------------------------------------------------------------
# Surrogate kernels from a dense one.


class SurrogateBlock:
    """A surrogate of one dense block (rows x cols) as the surrogate mode builds it: ``sample_pairs`` (``n_pairs``,
    at least 8), ``pair_features`` on the encoder embeddings, ``fit_surrogate``; exact values come from the dense
    block. ``add`` makes entries exact and trains the network again on every exact pair (as the store does)."""

    def __init__(self, utility: np.ndarray, row_emb, col_emb, row_scalars, col_scalars, square: bool, n_pairs: int,
                 seed: int, net=None, dim: int = 32, sample_options: dict | None = None):
        from delift_jax.kernel.config import MIN_SURROGATE_PAIRS
        from delift_jax.kernel.embeddings import top_k_pairs
        from delift_jax.kernel.surrogate import pair_features, sample_pairs

        self.utility, self.net = utility, net
        n_rows, n_cols = utility.shape
        near = top_k_pairs(row_emb, col_emb, min(16, n_cols))
        sample = sample_pairs(n_rows, n_cols, max(MIN_SURROGATE_PAIRS, n_pairs), near, diagonal=square, seed=seed,
                              **{**SAMPLE_OPTIONS, **(sample_options or {})})
        self.features = pair_features(row_emb, col_emb, row_scalars, col_scalars, square=square, dim=dim)
        self.exact = np.zeros(utility.shape, bool)
        self.exact[sample.pairs[:, 0], sample.pairs[:, 1]] = True
        self.sampled = self.exact.copy()
        self.n_sample = len(sample)
        held_rows = np.unique(sample.pairs[sample.held_out, 0])
        self.held = np.zeros(utility.shape, bool)
        self.held[sample.pairs[sample.held_out, 0], sample.pairs[sample.held_out, 1]] = True
        if len(held_rows) and sample.held_out[np.isin(sample.pairs[:, 0], held_rows)].all():
            self.held_rows = held_rows  # rows held out whole: refinement pairs in them stay out of training
        else:
            self.held_rows = np.zeros(0, np.int64)
        self._fit()
        self.first_scores, self.first_prediction = self.scores, self.prediction

    def _fit(self) -> None:
        from delift_jax.kernel.surrogate_net import fit_surrogate, predict_layout

        pairs = np.argwhere(self.exact)
        held = self.held[pairs[:, 0], pairs[:, 1]] | np.isin(pairs[:, 0], self.held_rows)
        fitted = fit_surrogate(self.features, pairs, self.utility[pairs[:, 0], pairs[:, 1]], held,
                               *(() if self.net is None else (self.net,)))
        self.prediction = predict_layout(fitted, *self.utility.shape).astype(np.float64)
        self.scores = fitted.scores

    @property
    def raw(self) -> np.ndarray:
        raw = self.prediction.copy()
        raw[self.exact] = self.utility[self.exact]
        return raw

    def add(self, pairs: np.ndarray) -> int:
        self.exact[pairs[:, 0], pairs[:, 1]] = True
        self._fit()
        return int(len(pairs))

    def spearman_unsampled(self) -> float:
        from delift_jax.kernel.surrogate_net import spearman

        unsampled = ~self.sampled
        return spearman(self.utility[unsampled], self.first_prediction[unsampled]) if unsampled.any() else 1.0


class Study:
    """One dense kernel with its roles (bench_sparse.Cases), embeddings and length scalars."""

    def __init__(self, utility, embeddings, scalars, role_fraction: float, seed: int = 0):
        from bench_sparse import Cases

        self.cases = Cases(utility, role_fraction, seed)
        self.embeddings, self.scalars = embeddings, scalars

    def blocks(self, objective: str) -> dict:
        """name -> (rows, cols) of the dense square kernel; Q as the targets store holds it (targets x pool)."""
        return self.cases.blocks(objective)

    def objective_raw(self, objective: str, raw_blocks: dict) -> dict:
        """The objective's raw kernels from row-major blocks (Q transposed to (pool, targets))."""
        return {name: (block.T if name == "Q" else block) for name, block in raw_blocks.items()}

    def surrogates(self, objective: str, share: float, seed: int, **options) -> dict:
        """A ``SurrogateBlock`` per kernel the objective reads, each sampling ``share`` of its entries."""
        out = {}
        for name, (rows, cols) in self.blocks(objective).items():
            n_pairs = int(round(share * len(rows) * len(cols)))
            out[name] = SurrogateBlock(self.cases.utility[np.ix_(rows, cols)], self.embeddings[rows],
                                       self.embeddings[cols], self.scalars[rows], self.scalars[cols], name == "K",
                                       n_pairs, seed, sample_options=BLOCK_SAMPLE_OPTIONS.get(name), **options)
        return out


def objective_of(name: str, kernels: dict):
    from delift_jax.select import make_objective

    return make_objective(name, kernels.get("K"), query_kernel=kernels.get("Q"), private_kernel=kernels.get("P"))


def greedy_picks(objective: str, raw: dict, budget: int) -> np.ndarray:
    from delift_jax.methods.delift import scaled_kernels
    from delift_jax.select import maximize

    return np.asarray(maximize(objective_of(objective, scaled_kernels(raw)), budget, optimizer="lazy").picks)


def dense_value(study: Study, objective: str, picks: np.ndarray) -> float:
    from delift_jax.methods.delift import scaled_kernels
    from delift_jax.select import evaluate

    return float(evaluate(objective_of(objective, scaled_kernels(study.cases.dense_raw(objective))),
                          np.asarray(picks)))


def refine(study: Study, objective: str, blocks: dict, budget: int, rounds: int, caps: dict) -> tuple:
    """methods/refine.py's loop on bench blocks: (final picks, rounds). Entries as ``refined_kernels`` picks them:
    K's columns, Q's (targets store) columns, P's rows."""
    from delift_jax.methods.refine import refine_loop, refinement_pairs

    select = lambda: greedy_picks(objective, study.objective_raw(objective, {n: b.raw for n, b in blocks.items()}),
                                  budget)
    wanted = lambda picks: {n: refinement_pairs(picks, blocks[n].raw, blocks[n].exact, None, caps[n], BY[n])
                            for n in blocks}
    add = lambda pairs: {n: blocks[n].add(p) for n, p in pairs.items()}
    picks, history = refine_loop(select, lambda p: p, wanted, add, 0, rounds)
    return picks, len(history)


def retention_case(study: Study, objective: str, pct: float, seed: int, budget: int, rounds: int,
                   reference: float, within: bool, **options) -> dict:
    """One (objective, pct, seed). ``retention``: a sample of pct% of every kernel, no refinement.
    ``retention_refined``: then the library's refinement (``rounds``, half the sample per round and kernel, the
    network trained again each round), with the exact share it reached. ``retention_within`` (``within``): a 60%
    sample, refinement filling the other 40% over the rounds: pct% exact pairs in all."""
    blocks = study.surrogates(objective, pct / 100, seed, **options)
    total = sum(b.utility.size for b in blocks.values())
    first = greedy_picks(objective, study.objective_raw(objective, {n: b.raw for n, b in blocks.items()}), budget)
    out = {"retention": dense_value(study, objective, first) / reference,
           "baseline": {n: b.first_scores.get("baseline") for n, b in blocks.items()},
           "exact_share_sample": sum(b.n_sample for b in blocks.values()) / total,
           "held_out_r2": {n: b.first_scores.get("held_out_r2") for n, b in blocks.items()},
           "held_out_spearman": {n: b.first_scores.get("held_out_spearman") for n, b in blocks.items()},
           "spearman_unsampled": {n: b.spearman_unsampled() for n, b in blocks.items()}}
    if len(blocks) > 1:  # which kernel's surrogate costs the objective: each one exact in turn, the other surrogate
        for name in blocks:
            raw = {n: (b.utility if n == name else b.raw) for n, b in blocks.items()}
            picks = greedy_picks(objective, study.objective_raw(objective, raw), budget)
            out[f"retention_exact_{name}"] = dense_value(study, objective, picks) / reference
    picks, n_rounds = refine(study, objective, blocks, budget, rounds,
                             {n: max(1, b.n_sample // 2) for n, b in blocks.items()})
    out.update(retention_refined=dense_value(study, objective, picks) / reference, rounds=n_rounds,
               exact_share_refined=sum(int(b.exact.sum()) for b in blocks.values()) / total)
    if within:
        blocks = study.surrogates(objective, 0.6 * pct / 100, seed, **options)
        caps = {n: max(1, int(0.4 * pct / 100 * b.utility.size) // max(rounds, 1)) for n, b in blocks.items()}
        picks, _ = refine(study, objective, blocks, budget, rounds, caps)
        out.update(retention_within=dense_value(study, objective, picks) / reference,
                   exact_share_within=sum(int(b.exact.sum()) for b in blocks.values()) / total)
    return out


def retention_study(study: Study, args, label: str, objectives=OBJECTIVES) -> dict:
    from delift_jax.methods.base import budget_count

    out = {}
    for objective in objectives:
        pool = study.cases.pool(objective)
        budget = budget_count(args.budget, len(pool), "bench_surrogate")
        reference = dense_value(study, objective, greedy_picks(objective, study.cases.dense_raw(objective), budget))
        rng = np.random.default_rng(0)
        random_share = float(np.mean([dense_value(study, objective, rng.choice(len(pool), budget, replace=False))
                                      for _ in range(args.random_draws)])) / reference
        unit = study.embeddings / np.linalg.norm(study.embeddings, axis=1, keepdims=True)
        cosine = study.objective_raw(objective, {n: unit[r] @ unit[c].T for n, (r, c) in study.blocks(objective).items()})
        cosine_share = dense_value(study, objective, greedy_picks(objective, cosine, budget)) / reference
        out[objective] = {"random_subset": round(random_share, 4), "cosine_only": round(cosine_share, 4)}
        for pct in args.pcts:
            runs = [retention_case(study, objective, pct, seed, budget, args.refine_rounds, reference,
                                   pct in args.within_pcts) for seed in args.seeds]
            out[objective][_pct(pct)] = summarize(runs)
            s = out[objective][_pct(pct)]
            within = (f", {s['retention_within']:.4f} with refinement inside {s['exact_share_within']:.1%}"
                      if "retention_within" in s else "")
            within += "".join(f", {key[len('retention_exact_'):]} exact (the rest surrogate) {s[key]:.4f}"
                              for key in s if key.startswith("retention_exact_"))
            print(f"{label} {objective:<6} {pct:>5.1f}% exact: retention {s['retention']:.4f} "
                  f"(min {s['retention_min']:.4f}), refined {s['retention_refined']:.4f} at "
                  f"{s['exact_share_refined']:.1%} exact{within}; held-out R2 {s['held_out_r2']}, Spearman "
                  f"{s['held_out_spearman']}, unsampled Spearman {s['spearman_unsampled']}; random subset "
                  f"{random_share:.4f}, encoder cosine as the kernel {cosine_share:.4f}", flush=True)
    return out


def _pct(pct: float) -> str:
    return f"{pct:g}pct"


def summarize(runs: list[dict]) -> dict:
    mean = lambda key: round(float(np.mean([r[key] for r in runs])), 4)
    per_block = lambda key: {n: round(float(np.mean([r[key][n] for r in runs if r[key][n] is not None])), 4)
                             for n in runs[0][key]}
    within = ({"retention_within": mean("retention_within"), "exact_share_within": mean("exact_share_within"),
               "retention_within_min": round(min(r["retention_within"] for r in runs), 4)}
              if "retention_within" in runs[0] else {})
    within.update({key: mean(key) for key in runs[0] if key.startswith("retention_exact_")})
    within["baselines"] = [r["baseline"] for r in runs]
    return {**within, "retention": mean("retention"), "retention_min": round(min(r["retention"] for r in runs), 4),
            "retention_refined": mean("retention_refined"), "exact_share_sample": mean("exact_share_sample"),
            "exact_share_refined": mean("exact_share_refined"), "rounds": mean("rounds"),
            "held_out_r2": per_block("held_out_r2"), "held_out_spearman": per_block("held_out_spearman"),
            "spearman_unsampled": per_block("spearman_unsampled"), "seeds": len(runs)}


def retention_part(args, model, tokenizer) -> dict:
    from bench_sparse import dense_kernel

    from delift_jax.kernel.embeddings import encoder_embeddings
    from delift_jax.kernel.surrogate import length_scalars

    examples, config, dense, seconds = dense_kernel(model, tokenizer, args.data, args.examples, args.dense_store)
    print(f"dense kernel {len(examples)}x{len(examples)} ({seconds:.0f} s this run)", flush=True)
    study = Study(np.asarray(dense.utility, np.float64), encoder_embeddings(examples), length_scalars(examples),
                  args.role_fraction)
    results = {"truthfulqa120": retention_study(study, args, "truthfulqa120")}
    for path in sorted(Path(args.noise_kernels).glob("**/*.npz")) if Path(args.noise_kernels).is_dir() else []:
        with np.load(path, allow_pickle=False) as data:
            if "utility" not in data.files or "embeddings" not in data.files:
                continue
            utility, embeddings = np.asarray(data["utility"], np.float64), np.asarray(data["embeddings"])
        if utility.ndim != 2 or utility.shape[0] != utility.shape[1]:
            continue
        scalars = np.zeros((len(utility), 2), np.float32)
        results[path.stem] = retention_study(Study(utility, embeddings, scalars, args.role_fraction), args,
                                             path.stem, objectives=("fl",))
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Known answer (task).


def known_answer_part(args, model, tokenizer) -> dict:
    from delift_jax.kernel import KernelConfig, utility_kernel
    from delift_jax.kernel.embeddings import encoder_embeddings
    from delift_jax.kernel.surrogate import length_scalars
    from delift_jax.methods.base import budget_count
    from delift_jax.methods.refine import refine_loop, refinement_pairs
    from delift_jax.report.known_answer import SOURCES, source_mixture

    data = source_mixture(0, SOURCES, pool_per_source=args.ka_pool_per_source, select_targets=args.ka_targets,
                          test_targets=0)
    targets = [t for name in data.sources for t in data.select[name]]
    target_source = np.repeat(np.arange(len(data.sources)), args.ka_targets)
    config = KernelConfig(max_length=384, max_response_tokens=32, block_pairs=96, tokens_per_call=1024)
    result = utility_kernel(model, tokenizer, targets, data.pool, config, out_dir=args.ka_store, progress=True)
    utility = np.asarray(result.utility, np.float64)  # [targets, pool]
    target_emb, pool_emb = encoder_embeddings(targets), encoder_embeddings(data.pool)
    t_scalars, p_scalars = length_scalars(targets), length_scalars(data.pool)
    k = budget_count(args.ka_budget, len(data.pool), "bench_surrogate")

    def precision(raw_q: np.ndarray) -> float:
        """Mean over target sources of the share of FL2MI picks (on that source's target rows) from it."""
        shares = []
        for s in range(len(data.sources)):
            picks = greedy_picks("fl2mi", {"Q": raw_q[target_source == s].T}, k)
            shares.append(float(np.mean(data.pool_source[picks] == s)))
        return float(np.mean(shares))

    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    out = {"exact": precision(utility), "base_share": data.base_share, "budget_k": k,
           "cosine_only": precision(unit(target_emb) @ unit(pool_emb).T),
           "random": float(np.mean([np.mean(data.pool_source[rng.choice(len(data.pool), k, replace=False)] == s)
                                    for s in range(len(data.sources)) for _ in range(50)]))}
    plain, refined, r2, baselines = [], [], [], []
    for seed in args.seeds:
        block = SurrogateBlock(utility, target_emb, pool_emb, t_scalars, p_scalars, False,
                               int(round(args.ka_pct / 100 * utility.size)), seed)
        plain.append(precision(block.raw))
        r2.append(block.first_scores.get("held_out_r2"))
        baselines.append(block.first_scores.get("baseline"))

        def select():
            picks = [greedy_picks("fl2mi", {"Q": block.raw[target_source == s].T}, k)
                     for s in range(len(data.sources))]
            return np.unique(np.concatenate(picks))

        refine_loop(select, lambda picks: picks,
                    lambda picks: {"Q": refinement_pairs(picks, block.raw, block.exact, None,
                                                         max(1, block.n_sample // 2))},
                    lambda pairs: {"Q": block.add(pairs["Q"])}, 0, args.refine_rounds)
        refined.append(precision(block.raw))
    out.update(surrogate=float(np.mean(plain)), surrogate_min=float(min(plain)), surrogate_refined=float(
        np.mean(refined)), held_out_r2=float(np.mean([v for v in r2 if v is not None] or [np.nan])),
        pct=args.ka_pct, seeds=len(args.seeds), baselines=baselines,
        targets=len(targets), pool=len(data.pool))
    print(f"known answer (task, FL2MI at {k} picks of {len(data.pool)}): precision exact {out['exact']:.3f}, "
          f"surrogate {out['surrogate']:.3f} (refined {out['surrogate_refined']:.3f}) at {args.ka_pct:g}% exact "
          f"pairs, encoder cosine as the kernel {out['cosine_only']:.3f}, random {out['random']:.3f}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# End to end at 10k.


def builtin_mix(n: int, max_chars: int, seed: int = 0) -> list:
    """``n`` examples drawn (seeded) from every built-in dataset: exact duplicates removed, prompt + response of at
    most ``max_chars`` characters."""
    from delift_jax.data import load_builtin
    from delift_jax.data.builtin import BUILTIN_DATASETS
    from delift_jax.errors import DataError

    seen, kept = set(), []
    for name in BUILTIN_DATASETS:
        for example in load_builtin(name):
            key = (example.prompt, example.response)
            if key not in seen and len(example.prompt) + len(example.response) <= max_chars:
                seen.add(key)
                kept.append(example)
    if len(kept) < n:
        raise DataError(f"only {len(kept)} built-in examples of at most {max_chars} characters; lower --e2e-n")
    order = np.random.default_rng(seed).permutation(len(kept))[:n]
    return [kept[i] for i in order]


def e2e_part(args, model, tokenizer) -> dict:
    from delift_jax.kernel import KernelConfig
    from delift_jax.methods.delift import DeliftOptions, delift_selection

    before = load_average()
    started = time.perf_counter()
    examples = builtin_mix(args.e2e_n, args.e2e_max_chars)
    load_s = time.perf_counter() - started
    config = KernelConfig(max_length=args.e2e_max_length, max_response_tokens=args.e2e_max_response_tokens,
                          top_k=args.e2e_top_k, neighbours="encoder", utility="surrogate",
                          surrogate_pairs=args.e2e_pairs, refine_rounds=args.e2e_refine_rounds)
    kernel_dir = Path(args.out) / f"e2e_{args.e2e_n}"
    print(f"end to end: {len(examples):,} built-in examples, sparse surrogate k = {args.e2e_top_k}, "
          f"{args.e2e_pairs:,} exact pairs, FL at {args.e2e_budget:.0%}; store {kernel_dir} (resumable)", flush=True)
    manifest_path = kernel_dir / "pool" / "manifest.json"
    earlier = _stage_seconds(manifest_path)
    started = time.perf_counter()
    selection = delift_selection(pool=examples, budget=args.e2e_budget, model=model, tokenizer=tokenizer,
                                 options=DeliftOptions(kernel_config=config, kernel_dir=kernel_dir, progress=True))
    wall = time.perf_counter() - started
    manifest = json.loads(manifest_path.read_text())
    stages = _stage_seconds(manifest_path)
    measured = sum(stages.values())
    # What the stages do not hold of this process's wall time: tokenization, identity hashes, the greedy and its
    # compilation (linear in n). Stage times of earlier, interrupted runs are in the manifest's stages.
    now = sum(stages.values()) - sum(earlier.values())
    stages["tokenize_select_other"] = max(wall - now, 0.0)
    stages["load_data"] = load_s
    total = sum(stages.values())
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    projected = {str(size): project(stages, args.e2e_n, size) for size in args.project}
    out = {"n": len(examples), "end_to_end_s": round(total, 1), "stage_seconds": {k: round(v, 2) for k, v in
                                                                                  stages.items()},
           "stages_measured_s": round(measured, 1), "wall_this_run_s": round(wall, 1), "peak_rss_gb": round(rss_gb, 2),
           "projected_s": projected, "surrogate": manifest["summary"]["surrogate"],
           "selection": {"picks": int(len(selection.indices)), "refinement": selection.info.get("surrogate", {})
                         .get("rounds_this_run")}, **contention(before, load_average())}
    print(f"end to end at n = {len(examples):,}: {total:.0f} s ({total / 60:.1f} min; peak RSS {rss_gb:.2f} GB); "
          f"stages {out['stage_seconds']}; projected " + ", ".join(f"{s}: {v['total_s'] / 3600:.2f} h"
                                                                   for s, v in projected.items()), flush=True)
    return out


def _stage_seconds(manifest_path: Path) -> dict:
    """The store's ``stage_seconds`` (each stage's time as it really ran, summed over resumed runs)."""
    if not manifest_path.is_file():
        return {}
    return dict(json.loads(manifest_path.read_text()).get("stage_seconds") or {})


# How each stage grows with n (fixed: the exact sample, its no-example rows and the training do not grow).
GROWTH = {"embeddings": "linear", "neighbours": "quadratic", "no_example": "fixed", "exact_pairs": "fixed",
          "training": "fixed", "prediction": "linear", "assembly": "linear", "tokenize_select_other": "linear",
          "load_data": "linear", "refinement_pairs": "fixed"}


def project(stages: dict, n: int, size: int) -> dict:
    ratio = size / n
    scale = {"linear": ratio, "quadratic": ratio ** 2, "fixed": 1.0}
    per_stage = {name: round(seconds * scale[GROWTH.get(name, "linear")], 1) for name, seconds in stages.items()}
    return {"total_s": round(sum(per_stage.values()), 1), "stages": per_stage}


def main(argv=None):
    args = parse_args(argv)
    from delift_jax.models import load_model

    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.p_floor_share > 0:
        BLOCK_SAMPLE_OPTIONS["P"] = {"floor_share": args.p_floor_share, "floor_k": args.p_floor_k}
    model, tokenizer, _ = load_model()
    summary: dict = {}
    if "retention" in args.parts:
        before = load_average()
        results = retention_part(args, model, tokenizer)
        summary["retention"] = results
        main_kernel = results["truthfulqa120"]
        for objective in OBJECTIVES:
            summary[f"retention_{objective}_5pct"] = main_kernel[objective].get("5pct", {}).get("retention")
            summary[f"retention_{objective}_5pct_refined"] = main_kernel[objective].get("5pct", {}).get(
                "retention_refined")
        summary["sample_options"] = {"P": BLOCK_SAMPLE_OPTIONS.get("P", {})}
        summary["spearman_5pct"] = main_kernel["fl"].get("5pct", {}).get("spearman_unsampled", {}).get("K")
        summary["retention_timing"] = contention(before, load_average())
    if "known" in args.parts:
        known = known_answer_part(args, model, tokenizer)
        summary["known_answer"] = known
        summary["task_precision_surrogate"] = known["surrogate"]
        summary["task_precision_exact"] = known["exact"]
    if "e2e" in args.parts:
        e2e = e2e_part(args, model, tokenizer)
        summary["end_to_end"] = e2e
        summary["end_to_end_10k_s"] = e2e["end_to_end_s"]
        summary["stage_seconds"] = e2e["stage_seconds"]
        summary["projected_100k_s"] = e2e["projected_s"].get("100000", {}).get("total_s")
        summary["projected_1m_s"] = e2e["projected_s"].get("1000000", {}).get("total_s")
        summary["contended"] = e2e["contended"]
        summary["load_average"] = e2e["load_average"]
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
