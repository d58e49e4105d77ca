"""Exact where it matters: DELIFT's selection on surrogate kernels (``KernelConfig(utility="surrogate")``), refined.

After a greedy on the surrogate kernels, the entries the objective reads for the picks are computed exactly, the
network is trained again on every exact pair (the kernel store does this when it is next assembled), the greedy
runs again on the updated kernels, and this repeats while the picks change, at most ``KernelConfig.refine_rounds``
times. Which entries: the picks' columns of the pool kernel K (``fl``, ``flcg``, ``flmi``, ``flmi_paper``) and of
U(targets, pool) (``fl2mi``, ``flmi_paper``: Q's rows of the picks; ``flmi``: the picks' caps max_q Q[j, q]), and
the picks' rows of U(pool, existing) (``flcg``: the picks' floors max_p P[j, p], which an example covering itself
is measured against).

A round adds at most ``KernelConfig.n_refine_pairs`` pairs per kernel, chosen by ``refinement_pairs``: first each
row's best pick and each pick's best row under the current values (the entries a facility-location objective
sums; for rows, each pick's largest entries), then the next best, larger values first.

Resumable: the rounds are logged in ``<kernel_dir>/refinement.json`` before they are computed; a rerun first
finishes a logged round, then replays the loop from the stores (each greedy sees every finished round, so it
repeats the interrupted run's picks), and counts the logged rounds against the bound.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from delift_jax.atomic_io import atomic_save_json

_ACTIVE = contextvars.ContextVar("delift_refinement_active", default=False)
LOG_FILE = "refinement.json"


def refining() -> bool:
    """True inside ``refined_selection``'s own calls of the selection (they must not refine again)."""
    return _ACTIVE.get()


def refinement_pairs(picks: np.ndarray, utility: np.ndarray, exact: np.ndarray, layout: np.ndarray | None,
                     cap: int, by: str = "column") -> np.ndarray:
    """At most ``cap`` entries (row, column) [m, 2] int32 of the picks' columns (``by="column"``) or rows
    (``by="row"``) that are not exact, by priority: the entry's rank by value (largest first) among its row's
    picked entries, or among its column's (``column``: the smaller of the two; ``row``: within its row), then the
    larger value, then row and column. ``utility``/``exact``: dense [n, n_c], or sparse [n, k] with ``layout``
    [n, k] the columns of each row."""
    picks = np.unique(np.asarray(picks, np.int64))
    utility, exact = np.asarray(utility), np.asarray(exact, bool)
    n_rows = utility.shape[0]
    if by == "row":
        picks = picks[picks < n_rows]
        width = utility.shape[1]
        rows = np.repeat(picks, width)
        slots = np.tile(np.arange(width), len(picks))
        columns = slots if layout is None else np.asarray(layout)[rows, slots].astype(np.int64)
    elif layout is None:
        rows = np.repeat(np.arange(n_rows), len(picks))
        slots = columns = np.tile(picks, n_rows)
    else:
        rows, slots = np.nonzero(np.isin(layout, picks))
        columns = np.asarray(layout)[rows, slots].astype(np.int64)
    values, done = utility[rows, slots], exact[rows, slots]
    rank = _group_rank(rows, values)
    if by == "column":
        rank = np.minimum(rank, _group_rank(columns, values))
    order = np.lexsort((columns, rows, -values, rank))
    order = order[~done[order]][:max(int(cap), 0)]
    return np.stack([rows[order], columns[order]], axis=1).astype(np.int32)


