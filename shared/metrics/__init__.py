"""Additive evaluation metrics: sum per-site states, compute exact global metrics.

See :mod:`shared.metrics.accumulator` for the definitions of every metric.
"""

from endofed.shared.metrics.accumulator import (
    DEFAULT_IOU_THRESHOLDS,
    DEFAULT_LOC_THRESHOLDS,
    NORMAL_NAME,
    MetricAccumulator,
    flat_scalars,
    state_to_arrays,
    sum_states,
)
from endofed.shared.metrics.report import (
    json_safe,
    markdown_table,
    plot_metric_curves,
    plot_site_bars,
    write_evaluation_report,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DEFAULT_LOC_THRESHOLDS",
    "NORMAL_NAME",
    "MetricAccumulator",
    "flat_scalars",
    "json_safe",
    "markdown_table",
    "plot_metric_curves",
    "plot_site_bars",
    "state_to_arrays",
    "sum_states",
    "write_evaluation_report",
]
