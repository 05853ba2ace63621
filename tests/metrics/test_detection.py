"""Detection AP: hand-computed cases and agreement with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from endofed.shared.metrics import MetricAccumulator
from endofed.shared.metrics.detection import average_precision_from_histograms, greedy_match


def _coco_eval(eval_set) -> COCOeval:
    images, anns, dets = [], [], []
    ann_id = 1
    for i, (tgt, det) in enumerate(zip(eval_set.targets, eval_set.detections)):
        images.append({"id": i + 1, "width": 256, "height": 256})
        for box, lab in zip(tgt["boxes"], tgt["labels"]):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": int(lab),
                    "bbox": [float(box[0]), float(box[1]), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        for box, lab, score in zip(det["boxes"], det["labels"], det["scores"]):
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": int(lab),
                    "bbox": [
                        float(box[0]),
                        float(box[1]),
                        float(box[2] - box[0]),
                        float(box[3] - box[1]),
                    ],
                    "score": float(score),
                }
            )
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(eval_set.class_names)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": cats}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_pycocotools(seed: int, make_eval_set) -> None:
    data = make_eval_set(seed=seed, n_images=80)
    acc = MetricAccumulator(class_names=data.class_names)
    for start in range(0, len(data), 16):  # several batches
        b = data.batch(slice(start, start + 16))
        acc.update(detections=b["detections"], targets=b["targets"])
    m = acc.compute()
    ev = _coco_eval(data)
    coco_map, coco_map50 = float(ev.stats[0]), float(ev.stats[1])
    assert 0.05 < coco_map50 < 0.99  # the random data is neither trivial nor hopeless
    assert m["map50"] == pytest.approx(coco_map50, abs=0.01)
    assert m["map"] == pytest.approx(coco_map, abs=0.01)
    # per-class AP50: precision[T, R, K, A, M] with area "all" (0) and maxDets=100 (2)
    for k, name in enumerate(data.class_names):
        prec = ev.eval["precision"][0, :, k, 0, 2]
        assert m["ap_per_class"][name] == pytest.approx(float(prec.mean()), abs=0.015)


def test_ap_hand_case() -> None:
    # 2 GT; detections by score: TP, FP, TP -> precision 1, 1/2, 2/3 at recall .5, .5, 1.
    # Envelope: 1 up to recall .5 (51 of the 101 points), 2/3 beyond (50 points).
    gt = {"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), "labels": np.array([1, 1])}
    det = {
        "boxes": np.array([[0, 0, 10, 10], [100, 100, 110, 110], [50, 50, 60, 60]]),
        "labels": np.array([1, 1, 1]),
        "scores": np.array([0.9, 0.8, 0.7]),
    }
    acc = MetricAccumulator(class_names=["lesion"])
    acc.update(detections=[det], targets=[gt])
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    m = acc.compute()
    assert m["map50"] == pytest.approx(expected, abs=1e-9)
    assert m["map"] == pytest.approx(expected, abs=1e-9)  # IoU is exactly 1 for the TPs


def test_duplicate_detection_is_false_positive() -> None:
    tp = greedy_match(np.array([[0.9], [0.95]]), [0.5])
    assert tp.tolist() == [[True, False]]
    # The second detection takes the remaining GT even if its best IoU is with the first.
    tp = greedy_match(np.array([[0.9, 0.6], [0.95, 0.7]]), [0.5, 0.8])
    assert tp.tolist() == [[True, True], [True, False]]


def test_ap_from_histograms_degenerate() -> None:
    z = np.zeros(10, dtype=np.int64)
    assert np.isnan(average_precision_from_histograms(z, z, 0))
    assert average_precision_from_histograms(z, z, 5) == 0.0
    fp = z.copy()
    fp[3] = 4
    assert average_precision_from_histograms(z, fp, 5) == 0.0


def test_class_without_gt_is_excluded_from_map() -> None:
    acc = MetricAccumulator(class_names=["a", "b"])
    gt = {"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([1])}
    det = {
        "boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),
        "labels": np.array([1, 2]),
        "scores": np.array([0.9, 0.9]),
    }
    acc.update(detections=[det], targets=[gt])
    m = acc.compute()
    assert m["ap_per_class"]["a"] == pytest.approx(1.0)
    assert np.isnan(m["ap_per_class"]["b"])
    assert m["map50"] == pytest.approx(1.0)


def test_missed_gt_gives_zero_ap() -> None:
    acc = MetricAccumulator(class_names=["a"])
    gt = {"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([1])}
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)}
    acc.update(detections=[empty], targets=[gt])
    assert acc.compute()["map50"] == 0.0


def test_max_detections_per_class_and_image() -> None:
    gt = {"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([1])}
    boxes = np.tile([[100.0, 100, 110, 110]], (5, 1))
    boxes[-1] = [0, 0, 10, 10]  # the only true positive has the lowest score
    det = {"boxes": boxes, "labels": np.ones(5), "scores": np.linspace(0.9, 0.5, 5)}
    capped = MetricAccumulator(class_names=["a"], max_detections=4)
    capped.update(detections=[det], targets=[gt])
    full = MetricAccumulator(class_names=["a"])
    full.update(detections=[det], targets=[gt])
    assert capped.compute()["map50"] == 0.0
    assert full.compute()["map50"] == pytest.approx(0.2)
