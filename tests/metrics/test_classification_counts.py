"""Image-level classification (shared/metrics/classification_counts.py) against sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from endofed.shared.metrics import MetricAccumulator


def _acc(data, **kw) -> MetricAccumulator:
    return MetricAccumulator(
        class_names=data.class_names, morphology_names=data.morphology_names, **kw
    )


def test_image_level_metrics_match_sklearn(eval_set) -> None:
    acc = _acc(eval_set)
    for start in range(0, len(eval_set), 13):
        acc.update(**eval_set.batch(slice(start, start + 13)))
    m = acc.compute()
    y, p = eval_set.image_labels, eval_set.image_probs
    pred = p.argmax(axis=1)
    k1 = len(eval_set.class_names) + 1
    np.testing.assert_array_equal(
        np.array(m["confusion_matrix"]), confusion_matrix(y, pred, labels=list(range(k1)))
    )
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred, labels=list(range(1, k1)), average="macro"))
    assert m["f1_lesion"] == pytest.approx(f1_score(y > 0, pred > 0))
    lesion, normal = y > 0, y == 0
    assert m["sensitivity"] == pytest.approx(np.mean(pred[lesion] > 0))
    assert m["specificity"] == pytest.approx(np.mean(pred[normal] == 0))
    for c, name in enumerate(m["class_names"]):
        assert m["auc_per_class"][name] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=0.005)
    assert m["auc"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=0.005
    )
    assert m["auc_lesion"] == pytest.approx(roc_auc_score(lesion, 1 - p[:, 0]), abs=0.005)
    roc = m["roc"]["normal"]
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0
    assert roc["fpr"][-1] == pytest.approx(1) and roc["tpr"][-1] == pytest.approx(1)
    assert np.all(np.diff(roc["fpr"]) >= 0)


def test_binary_task_auc_is_lesion_auc() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = np.clip(0.5 * y + rng.normal(0.25, 0.25, 500), 0, 1)
    probs = np.stack([1 - s, s], axis=1)
    acc = MetricAccumulator(class_names=["lesion"])
    acc.update(image_probs=probs, image_labels=y)
    m = acc.compute()
    expected = roc_auc_score(y, s)
    assert 0.7 < expected < 0.99
    assert m["auc"] == pytest.approx(expected, abs=0.005)
    assert m["auc_lesion"] == pytest.approx(expected, abs=0.005)
    assert m["f1"] == pytest.approx(f1_score(y, s >= 0.5))


def test_auc_ties_count_half() -> None:
    acc = MetricAccumulator(class_names=["lesion"], score_bins=10)
    # All scores equal: AUC must be 0.5 exactly, as roc_auc_score gives.
    acc.update(image_probs=np.full((6, 2), 0.5), image_labels=np.array([0, 1, 0, 1, 1, 0]))
    assert acc.compute()["auc"] == pytest.approx(0.5)


def test_single_class_images_give_nan_auc_not_crash() -> None:
    acc = MetricAccumulator(class_names=["a"])
    acc.update(image_probs=np.array([[0.2, 0.8], [0.6, 0.4]]), image_labels=np.array([1, 1]))
    m = acc.compute()
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.5)
