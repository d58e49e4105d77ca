"""Read examples from a built-in dataset name, a user's data file / ``save_to_disk`` directory, or records in memory.

A source is a built-in name, a path, any iterable of mappings (``[{"prompt": ..., "response": ...}, ...]``, a
generator, a pandas ``DataFrame.to_dict("records")``), a Hugging Face ``datasets.Dataset`` (used through iteration
only, so ``datasets`` is no dependency), or ``Example`` objects. ``load_examples(source)`` is what the commands
call; ``load_dataset`` also returns the ``DataReport`` and the records behind the kept examples.
Findings (empty responses, duplicates) are logged as warnings on the ``delift_jax.data`` logger, so they reach
stderr even when logging is not configured.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Iterable, Mapping

from delift_jax.data.builtin import BUILTIN_DATASETS, builtin_names, load_builtin
from delift_jax.data.fields import FORMATS, FieldMap, map_records
from delift_jax.data.formats import read_table
from delift_jax.data.records import Example
from delift_jax.data.validate import DataReport, validate_examples
from delift_jax.errors import DataError


def read_records(path: Path) -> list[dict]:
    """Records of a data file (``.json``, ``.jsonl``, ``.csv``, ``.parquet``, ...) or ``save_to_disk`` directory."""
    return read_table(path)


@dataclasses.dataclass(frozen=True)
class LoadedData:
    """examples: those kept; report: what loading found; records: the raw record behind each kept example (None
    for a built-in dataset or ``Example`` objects); rows: the 0-based position of each kept example in the input."""

    examples: list[Example]
    report: DataReport
    records: list | None = None
    rows: list[int] | None = None


def field_map(prompt_field: str | None = None, response_field: str | None = None, input_field: str | None = None,
              options_field: str | None = None, context_field: str | None = None) -> FieldMap | None:
    """A ``FieldMap`` from CLI-style options, or ``None`` (detect the format) when none is given."""
    extras = (input_field, options_field, context_field)
    if prompt_field is None and response_field is None:
        if any(f is not None for f in extras):
            raise DataError("--input-field/--options-field/--context-field need --prompt-field and --response-field")
        return None
    if prompt_field is None or response_field is None:
        raise DataError("give both --prompt-field and --response-field (or neither, to detect the format)")
    return FieldMap(prompt_field, response_field, input_field, options_field, context_field)


def is_in_memory(source) -> bool:
    """True for records held in memory (anything iterable but a path or a name)."""
    return not isinstance(source, (str, bytes, os.PathLike)) and isinstance(source, Iterable)


def source_name(source) -> str:
    """How errors and reports name ``source``: the name or path, or a description of in-memory records."""
    if not is_in_memory(source):
        return str(source)
    size = f" of {len(source)} records" if hasattr(source, "__len__") else ""
    return f"<{type(source).__name__}{size}>"


def in_memory_records(source: Iterable) -> list:
    """The records of an in-memory source; a ``datasets.DatasetDict`` (a mapping of splits) is refused with the fix."""
    if isinstance(source, Mapping):
        splits = ", ".join(map(str, source)) or "none"
        raise DataError(f"data is a mapping ({splits}), not a list of records; pass one split's records, e.g. "
                        "dataset['train']")
    return list(source)


def load_dataset(source, limit: int | None = None, *, fields: FieldMap | str | None = None,
                 dedupe: bool = False, drop_empty: bool = False) -> LoadedData:
    """Examples, the validation report and the kept records of a built-in dataset name, a data file/directory or
    in-memory records (see the module docstring).

    ``fields``: a ``FieldMap``, a format name (one of ``FORMATS``) or ``None`` to detect the format from the first
    record. ``dedupe`` removes exact duplicates (first kept); ``drop_empty`` drops empty responses. ``limit`` keeps
    the first ``limit`` examples after that.
    """
    name = source_name(source)
    if is_in_memory(source):
        records = in_memory_records(source)
        if records and all(isinstance(r, Example) for r in records):
            loaded = _validated(records, None, name, "examples", limit, dedupe, drop_empty)
        else:
            examples, fmt = map_records(records, fields, source=name)
            loaded = _validated(examples, records, name, fmt, limit, dedupe, drop_empty)
    elif source in BUILTIN_DATASETS:
        if fields is not None:
            raise DataError(f"{source} is a built-in dataset; field mapping applies to data files only")
        loaded = _validated(load_builtin(source), None, f"built-in dataset {source}", BUILTIN_DATASETS[source].kind,
                            limit, dedupe, drop_empty)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data {source!r} is neither a file nor a built-in dataset ({builtin_names()})")
        records = read_table(path)
        examples, fmt = map_records(records, fields, source=str(path))
        loaded = _validated(examples, records, str(path), fmt, limit, dedupe, drop_empty)
    if not loaded.examples:
        raise DataError(f"{name} has no examples left after dropping empty responses and duplicates")
    return loaded


def _validated(examples: list[Example], records: list | None, name: str, fmt: str, limit: int | None,
               dedupe: bool, drop_empty: bool) -> LoadedData:
    """Validate (dedupe / drop empty), apply ``limit``, and keep the record and row behind each kept example."""
    kept, report = validate_examples(examples, source=name, format=fmt, dedupe=dedupe, drop_empty=drop_empty)
    report.log()
    if limit is not None:
        kept = kept[:limit]
    rows = kept_rows(report)[:len(kept)]
    return LoadedData(kept, report, [records[r] for r in rows] if records is not None else None, rows)


def kept_rows(report: DataReport) -> list[int]:
    """0-based input positions of the examples validation kept, in order."""
    drop = set(report.empty_rows) if report.dropped_empty else set()
    if report.deduplicated:
        drop.update(r for group in report.duplicate_groups for r in group[1:])
    return [r - 1 for r in range(1, report.n_records + 1) if r not in drop]


def load_examples(source, limit: int | None = None, *, fields: FieldMap | str | None = None,
                  dedupe: bool = False, drop_empty: bool = False) -> list[Example]:
    """Examples from a built-in dataset name, a data file path or in-memory records (see ``load_dataset``)."""
    return load_dataset(source, limit, fields=fields, dedupe=dedupe, drop_empty=drop_empty).examples


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data-loading options, for commands that read ``--data``: field mapping, format, dedupe, drop-empty."""
    group = parser.add_argument_group("data records")
    group.add_argument("--prompt-field", help="record field holding the prompt (with --response-field)")
    group.add_argument("--response-field", help="record field holding the response")
    group.add_argument("--input-field", help="optional field appended to the prompt as the Alpaca input")
    group.add_argument("--options-field", help="optional multiple-choice options field (list, dict or string)")
    group.add_argument("--context-field", help="optional context/passage field")
    group.add_argument("--format", dest="record_format", choices=FORMATS,
                       help="record format (default: detected from the first record)")
    # None when not given (False in effect), so that a run file's setting stands unless the flag is passed
    group.add_argument("--dedupe", action="store_true", default=None,
                       help="remove exact duplicate examples (first copy kept)")
    group.add_argument("--drop-empty", action="store_true", default=None, help="drop examples whose response is empty")


