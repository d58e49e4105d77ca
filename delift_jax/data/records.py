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
    """An ``Example`` from one record of any format ``delift_jax.data.fields`` detects (Alpaca, prompt/response or
    prompt/completion, question/answer(/options), ShareGPT conversations).

    Alpaca and question/answer responses get the authors' leading space (``" {output}"``); prompt/response records
    are taken as is.
    """
    from delift_jax.data.fields import resolve_mapping  # fields imports this module

    if not isinstance(record, Mapping):
        raise DataError(f"record {row} is a {type(record).__name__}, expected an object with named fields")
    return resolve_mapping(record)(record, row)
