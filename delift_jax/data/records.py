"""Examples: a prompt and a response (``delift_jax.data.fields`` builds them from the record formats users
bring)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Example:
    """One fine-tuning example. ``response`` is what the model is scored on (teacher forced)."""

    prompt: str
    response: str


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The authors' Alpaca prompt: ``"Instruction: {instruction}\\nInput: {input}\\n"``."""
    return f"Instruction: {instruction}\nInput: {input_text}\n"
