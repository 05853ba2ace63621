"""Additivity of the state, image-level metrics against sklearn, and degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from endofed.shared.data.collate import Batch
from endofed.shared.metrics import MetricAccumulator, flat_scalars, state_to_arrays, sum_states


def _acc(data, **kw) -> MetricAccumulator:
    return MetricAccumulator(
        class_names=data.class_names, morphology_names=data.morphology_names, **kw
    )


def _assert_same_scalars(a: dict, b: dict) -> None:
    fa, fb = flat_scalars(a), flat_scalars(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if math.isnan(fa[key]):
            assert math.isnan(fb[key]), key
        else:
            assert fa[key] == pytest.approx(fb[key], rel=1e-12, abs=1e-12), key


def test_merge_of_halves_equals_whole(eval_set) -> None:
    whole = _acc(eval_set)
    whole.update(**eval_set.batch(slice(None)), latency_ms=120.0)
    first, second = _acc(eval_set), _acc(eval_set)
    first.update(**eval_set.batch(slice(0, 25)), latency_ms=50.0)
    second.update(**eval_set.batch(slice(25, None)), latency_ms=70.0)

    merged = first + second
    ws, ms = whole.state(), merged.state()
    assert ws.keys() == ms.keys()
    for key in ws:
        if ws[key].dtype.kind == "i":
            np.testing.assert_array_equal(ws[key], ms[key], err_msg=key)
        else:
            np.testing.assert_allclose(ws[key], ms[key], rtol=1e-12, err_msg=key)
    _assert_same_scalars(whole.compute(), merged.compute())
    assert merged.compute()["confusion_matrix"] == whole.compute()["confusion_matrix"]
    assert merged.compute()["num_images"] == len(eval_set)
    assert merged.compute()["latency_ms"] == pytest.approx(120.0 / len(eval_set))

    # In-place merge of a raw state and summing states from three "sites".
    in_place = _acc(eval_set).merge(first.state()).merge(second)
    _assert_same_scalars(whole.compute(), in_place.compute())
    parts = [_acc(eval_set) for _ in range(3)]
    for k, sl in enumerate([slice(0, 7), slice(7, 40), slice(40, None)]):
        parts[k].update(**eval_set.batch(sl))
    summed = MetricAccumulator.from_state(
        sum_states(p.state() for p in parts), **parts[0].ctor_kwargs()
    )
    plain = _acc(eval_set)
    plain.update(**eval_set.batch(slice(None)))
    _assert_same_scalars(plain.compute(), summed.compute())


def test_state_survives_flower_array_record(eval_set) -> None:
    from flwr.app import Array, ArrayRecord

    acc = _acc(eval_set)
    acc.update(**eval_set.batch(slice(None)))
    arrays = state_to_arrays(acc.state())
    assert all(isinstance(k, str) for k in arrays)
    assert all(a.dtype in (np.int64, np.float64) for a in arrays.values())
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    back = {k: record[k].numpy() for k in record}
    rebuilt = MetricAccumulator.from_state(back, **acc.ctor_kwargs())
    _assert_same_scalars(acc.compute(), rebuilt.compute())


def test_torch_inputs_equal_numpy_inputs(eval_set) -> None:
    b = eval_set.batch(slice(0, 20))
    tb = {
        "detections": [{k: torch.as_tensor(v) for k, v in d.items()} for d in b["detections"]],
        "targets": [{k: torch.as_tensor(v) for k, v in t.items()} for t in b["targets"]],
        "image_probs": torch.as_tensor(b["image_probs"], dtype=torch.float32),
        "image_labels": torch.as_tensor(b["image_labels"]),
        "mask_prob": torch.as_tensor(b["mask_prob"]),
        "mask_true": torch.as_tensor(b["mask_true"]),
    }
    a_np, a_t = _acc(eval_set), _acc(eval_set)
    a_np.update(**b)
    a_t.update(**tb)
    for key, value in a_np.state().items():
        np.testing.assert_allclose(value, a_t.state()[key], rtol=1e-6, err_msg=key)


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


def test_single_class_images_give_nan_auc_not_crash() -> None:
    acc = MetricAccumulator(class_names=["a"])
    acc.update(image_probs=np.array([[0.2, 0.8], [0.6, 0.4]]), image_labels=np.array([1, 1]))
    m = acc.compute()
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.5)


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


def test_invalid_inputs_raise() -> None:
    acc = MetricAccumulator(class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"image_probs must be \(B, 3\)"):
        acc.update(image_probs=np.zeros((2, 2)), image_labels=np.zeros(2))
    with pytest.raises(ValueError, match="image_labels must be in 0..2"):
        acc.update(image_probs=np.zeros((1, 3)), image_labels=np.array([3]))
    with pytest.raises(ValueError, match="labels must be in 1..2"):
        acc.update(
            detections=[{"boxes": np.zeros((1, 4)), "labels": [5], "scores": [0.5]}],
            targets=[{"boxes": np.zeros((0, 4)), "labels": []}],
        )
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
    other = MetricAccumulator(class_names=["a", "c"])
    with pytest.raises(ValueError, match="different arguments"):
        acc.merge(other)
    with pytest.raises(ValueError, match="shape"):
        MetricAccumulator(class_names=["a"]).merge(acc.state())
    with pytest.raises(ValueError, match="keys do not match"):
        MetricAccumulator.from_state({"det_tp": np.zeros(3)}, class_names=["a"])
