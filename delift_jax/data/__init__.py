"""Data: examples, templates, built-in datasets and tokenization into scored sequences."""

from delift_jax.data.builtin import load_builtin
from delift_jax.data.records import Example, example_from_record
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates

__all__ = ["DEFAULT_TEMPLATES", "Example", "Templates", "example_from_record", "load_builtin"]
