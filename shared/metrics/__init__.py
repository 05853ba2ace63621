"""Additive evaluation metrics: sum per-site states, compute exact global metrics.

See :mod:`endofed.shared.metrics.accumulator` for the definitions of every metric.

* :mod:`.accumulator` — :class:`MetricAccumulator`: validates a batch, counts it into
  the state, assembles :meth:`~MetricAccumulator.compute`;
* :mod:`.state` — the additive state: layout (keys, shapes, dtypes), merge, sums;
* :mod:`.inputs` — validation of ``update()`` inputs;
* :mod:`.detection_counts`, :mod:`.classification_counts`, :mod:`.localization`,
  :mod:`.segmentation_counts` — each family's counts in the state and its metrics;
* :mod:`.detection`, :mod:`.classification`, :mod:`.segmentation` — the math
  (matching, AP, AUC, Dice) on plain arrays;
* :mod:`.scalars` — :func:`flat_scalars`;
* :mod:`.report` — ``metrics.json`` and ``report.md``; :mod:`.plots` — its figures
  and the run plots; :mod:`.formatting` — how values read in both.
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
