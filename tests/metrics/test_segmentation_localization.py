"""Dice/IoU and the localisation table (paper table 6) on hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from endofed.shared.metrics import MetricAccumulator, flat_scalars


def test_dice_iou_hand_case() -> None:
    true = np.zeros((3, 4, 4), dtype=np.float32)
    prob = np.zeros((3, 4, 4), dtype=np.float32)
    true[0, 0, :] = 1  # 4 pixels
    true[0, 1, :2] = 1  # + 2 -> 6 pixels
    prob[0, 0, 1:] = 0.9  # 3 pixels overlapping the truth
    prob[0, 3, 3] = 0.7  # 1 false positive -> TP 3, FP 1, FN 3
    prob[0, 2, 0] = 0.49  # below the threshold
    # image 1: both empty (scores 1.0); image 2: truth present, nothing predicted (0.0)
    true[2, 2:, 2:] = 1
    acc = MetricAccumulator(class_names=["a"])
    acc.update(mask_prob=prob[:, None], mask_true=true)
    m = acc.compute()
    dice0, iou0 = 2 * 3 / (2 * 3 + 1 + 3), 3 / 7
    assert m["dice"] == pytest.approx((dice0 + 1.0 + 0.0) / 3)
    assert m["iou"] == pytest.approx((iou0 + 1.0 + 0.0) / 3)
    assert m["dice_lesion"] == pytest.approx(dice0 / 2)
    assert m["iou_lesion"] == pytest.approx(iou0 / 2)
    # pooled: TP 3, FP 1, FN 3 + 4
    assert m["dice_pooled"] == pytest.approx(6 / (6 + 1 + 7))
    assert m["iou_pooled"] == pytest.approx(3 / 11)


def test_mask_prediction_is_resized_to_truth() -> None:
    true = np.zeros((1, 1, 8, 8), dtype=np.float32)
    true[0, 0, :4, :4] = 1
    prob = np.zeros((1, 1, 4, 4), dtype=np.float32)
    prob[0, 0, :2, :2] = 1  # same region at half resolution
    acc = MetricAccumulator(class_names=["a"])
    acc.update(mask_prob=prob, mask_true=true)
    assert acc.compute()["dice"] > 0.8


def _targets():
    return {
        "boxes": np.array(
            [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [70, 70, 80, 80]], dtype=float
        ),
        "labels": np.array([1, 1, 1, 2]),
        "morphology": np.array([0, 1, -1, 1]),
    }


def test_localization_hand_case() -> None:
    det = {
        "boxes": np.array(
            [
                [0, 0, 10, 6.5],  # IoU 0.65 with GT0
                [20, 20, 30, 28.5],  # IoU 0.85 with GT1
                [20, 20, 30, 30],  # IoU 1 with GT1 but score below 0.5: ignored
                [50, 50, 60, 60],  # IoU 1 with GT2 but wrong class: ignored
                [70, 70, 80, 79.5],  # IoU 0.95 with GT3 (class 2)
            ]
        ),
        "labels": np.array([1, 1, 1, 2, 2]),
        "scores": np.array([0.9, 0.6, 0.3, 0.99, 0.7]),
    }
    acc = MetricAccumulator(class_names=["cancer", "ulcer"], morphology_names=["uplift", "flat"])
    acc.update(detections=[det], targets=[_targets()])
    loc = acc.compute()["localization"]
    overall = loc["overall"]
    assert overall["total"] == 4
    assert overall["hits"] == {0.6: 3, 0.7: 2, 0.8: 2, 0.9: 1}
    assert overall["share"][0.7] == pytest.approx(0.5)
    assert overall["mean_iou"] == pytest.approx((0.65 + 0.85 + 0.0 + 0.95) / 4)
    uplift, flat = loc["per_morphology"]["uplift"], loc["per_morphology"]["flat"]
    assert uplift["total"] == 1 and uplift["hits"] == {0.6: 1, 0.7: 0, 0.8: 0, 0.9: 0}
    assert flat["total"] == 2 and flat["hits"] == {0.6: 2, 0.7: 2, 0.8: 2, 0.9: 1}
    assert loc["per_morphology"]["unknown"]["total"] == 1
    assert loc["per_morphology"]["unknown"]["hits"][0.6] == 0
    assert loc["per_class"]["cancer"]["hits"] == {0.6: 2, 0.7: 1, 0.8: 1, 0.9: 0}
    flat_m = flat_scalars(acc.compute())
    assert flat_m["loc@0.6"] == pytest.approx(0.75)
    assert flat_m["loc@0.9/flat"] == pytest.approx(0.5)


def test_localization_score_threshold_is_configurable() -> None:
    det = {
        "boxes": np.array([[20, 20, 30, 30]]),
        "labels": np.array([1]),
        "scores": np.array([0.3]),
    }
    strict = MetricAccumulator(class_names=["a", "b"], morphology_names=["u", "f"])
    loose = MetricAccumulator(
        class_names=["a", "b"], morphology_names=["u", "f"], loc_score_threshold=0.2
    )
    for acc in (strict, loose):
        acc.update(detections=[det], targets=[_targets()])
    assert strict.compute()["localization"]["per_morphology"]["f"]["hits"][0.9] == 0
    assert loose.compute()["localization"]["per_morphology"]["f"]["hits"][0.9] == 1
    assert math.isnan(
        MetricAccumulator(class_names=["a"], morphology_names=["u"]).compute()["localization"][
            "per_morphology"
        ]["u"]["share"][0.6]
    )
