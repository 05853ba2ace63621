"""MetricAccumulator itself: construction, update() grouping, degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from endofed.shared.data.collate import Batch
from endofed.shared.metrics import MetricAccumulator, flat_scalars


def test_empty_accumulator_computes_nans() -> None:
    acc = MetricAccumulator(class_names=["a", "b"], morphology_names=["flat"])
    m = acc.compute()
    for key in (
        "map50",
        "map",
        "accuracy",
        "f1",
        "sensitivity",
        "specificity",
        "auc",
        "dice",
        "iou",
        "latency_ms",
    ):
        assert math.isnan(m[key]), key
    assert m["num_images"] == 0
    assert m["roc"] == {}
    assert m["localization"]["overall"]["total"] == 0
    flat = flat_scalars(m)
    assert all(isinstance(v, float) for v in flat.values())
    assert math.isnan(flat["loc@0.6"]) and math.isnan(flat["loc@0.6/flat"])


def test_empty_batch_and_update_batch() -> None:
    acc = MetricAccumulator(class_names=["a"])
    acc.update(
        detections=[],
        targets=[],
        image_probs=np.zeros((0, 2)),
        image_labels=np.zeros(0),
        mask_prob=np.zeros((0, 1, 8, 8)),
        mask_true=np.zeros((0, 1, 8, 8)),
    )
    assert acc.compute()["num_images"] == 0

    batch = Batch(
        images=torch.zeros(2, 3, 16, 16),
        masks=torch.zeros(2, 1, 16, 16),
        boxes=torch.tensor([[[0.0, 0, 8, 8], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]]),
        labels=torch.tensor([[1, 0], [0, 0]]),
        num_boxes=torch.tensor([1, 0]),
        image_labels=torch.tensor([1, 0]),
        morphology=torch.tensor([[-1, -1], [-1, -1]]),
    )
    batch.masks[0, 0, :8, :8] = 1
    dets = [
        {
            "boxes": torch.tensor([[0.0, 0, 8, 8]]),
            "labels": torch.tensor([1]),
            "scores": torch.tensor([0.9]),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0),
        },
    ]
    acc.update_batch(
        batch,
        detections=dets,
        image_probs=torch.tensor([[0.1, 0.9], [0.8, 0.2]]),
        mask_prob=batch.masks.clone(),
        latency_ms=4.0,
    )
    m = acc.compute()
    assert m["map50"] == pytest.approx(1.0)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0
    assert m["dice"] == 1.0 and m["dice_pooled"] == 1.0
    assert m["latency_ms"] == pytest.approx(2.0)
    assert m["num_images"] == 2


def test_invalid_update_groups_and_class_names_raise() -> None:
    acc = MetricAccumulator(class_names=["a", "b"])
    with pytest.raises(ValueError, match="together"):
        acc.update(image_probs=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="inconsistent batch sizes"):
        acc.update(
            image_probs=np.zeros((2, 3)),
            image_labels=np.zeros(2),
            mask_prob=np.zeros((3, 4, 4)),
            mask_true=np.zeros((3, 4, 4)),
        )
    with pytest.raises(ValueError, match="normal"):
        MetricAccumulator(class_names=["normal", "a"])
