"""Examples: a prompt and a response, built from the record formats users bring."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from delift_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Example:
    """One fine-tuning example. ``response`` is what the model is scored on (teacher forced)."""

    prompt: str
    response: str


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The authors' Alpaca prompt: ``"Instruction: {instruction}\\nInput: {input}\\n"``."""
    return f"Instruction: {instruction}\nInput: {input_text}\n"


def example_from_record(record: Mapping, row: int = 0) -> Example:
    """An ``Example`` from an Alpaca (instruction/input/output) or prompt/response record.

    Alpaca responses get the authors' leading space (``" {output}"``); prompt/response records are taken as is.
    """
    if "instruction" in record and "output" in record:
        return Example(alpaca_prompt(str(record["instruction"]), str(record.get("input") or "")),
                       f" {record['output']}")
    if "prompt" in record and "response" in record:
        return Example(str(record["prompt"]), str(record["response"]))
    raise DataError(f"record {row} has fields {sorted(record)}; expected instruction/input/output (Alpaca) "
                    "or prompt/response")
