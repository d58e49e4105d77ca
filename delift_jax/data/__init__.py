"""Data: examples, record formats and field mapping, validation, splits, templates, built-in datasets and
tokenization into scored sequences."""

from delift_jax.data.builtin import BUILTIN_DATASETS, load_builtin
from delift_jax.data.fields import FORMATS, FieldMap, detect_format, example_from_record, map_records
from delift_jax.data.formats import read_table
from delift_jax.data.records import Example, alpaca_prompt
from delift_jax.data.sources import LoadedData, field_map, load_dataset, load_examples
from delift_jax.data.splits import check_disjoint, split_examples, split_indices
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.data.validate import DataReport, validate_examples

__all__ = ["BUILTIN_DATASETS", "DEFAULT_TEMPLATES", "DataReport", "Example", "FORMATS", "FieldMap", "LoadedData",
           "Templates", "alpaca_prompt", "check_disjoint", "detect_format", "example_from_record", "field_map",
           "load_builtin", "load_dataset", "load_examples", "map_records", "read_table", "split_examples",
           "split_indices", "validate_examples"]
