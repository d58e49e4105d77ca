"""Does the DELIFT subset teach as much as the full data? Instruction tuning on real examples, DELIFT vs Random vs
Full vs Initial, several seeds, held-out NLL and ROUGE-L.

Each seed makes its own split of the pool (``delift run`` semantics: selection never sees the held-out test
part), selects ``--budget`` of the selection pool with each method, fine-tunes SmolLM2 with LoRA on the subset
and scores the held-out responses. The DELIFT kernel over the selection pool (``--examples`` × the train
fraction of ``--split``) costs one forward pass per pair: TruthfulQA's short pairs run at ≈14 pairs/s on 2 CPU
cores (150 examples at split 0.7: 11,025 pairs, ≈13 min a seed); ifbench's long ones take hours per seed there.

The last line is one JSON object: ``delift``, ``random``, ``full``, ``initial`` (mean held-out token NLL over
seeds) and ``delift_minus_random``. With ``--icl K`` also the ICL condition (the paper's: the base model, no
fine-tuning, with the K examples of each method's subset nearest each test prompt as demonstrations), which
measures the subset as the kernel sees it, without training noise: ``icl_nll`` per method and
``icl_delift_minus_random``.

    python scripts/bench_quality.py --examples 150 --seeds 0 1 2 --out runs/bench_quality
    python scripts/bench_quality.py --data truthfulqa --examples 150 --split 0.7,0.1,0.2 --max-new-tokens 32 \
        --distance rms  # docs/evidence.md (measured with the paper's rms, the default then)

``--distance`` (default: the package default, pmi) is passed to ``delift run``.

``--plant-noise F`` corrupts a seeded fraction F of each seed's selection pool (the train part of the split; the
held-out test part stays clean) with the four kinds of ``delift_jax.report.planted_noise`` in turn (swapped,
truncated, repeated, contradictory responses; prompts unchanged, so the split is the one ``delift run`` makes) and
reports the share of low-quality examples among each method's picks (``noise_share``).

    python scripts/bench_quality.py --data truthfulqa --examples 150 --split 0.7,0.1,0.2 --max-new-tokens 32 \
        --plant-noise 0.25 --out runs/bench_quality_noise
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METHODS = ("delift", "random", "full", "initial")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default="ifbench")
    parser.add_argument("--examples", type=int, default=150)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=1024, help="training / NLL sequence length")
    parser.add_argument("--max-response-tokens", type=int, default=64, help="scored tokens in the DELIFT kernel")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions of --examples")
    parser.add_argument("--icl", type=int, default=0, metavar="K",
                        help="also the ICL condition: base model with K nearest subset examples (0: off)")
    parser.add_argument("--progress", action="store_true", help="progress bars for kernels, training, generation")
    parser.add_argument("--distance", choices=("rms", "pmi"), default=None,
                        help="DELIFT's kernel distance (default: the package default, pmi; docs/evidence.md figures: rms)")
    parser.add_argument("--plant-noise", type=float, default=0.0, metavar="F",
                        help="corrupt this fraction of the selection pool (default 0: the data as it is)")
    parser.add_argument("--out", default="runs/bench_quality")
    args = parser.parse_args()

    from delift_jax.pipeline import command as pipeline_command

    parser = argparse.ArgumentParser()
    pipeline_command.add_arguments(parser)
    nll = {m: [] for m in METHODS}
    rouge = {m: [] for m in METHODS}
    icl_nll = {m: [] for m in METHODS}
    noise_share = {m: [] for m in METHODS}
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        data, kind = args.data, None
        if args.plant_noise:
            data, kind = noisy_pool_file(args, seed, out)
        run_args = parser.parse_args([
            "--use-case", "instruction", "--model", args.model, "--data", data, "--limit", str(args.examples),
            "--budget", str(args.budget), "--methods", ",".join(METHODS), "--seed", str(seed),
            "--train-steps", str(args.train_steps), "--max-length", str(args.max_length),
            "--max-response-tokens", str(args.max_response_tokens), "--max-new-tokens", str(args.max_new_tokens),
            "--split", args.split, "--metrics", "rouge,nll", "--no-checkpoints", "--out", str(out)]
            + (["--progress"] if args.progress else []) + (["--icl", str(args.icl)] if args.icl else [])
            + (["--distance", args.distance] if args.distance else []))
        if pipeline_command.run(run_args):
            raise SystemExit(f"seed {seed}: delift run failed")
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        for method in METHODS:
            metrics = results["methods"][method]["metrics"]
            nll[method].append(float(metrics["token_nll"]))
            rouge[method].append(float(metrics["rougeL"]))
            icl = results["methods"][method].get("icl_metrics")
            if icl:  # methods with a subset (not initial)
                icl_nll[method].append(float(icl["token_nll"]))
            if kind is not None and (out / method / "indices.npy").is_file():
                picks = np.load(out / method / "indices.npy", allow_pickle=False)
                noise_share[method].append(float(np.mean(kind[picks] != "clean")))
        if kind is not None:
            check_clean_test(out, kind)

    print(f"\n{'method':<10} {'held-out NLL (mean ± std)':>28} {'ROUGE-L':>18}   over seeds {args.seeds}")
    for method in METHODS:
        print(f"{method:<10} {np.mean(nll[method]):>18.4f} ± {np.std(nll[method]):<7.4f} "
              f"{np.mean(rouge[method]):>10.4f} ± {np.std(rouge[method]):.4f}")
    summary = {m: round(float(np.mean(nll[m])), 5) for m in METHODS}
    summary["delift_minus_random"] = round(summary["delift"] - summary["random"], 5)
    summary["rougeL"] = {m: round(float(np.mean(rouge[m])), 5) for m in METHODS}
    if args.icl:
        print(f"\nICL condition (base model, {args.icl} nearest subset examples per test prompt):")
        for method in [m for m in METHODS if icl_nll[m]]:
            print(f"{method:<10} {np.mean(icl_nll[method]):>18.4f} ± {np.std(icl_nll[method]):<7.4f}")
        summary["icl_nll"] = {m: round(float(np.mean(v)), 5) for m, v in icl_nll.items() if v}
        summary["icl_nll_std"] = {m: round(float(np.std(v)), 5) for m, v in icl_nll.items() if v}
        summary["icl_delift_minus_random"] = round(summary["icl_nll"]["delift"] - summary["icl_nll"]["random"], 5)
        summary["icl_k"] = args.icl
    if args.plant_noise:
        print(f"\nshare of low-quality examples among the picks (planted: {args.plant_noise:g} of the pool):")
        for method in [m for m in METHODS if noise_share[m]]:
            print(f"{method:<10} {np.mean(noise_share[method]):.3f} ± {np.std(noise_share[method]):.3f}")
        summary["noise_share"] = {m: round(float(np.mean(v)), 4) for m, v in noise_share.items() if v}
        summary["plant_noise"] = args.plant_noise
        summary["nll_std"] = {m: round(float(np.std(nll[m])), 5) for m in METHODS}
        paired = np.asarray(nll["delift"]) - np.asarray(nll["random"])
        summary["delift_minus_random_paired"] = [round(float(paired.mean()), 5), round(float(paired.std()), 5)]
    summary.update(examples=args.examples, split=args.split, seeds=args.seeds, budget=args.budget, data=args.data)
    print(json.dumps(summary))


def noisy_pool_file(args, seed: int, out: Path) -> tuple[str, np.ndarray]:
    """(a JSONL of the first --examples of --data with --plant-noise of the split's train part corrupted, the kind of
    every example). The split is the one ``delift run`` makes (seeded, grouped by prompt; prompts stay unchanged)."""
    from delift_jax.atomic_io import atomic_write_text
    from delift_jax.data.splits import prompt_key, split_indices
    from delift_jax.data.sources import load_dataset
    from delift_jax.report.planted_noise import CLEAN, plant_noise

    examples = list(load_dataset(args.data, limit=args.examples).examples)
    fractions = [float(f) for f in args.split.split(",")]
    train, _, _ = split_indices(len(examples), fractions, seed, [prompt_key(e) for e in examples])
    corrupted, train_kind = plant_noise([examples[i] for i in train], args.plant_noise, seed)
    kind = np.full(len(examples), CLEAN, dtype=object)
    for i, example, k in zip(train, corrupted, train_kind):
        examples[i], kind[i] = example, k
    path = out / "noisy_pool.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n"
                                    for e in examples))
    return str(path), kind.astype(str)


def check_clean_test(out: Path, kind: np.ndarray) -> None:
    """The held-out test part the run recorded holds no corrupted example (the split matched ours)."""
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    test = splits["pool"]["test"]
    if np.any(kind[np.asarray(test, np.int64)] != "clean"):
        raise SystemExit(f"{out}: the run's test split holds planted noise; the split did not match")


if __name__ == "__main__":
    main()
