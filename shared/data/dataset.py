"""``DetectionDataset``: records -> fixed-shape tensors in :class:`Batch` field order."""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .collate import Batch, DetectionItem, collate_detection
from .sample import Sample, SampleRecord
from .site import load_sample
from .transforms import build_transforms, to_tv_sample

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """A decoded sample shrunk to the working size (what the cache holds)."""

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    morphology: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.mask.nbytes + self.boxes.nbytes


class DetectionDataset(Dataset):
    """Torch dataset of a site's records for detection + segmentation.

    Each item is a tuple in :class:`~shared.data.collate.Batch` field order:
    ``image (3, S, S) float`` (normalised), ``mask (1, S, S) float``,
    ``boxes (M, 4) float`` XYXY in input pixels (zero padded), ``labels (M,) int64``
    (0 = padding), ``num_boxes () int64``, ``image_label () int64`` (label of the
    largest remaining box, 0 = normal) and ``morphology (M,) int64`` (index into
    :attr:`morphology_names`, -1 = unknown / padding). Fixed shapes make
    ``collate_detection`` and Opacus' Poisson sampling work.

    Args:
        records: the samples (from :func:`~shared.data.site.scan_site`).
        image_size: square model input size ``S``.
        train: use the training augmentation (ignored when ``transform`` is given).
        max_boxes: ``M``; images with more boxes keep the ``M`` largest.
        morphology_names: morphology vocabulary (default: sorted names in ``records``;
            pass the federation-wide list so indices agree across sites).
        transform: a joint v2 transform on the dict sample of
            :func:`~shared.data.transforms.to_tv_sample` (default
            :func:`~shared.data.transforms.build_transforms`); it must resize to ``S``.
        loader: ``record -> Sample`` (e.g. a preprocessing step with a cache).
        cache_items: keep up to this many decoded, shrunk samples in an LRU cache
            (per process; 0 disables it).
        work_scale: before augmenting, images larger than needed are shrunk so that
            their shorter side is ``work_scale * S`` (speed; keeps detail for zoom-in).
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        *,
        image_size: int,
        train: bool,
        max_boxes: int = 16,
        morphology_names: Sequence[str] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        loader: Callable[[SampleRecord], Sample] = load_sample,
        cache_items: int = 0,
        work_scale: float | None = None,
    ) -> None:
        if image_size <= 0 or max_boxes <= 0:
            raise ValueError("image_size and max_boxes must be positive")
        self.records = list(records)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.max_boxes = int(max_boxes)
        if morphology_names is None:
            morphology_names = sorted({m for r in self.records for m in r.meta.morphologies if m})
        self.morphology_names = list(morphology_names)
        self._morph_index = {m: i for i, m in enumerate(self.morphology_names)}
        self.transform = transform or build_transforms(self.image_size, train=self.train)
        self.loader = loader
        self.cache_items = int(cache_items)
        self.work_scale = float(work_scale if work_scale is not None else (1.5 if train else 1.0))
        self._cache: OrderedDict[int, _Prepared] = OrderedDict()
        self._lock = threading.Lock()
        self._warned_truncation = False

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:
        # picklable for spawned DataLoader workers: no lock, and an empty cache
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def clear_cache(self) -> None:
        """Drop all cached samples (e.g. after the files changed)."""
        with self._lock:
            self._cache.clear()

    # --------------------------------------------------------------------- helpers
    def collate_fn(self) -> Callable[[Sequence[DetectionItem]], Batch]:
        """``collate_detection`` bound to this dataset's shapes (picklable)."""
        return functools.partial(
            collate_detection, image_size=self.image_size, max_boxes=self.max_boxes
        )

    def _prepare(self, index: int) -> _Prepared:
        record = self.records[index]
        sample = self.loader(record)
        image, mask, boxes = sample.image, sample.mask, sample.boxes.astype(np.float32)
        h, w = image.shape[:2]
        scale = self.work_scale * self.image_size / min(h, w)
        if scale < 1.0:
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
            boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        morph_names = list(sample.meta.morphologies) + [""] * len(boxes)
        morph = np.array(
            [self._morph_index.get(m, -1) for m in morph_names[: len(boxes)]], np.int64
        )
        return _Prepared(image, mask.astype(np.uint8), boxes, sample.labels, morph)

    def _get_prepared(self, index: int) -> _Prepared:
        if self.cache_items <= 0:
            return self._prepare(index)
        with self._lock:
            hit = self._cache.get(index)
            if hit is not None:
                self._cache.move_to_end(index)
                return hit
        prep = self._prepare(index)
        with self._lock:
            self._cache[index] = prep
            while len(self._cache) > self.cache_items:
                self._cache.popitem(last=False)
        return prep

    # --------------------------------------------------------------------- item
    def __getitem__(self, index: int) -> DetectionItem:
        prep = self._get_prepared(int(index))
        out = self.transform(
            to_tv_sample(prep.image, prep.mask, prep.boxes, prep.labels, prep.morphology)
        )
        image, mask = out["image"], out["mask"]
        s = self.image_size
        if tuple(image.shape[-2:]) != (s, s):
            raise ValueError(
                f"transform returned a {tuple(image.shape[-2:])} image, expected ({s}, {s})"
            )
        boxes = out["boxes"].as_subclass(torch.Tensor).float()
        labels, morph = out["labels"], out["morphology"]
        n = int(boxes.shape[0])
        if n > self.max_boxes:
            if not self._warned_truncation:
                log.warning("%s has %d boxes; keeping the %d largest (max_boxes)",
                            self.records[index].image_path, n, self.max_boxes)
                self._warned_truncation = True
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = torch.argsort(areas, descending=True)[: self.max_boxes]
            boxes, labels, morph, n = boxes[keep], labels[keep], morph[keep], self.max_boxes
        m = self.max_boxes
        pad_boxes = torch.zeros((m, 4), dtype=torch.float32)
        pad_labels = torch.zeros((m,), dtype=torch.int64)
        pad_morph = torch.full((m,), -1, dtype=torch.int64)
        pad_boxes[:n] = boxes
        pad_labels[:n] = labels
        pad_morph[:n] = morph
        if n:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            image_label = labels[int(torch.argmax(areas))].to(torch.int64)
        else:
            image_label = torch.tensor(0, dtype=torch.int64)
        return (
            image.as_subclass(torch.Tensor).float(),
            mask.as_subclass(torch.Tensor).float().reshape(1, s, s),
            pad_boxes,
            pad_labels,
            torch.tensor(n, dtype=torch.int64),
            image_label,
            pad_morph,
        )


def worker_init(_: int) -> None:
    """DataLoader worker setup: one torch thread per worker."""
    # torch already runs workers single-threaded; do NOT call cv2.setNumThreads here:
    # in a forked child whose parent used OpenCV's thread pool it deadlocks.
    torch.set_num_threads(1)


def make_loader(
    dataset: DetectionDataset,
    batch_size: int,
    shuffle: bool = False,
    *,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    sampler: Sampler | None = None,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """A ``DataLoader`` yielding :class:`Batch` (via ``collate_detection``).

    ``seed`` makes the shuffle order reproducible. Workers use one thread each.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=dataset.collate_fn(),
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        worker_init_fn=worker_init if num_workers > 0 else None,
        persistent_workers=persistent_workers,
    )


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch for ``n`` items."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)
