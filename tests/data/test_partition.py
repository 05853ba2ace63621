"""Partitioning one dataset into virtual hospitals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from endofed.shared.data.partition import (
    PARTITIONERS,
    PartitionError,
    label_counts,
    partition,
    partition_by_source,
    partition_dirichlet,
    partition_iid,
)
from endofed.shared.data.sample import SampleMeta, SampleRecord

NUM_CLASSES = 3


def _record(i: int, label: int, patient: str | None, site: str = "",
            folder: str = "pool") -> SampleRecord:
    boxes = np.array([[0, 0, 10 + i % 5, 10]], np.float32) if label else np.zeros((0, 4))
    labels = np.array([label], np.int64) if label else np.zeros((0,), np.int64)
    path = Path(f"/data/{folder}/images/img{i:04d}.png")
    return SampleRecord(
        image_path=path, mask_path=None, height=64, width=64,
        boxes=boxes.astype(np.float32), labels=labels,
        meta=SampleMeta(source=str(path), site=site, patient_id=patient),
    )


def _dataset(n: int = 240, seed: int = 0) -> list[SampleRecord]:
    """Labels 0..3 about balanced; patients of 1..3 images sharing one label."""
    rng = np.random.default_rng(seed)
    out: list[SampleRecord] = []
    p = 0
    while len(out) < n:
        label = int(rng.integers(0, NUM_CLASSES + 1))
        for _ in range(int(rng.integers(1, 4))):
            out.append(_record(len(out), label, f"p{p}"))
        p += 1
    return out


def _ids(parts) -> list[list[int]]:
    return [[id(r) for r in part] for part in parts]


def _check_split(records, parts, k) -> None:
    assert len(parts) == k
    assert all(len(p) > 0 for p in parts), [len(p) for p in parts]
    flat = [id(r) for p in parts for r in p]
    assert sorted(flat) == sorted(id(r) for r in records)  # complete and disjoint
    site_of_group: dict[str, int] = {}
    for s, part in enumerate(parts):
        for r in part:
            assert site_of_group.setdefault(r.group_id, s) == s, "a group was split"
        order = [records.index(r) for r in part]
        assert order == sorted(order), "input order not kept within a site"


def _label_skew(parts) -> float:
    """Mean total-variation distance between each site's and the global label mix."""
    counts = label_counts(parts, NUM_CLASSES).astype(float)
    glob = counts.sum(0) / counts.sum()
    site = counts / counts.sum(1, keepdims=True)
    return float(0.5 * np.abs(site - glob).sum(1).mean())


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.1", "dirichlet:1", "dirichlet:100"])
@pytest.mark.parametrize("k", [2, 5])
def test_split_is_complete_disjoint_grouped_and_reproducible(spec: str, k: int) -> None:
    records = _dataset()
    parts = partition(records, spec, k, seed=3)
    _check_split(records, parts, k)
    assert _ids(partition(records, spec, k, seed=3)) == _ids(parts)
    assert _ids(partition(records, spec, k, seed=4)) != _ids(parts)


def test_dirichlet_small_alpha_is_more_skewed_than_iid() -> None:
    records = _dataset(400)
    seeds = range(5)
    iid = np.mean([_label_skew(partition_iid(records, 4, s)) for s in seeds])
    skewed = np.mean([_label_skew(partition_dirichlet(records, 4, 0.1, s)) for s in seeds])
    flat = np.mean([_label_skew(partition_dirichlet(records, 4, 1000.0, s)) for s in seeds])
    assert iid < 0.08
    assert skewed > 0.3 and skewed > 3 * iid
    assert flat < skewed / 2


def test_dirichlet_keeps_every_site_non_empty_even_when_extreme() -> None:
    records = _dataset(40)
    for seed in range(20):
        _check_split(records, partition_dirichlet(records, 6, 0.01, seed), 6)


