"""One use case end to end: load -> seeded disjoint splits -> per method: select, export, fine-tune, evaluate on the
held-out split -> ``results.json`` (strict JSON, written atomically after every method) and ``results.md``.

Artifacts (``out_dir``)::

    results.json        config, inputs, split sizes, and per method: selection facts, training summary, metrics
    results.md          markdown table, one row per method
    splits.json         every split as 0-based indices into the loaded inputs (pool / target / existing), the
                        selection pool, the selection queries and the held-out evaluation set
    <method>/indices.npy     int64 indices of the selected examples into the ORIGINAL (loaded) pool, in pick order
                             (the loaded pool is the input after --dedupe/--drop-empty/--limit; with none of those,
                             an index is the record's 0-based row in the input file)
    <method>/subset.jsonl    the selected examples in pick order, in the input's own schema: the raw records of a
                             data file (every field kept), prompt/response records for a built-in dataset
    <method>/selection.json  the method's info, the indices, the file rows, per-pick scores, seconds
    <method>/evaluation.json the evaluation summary and per-example generations
    <method>/kernels/        DELIFT's crash-safe kernel stores (pool / targets / existing)
    <method>/train/          fine-tuning checkpoints (RunConfig.checkpoints)
    <method>/model/          the fine-tuned model as a Hugging Face directory (RunConfig.export_models)
    <method>/evaluation_icl.json  the base model with the subset as demonstrations (RunConfig.icl_k > 0)
    existing_model/train/    continual: checkpoints of the first fine-tuning on the existing data

The held-out evaluation set never enters selection: methods receive only the selection pool (instruction and
continual: the pool's train split) and the selection queries (task: the target set's train + validation splits);
pool, query and existing examples asking a held-out question (same prompt, case- and whitespace-folded) are
dropped (with a warning), and ``check_disjoint`` asserts it before anything is selected.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from delift_jax.atomic_io import atomic_save_npy, atomic_write_text
from delift_jax.data.records import Example
from delift_jax.data.sources import load_dataset
from delift_jax.data.splits import check_disjoint, prompt_key, shared_examples, split_indices
from delift_jax.errors import DataError
from delift_jax.pipeline.config import RunConfig

log = logging.getLogger("delift_jax.pipeline")


@dataclasses.dataclass
class Source:
    """One loaded input: examples, and for a data file the raw records and 0-based file rows aligned with them."""

    name: str
    examples: list[Example]
    records: list | None
    rows: list[int] | None
    format: str

    def export_records(self, indices: Sequence[int]) -> list[dict]:
        if self.records is not None:
            return [self.records[i] for i in indices]
        return [{"prompt": self.examples[i].prompt, "response": self.examples[i].response} for i in indices]


def load_source(source: str, limit: int | None, what: str, data_options: dict | None = None) -> Source:
    """Load ``source`` (built-in name or data file); DataErrors name the input (``what``)."""
    from delift_jax.data.builtin import BUILTIN_DATASETS
    from delift_jax.data.formats import read_table

    options = dict(data_options or {})
    if source in BUILTIN_DATASETS and options.get("fields") is None:
        options.pop("fields", None)
    try:
        loaded = load_dataset(str(source), limit, **options)
        records = rows = None
        if source not in BUILTIN_DATASETS:
            report = loaded.report
            drop = set(report.empty_rows) if report.dropped_empty else set()
            if report.deduplicated:
                drop.update(r for group in report.duplicate_groups for r in group[1:])
            rows = [r - 1 for r in range(1, report.n_records + 1) if r not in drop][:len(loaded.examples)]
            raw = read_table(Path(source).expanduser())
            records = [raw[r] for r in rows]
    except DataError as exc:
        raise DataError(f"{what} {source!r}: {exc}") from None
    return Source(str(source), list(loaded.examples), records, rows, loaded.report.format)


def _split(source: Source, fractions, seed: int, what: str) -> tuple[list[int], list[int], list[int]]:
    try:
        # Examples asking the same question (folded prompt) stay in one split, whatever their responses.
        return split_indices(len(source.examples), fractions, seed, [prompt_key(e) for e in source.examples])
    except DataError as exc:
        raise DataError(f"{what} {source.name!r}: {exc}") from None


def _drop_shared(indices: list[int], source: Source, held_out: Sequence[Example], what: str) -> tuple[list[int], int]:
    """Indices whose prompt (case- and whitespace-folded) is no held-out test prompt, and how many were dropped
    (with a warning): a pool example asking a test question leaks its answer even with another response."""
    shared = set(shared_examples(held_out, [source.examples[i] for i in indices], prompt_key))
    if shared:
        log.warning("%s: %d example(s) asking a held-out test question were dropped from selection",
                    what, len(shared))
    return [i for pos, i in enumerate(indices) if pos not in shared], len(shared)


def resolve_k(budget, n: int, what: str = "selection pool") -> int:
    """Picks for ``budget`` over ``n`` candidates; a one-line DataError for budgets the pool cannot meet."""
    from delift_jax.select.maximize import fraction_count

    if isinstance(budget, int):
        if budget > n:
            raise DataError(f"budget {budget} is above the {what} ({n} examples after holding out the test split)")
        return budget
    k = fraction_count(budget, n)
    if k < 1:
        raise DataError(f"budget {budget} of the {what} ({n} examples) selects nothing; raise the budget")
    return k


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    from delift_jax.evaluate.report import to_jsonable

    lines = [json.dumps(to_jsonable(dict(r)), ensure_ascii=False, allow_nan=False) + "\n" for r in records]
    return atomic_write_text(path, "".join(lines))


def _method_options(name: str, config: RunConfig, method_dir: Path, encoder, progress: bool) -> dict:
    """Options for ``name``: the pipeline's defaults the method accepts, then the user's ``method_options``."""
    from delift_jax.methods import get_method

    accepted = set(getattr(sys.modules[get_method(name).__module__], "OPTIONS", ()))
    defaults = {"kernel_config": config.kernel, "kernel_dir": method_dir / "kernels", "progress": progress,
                "max_length": config.train.max_length}
    if encoder is not None:
        defaults["encoder"] = encoder
    options = {k: v for k, v in defaults.items() if k in accepted}
    for key, value in config.method_options.items():
        from delift_jax.methods import canonical_name

        if canonical_name(key) == name:
            options.update(value)
    return options


METRIC_COLUMNS = ("rouge1", "rougeL", "embedding_cosine", "token_nll", "perplexity", "accuracy", "contains",
                  "judge_score")


def markdown_results(results: dict) -> str:
    """A header with the run's facts and a table: one row per method, one column per metric present."""
    methods = results["methods"]
    columns = [c for c in METRIC_COLUMNS if any(c in (m.get("metrics") or {}) for m in methods.values())]
    icl_columns = [c for c in METRIC_COLUMNS if any(c in (m.get("icl_metrics") or {}) for m in methods.values())]
    head = ["method", "selected", "train steps", "final train loss"] + columns + [f"ICL {c}" for c in icl_columns]
    lines = [f"# delift run: {results['use_case']}", "",
             f"- data: `{results['inputs']['data']}`; budget {results['config']['budget']}; seed "
             f"{results['config']['seed']}",
             f"- selection pool: {results['splits']['selection_pool']} examples; held-out test "
             f"({results['splits']['evaluation_source']}): {results['splits']['test']} examples", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in methods.items():
        train = entry.get("train") or {}
        cells = [name, str(entry["selected"]), _cell(train.get("steps")), _cell(train.get("final_loss"))]
        cells += [_cell((entry.get("metrics") or {}).get(c)) for c in columns]
        cells += [_cell((entry.get("icl_metrics") or {}).get(c)) for c in icl_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def run_use_case(model_source, data: str, *, use_case: str, budget, methods, out_dir,
                 targets: str | None = None, existing: str | None = None, config: RunConfig | None = None,
                 data_options: dict | None = None, model=None, tokenizer=None,
                 echo: Callable[[str], None] | None = None, progress: bool = False, **settings) -> dict:
    """Run ``methods`` on one use case; returns the results dict also written to ``out_dir/results.json``.

    model_source: HF directory, .gguf or "smollm2" (ignored when ``model`` and ``tokenizer`` are given).
    data: the pool (built-in name or data file). targets: the target (benchmark) set, required for ``task``.
    existing: the data the model already has, required for ``continual``. config: a ``RunConfig`` (defaults
    documented there); ``settings`` override its fields. data_options: ``load_dataset`` keywords (fields, dedupe,
    drop_empty) for the pool (the target and existing sets are read with format detection and the same dedupe /
    drop_empty). echo: progress lines (default: none).
    """
    echo = echo or (lambda line: None)
    config = dataclasses.replace(config or RunConfig(), use_case=use_case, budget=budget, methods=methods,
                                 **settings)
    seed = config.seed
    out = Path(out_dir).expanduser()
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.warning(message)
        echo(f"warning: {message}")

    # ---- inputs and the bad-input checks, before anything expensive
    if use_case == "task" and not targets:
        raise DataError("use case 'task' needs a target (benchmark) set: pass --target DATASET_OR_FILE")
    if use_case == "continual" and not existing:
        raise DataError("use case 'continual' needs the existing data: pass --existing DATASET_OR_FILE")
    if targets and use_case != "task":
        warn(f"--target is used by the task use case only; ignored for {use_case}")
        targets = None
    if existing and use_case != "continual":
        warn(f"--existing is used by the continual use case only; ignored for {use_case}")
        existing = None
    other_options = {k: v for k, v in (data_options or {}).items() if k != "fields"}
    pool = load_source(data, config.limit, "data", data_options)
    target = load_source(targets, config.target_limit, "target set", other_options) if targets else None
    prior = load_source(existing, config.existing_limit, "existing data", other_options) if existing else None

    # ---- splits: the held-out test split never enters selection
    splits: dict = {"seed": seed, "fractions": list(config.split)}
    queries: list[int] | None = None
    existing_idx: list[int] | None = None
    if use_case == "task":
        t_train, t_val, t_test = _split(target, config.split, seed, "target set")
        queries = sorted(t_train + t_val)
        if not queries:
            raise DataError(f"target set {target.name!r}: no examples left for selection after holding out the test "
                            f"split ({len(t_test)} of {len(target.examples)}); raise the train/validation fractions")
        test_source, test_idx = target, t_test
        candidates = list(range(len(pool.examples)))
        splits["target"] = {"n": len(target.examples), "train": t_train, "validation": t_val, "test": t_test}
    else:
        p_train, p_val, p_test = _split(pool, config.split, seed, "data")
        test_source, test_idx = pool, p_test
        candidates = p_train
        splits["pool"] = {"n": len(pool.examples), "train": p_train, "validation": p_val, "test": p_test}
    test = [test_source.examples[i] for i in test_idx]
    candidates, dropped = _drop_shared(candidates, pool, test, "pool")
    if queries is not None:
        queries, dropped_q = _drop_shared(queries, target, test, "target set")
        if not queries:
            raise DataError(f"target set {target.name!r}: every selection query duplicates a held-out test example")
    if prior is not None:
        existing_idx, dropped_e = _drop_shared(list(range(len(prior.examples))), prior, test, "existing data")
        if not existing_idx:
            raise DataError(f"existing data {prior.name!r}: every example duplicates a held-out test example")
        splits["existing"] = {"n": len(prior.examples), "used": existing_idx}
    if not candidates:
        raise DataError(f"data {pool.name!r}: the selection pool is empty after holding out the test split")
    pool_examples = [pool.examples[i] for i in candidates]
    query_examples = [target.examples[i] for i in queries] if queries is not None else None
    existing_examples = [prior.examples[i] for i in existing_idx] if existing_idx is not None else None
    check_disjoint(pool_examples, test, what="held-out test", key=prompt_key)
    if query_examples is not None:
        check_disjoint(query_examples, test, what="held-out test", key=prompt_key)
    if existing_examples is not None:
        check_disjoint(existing_examples, test, what="held-out test", key=prompt_key)
    k = resolve_k(config.budget, len(pool_examples))
    splits.update(selection_pool=candidates, selection_queries=queries,
                  evaluation={"source": "target" if use_case == "task" else "pool", "indices": test_idx})

    from delift_jax.evaluate.report import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "splits.json", splits)
    echo(f"{use_case}: selection pool {len(pool_examples)} examples, budget {config.budget} -> {k} picks; "
         f"held-out test {len(test)} ({'target' if use_case == 'task' else 'pool'})"
         + (f"; {len(query_examples)} target queries" if query_examples is not None else "")
         + (f"; {len(existing_examples)} existing examples" if existing_examples is not None else ""))

    # ---- model and shared helpers
    if model is None or tokenizer is None:
        from delift_jax.models import load_model

        echo(f"loading model {model_source}")
        model, tokenizer, _ = load_model(model_source)
    needs_encoder = ("embedding" in config.metrics or config.icl_k > 0
                     or any(m in ("delift_se", "deft_ucs") for m in config.methods))
    encoder = None
    if needs_encoder:
        from delift_jax.evaluate.bert import load_sentence_encoder

        encoder = load_sentence_encoder()
    train_config = dataclasses.replace(config.train, seed=seed)
    generation = dataclasses.replace(config.generation, seed=seed)

    results = {"use_case": use_case, "config": config.to_dict(),
               "inputs": {"model": str(model_source), "data": pool.name, "data_format": pool.format,
                          "n_data": len(pool.examples), "target": target.name if target else None,
                          "n_target": len(target.examples) if target else None,
                          "existing": prior.name if prior else None,
                          "n_existing": len(prior.examples) if prior else None},
               "splits": {"selection_pool": len(pool_examples), "budget_k": k,
                          "selection_queries": len(query_examples) if query_examples is not None else None,
                          "existing": len(existing_examples) if existing_examples is not None else None,
                          "evaluation_source": "target" if use_case == "task" else "pool", "test": len(test),
                          "dropped_as_test_duplicates": dropped},
               "warnings": warnings, "existing_training": None, "methods": {}}

    from delift_jax.evaluate.pipeline import EvalSetup, evaluate_model
    from delift_jax.methods import select
    from delift_jax.scoring import ScoringConfig
    from delift_jax.train import export_hf, finetune, merged_copy

    if use_case == "continual" and config.continual_start == "existing":
        # The model must already have the existing data (FLCG's premise): it learns it once, and every method then
        # selects with, continues from, and is compared against that model ("initial" is that model as it is).
        echo(f"continual: fine-tuning on the {len(existing_examples)} existing examples first")
        t0 = time.perf_counter()
        learned = finetune(model, tokenizer, existing_examples, train_config,
                           out_dir=out / "existing_model" / "train" if config.checkpoints else None, progress=progress)
        model = merged_copy(learned.model)
        results["existing_training"] = dict(learned.summary(), seconds=round(time.perf_counter() - t0, 3))

    candidates_arr = np.asarray(candidates, dtype=np.int64)
    for step, name in enumerate(config.methods, 1):
        method_dir = out / name
        method_dir.mkdir(parents=True, exist_ok=True)
        echo(f"[{step}/{len(config.methods)}] {name}: selecting")
        t0 = time.perf_counter()
        selection = select(name, pool=pool_examples, budget=k, use_case=use_case, targets=query_examples,
                           existing=existing_examples, model=model, tokenizer=tokenizer, seed=seed,
                           **_method_options(name, config, method_dir, encoder, progress))
        select_seconds = time.perf_counter() - t0
        indices = candidates_arr[selection.indices] if len(selection.indices) else np.zeros(0, np.int64)
        atomic_save_npy(method_dir / "indices.npy", indices.astype(np.int64))
        write_jsonl(method_dir / "subset.jsonl", pool.export_records(indices.tolist()))
        write_json(method_dir / "selection.json",
                   {"method": name, "info": selection.info, "indices": indices,
                    "rows": [pool.rows[i] for i in indices] if pool.rows is not None else None,
                    "scores": selection.scores, "seconds": round(select_seconds, 3)})
        subset = [pool.examples[i] for i in indices]

        train_summary = None
        eval_model = model
        t1 = time.perf_counter()
        if selection.info.get("fine_tune", True) and subset:
            echo(f"[{step}/{len(config.methods)}] {name}: fine-tuning on {len(subset)} examples")
            trained = finetune(model, tokenizer, subset, train_config,
                               out_dir=method_dir / "train" if config.checkpoints else None, progress=progress)
            train_summary = trained.summary()
            eval_model = merged_copy(trained.model)
            if config.export_models:
                export_hf(eval_model, tokenizer, method_dir / "model")
        train_seconds = time.perf_counter() - t1

        echo(f"[{step}/{len(config.methods)}] {name}: evaluating on {len(test)} held-out examples")
        t2 = time.perf_counter()
        setup = EvalSetup(generation=generation, metrics=config.metrics, encoder=encoder,
                          scoring=ScoringConfig(max_length=config.nll_max_length), progress=progress)
        evaluation = evaluate_model(eval_model, tokenizer, test, setup)
        write_json(method_dir / "evaluation.json", evaluation)
        icl_metrics = None
        if config.icl_k and subset:
            echo(f"[{step}/{len(config.methods)}] {name}: base model with {min(config.icl_k, len(subset))} "
                 "subset demonstrations per test prompt (ICL)")
            icl_setup = dataclasses.replace(setup, pool=subset, k=min(config.icl_k, len(subset)), no_icl=False)
            icl_evaluation = evaluate_model(model, tokenizer, test, icl_setup)
            write_json(method_dir / "evaluation_icl.json", icl_evaluation)
            icl_metrics = icl_evaluation["conditions"]["icl"]
        results["methods"][name] = {
            "selected": int(len(indices)), "fine_tuned": train_summary is not None, "selection": selection.info,
            "train": train_summary, "metrics": evaluation["conditions"]["no_icl"], "icl_metrics": icl_metrics,
            "directory": name, "model": str(method_dir / "model") if config.export_models and train_summary else None,
            "seconds": {"select": round(select_seconds, 3), "train": round(train_seconds, 3),
                        "evaluate": round(time.perf_counter() - t2, 3)}}
        write_json(out / "results.json", results)  # partial results survive a crash of a later method
        atomic_write_text(out / "results.md", markdown_results(results))
    echo(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results
