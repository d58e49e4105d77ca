"""Read examples from a built-in dataset name or a user's data file / ``save_to_disk`` directory.

``load_examples(source)`` is what the commands call; ``load_dataset`` also returns the ``DataReport``.
Findings (empty responses, duplicates) are logged as warnings on the ``delift_jax.data`` logger, so they reach
stderr even when logging is not configured.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

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
    examples: list[Example]
    report: DataReport


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


def load_dataset(source: str, limit: int | None = None, *, fields: FieldMap | str | None = None,
                 dedupe: bool = False, drop_empty: bool = False) -> LoadedData:
    """Examples and the validation report of a built-in dataset name or a data file/directory.

    ``fields``: a ``FieldMap``, a format name (one of ``FORMATS``) or ``None`` to detect the format from the first
    record. ``dedupe`` removes exact duplicates (first kept); ``drop_empty`` drops empty responses. ``limit`` keeps
    the first ``limit`` examples after that.
    """
    if source in BUILTIN_DATASETS:
        if fields is not None:
            raise DataError(f"{source} is a built-in dataset; field mapping applies to data files only")
        examples = load_builtin(source)
        kept, report = validate_examples(examples, source=f"built-in dataset {source}",
                                          format=BUILTIN_DATASETS[source].kind, dedupe=dedupe, drop_empty=drop_empty)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data {source!r} is neither a file nor a built-in dataset ({builtin_names()})")
        records = read_table(path)
        examples, fmt = map_records(records, fields, source=str(path))
        kept, report = validate_examples(examples, source=str(path), format=fmt, dedupe=dedupe,
                                         drop_empty=drop_empty)
    report.log()
    if limit is not None:
        kept = kept[:limit]
    if not kept:
        raise DataError(f"{source} has no examples left after dropping empty responses and duplicates")
    return LoadedData(kept, report)


def load_examples(source: str, limit: int | None = None, *, fields: FieldMap | str | None = None,
                  dedupe: bool = False, drop_empty: bool = False) -> list[Example]:
    """Examples from a built-in dataset name or a data file path (see ``load_dataset``)."""
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
    group.add_argument("--dedupe", action="store_true", help="remove exact duplicate examples (first copy kept)")
    group.add_argument("--drop-empty", action="store_true", help="drop examples whose response is empty")


def data_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for ``load_examples`` from ``add_data_arguments`` options."""
    fields = field_map(getattr(args, "prompt_field", None), getattr(args, "response_field", None),
                       getattr(args, "input_field", None), getattr(args, "options_field", None),
                       getattr(args, "context_field", None))
    if fields is not None and getattr(args, "record_format", None):
        raise DataError("give either --format or --prompt-field/--response-field, not both")
    return {"fields": fields or getattr(args, "record_format", None), "dedupe": bool(getattr(args, "dedupe", False)),
            "drop_empty": bool(getattr(args, "drop_empty", False))}
