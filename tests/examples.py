"""Small hand-written examples shared by the scoring and kernel tests."""

from delift_jax.data import Example

EXAMPLES = [
    Example("Instruction: Name a color.\nInput: \n", " Blue is a color."),
    Example("What is the capital of France?", "The capital of France is Paris."),
    Example("Write a short poem about the sea.", " Waves roll in and out, the tide keeps time; the sea sings."),
    Example("List three prime numbers.", "2, 3, 5"),
    Example("Compute 12 * 7.", "84"),
    Example("Translate 'cat' to German.", " Katze"),
    Example("Summarize: the tide keeps time.", " The tide is regular, like a clock that never stops ticking."),
]
