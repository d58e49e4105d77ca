"""Readers: JSON, JSONL, CSV, Parquet and `save_to_disk` directories written by the test; one-line errors."""

import json

import pytest

from delift_jax.data import Example, load_examples, read_table
from delift_jax.data.sources import read_records
from delift_jax.errors import DataError

RECORDS = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
           {"instruction": "Name a colour.", "input": "warm", "output": "Red"},
           {"instruction": "Say hi, then \"bye\".", "input": "line1\nline2", "output": "hi, bye"}]
EXPECTED = [Example("Instruction: Add 2 and 3.\nInput: \n", " 5"),
            Example("Instruction: Name a colour.\nInput: warm\n", " Red"),
            Example("Instruction: Say hi, then \"bye\".\nInput: line1\nline2\n", " hi, bye")]


def write_json(path, records=RECORDS):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path, records=RECORDS):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path, records=RECORDS):
    import csv
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path, records=RECORDS):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_saved_dataset(directory, records=RECORDS, shards=2):
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow IPC stream shards, state.json, dataset_info.json."""
    pa = pytest.importorskip("pyarrow")
    directory.mkdir()
    table = pa.Table.from_pylist(records)
    step = -(-len(records) // shards)
    names = []
    for s in range(shards):
        name = f"data-{s:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(directory / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(s * step, step))
        names.append(name)
    (directory / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None}))
    (directory / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {
        k: {"dtype": "string", "_type": "Value"} for k in records[0]}, "homepage": "", "license": ""}))
    return directory


WRITERS = {"data.json": write_json, "data.jsonl": write_jsonl, "data.csv": write_csv, "data.parquet": write_parquet,
           "saved": write_saved_dataset}


@pytest.mark.parametrize("name", list(WRITERS))
def test_each_reader_round_trips(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    assert read_table(path) == RECORDS
    assert load_examples(str(path)) == EXPECTED
    assert load_examples(str(path), limit=2) == EXPECTED[:2]


def test_json_wrappers_and_json_lines_saved_as_json(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 1, "data": RECORDS}))
    assert read_table(wrapped) == RECORDS
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"meta": {"n": 3}, "items": RECORDS}))
    assert read_table(single) == RECORDS
    lines = write_jsonl(tmp_path / "lines.json")
    assert read_table(lines) == RECORDS
    assert read_records(lines) == RECORDS          # the old entry point reads every format now


def test_bom_blank_lines_and_tsv(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n\n".join(json.dumps(r).encode() for r in RECORDS) + b"\n\n")
    assert read_table(path) == RECORDS
    tsv = tmp_path / "d.tsv"
    tsv.write_text("prompt\tresponse\nq1\ta1\n\nq2\ta2\n")
    assert read_table(tsv) == [{"prompt": "q1", "response": "a1"}, {"prompt": "q2", "response": "a2"}]


def test_csv_values_are_strings_and_empty_cells_are_empty(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,response,n\n"a, b",,3\n')
    assert read_table(path) == [{"prompt": "a, b", "response": "", "n": "3"}]


def test_nested_columns_survive_parquet_and_arrow(tmp_path):
    records = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
               {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    parquet = write_parquet(tmp_path / "chat.parquet", records)
    saved = write_saved_dataset(tmp_path / "chat", records, shards=1)
    for path in (parquet, saved):
        assert load_examples(str(path)) == [Example("Hi", "Hello!"), Example("2+2?", "4")]


def one_line_error(path_or_source, match, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        load_examples(str(path_or_source), **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_empty_files(tmp_path):
    for name in ("e.json", "e.jsonl", "e.csv", "e.parquet"):
        (tmp_path / name).write_text("  \n" if name != "e.parquet" else "")
        message = one_line_error(tmp_path / name, "is empty")
        assert name in message
    (tmp_path / "list.json").write_text("[]")
    one_line_error(tmp_path / "list.json", "holds no records")
    (tmp_path / "header.csv").write_text("prompt,response\n")
    one_line_error(tmp_path / "header.csv", "holds no records")


def test_non_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(RECORDS[0]).encode() + b"\n" + '{"prompt": "caf\u00e9", "response": "x"}'
                     .encode("latin-1") + b"\n")
    message = one_line_error(path, "not UTF-8")
    assert "line 2" in message and "re-encode" in message
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes("prompt,response\ncaf\u00e9,x\n".encode("cp1252"))
    one_line_error(csv_path, "latin1.csv is not UTF-8")


def test_malformed_content(tmp_path):
    cases = {"bad.jsonl": ('{"prompt": "a", "response": "b"}\n{"prompt": \n', "line 2 is not valid JSON"),
             "bad.json": ('[{"prompt": "a",]', "is not valid JSON"),
             "scalar.json": ("42", "holds a JSON int"),
             "obj.json": ('{"a": 1, "b": [1, 2]}', "expected a list of records"),
             "ragged.csv": ("prompt,response\na,b,c\n", "row 1 has 3 cells but the header has 2"),
             "dupcol.csv": ("prompt,prompt\na,b\n", "repeated column name"),
             "broken.parquet": ("not parquet at all", "not a readable Parquet file"),
             "data.txt": ("prompt: hi", "unknown suffix '.txt'")}
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        one_line_error(tmp_path / name, match)
    one_line_error(tmp_path / "missing.jsonl", "neither a file nor a built-in dataset")


def test_bad_saved_dataset_directories(tmp_path):
    empty_dir = tmp_path / "plain"
    empty_dir.mkdir()
    one_line_error(empty_dir, "without state.json")
    saved = write_saved_dataset(tmp_path / "saved")
    (saved / "data-00001-of-00002.arrow").unlink()
    one_line_error(saved, "lacks the data files")
    corrupt = write_saved_dataset(tmp_path / "corrupt", shards=1)
    (corrupt / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    one_line_error(corrupt, "not a readable Arrow file")
    dd = tmp_path / "dd"
    dd.mkdir()
    write_saved_dataset(dd / "train")
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    message = one_line_error(dd, "DatasetDict with splits")
    assert str(dd / "train") in message
    assert load_examples(str(dd / "train")) == EXPECTED
