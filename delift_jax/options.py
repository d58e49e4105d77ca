"""Frozen option dataclasses to and from plain mappings (TOML / JSON tables), with unknown keys as errors.

``build_options(KernelConfig, {"max_length": 512}, "kernel")`` builds the dataclass; a key it does not have is a
one-line ``DataError`` naming the valid ones; a nested dataclass field (``TrainConfig.lora``) is built from a nested
mapping the same way; a list given for a tuple field becomes a tuple. Every value is then checked against its
field's annotation (``check_types``), so ``max_steps = "ten"`` or ``seed = 1.5`` in a run file is one line naming
the key, never a TypeError from deep inside a run: whole numbers for ``int`` (never ``True``), any real number for
``float``, ``true``/``false`` for ``bool``, lists for tuples (element types checked), tables for nested settings;
``object`` fields take anything. ``options_dict`` goes the other way, to JSON-able values.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
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
    check_types(cls, kwargs, what, noun)
    hints = typing.get_type_hints(cls)
    return cls(**{key: _as_float(value, hints.get(key)) for key, value in kwargs.items()})


def check_types(cls, values: Mapping, what: str, noun: str = "key") -> None:
    """One-line DataError when a value does not have the type its field of the dataclass ``cls`` is annotated with."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        expected = hints.get(key, object)
        if not _fits(value, expected):
            raise DataError(f"{what}: {noun} {key} must be {_describe(expected)}, got {value!r} "
                            f"({_kind(value)}); correct its value")


def _as_float(value, expected):
    """A whole number given for a float field (TOML ``learning_rate = 1``) as a float, so the option compares and
    fingerprints the same as ``1.0``."""
    kinds = set(typing.get_args(expected)) - {type(None)} if typing.get_origin(expected) in (
        typing.Union, types.UnionType) else {expected}
    if kinds == {float} and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    return value


def _fits(value, expected) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is typing.Any or expected is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, (bool, np.bool_))
    if expected is int:  # bool is an Integral too, but True is no count
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if expected is Path:
        return isinstance(value, (str, os.PathLike))
    if expected is tuple or origin is tuple:
        element = args[0] if len(args) == 2 and args[1] is Ellipsis else object
        return isinstance(value, (tuple, list)) and all(_fits(v, element) for v in value)
    if expected is dict or origin is dict:
        return isinstance(value, Mapping)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # an annotation this check does not model (a Callable, a TypeVar): the class's own checks decide


def _describe(expected) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        args = typing.get_args(expected)
        args = [a for a in args if not (a is int and float in args)]  # "a number" covers whole numbers
        return " or ".join(dict.fromkeys(_describe(arg) for arg in args))
    names = {type(None): "None (absent)", bool: "true or false", int: "a whole number", float: "a number",
             str: "a string", Path: "a path", dict: "a table"}
    if expected in names:
        return names[expected]
    if expected is tuple or typing.get_origin(expected) is tuple:
        args = typing.get_args(expected)
        return f"a list of {_describe(args[0]).removeprefix('a ')}s" if len(args) == 2 else "a list"
    if dataclasses.is_dataclass(expected):
        return f"a table of {expected.__name__} settings"
    return f"a {getattr(expected, '__name__', expected)}"


def _kind(value) -> str:
    kinds = {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list",
             tuple: "a list", dict: "a table", type(None): "None"}
    return kinds.get(type(value), f"a {type(value).__name__}")


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
