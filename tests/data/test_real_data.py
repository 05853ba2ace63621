"""The real Kvasir-SEG and normal-frames folders (skipped when the data is absent)."""

from __future__ import annotations

import numpy as np

from endofed.shared.data import DetectionDataset, load_sample, scan_site, split_records, summarize


def test_kvasir_seg(shared_data_dir):
    index = scan_site(shared_data_dir / "kvasir-seg")
    s = summarize(index)
    assert (s["images"], s["usable"], s["boxes"]) == (1000, 1000, 1071)
    assert s["problems"] == [] and index.class_names == ["polyp"]
    assert s["images_without_lesions"] == 0
    # 195 Kvasir-Sessile images flagged in the manifest
    assert sum(1 for r in index.records if "sessile" in r.meta.morphologies) == 195
    # JSON boxes and masks agree: nearly all mask pixels fall inside the boxes
    inside = []
    for rec in index.records[::25]:
        sample = load_sample(rec)
        covered = np.zeros_like(sample.mask)
        for x0, y0, x1, y1 in sample.boxes.astype(int):
            covered[y0:y1 + 1, x0:x1 + 1] = True
        inside.append((sample.mask & covered).sum() / max(1, sample.mask.sum()))
    assert np.median(inside) > 0.98
    ds = DetectionDataset(index.records[:4], image_size=128, train=True)
    assert ds[0][0].shape == (3, 128, 128)
    split = split_records(index.records, (0.8, 0.2), seed=0)
    assert len(split["val"]) == 200


def test_normal_frames(shared_data_dir):
    s = summarize(scan_site(shared_data_dir / "normal-frames"))
    assert (s["usable"], s["boxes"], s["images_without_lesions"]) == (1000, 0, 1000)
    assert s["sizes"]["height"]["max"] == 256
    assert s["problems"] == []
