"""The Python API takes records in memory: any iterable of mappings, a Hugging Face ``datasets.Dataset`` (used
through iteration only; a stand-in with the same surface here, as ``datasets`` is no dependency) and Example
objects, with the same detection, validation and errors as a data file."""

import pytest

from delift_jax.data import Example, FieldMap, load_dataset, load_examples
from delift_jax.errors import DataError
from delift_jax.pipeline.inputs import load_source

RECORDS = [{"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": "a"},
           {"instruction": "Name a colour.", "input": "", "output": "Blue", "id": "b"},
           {"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": "c"}]


class FakeDataset:
    """What this package uses of ``datasets.Dataset``: iteration over rows as dicts, ``len``, ``column_names``."""

    def __init__(self, rows):
        self._rows = rows
        self.column_names = list(rows[0])

    def __len__(self):
        return len(self._rows)

    def __iter__(self):
        return (dict(r) for r in self._rows)


@pytest.mark.parametrize("source", [RECORDS, tuple(RECORDS), (r for r in RECORDS), FakeDataset(RECORDS)],
                         ids=["list", "tuple", "generator", "dataset"])
def test_records_in_memory_load_like_a_file(source):
    loaded = load_dataset(source, dedupe=True)
    assert loaded.examples == [Example("Instruction: Add 2 and 3.\nInput: \n", " 5"),
                               Example("Instruction: Name a colour.\nInput: \n", " Blue")]
    assert loaded.report.format == "alpaca" and loaded.report.n_duplicates == 1
    assert [r["id"] for r in loaded.records] == ["a", "b"] and loaded.rows == [0, 1]


def test_field_mapping_and_limit_apply_to_records():
    records = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(5)]
    examples = load_examples(records, 3, fields=FieldMap("q", "a"))
    assert [e.prompt for e in examples] == ["question 0", "question 1", "question 2"]


def test_example_objects_are_taken_as_they_are():
    examples = [Example("p1", " r1"), Example("p2", " r2")]
    loaded = load_dataset(examples)
    assert loaded.examples == examples and loaded.records is None and loaded.report.format == "examples"


def test_a_pipeline_source_keeps_the_raw_records():
    source = load_source(FakeDataset(RECORDS), None, "data")
    assert source.name == "<FakeDataset of 3 records>" and source.rows == [0, 1, 2]
    assert source.export_records([2]) == [RECORDS[2]]


@pytest.mark.parametrize("source, fragment", [
    ([], "holds no records"),
    ([{"instruction": "x", "output": "y"}, "text"], "row 2 is a str"),
    ({"train": FakeDataset(RECORDS)}, "pass one split's records, e.g. dataset['train']"),
])
def test_bad_records_are_one_line_errors(source, fragment):
    with pytest.raises(DataError) as info:
        load_dataset(source)
    assert fragment in str(info.value) and "\n" not in str(info.value)
