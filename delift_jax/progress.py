"""Whether to draw progress bars: on by default when stderr is a terminal (a person is watching), off in logs,
pipes and notebooks' captured output; an explicit True or False always wins."""

from __future__ import annotations

import sys


def show_progress(progress: bool | None = None) -> bool:
    if progress is not None:
        return bool(progress)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
