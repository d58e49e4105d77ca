"""Tables and plots for ablations and notebooks: long-format metric rows from ``run_use_case`` results,
mean ± std markdown tables, and headless matplotlib figures (metric vs budget, kernel heatmap, greedy gains).

    from delift_jax.report import metric_rows, markdown_summary, plot_metric_vs_budget
    rows = metric_rows(results, budget=0.3, seed=0)       # results: the dict run_use_case returns
    print(markdown_summary(rows))
    plot_metric_vs_budget(rows, "rougeL", "rougeL.png")
"""

from delift_jax.report.plots import (
    load_pool_kernel,
    load_run_kernel,
    plot_composition,
    plot_greedy_gains,
    plot_kernel_by_group,
    plot_kernel_heatmap,
    plot_method_metrics,
    plot_metric_vs_budget,
    plot_values,
)
from delift_jax.report.tables import (
    CSV_FIELDS,
    markdown_summary,
    metric_rows,
    read_csv,
    summarize,
    write_csv,
)

__all__ = [
    "CSV_FIELDS",
    "load_pool_kernel",
    "load_run_kernel",
    "markdown_summary",
    "metric_rows",
    "plot_composition",
    "plot_greedy_gains",
    "plot_kernel_by_group",
    "plot_kernel_heatmap",
    "plot_method_metrics",
    "plot_metric_vs_budget",
    "plot_values",
    "read_csv",
    "summarize",
    "write_csv",
]
