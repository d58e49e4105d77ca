"""Headless matplotlib figures (``matplotlib.figure.Figure`` + the Agg canvas; pyplot's global state is never
touched, so these work in scripts, tests and notebooks alike). Each function returns the Figure and, given a
path, also writes a PNG there."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> None:
    if path is not None:
        import io

        from delift_jax.atomic_io import atomic_write_bytes

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        atomic_write_bytes(path, buffer.getvalue())


def plot_metric_vs_budget(rows: Sequence[Mapping], metric: str, path=None, title: str | None = None):
    """One line per method: the mean of ``metric`` over seeds against the budget, std over seeds as error bars."""
    from delift_jax.report.tables import summarize

    summary = summarize([r for r in rows if r["metric"] == metric]).get(metric, {})
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for method, cells in summary.items():
        budgets = sorted(cells)
        means = [cells[b][0] for b in budgets]
        stds = [cells[b][1] for b in budgets]
        ax.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xlabel("budget (fraction of the selection pool)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs budget (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    if summary:
        ax.legend()
    _save(fig, path)
    return fig


def plot_kernel_heatmap(kernel, path=None, title: str = "DELIFT utility kernel", picks=None):
    """Heatmap of a kernel (rows = covered examples, columns = candidates); ``picks`` marks selected columns."""
    kernel = np.asarray(kernel, dtype=np.float64)
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(kernel, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    if picks is not None:
        for j in np.asarray(picks).tolist():
            if j >= 0:
                ax.axvline(j, color="red", linewidth=0.8, alpha=0.6)
    ax.set_xlabel("candidate j (demonstration)")
    ax.set_ylabel("example i (predicted)")
    ax.set_title(title)
    _save(fig, path)
    return fig


def plot_greedy_gains(gains, path=None, title: str = "greedy marginal gains"):
    """Marginal gain of each greedy pick (bars) and the cumulative objective value (line, right axis)."""
    gains = np.asarray(gains, dtype=np.float64)
    steps = np.arange(1, gains.size + 1)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(steps, gains, color="tab:blue", alpha=0.7, label="marginal gain")
    ax.set_xlabel("greedy step")
    ax.set_ylabel("marginal gain")
    twin = ax.twinx()
    twin.plot(steps, np.cumsum(gains), color="tab:orange", marker=".", label="f(A)")
    twin.set_ylabel("objective value f(A)")
    ax.set_title(title)
    _save(fig, path)
    return fig


def plot_method_metrics(results: Mapping, metric: str, path=None):
    """Bar chart of one metric per method for a single ``run_use_case`` results dict."""
    methods = [m for m, e in results.get("methods", {}).items() if metric in (e.get("metrics") or {})]
    values = [float(results["methods"][m]["metrics"][metric]) for m in methods]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(methods, values, color="tab:green")
    ax.set_ylabel(metric)
    ax.set_title(f"{results.get('use_case', '')}: {metric} per method (held-out test)")
    _save(fig, path)
    return fig


def load_pool_kernel(kernel_dir) -> np.ndarray:
    """The square pool kernel of a DELIFT kernel store (``<kernel_dir>/pool`` or the store itself), min-max
    normalized to [0, 1] (the store of a ``run_use_case`` holds raw utilities: ``kernel.npy`` with no
    normalization)."""
    directory = Path(kernel_dir)
    if (directory / "pool").is_dir():
        directory = directory / "pool"
    path = directory / "kernel.npy"
    if not path.is_file():
        path = directory / "utility_raw.npy"
    kernel = np.load(path, allow_pickle=False).astype(np.float64)
    lo, hi = float(kernel.min()), float(kernel.max())
    return (kernel - lo) / (hi - lo) if hi > lo else np.zeros_like(kernel)


def load_run_kernel(kernel_dir) -> np.ndarray:
    """The kernel over the pool's columns that a DELIFT run computed, min-max normalized: the square pool kernel,
    or U(targets, pool) where the run computed none (the task use case with the default FL2MI reads only that)."""
    directory = Path(kernel_dir)
    if not (directory / "pool").is_dir() and (directory / "targets").is_dir():
        return load_pool_kernel(directory / "targets")
    return load_pool_kernel(directory)


def plot_composition(counts: Mapping[str, Sequence[int]], sources: Sequence[str], path=None,
                     title: str = "where each method's picks come from", highlight: str | None = None):
    """Stacked bars: for each method (a bar), how many picks come from each source (a colour)."""
    methods = list(counts)
    table = np.asarray([np.asarray(counts[m], dtype=np.float64) for m in methods]).reshape(len(methods), len(sources))
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(len(methods))
    for s, source in enumerate(sources):
        label = f"{source} (target)" if source == highlight else source
        ax.bar(methods, table[:, s], bottom=bottom, label=label, edgecolor="black" if source == highlight else None,
               linewidth=1.5 if source == highlight else 0.0)
        bottom += table[:, s]
    ax.set_ylabel("picks")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_values(values: Mapping[str, float], label: str, path=None, title: str = "", reference: float | None = None,
                reference_label: str = ""):
    """One bar per entry (e.g. held-out NLL per method), with an optional horizontal reference line."""
    names = list(values)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(names, [float(values[n]) for n in names], color="tab:green")
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label or None)
        if reference_label:
            ax.legend()
    ax.set_ylabel(label)
    ax.set_title(title)
    _save(fig, path)
    return fig


def plot_kernel_by_group(kernel, groups: Sequence[int], names: Sequence[str], path=None,
                         title: str = "utility kernel, ordered by source"):
    """Heatmap of a square kernel with rows and columns sorted by group; lines separate the groups, which are
    named on both axes."""
    kernel = np.asarray(kernel, dtype=np.float64)
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    ordered = kernel[np.ix_(order, order)]
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(ordered, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    sizes = np.bincount(groups[order], minlength=len(names))
    edges = np.cumsum(sizes)[:-1] - 0.5
    for edge in edges:
        ax.axhline(edge, color="white", linewidth=1)
        ax.axvline(edge, color="white", linewidth=1)
    centres = np.cumsum(sizes) - sizes / 2 - 0.5
    ax.set_xticks(centres, list(names), rotation=30, fontsize=8)
    ax.set_yticks(centres, list(names), fontsize=8)
    ax.set_xlabel("demonstration j")
    ax.set_ylabel("example i (predicted)")
    ax.set_title(title)
    _save(fig, path)
    return fig
