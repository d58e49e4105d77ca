"""Validation: empty responses and duplicates are reported (never dropped silently); all-empty is an error."""

import json
import logging

import pytest

from delift_jax.data import Example, load_dataset, load_examples, validate_examples
from delift_jax.errors import DataError


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


RECORDS = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": ""}, {"prompt": "p1", "response": "r1"},
           {"prompt": "p3", "response": "  "}, {"prompt": "p1", "response": "r1"}, {"prompt": "p4", "response": "r4"},
           {"prompt": "p4", "response": "r4"}]


def test_findings_are_reported_and_kept_by_default(tmp_path, caplog):
    source = write(tmp_path / "d.jsonl", RECORDS)
    with caplog.at_level(logging.WARNING, logger="delift_jax.data"):
        loaded = load_dataset(source)
    assert len(loaded.examples) == 7
    report = loaded.report
    assert report.format == "prompt-response" and report.n_records == 7
    assert report.empty_rows == (2, 4)
    assert report.duplicate_groups == ((1, 3, 5), (6, 7)) and report.n_duplicates == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines == report.messages() and len(lines) == 2
    assert "2 of 7 examples have an empty response (rows 2, 4); kept; drop them with --drop-empty " \
        "(drop_empty=True in Python)" in lines[0]
    assert "3 duplicate examples (identical prompt and response) in 2 group(s), e.g. rows 3, 5 repeat row 1; kept; " \
        "remove them with --dedupe (dedupe=True in Python)" in lines[1]


def test_dedupe_and_drop_empty_on_request(tmp_path, caplog):
    source = write(tmp_path / "d.jsonl", RECORDS)
    with caplog.at_level(logging.WARNING, logger="delift_jax.data"):
        loaded = load_dataset(source, dedupe=True, drop_empty=True)
    assert loaded.examples == [Example("p1", "r1"), Example("p4", "r4")]
    assert loaded.report.n_examples == 2 and loaded.report.dropped_empty and loaded.report.deduplicated
    assert "dropped (drop_empty)" in caplog.records[0].getMessage()
    assert "removed, first copy kept (dedupe)" in caplog.records[1].getMessage()
    assert load_examples(source, dedupe=True) == [Example("p1", "r1"), Example("p2", ""), Example("p3", "  "),
                                                   Example("p4", "r4")]


def test_clean_data_reports_nothing(tmp_path, caplog):
    source = write(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": "c"}])
    with caplog.at_level(logging.WARNING, logger="delift_jax.data"):
        loaded = load_dataset(source)
    assert loaded.report.messages() == [] and not caplog.records


def test_all_empty_responses_is_an_error(tmp_path):
    source = write(tmp_path / "d.jsonl", [{"instruction": "a", "output": ""}, {"instruction": "b", "output": None}])
    with pytest.raises(DataError, match=r"all 2 responses are empty; check the response field"):
        load_examples(source)
    # Alpaca responses carry the leading space, which does not count as content
    source = write(tmp_path / "e.jsonl", [{"prompt": "a", "response": " "}])
    with pytest.raises(DataError, match="all 1 responses are empty"):
        load_examples(source)


def test_nothing_left_after_dropping(tmp_path):
    with pytest.raises(DataError, match="holds no records"):
        validate_examples([])
    kept, report = validate_examples([Example("a", "b"), Example("c", "")], drop_empty=True)
    assert kept == [Example("a", "b")] and report.empty_rows == (2,)