def record_options(*, prompt_field: str | None = None, response_field: str | None = None,
                   input_field: str | None = None, options_field: str | None = None, context_field: str | None = None,
                   format: str | None = None, dedupe: bool | None = False, drop_empty: bool | None = False) -> dict:
    """Keyword arguments for ``load_dataset`` from the record options (field mapping or a format, dedupe,
    drop-empty)."""
    fields = field_map(prompt_field, response_field, input_field, options_field, context_field)
    if fields is not None and format:
        raise DataError("give either --format or --prompt-field/--response-field, not both")
    return {"fields": fields or format, "dedupe": bool(dedupe), "drop_empty": bool(drop_empty)}


def data_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for ``load_examples`` from ``add_data_arguments`` options."""
    names = ("prompt_field", "response_field", "input_field", "options_field", "context_field", "dedupe",
             "drop_empty")
    return record_options(format=getattr(args, "record_format", None),
                          **{name: getattr(args, name, None) for name in names})


def data_options_summary(options: dict) -> dict:
    """``data_options(args)`` as JSON: the field map as a dict, a format name as given."""
    fields = options.get("fields")
    return {"fields": dataclasses.asdict(fields) if dataclasses.is_dataclass(fields) else fields,
            "dedupe": options.get("dedupe", False), "drop_empty": options.get("drop_empty", False)}
