"""Grouped, deterministic, stratified splits that honour a manifest split column."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from endofed.shared.data import SampleMeta, SampleRecord, split_records


def _rec(i: int, patient: str | None = None, lesion: bool = True, split: str | None = None):
    boxes = np.array([[0, 0, 10, 10]], np.float32) if lesion else np.zeros((0, 4), np.float32)
    labels = np.ones(len(boxes), np.int64)
    return SampleRecord(
        image_path=Path(f"/site/img{i:04d}.png"), mask_path=None, height=32, width=32,
        boxes=boxes, labels=labels,
        meta=SampleMeta(source=f"img{i}", patient_id=patient, split=split),
    )


def _patients(n_patients: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    recs, i = [], 0
    for p in range(n_patients):
        for _ in range(int(rng.integers(1, 7))):
            recs.append(_rec(i, patient=f"p{p}", lesion=p % 3 != 0))
            i += 1
    return recs


def _sides(split):
    return {k: {r.image_path for r in v} for k, v in split.items()}


def test_no_patient_on_two_sides_and_nothing_lost():
    recs = _patients()
    out = split_records(recs, (0.6, 0.2, 0.2), seed=3)
    assert set(out) == {"train", "val", "test"}
    seen: dict[str, str] = {}
    for side, rs in out.items():
        for r in rs:
            assert seen.setdefault(r.group_id, side) == side, f"{r.group_id} leaks"
    assert sorted(r.image_path for rs in out.values() for r in rs) == sorted(
        r.image_path for r in recs
    )
    n = len(recs)
    # group sizes are at most 6 so each side lands within a few images of its target
    assert abs(len(out["train"]) - 0.6 * n) <= 6
    assert abs(len(out["val"]) - 0.2 * n) <= 6


def test_deterministic_and_order_independent():
    recs = _patients()
    a = _sides(split_records(recs, seed=7))
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    b = _sides(split_records(shuffled, seed=7))
    assert a == b
    c = _sides(split_records(recs, seed=8))
    assert a != c
    # each side keeps the input order
    out = split_records(recs, seed=7)
    order = {r.image_path: i for i, r in enumerate(recs)}
    for rs in out.values():
        idx = [order[r.image_path] for r in rs]
        assert idx == sorted(idx)


def test_two_fractions_and_stratification():
    recs = [_rec(i, lesion=i < 50) for i in range(100)]  # 50 lesion, 50 normal, singletons
    out = split_records(recs, (0.8, 0.2), seed=0)
    assert set(out) == {"train", "val"}
    assert len(out["val"]) == 20
    n_lesion_val = sum(len(r.boxes) > 0 for r in out["val"])
    assert 8 <= n_lesion_val <= 12


def test_manifest_split_is_honoured_for_whole_group():
    recs = _patients(20)
    fixed = [r for r in recs if r.group_id == "p4"]
    fixed[0].meta.split = "test"  # one image of patient p4 says "test": all of p4 follows
    given_val = [r for r in recs if r.group_id == "p7"]
    for r in given_val:
        r.meta.split = "val"
    out = split_records(recs, seed=0)
    test_paths = {r.image_path for r in out["test"]}
    val_paths = {r.image_path for r in out["val"]}
    assert {r.image_path for r in fixed} <= test_paths
    assert {r.image_path for r in given_val} <= val_paths


def test_fully_assigned_manifest_is_kept_exactly():
    recs = [_rec(i, split=["train", "val", "test"][i % 3]) for i in range(30)]
    out = split_records(recs, (0.8, 0.1, 0.1))
    for side, rs in out.items():
        assert all(r.meta.split == side for r in rs)
        assert len(rs) == 10


def test_images_without_group_are_their_own_group():
    recs = [_rec(i) for i in range(10)]
    out = split_records(recs, (0.5, 0.5), seed=0)
    assert len(out["train"]) == 5 and len(out["val"]) == 5


def test_bad_fractions():
    with pytest.raises(ValueError):
        split_records([_rec(0)], (1.0,))
    with pytest.raises(ValueError):
        split_records([_rec(0)], (0.5, -0.1, 0.6))
