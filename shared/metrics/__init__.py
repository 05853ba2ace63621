"""Additive evaluation metrics: sum per-site states, compute exact global metrics.

See :mod:`shared.metrics.accumulator` for the definitions of every metric.
"""

from shared.metrics.accumulator import (
    DEFAULT_IOU_THRESHOLDS,
    DEFAULT_LOC_THRESHOLDS,
    NORMAL_NAME,
    MetricAccumulator,
    flat_scalars,
    state_to_arrays,
    sum_states,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DEFAULT_LOC_THRESHOLDS",
    "NORMAL_NAME",
    "MetricAccumulator",
    "flat_scalars",
    "state_to_arrays",
    "sum_states",
]
