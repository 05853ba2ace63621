"""DetectionDataset items, padding, caching, and (empty) batches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from endofed.shared.data import (
    Batch,
    DetectionDataset,
    collate_detection,
    load_sample,
    make_loader,
    scan_site,
)

S, M = 64, 4


@pytest.fixture
def site(kvasir_site):
    return scan_site(kvasir_site({
        "big_small": [(4, 4, 60, 70), (90, 10, 100, 20)],
        "many": [(2 + 20 * i, 5, 12 + 20 * i, 15) for i in range(6)],
        "normal": [],
    }))


def _by_stem(ds, stem):
    return next(i for i, r in enumerate(ds.records) if r.image_path.stem == stem)


def test_item_shapes_and_padding(site):
    ds = DetectionDataset(site.records, image_size=S, train=False, max_boxes=M)
    assert len(ds) == 3
    item = ds[_by_stem(ds, "big_small")]
    assert len(item) == len(Batch._fields)
    image, mask, boxes, labels, num_boxes, image_label, morph = item
    assert image.shape == (3, S, S) and image.dtype == torch.float32
    assert mask.shape == (1, S, S) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert boxes.shape == (M, 4) and labels.shape == (M,) and morph.shape == (M,)
    assert num_boxes.shape == () and int(num_boxes) == 2
    assert labels.tolist() == [1, 1, 0, 0] and morph.tolist() == [-1, -1, -1, -1]
    assert int(image_label) == 1
    # eval resize: x * 64/128, y * 64/96
    sx, sy = S / 128, S / 96
    got = sorted(boxes[:2].tolist())
    want = sorted([[4 * sx, 4 * sy, 60 * sx, 70 * sy], [90 * sx, 10 * sy, 100 * sx, 20 * sy]])
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert boxes[2:].abs().sum() == 0
    normal = ds[_by_stem(ds, "normal")]
    assert int(normal[4]) == 0 and int(normal[5]) == 0 and normal[1].sum() == 0


def test_more_boxes_than_max_keeps_largest(kvasir_site):
    idx = scan_site(kvasir_site({"m": [(2 + 21 * i, 5, 6 + 23 * i, 40) for i in range(6)]}))
    ds = DetectionDataset(idx.records, image_size=S, train=False, max_boxes=M)
    boxes, n = ds[0][2], int(ds[0][4])
    assert n == M
    widths = (boxes[:, 2] - boxes[:, 0]) / (S / 128)
    # original widths 4, 6, 8, 10, 12, 14: the four largest survive
    np.testing.assert_allclose(sorted(widths.tolist()), [8, 10, 12, 14], atol=0.1)


def test_morphology_indices(kvasir_site):
    root = kvasir_site({"a": [(10, 10, 40, 40)], "b": [(10, 10, 40, 40)]})
    (root / "manifest.csv").write_text(
        "image,label,morphology\nimages/a.png,polyp,sessile\nimages/b.png,polyp,pedunculated\n"
    )
    idx = scan_site(root)
    ds = DetectionDataset(idx.records, image_size=S, train=False, max_boxes=M,
                          morphology_names=["flat", "pedunculated", "sessile"])
    assert ds[_by_stem(ds, "a")][6].tolist() == [2, -1, -1, -1]
    assert ds[_by_stem(ds, "b")][6].tolist() == [1, -1, -1, -1]
    assert DetectionDataset(idx.records, image_size=S, train=False).morphology_names == [
        "pedunculated", "sessile"]


def test_train_items_are_random_but_fixed_shape(site):
    ds = DetectionDataset(site.records, image_size=S, train=True, max_boxes=M)
    torch.manual_seed(0)
    items = [ds[0] for _ in range(8)]
    assert all(it[0].shape == (3, S, S) and it[2].shape == (M, 4) for it in items)
    assert any(not torch.equal(items[0][0], it[0]) for it in items[1:])


def test_loader_batches_and_empty_batch(site):
    ds = DetectionDataset(site.records, image_size=S, train=True, max_boxes=M)
    batches = list(make_loader(ds, batch_size=2, shuffle=True, seed=0))
    assert [len(b) for b in batches] == [2, 1]
    b = batches[0]
    assert isinstance(b, Batch)
    assert b.images.shape == (2, 3, S, S) and b.boxes.shape == (2, M, 4)
    assert b.num_boxes.dtype == torch.int64 and b.morphology.shape == (2, M)
    empty = ds.collate_fn()([])
    assert isinstance(empty, Batch) and len(empty) == 0
    assert empty.images.shape == (0, 3, S, S) and empty.masks.shape == (0, 1, S, S)
    assert empty.boxes.shape == (0, M, 4) and empty.labels.dtype == torch.int64
    assert collate_detection([], image_size=S, max_boxes=M).morphology.shape == (0, M)


def test_cache_avoids_reloading(site):
    calls: list[str] = []

    def counting_loader(record):
        calls.append(record.image_path.name)
        return load_sample(record)

    ds = DetectionDataset(site.records, image_size=S, train=False, max_boxes=M,
                          loader=counting_loader, cache_items=2)
    first = ds[0]
    again = ds[0]
    assert len(calls) == 1
    assert torch.equal(first[0], again[0])
    ds[1]
    ds[2]  # evicts 0 (LRU of 2)
    ds[0]
    assert len(calls) == 4

    plain = DetectionDataset(site.records, image_size=S, train=False, max_boxes=M,
                             cache_items=2)
    plain[0]
    clone = pickle.loads(pickle.dumps(plain))  # what a spawned worker receives
    assert len(plain._cache) == 1 and len(clone._cache) == 0
    assert torch.equal(clone[0][0], first[0])


def test_custom_loader_output_is_used(site):
    def cropped(record):
        s = load_sample(record)
        s.image = s.image[:, 32:].copy()  # e.g. a preprocessing crop of the left border
        s.mask = s.mask[:, 32:].copy()
        s.boxes = np.clip(s.boxes - [32, 0, 32, 0], 0, None).astype(np.float32)
        keep = (s.boxes[:, 2] - s.boxes[:, 0]) > 1
        s.boxes, s.labels = s.boxes[keep], s.labels[keep]
        return s

    ds = DetectionDataset(site.records, image_size=S, train=False, max_boxes=M, loader=cropped)
    _, _, boxes, _, n, _, _ = ds[_by_stem(ds, "big_small")]
    assert int(n) == 2
    # x scales by 64/96 now: first box 0..28 px wide in the cropped frame
    np.testing.assert_allclose(sorted(boxes[:2, 0].tolist())[0], 0.0, atol=1e-4)


@pytest.mark.timeout(120)
def test_worker_processes_do_not_deadlock_after_opencv_threads(kvasir_site):
    # regression: cv2.setNumThreads() inside a forked worker hung when the parent had
    # used OpenCV's thread pool (the scan decodes images in threads)
    import cv2

    idx = scan_site(kvasir_site({f"i{k}": [(5, 5, 30 + k, 40)] for k in range(20)}))
    ds = DetectionDataset(idx.records, image_size=S, train=True, max_boxes=M)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        cv2.resize(np.zeros((512, 512, 3), np.uint8), (300, 300))  # spin up the pool
        batches = list(make_loader(ds, batch_size=8, num_workers=2, seed=0))
    finally:
        cv2.setNumThreads(previous)
    assert sum(len(b) for b in batches) == 20
