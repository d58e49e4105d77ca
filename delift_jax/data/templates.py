"""The authors' prompt templates (DESIGN §1.1), kept as defaults and configurable.

No in-context example:  ``"Instruction: {I0}\\n\\n\\nQuery: {prompt}\\n"``
With example j:         ``"Instruction:\\n{I1}\\n\\n\\nExample:\\n{prompt_j}\\n{response_j}"`` followed by
                        ``"\\n\\n\\nQuery:\\n{prompt_i}\\n"``.
Note the asymmetry of the originals: no-example uses ``"Instruction: "``/``"Query: "`` with a space, the
with-example template a newline. The with-example context is split into a demonstration part (shared by every
target scored against candidate j: its keys/values can be computed once) and a query part.
"""

from __future__ import annotations

import dataclasses

from delift_jax.data.records import Example

NO_EXAMPLE_INSTRUCTION = "Please generate a response to the following query."
EXAMPLE_INSTRUCTION = ("Use the following example as a guide to answer the query in the same format and style, "
                       "providing a clear and concise response.")


@dataclasses.dataclass(frozen=True)
class Templates:
    no_example: str = "Instruction: {instruction}\n\n\nQuery: {prompt}\n"
    demonstration: str = "Instruction:\n{instruction}\n\n\nExample:\n{prompt}\n{response}"
    query: str = "\n\n\nQuery:\n{prompt}\n"
    no_example_instruction: str = NO_EXAMPLE_INSTRUCTION
    example_instruction: str = EXAMPLE_INSTRUCTION

    def context_without_example(self, target: Example) -> str:
        return self.no_example.format(instruction=self.no_example_instruction, prompt=target.prompt)

    def demonstration_text(self, example: Example) -> str:
        return self.demonstration.format(instruction=self.example_instruction, prompt=example.prompt,
                                         response=example.response)

    def query_text(self, target: Example) -> str:
        return self.query.format(prompt=target.prompt)

    def context_with_example(self, target: Example, example: Example) -> str:
        return self.demonstration_text(example) + self.query_text(target)


DEFAULT_TEMPLATES = Templates()
