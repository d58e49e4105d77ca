"""Readers: records (dicts) from JSON, JSONL, CSV, Parquet files and Hugging Face ``save_to_disk`` directories.

``read_table(path)`` picks the reader from the suffix (a directory is a ``save_to_disk`` dataset). Every reader
raises a one-line ``DataError`` naming the file for an empty file, non-UTF-8 text or malformed content.

- ``.json``: a list of objects; or an object holding one list of objects (``{"data": [...]}``, ``{"train": [...]}``);
  a ``.json`` file that is really JSON Lines (pandas ``to_json(lines=True)``) is read as JSONL.
- ``.jsonl`` / ``.ndjson``: one object per non-blank line.
- ``.csv`` / ``.tsv``: a header row, then one record per row (all values are strings; an empty cell is ``""``).
- ``.parquet``: read with pyarrow (``pip install pyarrow`` when missing).
- a directory written by ``datasets.Dataset.save_to_disk``: ``state.json`` lists the ``data-*.arrow`` files (Arrow
  IPC streams), read with pyarrow; the ``datasets`` package is not needed. A ``DatasetDict`` directory
  (``dataset_dict.json``) must be given with its split: ``DIR/train``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from delift_jax.errors import DataError, MissingPackageError

SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")
_LIST_KEYS = ("data", "examples", "records", "rows", "instances", "train")
PYARROW_INSTALL = "pip install pyarrow"


class FormatError(DataError):
    """A data file cannot be read (empty, not UTF-8, malformed, unknown suffix)."""


def read_text(path: Path) -> str:
    """The file's text (UTF-8, a BOM is dropped); ``FormatError`` for non-UTF-8 or empty files."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FormatError(f"{path} is not UTF-8 text (byte {exc.start}, line {line}: "
                          f"{data[exc.start:exc.start + 1]!r}); re-encode it as UTF-8") from None
    if not text.strip():
        raise FormatError(f"{path} is empty")
    return text


def _jsonl(text: str, path: Path) -> list:
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path} line {line_no} is not valid JSON ({exc.msg} at column {exc.colno})") \
                    from None
    return records


def read_json(path: Path) -> list:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":               # JSON Lines saved as .json
            return _jsonl(text, path)
        raise FormatError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") \
            from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in _LIST_KEYS:
            if isinstance(data.get(key), list):
                return data[key]
        lists = [k for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1:
            return data[lists[0]]
        raise FormatError(f"{path} holds a JSON object with keys {sorted(data)[:10]}; expected a list of records "
                          f"or an object with one list of records (e.g. under 'data')")
    raise FormatError(f"{path} holds a JSON {type(data).__name__}; expected a list of records")


def read_jsonl(path: Path) -> list:
    return _jsonl(read_text(path), path)


def read_csv(path: Path) -> list[dict]:
    text = read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise FormatError(f"{path} line {reader.line_num} is not valid CSV ({exc})") from None
    header, body = rows[0], [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise FormatError(f"{path} has a blank or repeated column name in its header {header}")
    records = []
    for i, row in enumerate(body, 1):
        if len(row) != len(header):
            raise FormatError(f"{path} row {i} has {len(row)} cells but the header has {len(header)} columns "
                              f"{header}")
        records.append(dict(zip(header, row)))
    return records


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingPackageError(f"reading Parquet and Arrow data needs pyarrow: {PYARROW_INSTALL}") from None
    return pyarrow


def read_parquet(path: Path) -> list[dict]:
    pa = _pyarrow()
    if path.stat().st_size == 0:
        raise FormatError(f"{path} is empty")
    try:
        table = pa.parquet.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return table.to_pylist()


def _arrow_file(pa, path: Path):
    try:
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(f"{path} is not a readable Arrow file ({str(exc).splitlines()[0]})") from None


def read_saved_dataset(directory: Path) -> list[dict]:
    """Records of a ``datasets`` ``save_to_disk`` directory, read with pyarrow only."""
    if (directory / "dataset_dict.json").is_file():
        try:
            splits = json.loads(read_text(directory / "dataset_dict.json")).get("splits", [])
        except (json.JSONDecodeError, AttributeError):
            splits = []
        raise FormatError(f"{directory} is a DatasetDict with splits {splits}; give one split's directory, "
                          f"e.g. {directory / (splits[0] if splits else 'train')}")
    state_path = directory / "state.json"
    if not state_path.is_file():
        raise FormatError(f"{directory} is a directory without state.json; expected a datasets save_to_disk "
                          "directory (state.json + data-*.arrow) or a data file")
    try:
        state = json.loads(read_text(state_path))
        files = [entry["filename"] for entry in state["_data_files"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise FormatError(f"{state_path} is not a datasets state.json (no _data_files list)") from None
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise FormatError(f"{directory} lacks the data files {missing} listed in state.json")
    if not files:
        raise FormatError(f"{directory} holds no data files")
    pa = _pyarrow()
    records = []
    for name in files:
        records.extend(_arrow_file(pa, directory / name).to_pylist())
    return records


_READERS = {".json": read_json, ".jsonl": read_jsonl, ".ndjson": read_jsonl, ".csv": read_csv, ".tsv": read_csv,
            ".parquet": read_parquet}


def read_table(path: Path | str) -> list:
    """Records of a data file or a ``save_to_disk`` directory; the reader follows the suffix."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_saved_dataset(path)
    if not path.is_file():
        raise FormatError(f"{path} does not exist")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise FormatError(f"{path} has an unknown suffix {path.suffix!r}; expected one of {', '.join(SUFFIXES)} or "
                          "a datasets save_to_disk directory")
    return reader(path)
