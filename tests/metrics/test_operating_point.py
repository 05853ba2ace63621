"""The image-level operating point chosen from the accumulator's score histograms."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from endofed.shared.config import ConfigError
from endofed.shared.metrics import MetricAccumulator
from endofed.shared.metrics.operating_point import (
    OperatingPoint,
    at_threshold,
    choose_operating_point,
    from_checkpoint_extra,
)


def _accumulate(p_normal, labels, *, bins, num_classes=1):
    """An accumulator fed image probabilities whose normal column is ``p_normal``."""
    p_normal = np.asarray(p_normal, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    lesion = np.zeros((p_normal.size, num_classes))
    # the lesion mass goes to the true lesion class (or class 1 for normal images)
    cols = np.where(labels > 0, labels - 1, 0)
    lesion[np.arange(p_normal.size), cols] = 1.0 - p_normal
    acc = MetricAccumulator(class_names=[f"c{i}" for i in range(1, num_classes + 1)],
                            score_bins=bins)
    acc.update(image_probs=np.column_stack([p_normal, lesion]), image_labels=labels)
    return acc


# Lesion probabilities: lesion images .95 .85 .65 .45, normal images .55 .25 .15 .05
HAND_P_NORMAL = [0.05, 0.15, 0.35, 0.55, 0.45, 0.75, 0.85, 0.95]
HAND_LABELS = [1, 1, 1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("rule", "threshold", "sens", "spec"),
    [
        # t=0.6 and t=0.4 both reach J=0.75; the higher one is kept
        ("youden", 0.6, 0.75, 1.0),
        # sensitivity 1 needs t < 0.45; the highest bin edge below is 0.4
        ("sensitivity:0.95", 0.4, 1.0, 0.75),
        ("sensitivity:0.75", 0.6, 0.75, 1.0),
        # specificity 1 needs t >= 0.55: lowest edge 0.6; 0.75 allows the .55 false alarm
        ("specificity:0.9", 0.6, 0.75, 1.0),
        ("specificity:0.7", 0.3, 1.0, 0.75),
        ("fixed:0.5", 0.5, 0.75, 0.75),
    ],
)
def test_rules_match_a_hand_computation(rule, threshold, sens, spec):
    acc = _accumulate(HAND_P_NORMAL, HAND_LABELS, bins=10)
    point = choose_operating_point(acc.state(), rule)
    assert point.threshold == pytest.approx(threshold)
    assert (point.sensitivity, point.specificity) == pytest.approx((sens, spec))
    assert (point.num_positive, point.num_negative) == (4, 4)
    assert point.note == ""


def test_threshold_from_merged_halves_equals_threshold_from_the_whole():
    rng = np.random.default_rng(3)
    n = 400
    labels = rng.integers(0, 3, n)  # normal + two lesion classes
    p_normal = np.clip(rng.normal(np.where(labels > 0, 0.4, 0.6), 0.2), 0, 1)
    order = rng.permutation(n)
    a, b = order[:150], order[150:]
    whole = _accumulate(p_normal, labels, bins=1000, num_classes=2)
    half_a = _accumulate(p_normal[a], labels[a], bins=1000, num_classes=2)
    half_b = _accumulate(p_normal[b], labels[b], bins=1000, num_classes=2)
    merged = half_a + half_b
    for rule in ("youden", "sensitivity:0.95", "specificity:0.8"):
        from_whole = choose_operating_point(whole.state(), rule)
        assert choose_operating_point(merged.state(), rule) == from_whole
        # and a single half would generally choose differently: the test can fail
    assert choose_operating_point(half_a.state(), "youden") != choose_operating_point(
        whole.state(), "youden")


@pytest.mark.parametrize("seed", [0, 1])
def test_rules_agree_with_sklearn_roc_curve_on_raw_scores(seed):
    rng = np.random.default_rng(seed)
    bins, n = 200, 300
    labels = (rng.random(n) < 0.4).astype(np.int64)
    # scores at bin centres: every distinct raw score has its own bin
    centre = rng.integers(0, bins, n) + np.where(labels == 1, -25, 25)
    p_normal = (np.clip(centre, 0, bins - 1) + 0.5) / bins
    point_acc = _accumulate(p_normal, labels, bins=bins)
    lesion_prob = 1.0 - p_normal
    fpr, tpr, thr = roc_curve(labels, lesion_prob, drop_intermediate=False)
    spec = 1.0 - fpr

    def check(rule, idx):
        point = choose_operating_point(point_acc.state(), rule)
        assert point.sensitivity == pytest.approx(tpr[idx])
        assert point.specificity == pytest.approx(spec[idx])
        # sklearn calls lesion at score >= thr (a bin centre); the histogram threshold
        # is the lower edge of that bin, half a bin below
        assert point.threshold == pytest.approx(thr[idx] - 0.5 / bins)
        # the verdict on the raw scores reproduces the reported rates
        verdict = point.is_lesion(p_normal)
        assert verdict[labels == 1].mean() == pytest.approx(point.sensitivity)
        assert (~verdict[labels == 0]).mean() == pytest.approx(point.specificity)

    j = tpr - fpr
    check("youden", int(np.flatnonzero(j >= j.max() - 1e-9)[0]))
    check("sensitivity:0.95", int(np.flatnonzero(tpr >= 0.95)[0]))
    check("specificity:0.9", int(np.flatnonzero(spec >= 0.9)[-1]))


def test_verdict_on_raw_scores_matches_histogram_rates_between_bin_edges():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500)
    p_normal = rng.random(500)
    acc = _accumulate(p_normal, labels, bins=50)
    point = choose_operating_point(acc.state(), "youden")
    verdict = point.is_lesion(p_normal)
    # the verdict is "lesion probability > threshold" on the raw scores
    np.testing.assert_array_equal(verdict, (1.0 - p_normal) > point.threshold + 1e-12)
    assert verdict[labels == 1].mean() == pytest.approx(point.sensitivity)
    assert (~verdict[labels == 0]).mean() == pytest.approx(point.specificity)


def test_at_half_is_the_argmax_verdict_of_the_confusion_matrix():
    acc = _accumulate(HAND_P_NORMAL, HAND_LABELS, bins=10)
    point = at_threshold(acc.state(), 0.5, rule="youden")
    metrics = acc.compute()
    assert point.rule == "youden"
    assert point.sensitivity == pytest.approx(metrics["sensitivity"])
    assert point.specificity == pytest.approx(metrics["specificity"])


def test_missing_class_falls_back_to_half_with_a_note():
    only_lesion = _accumulate([0.1, 0.3, 0.7], [1, 1, 1], bins=10)
    for rule in ("youden", "specificity:0.9"):
        point = choose_operating_point(only_lesion.state(), rule)
        assert point.threshold == 0.5 and "normal" in point.note
        assert math.isnan(point.specificity)
    # sensitivity needs only lesion images: highest edge below the lowest (0.3)
    point = choose_operating_point(only_lesion.state(), "sensitivity:1")
    assert point.threshold == pytest.approx(0.2) and point.sensitivity == 1.0
    empty = MetricAccumulator(class_names=["lesion"], score_bins=10)
    point = choose_operating_point(empty.state(), "youden")
    assert point.threshold == 0.5 and point.num_positive == point.num_negative == 0


@pytest.mark.parametrize("rule", ["yuden", "sensitivity", "sensitivity:1.5", "youden:0.3",
                                  "specificity:x", "fixed:nan"])
def test_malformed_rule_names_the_key(rule):
    acc = _accumulate(HAND_P_NORMAL, HAND_LABELS, bins=10)
    with pytest.raises(ConfigError, match="threshold-rule"):
        choose_operating_point(acc.state(), rule)


def test_checkpoint_round_trip_and_fallback_for_old_checkpoints(caplog):
    acc = _accumulate(HAND_P_NORMAL, HAND_LABELS, bins=10)
    point = choose_operating_point(acc.state(), "sensitivity:0.95")
    assert from_checkpoint_extra({"operating_point": point.to_dict()}) == point
    # as read back from JSON (nan -> null): still the stored threshold, rates nan
    from_json = from_checkpoint_extra({"operating_point": {**point.to_dict(),
                                                           "specificity": None}})
    assert from_json.threshold == point.threshold and math.isnan(from_json.specificity)
    with caplog.at_level(logging.WARNING):
        old = from_checkpoint_extra({"class_names": ["lesion"]}, origin="old.pt")
    assert old.threshold == 0.5 and "old.pt" in caplog.text
    assert isinstance(old, OperatingPoint)
    np.testing.assert_array_equal(old.is_lesion([0.2, 0.5, 0.7]), [True, False, False])


def test_report_and_flat_scalars_state_the_operating_point(tmp_path):
    from endofed.shared.metrics import flat_scalars, write_evaluation_report

    acc = _accumulate(HAND_P_NORMAL, HAND_LABELS, bins=10)
    metrics = acc.compute()
    assert "op_threshold" not in flat_scalars(metrics)
    point = choose_operating_point(acc.state(), "sensitivity:0.95")
    metrics["operating_point"] = {**point.to_dict(), "chosen_on": "validation, epoch 2"}
    flat = flat_scalars(metrics)
    assert flat["op_threshold"] == pytest.approx(0.4)
    assert (flat["op_sensitivity"], flat["op_specificity"]) == pytest.approx((1.0, 0.75))
    text = write_evaluation_report(metrics, tmp_path, title="t").read_text()
    section = text.split("## Image-level operating point")[1].split("## ")[0]
    assert "`sensitivity:0.95`" in section and "0.4000" in section
    assert "0.7500" in section and "4 / 4" in section and "validation, epoch 2" in section
