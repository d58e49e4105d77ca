"""The run's results as plain data: the ``results.json`` record and its markdown table (pure; ``RunWriter`` saves
them)."""

from __future__ import annotations

import math

from delift_jax.data.fields import FieldMap
from delift_jax.pipeline.config import RunConfig
from delift_jax.pipeline.inputs import Source
from delift_jax.pipeline.method import MethodResult
from delift_jax.pipeline.splits import Splits

METRIC_COLUMNS = ("rouge1", "rougeL", "embedding_cosine", "token_nll", "perplexity", "accuracy", "contains",
                  "judge_score")


def data_options_record(data_options: dict | None) -> dict:
    """``load_dataset`` keywords as the ``[inputs]`` keys of a run file (so a results.json can be run again)."""
    options = dict(data_options or {})
    fields = options.get("fields")
    record = {"dedupe": bool(options.get("dedupe", False)), "drop_empty": bool(options.get("drop_empty", False))}
    if isinstance(fields, FieldMap):
        record.update({f"{name}_field": getattr(fields, name) for name in ("prompt", "response", "input", "options",
                                                                              "context")
                       if getattr(fields, name) is not None})
    elif fields is not None:
        record["format"] = fields
    return record


def run_record(model_source, config: RunConfig, sources: dict[str, Source | None], splits: Splits,
               data_options: dict | None, warnings: list[str]) -> dict:
    """The results record before any method ran: config, inputs, split sizes, warnings."""
    pool, target, prior = sources["data"], sources["target"], sources["existing"]
    inputs = {"model": str(model_source), "data": pool.name, "data_format": pool.format, "n_data": len(pool.examples),
              "target": target.name if target else None, "n_target": len(target.examples) if target else None,
              "existing": prior.name if prior else None, "n_existing": len(prior.examples) if prior else None,
              "data_options": data_options_record(data_options)}
    return {"use_case": config.use_case, "config": config.to_dict(), "inputs": inputs, "splits": splits.summary(),
            "warnings": warnings, "existing_training": None, "methods": {}}


def non_finite_metrics(metrics: dict | None) -> list[str]:
    """Names of the metrics that are NaN or infinite (a failure of the model's numerics, never a score)."""
    return sorted(k for k, v in (metrics or {}).items()
                  if isinstance(v, float) and not isinstance(v, bool) and not math.isfinite(v))


def method_record(result: MethodResult, model_dir: str | None) -> dict:
    """One method's entry of ``results.json``; ``status`` is "ok", or names the metrics that came out non-finite."""
    metrics = result.evaluation["conditions"]["no_icl"]
    icl_metrics = result.icl_evaluation["conditions"]["icl"] if result.icl_evaluation else None
    bad = non_finite_metrics(metrics) + [f"ICL {k}" for k in non_finite_metrics(icl_metrics)]
    status = f"failed: non-finite {', '.join(bad)}" if bad else "ok"
    return {"status": status, "selected": int(len(result.indices)), "fine_tuned": result.train_summary is not None,
            "selection": result.selection.info, "train": result.train_summary, "metrics": metrics,
            "icl_metrics": icl_metrics, "directory": result.name, "model": model_dir, "seconds": result.seconds}


def failed_methods(results: dict) -> dict[str, str]:
    """{method: status} of the methods whose results are not usable."""
    return {name: entry["status"] for name, entry in results["methods"].items() if entry.get("status", "ok") != "ok"}


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
    if isinstance(value, float) and not math.isfinite(value):
        return "non-finite"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
