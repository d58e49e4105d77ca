"""Files shipped inside installed PyPI wheels (the default model, built-in data, the sentence encoder).

Found through ``importlib.metadata`` only: no hub, no network. A missing wheel or file is a one-line
``MissingPackageError`` that says how to install it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from delift_jax.errors import MissingPackageError


def wheel_file(wheel: str, relative: str, install: str, purpose: str) -> Path:
    """The file ``relative`` (a path inside site-packages, as the wheel's RECORD lists it) of ``wheel``.

    purpose: what needs it, for the error message (e.g. "the default model"); install: the install command."""
    try:
        files = importlib.metadata.files(wheel) or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackageError(f"{purpose} needs the {wheel} wheel: {install}") from None
    for entry in files:
        if str(entry) == relative:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise MissingPackageError(f"{wheel} is installed but lacks {relative}; reinstall: {install} --force-reinstall")
