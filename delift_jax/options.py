"""Frozen option dataclasses to and from plain mappings (TOML / JSON tables), with unknown keys as errors.

``build_options(KernelConfig, {"max_length": 512}, "kernel")`` builds the dataclass; a key it does not have is a
one-line ``DataError`` naming the valid ones; a nested dataclass field (``TrainConfig.lora``) is built from a nested
mapping the same way; a list given for a tuple field becomes a tuple. ``options_dict`` goes the other way, to
JSON-able values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import numpy as np

from delift_jax.errors import DataError


def check_keys(cls, values: Mapping, what: str, noun: str = "key") -> None:
    """One-line DataError when ``values`` has a key that is no field of the dataclass ``cls``."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DataError(f"{what}: unknown {noun}(s) {', '.join(map(str, unknown))}; valid {noun}s: "
                        f"{', '.join(sorted(names)) or 'none'}")


def build_options(cls, values: Mapping, what: str, noun: str = "key"):
    """``cls(**values)`` after the key check, nested dataclasses and tuples built from mappings and lists."""
    check_keys(cls, values, what, noun)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        default = fields[key].default
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = build_options(type(default), value, f"{what}.{key}")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def jsonable(value):
    """A JSON-able form of an option value: dataclasses as dicts, tuples as lists, paths as strings; values with no
    such form (encoders, arrays of precomputed embeddings) as a short description."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return options_dict(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return f"<array {value.shape} {value.dtype}>"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<{type(value).__name__}>"


def options_dict(options) -> dict:
    """Every field of a dataclass instance as JSON-able values (see ``jsonable``)."""
    return {f.name: jsonable(getattr(options, f.name)) for f in dataclasses.fields(options)}