def test_dirichlet_minimum_site_size_redraws() -> None:
    records = _dataset(120)
    plain = [min(len(p) for p in partition_dirichlet(records, 4, 0.1, s)) for s in range(10)]
    assert min(plain) < 10  # without a minimum, tiny sites happen at alpha 0.1
    for seed in range(10):
        parts = partition(records, "dirichlet:0.1,10", 4, seed=seed)
        _check_split(records, parts, 4)
        assert min(len(p) for p in parts) >= 10
    # Deterministic for a seed, and the minimum 0 is the plain scheme.
    assert _ids(partition(records, "dirichlet:0.1,10", 4, seed=3)) == _ids(
        partition(records, "dirichlet:0.1,10", 4, seed=3))
    assert _ids(partition(records, "dirichlet:0.1,0", 4, seed=3)) == _ids(
        partition_dirichlet(records, 4, 0.1, 3))
    with pytest.raises(PartitionError, match="at least 40 records"):
        partition(records, "dirichlet:0.1,40", 4)
    with pytest.raises(PartitionError, match="raise alpha"):
        partition_dirichlet(records, 4, 0.01, 0, min_size=29, max_draws=3)
    with pytest.raises(PartitionError, match="integer"):
        partition(records, "dirichlet:0.5,many", 3)


def test_iid_sizes_are_balanced() -> None:
    records = _dataset(241)
    sizes = [len(p) for p in partition_iid(records, 4, seed=0)]
    assert max(sizes) - min(sizes) <= 3  # at most one patient (<= 3 images) apart


def test_partition_by_source_uses_site_then_folder() -> None:
    records = [_record(i, i % 2, f"p{i}", site=f"h{i % 3}") for i in range(30)]
    parts = partition_by_source(records, 3)
    _check_split(records, parts, 3)
    assert sorted({r.meta.site for r in p}.pop() for p in parts) == ["h0", "h1", "h2"]
    assert all(len({r.meta.site for r in p}) == 1 for p in parts)
    merged = partition_by_source(records, 2)
    _check_split(records, merged, 2)
    assert sorted(len({r.meta.site for r in p}) for p in merged) == [1, 2]
    by_folder = [_record(i, 1, f"p{i}", folder=f"center{i % 2}") for i in range(10)]
    parts = partition(by_folder, "source", 2)
    assert all(len({r.image_path.parent for r in p}) == 1 for p in parts)
    with pytest.raises(PartitionError, match="only 2 source"):
        partition_by_source(by_folder, 3)


def test_specs_are_parsed_through_the_registry() -> None:
    records = _dataset(60)
    assert set(PARTITIONERS) >= {"iid", "dirichlet", "source"}
    assert _ids(partition(records, "Dirichlet: 0.5", 3, seed=1)) == _ids(
        partition_dirichlet(records, 3, 0.5, seed=1)
    )
    assert _ids(partition(records, "iid", 3, seed=1)) == _ids(partition_iid(records, 3, 1))
    with pytest.raises(PartitionError, match="unknown partition scheme"):
        partition(records, "random", 3)
    with pytest.raises(PartitionError, match="alpha"):
        partition(records, "dirichlet", 3)
    with pytest.raises(PartitionError, match="alpha"):
        partition(records, "dirichlet:-1", 3)
    with pytest.raises(PartitionError, match="no parameter"):
        partition(records, "iid:2", 3)


def test_too_few_groups_is_an_error() -> None:
    records = [_record(i, 1, "same-patient") for i in range(10)]
    with pytest.raises(PartitionError, match="1 patient/lesion groups"):
        partition_iid(records, 2, 0)
    assert [len(p) for p in partition_iid(records, 1, 0)] == [10]


def test_label_counts_per_site() -> None:
    parts = [[_record(0, 1, "a"), _record(1, 0, "b"), _record(2, 1, "c")], [_record(3, 3, "d")]]
    np.testing.assert_array_equal(label_counts(parts, 3), [[1, 2, 0, 0], [0, 0, 0, 1]])