def _group_rank(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rank of each value within its group, largest first (ties by position)."""
    order = np.lexsort((np.arange(len(values)), -values, groups))
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(order)) - first
    return rank


@dataclasses.dataclass(frozen=True)
class RefinedKernel:
    """A kernel store the refinement adds exact entries to: its name under the kernel directory, its rows and
    columns (columns None: the square kernel of ``rows``), and whether the picks index its columns or its rows."""

    name: str
    rows: list
    columns: list | None
    by: str = "column"


def refined_kernels(use_case: str, task_objective: str, pool, targets, existing) -> list[RefinedKernel]:
    """The stores and entries the use case's objective reads for its picks (see the module docstring)."""
    pool_kernel = RefinedKernel("pool", list(pool), None)
    target_kernel = RefinedKernel("targets", list(targets or ()), list(pool))  # Q[j, :] = its column j
    if use_case == "continual":  # K's columns; P's rows of the picks hold their floors max_p P[j, p]
        return [pool_kernel, RefinedKernel("existing", list(pool), list(existing or ()), "row")]
    if use_case != "task":
        return [pool_kernel]
    # flmi: K's columns and the picks' caps max_q Q[j, q] (Q[j, :] is column j of U(targets, pool)).
    return {"fl2mi": [target_kernel], "flmi": [pool_kernel, target_kernel],
            "flmi_paper": [pool_kernel, target_kernel]}.get(task_objective, [pool_kernel])


def store_state(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(raw utility, exact mask, layout or None) as the surrogate store at ``directory`` last published them."""
    load = lambda name: np.load(directory / name, allow_pickle=False)
    if (directory / "kernel_indices.npy").is_file():
        return load("utility_raw_values.npy"), load("exact.npy"), load("kernel_indices.npy")
    return load("utility_raw.npy"), load("exact.npy"), None


def refine_loop(select: Callable[[], object], picks_of: Callable[[object], np.ndarray],
                wanted: Callable[[np.ndarray], dict], add: Callable[[dict], dict], rounds_done: int,
                max_rounds: int, previous: np.ndarray | None = None) -> tuple[object, list[dict]]:
    """The loop, on callables: ``select()`` -> a selection; ``picks_of(selection)``; ``wanted(picks)`` -> {kernel:
    pairs}; ``add(wanted)`` logs and computes a round, returning {kernel: pairs computed}. Stops when the picks
    repeat, nothing is wanted, or ``max_rounds`` rounds are done (counting ``rounds_done`` of earlier runs).
    ``previous``: a resumed loop's picks before its last round (the stop test compares against them, as the
    uninterrupted run did). Returns (last selection, one record per round added here)."""
    history = []
    previous = None if previous is None else np.sort(np.asarray(previous))
    while True:
        selection = select()
        picks = np.sort(np.asarray(picks_of(selection)))
        if previous is not None:
            if history:
                history[-1]["picks_changed"] = int(len(np.setdiff1d(picks, previous)))
            if np.array_equal(picks, previous):
                return selection, history
        if rounds_done + len(history) >= max_rounds:
            return selection, history
        pairs = {name: p for name, p in wanted(picks).items() if len(p)}
        if not pairs:
            return selection, history
        history.append({"pairs": {name: int(len(p)) for name, p in pairs.items()}, "computed": add(pairs)})
        previous = picks


def refined_selection(select, *, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                      tokenizer=None, seed: int = 0, options, store_config):
    """``select`` (``delift_selection``) on surrogate kernels with the refinement loop (see the module docstring);
    ``store_config``: the ``KernelConfig`` ``select`` computes its pool kernel store with (``methods.delift.
    store_config``; Q and P, which have no diagonal, keep none excluded): a round must match each store's identity.
    The selection's info gains ``surrogate``: each kernel's held-out scores and the rounds."""
    from delift_jax.kernel.store import KernelStore
    from delift_jax.kernel.surrogate_rounds import finish_round, plan_round, surrogate_job

    config = options.kernel_config
    kernels = refined_kernels(use_case, getattr(options, "task_objective", "fl2mi"), pool, targets, existing)
    with _kernel_directory(options.kernel_dir) as kernel_dir:
        inner = dataclasses.replace(options, kernel_dir=kernel_dir)
        log = _RoundLog(kernel_dir / LOG_FILE, _loop_key(use_case, budget, seed, options))
        configs = {k.name: dataclasses.replace(store_config, exclude_diagonal=store_config.exclude_diagonal
                                               and k.columns is None) for k in kernels}
        jobs = {k.name: surrogate_job(model, tokenizer, k.rows, k.columns, configs[k.name],
                                      progress=_progress(options)) for k in kernels}
        store = lambda name: KernelStore(kernel_dir / name)

        def run_select():
            token = _ACTIVE.set(True)
            try:
                return select(pool=pool, budget=budget, use_case=use_case, targets=targets, existing=existing,
                              model=model, tokenizer=tokenizer, seed=seed, options=inner)
            finally:
                _ACTIVE.reset(token)

        asked = []  # the picks each round's pairs were chosen for (logged with the round)

        def wanted(picks):
            asked.append(picks)
            return {k.name: refinement_pairs(picks, *store_state(kernel_dir / k.name), config.n_refine_pairs, k.by)
                    for k in kernels}

        def add(pairs):
            names = {name: plan_round(jobs[name], store(name), p) for name, p in pairs.items()}
            log.append({name: n for name, n in names.items() if n is not None}, asked[-1])
            return {name: finish_round(jobs[name], store(name), n) for name, n in names.items() if n is not None}

        for name, round_name in (log.rounds[-1] if log.rounds else {}).items():  # an interrupted round first
            finish_round(jobs[name], store(name), round_name)
        if log.done:  # an earlier run finished this loop: its last greedy saw these very stores
            selection, history = run_select(), []
        else:
            selection, history = refine_loop(run_select, lambda s: s.indices, wanted, add, len(log.rounds),
                                             config.refine_rounds, log.last_picks)
            log.finish()
        _describe(selection, kernels, kernel_dir, log, history)
    return selection


def _describe(selection, kernels, kernel_dir: Path, log, history: list[dict]) -> None:
    stores = {}
    for kernel in kernels:
        manifest = json.loads((kernel_dir / kernel.name / "manifest.json").read_text(encoding="utf-8"))
        stores[kernel.name] = (manifest.get("summary") or {}).get("surrogate", {})
        _, exact, _ = store_state(kernel_dir / kernel.name)
        selection.arrays[f"exact_{kernel.name}"] = exact
    selection.info["surrogate"] = {"kernels": stores, "refinement_rounds": len(log.rounds),
                                   "rounds_this_run": history}


def _progress(options) -> bool:
    from delift_jax.progress import show_progress

    return show_progress(getattr(options, "progress", None))


@contextlib.contextmanager
def _kernel_directory(directory):
    """The run's kernel directory, or a temporary one for a selection that keeps no stores."""
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        yield Path(directory)
        return
    with tempfile.TemporaryDirectory(prefix="delift-refine-") as tmp:
        yield Path(tmp)


def _loop_key(use_case: str, budget, seed: int, options) -> str:
    """What the loop's course depends on besides the stores: the selection's settings (not where it writes)."""
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("kernel_dir", "progress",
                                                                                 "max_pairs")}
    text = json.dumps({"use_case": use_case, "budget": budget, "seed": int(seed), **settings}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _RoundLog:
    """``refinement.json``: the selection settings it belongs to, the rounds planned so far (each {kernel: round
    name}, written before the round runs) with the picks each was chosen for, and whether the loop finished.
    Another selection on the same stores (other settings) starts a new log; the exact entries of earlier rounds
    stay in the stores."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        same = stored.get("key") == key
        self.rounds = list(stored.get("rounds", [])) if same else []
        self.picks = list(stored.get("picks", [])) if same else []
        self.done = bool(stored.get("done")) if same else False

    @property
    def last_picks(self) -> np.ndarray | None:
        """The picks the last logged round was chosen for (None: no round, or a log written before picks were)."""
        return np.asarray(self.picks[-1], np.int64) if self.rounds and len(self.picks) == len(self.rounds) else None

    def append(self, names: dict, picks: np.ndarray) -> None:
        self.rounds.append(names)
        self.picks.append([int(p) for p in picks])
        self._save()

    def finish(self) -> None:
        self.done = True
        self._save()

    def _save(self) -> None:
        atomic_save_json(self.path, {"key": self.key, "rounds": self.rounds, "picks": self.picks, "done": self.done})
