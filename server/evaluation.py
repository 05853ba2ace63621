"""Exact global metrics from the sites' additive evaluation sums.

Each evaluate reply carries the site's ``MetricAccumulator`` state (an ArrayRecord of
count arrays) and its example count; summing the states gives the same accumulator the
center would have filled had it seen all images itself, so global AUC, mAP, confusion
matrix and localisation table are exact rather than averages of site metrics. The
image-level operating point (``threshold-rule``) is chosen on the merged score
histograms, so it is the threshold the pooled validation images would give.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from endofed.server.replies import APP_REFUSED_REASON, error_reason, site_of
from endofed.shared import protocol
from endofed.shared.metrics import MetricAccumulator, flat_scalars
from endofed.shared.metrics.operating_point import choose_operating_point

log = logging.getLogger(__name__)

STATE_KEY = protocol.METRIC_STATE


def merge_evaluation_replies(
    replies: Iterable[Message],
    *,
    class_names: list[str],
    morphology_names: list[str],
    threshold_rule: str = "youden",
) -> dict[str, Any]:
    """Per-site and merged metrics from evaluate replies (errors are logged and skipped).

    The merged metrics carry ``operating_point``: ``threshold_rule`` applied to the
    merged histograms (``op_threshold`` / ``op_sensitivity`` / ``op_specificity`` in the
    global scalars).
    """
    total = MetricAccumulator(class_names=class_names, morphology_names=morphology_names)
    site_scalars: dict[str, dict[str, float]] = {}
    used = 0
    for msg in replies:
        site = site_of(msg)
        if msg.has_error():
            reason = error_reason(msg)
            if reason == APP_REFUSED_REASON:  # the site runner refused this app bundle
                log.warning("site refused the app: %s (node %d)", site,
                            msg.metadata.src_node_id)
            else:
                log.warning("evaluate reply from %s failed: %s", site, reason)
            continue
        if STATE_KEY not in msg.content.array_records:
            log.warning("evaluate reply from %s carries no metric state; skipped", site)
            continue
        state = {k: v.numpy() for k, v in msg.content[STATE_KEY].items()}
        try:
            acc = MetricAccumulator.from_state(
                state, class_names=class_names, morphology_names=morphology_names
            )
        except (KeyError, ValueError) as exc:
            log.warning("evaluate reply from %s has an invalid metric state: %s", site, exc)
            continue
        site_scalars[site] = flat_scalars(acc.compute())
        total.merge(acc)
        used += 1
    if used == 0:
        return {"site_scalars": site_scalars, "global_scalars": {}, "global_metrics": None}
    metrics = total.compute()
    point = choose_operating_point(total.state(), threshold_rule)
    metrics["operating_point"] = {
        **point.to_dict(),
        "chosen_on": f"merged validation histograms of {used} site(s)",
    }
    return {
        "site_scalars": site_scalars,
        "global_scalars": flat_scalars(metrics),
        "global_metrics": metrics,
        "sites_evaluated": used,
    }
