"""Where a ``delift select`` output came from: the check that ``delift finetune`` and ``delift evaluate`` make before
they index the loaded examples with its picks (the select ``summary.json`` that io.write_selection writes, and the
manifest of the kernel it names), and the examples' hash that check compares."""

from __future__ import annotations

import json
from pathlib import Path

from delift_jax.errors import DataError
from delift_jax.kernel.identity import data_fingerprint


def examples_sha256(examples) -> str:
    """SHA-256 of the examples' (prompt, response) list: ``data_sha256`` of a square kernel over the same list."""
    return data_fingerprint(list(examples), None)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_selection_data(indices_path: str | None, examples: list, what: str = "--data") -> str | None:
    """Refuse a ``delift select`` output made for other examples than ``examples`` (the loaded ground set).

    Only a ``picks.npy`` (or a directory holding it) beside a select ``summary.json`` carries provenance: its
    ``n_candidates`` must equal ``len(examples)``, and when the summary's kernel is a directory whose manifest
    describes a square kernel over those candidates, the examples must hash to its ``data_sha256``. Returns what
    was checked ("kernel data_sha256", "candidate count") or None (no provenance: only the index range is checked).
    """
    if indices_path is None:
        return None
    path = Path(indices_path).expanduser()
    if path.is_dir():
        path = path / "picks.npy"
    summary = _read_json(path.parent / "summary.json") if path.name == "picks.npy" else None
    if not isinstance(summary, dict) or not isinstance(summary.get("n_candidates"), int):
        return None
    fix = (f"give {what} the same data, --limit and data options (--dedupe, --drop-empty, --format/field mapping) "
           "as the 'delift kernel' run the selection was made on")
    n_candidates = summary["n_candidates"]
    if n_candidates != len(examples):
        raise DataError(f"{path} was selected from {n_candidates} candidates but {what} gives {len(examples)} "
                        f"examples, so its indices would pick other examples; {fix}")
    kernel = summary.get("kernel")
    manifest = _read_json(Path(kernel).expanduser() / "manifest.json") if isinstance(kernel, str) else None
    if (not isinstance(manifest, dict) or manifest.get("square") is not True
            or manifest.get("n_candidates") != n_candidates or not isinstance(manifest.get("data_sha256"), str)):
        return "candidate count"
    if examples_sha256(examples) != manifest["data_sha256"]:
        raise DataError(f"{path} was selected on kernel {kernel}, made for other examples than the {len(examples)} "
                        f"that {what} gives (same count, different content or order); {fix}")
    return "kernel data_sha256"
