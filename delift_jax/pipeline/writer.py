"""``RunWriter``: the one place that writes a run's output directory (every file atomically).

Layout (``out_dir``)::

    results.json        config, inputs, split sizes, and per method: selection facts, training summary, metrics
                        (rewritten after every method, so partial results survive a crash of a later one); its
                        ``config`` and ``inputs`` are a run file: ``delift run --config results.json`` repeats it
    results.md          markdown table, one row per method
    splits.json         every split as 0-based indices into the loaded inputs (pool / target / existing), the
                        selection pool, the selection queries and the held-out evaluation set
    <method>/indices.npy     int64 indices of the selected examples into the ORIGINAL (loaded) pool, in pick order
                             (the loaded pool is the input after --dedupe/--drop-empty/--limit; with none of those,
                             an index is the record's 0-based row in the input)
    <method>/subset.jsonl    the selected examples in pick order, in the input's own schema: the raw records of a
                             data file or of in-memory records (every field kept), prompt/response records for a
                             built-in dataset
    <method>/selection.json  the method's info, the indices, the input rows, per-pick scores, seconds
    <method>/evaluation.json the evaluation summary and per-example generations
    <method>/evaluation_icl.json  the base model with the subset as demonstrations (RunConfig.icl_k > 0)
    <method>/model/          the fine-tuned model as a Hugging Face directory (RunConfig.export_models)
    <method>/kernels/        DELIFT's crash-safe kernel stores (pool / targets / existing), written by the kernel
    <method>/train/          fine-tuning checkpoints (RunConfig.checkpoints), written by the training loop
    existing_model/train/    continual: checkpoints of the first fine-tuning on the existing data
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from delift_jax.atomic_io import atomic_save_npy, atomic_write_text
from delift_jax.evaluate.report import to_jsonable, write_json
from delift_jax.pipeline.inputs import Source
from delift_jax.pipeline.method import MethodResult, Workspace
from delift_jax.pipeline.results import markdown_results, method_record
from delift_jax.pipeline.splits import Splits
from delift_jax.train import export_hf


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    lines = [json.dumps(to_jsonable(dict(r)), ensure_ascii=False, allow_nan=False) + "\n" for r in records]
    return atomic_write_text(path, "".join(lines))


class RunWriter:
    """Writes everything under ``out_dir`` (see the module docstring); the stages only return records."""

    def __init__(self, out_dir):
        self.out = Path(out_dir).expanduser()

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    def write_splits(self, splits: Splits) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "splits.json", splits.record)

    def workspace(self, name: str, checkpoints: bool) -> Workspace:
        """The method's directory, with its kernel store and (if kept) its checkpoints inside."""
        directory = self.out / name
        directory.mkdir(parents=True, exist_ok=True)
        return Workspace(kernel_dir=directory / "kernels", train_dir=directory / "train" if checkpoints else None)

    def existing_train_dir(self, checkpoints: bool) -> Path | None:
        return self.out / "existing_model" / "train" if checkpoints else None

    def write_method(self, result: MethodResult, pool: Source, tokenizer, export_model: bool) -> dict:
        """Save one method's artifacts; returns its ``results.json`` entry."""
        directory = self.out / result.name
        indices = result.indices
        atomic_save_npy(directory / "indices.npy", indices)
        write_jsonl(directory / "subset.jsonl", pool.export_records(indices.tolist()))
        write_json(directory / "selection.json",
                   {"method": result.name, "info": result.selection.info, "indices": indices,
                    "rows": [pool.rows[i] for i in indices] if pool.rows is not None else None,
                    "scores": result.selection.scores, "seconds": result.seconds["select"]})
        write_json(directory / "evaluation.json", result.evaluation)
        if result.icl_evaluation is not None:
            write_json(directory / "evaluation_icl.json", result.icl_evaluation)
        model_dir = None
        if export_model and result.model is not None:
            export_hf(result.model, tokenizer, directory / "model")
            model_dir = str(directory / "model")
        return method_record(result, model_dir)

    def write_results(self, results: dict) -> None:
        write_json(self.results_path, results)
        atomic_write_text(self.out / "results.md", markdown_results(results))
