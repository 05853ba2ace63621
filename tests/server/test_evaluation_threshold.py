"""The server chooses the image-level threshold on the sites' merged histograms."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict
from sklearn.metrics import roc_curve

from endofed.server.evaluation import merge_evaluation_replies
from endofed.shared import protocol
from endofed.shared.metrics import MetricAccumulator, state_to_arrays

BINS = 1000  # the accumulator's default, which the server uses


def _site_state(p_normal: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    acc = MetricAccumulator(class_names=["lesion"])
    acc.update(image_probs=np.column_stack([p_normal, 1.0 - p_normal]), image_labels=labels)
    return acc.state()


def _reply(state: dict[str, np.ndarray], site: str, node: int) -> Message:
    content = RecordDict({
        protocol.METRIC_STATE: ArrayRecord(
            {k: Array(v) for k, v in state_to_arrays(state).items()}),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: site}),
    })
    meta = Metadata(run_id=1, message_id=f"m-{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id=f"q-{node}", group_id="1", created_at=time.time(),
                    ttl=60.0, message_type="evaluate")
    return Message(content=content, metadata=meta)


def test_threshold_from_merged_site_histograms_is_the_pooled_sklearn_optimum():
    rng = np.random.default_rng(11)
    sites = []
    for shift in (-40, 0, 60):  # three sites with different score distributions
        labels = rng.integers(0, 2, 120)
        centre = rng.integers(0, BINS, 120) // 2 + np.where(labels == 1, 0, 300) + shift
        sites.append(((np.clip(centre, 0, BINS - 1) + 0.5) / BINS, labels))
    replies = [_reply(_site_state(p, y), f"site_{i}", i) for i, (p, y) in enumerate(sites)]
    out = merge_evaluation_replies(replies, class_names=["lesion"], morphology_names=[],
                                   threshold_rule="youden")
    op = out["global_metrics"]["operating_point"]

    p_all = np.concatenate([p for p, _ in sites])
    y_all = np.concatenate([y for _, y in sites])
    fpr, tpr, thr = roc_curve(y_all, 1.0 - p_all, drop_intermediate=False)
    j = tpr - fpr
    idx = int(np.flatnonzero(j >= j.max() - 1e-9)[0])
    assert op["rule"] == "youden"
    assert (op["num_positive"], op["num_negative"]) == (int(y_all.sum()), int((1 - y_all).sum()))
    assert op["sensitivity"] == pytest.approx(tpr[idx])
    assert op["specificity"] == pytest.approx(1.0 - fpr[idx])
    assert op["threshold"] == pytest.approx(thr[idx] - 0.5 / BINS)  # the bin's lower edge
    assert out["global_scalars"]["op_threshold"] == pytest.approx(op["threshold"])

    # the merged threshold is not what any single site would choose
    singles = [merge_evaluation_replies([r], class_names=["lesion"], morphology_names=[])
               ["global_metrics"]["operating_point"]["threshold"] for r in replies]
    assert all(t != pytest.approx(op["threshold"]) for t in singles)


def test_rule_is_applied_to_the_merge():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200)
    p = rng.random(200)
    replies = [_reply(_site_state(p[:90], labels[:90]), "a", 1),
               _reply(_site_state(p[90:], labels[90:]), "b", 2)]
    op = merge_evaluation_replies(replies, class_names=["lesion"], morphology_names=[],
                                  threshold_rule="sensitivity:0.95")["global_metrics"][
                                      "operating_point"]
    q, lesion = 1.0 - p, labels == 1
    sens = (q[lesion] > op["threshold"] + 1e-12).mean()
    assert op["rule"] == "sensitivity:0.95" and sens >= 0.95
    assert sens == pytest.approx(op["sensitivity"])
    assert (q[lesion] > op["threshold"] + 1.0 / BINS + 1e-12).mean() < 0.95
