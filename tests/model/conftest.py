"""Model tests: one torch thread, and factories of small synthetic batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from endofed.shared.data.collate import Batch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def batch_factory() -> Callable[..., Batch]:
    """``make(boxes_per_image, image_size)``: random images with rectangle lesions."""
    return make_batch


@pytest.fixture
def lesion_batch() -> Callable[..., Batch]:
    """``make(n, image_size, seed)``: drawn rectangle/ellipse lesions (see below)."""
    return synthetic_lesion_batch


def make_batch(
    boxes_per_image: list[list[tuple[float, float, float, float, int]]],
    image_size: int,
    *,
    max_boxes: int = 4,
    seed: int = 0,
) -> Batch:
    """A :class:`Batch` with random images and rectangle masks for the given boxes."""
    gen = torch.Generator().manual_seed(seed)
    b = len(boxes_per_image)
    images = torch.randn((b, 3, image_size, image_size), generator=gen)
    masks = torch.zeros((b, 1, image_size, image_size))
    boxes = torch.zeros((b, max_boxes, 4))
    labels = torch.zeros((b, max_boxes), dtype=torch.int64)
    num = torch.zeros((b,), dtype=torch.int64)
    image_labels = torch.zeros((b,), dtype=torch.int64)
    for i, items in enumerate(boxes_per_image):
        for j, (x0, y0, x1, y1, lab) in enumerate(items):
            boxes[i, j] = torch.tensor([x0, y0, x1, y1])
            labels[i, j] = lab
            masks[i, 0, int(y0) : int(y1), int(x0) : int(x1)] = 1.0
        num[i] = len(items)
        image_labels[i] = items[0][4] if items else 0
    morph = torch.full((b, max_boxes), -1, dtype=torch.int64)
    return Batch(images, masks, boxes, labels, num, image_labels, morph)


def synthetic_lesion_batch(n: int, image_size: int, seed: int = 0) -> Batch:
    """Images with one drawn lesion each (rectangle or ellipse, class 1 or 2).

    Background: smooth reddish mucosa-like noise; lesion: a brighter region whose
    colour depends on the class. Masks are the exact drawn shapes, boxes their extent.
    """
    rng = np.random.default_rng(seed)
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    images = np.zeros((n, 3, s, s), np.float32)
    masks = np.zeros((n, 1, s, s), np.float32)
    boxes = np.zeros((n, 2, 4), np.float32)
    labels = np.zeros((n, 2), np.int64)
    for i in range(n):
        base = np.array([0.8, 0.35, 0.3], np.float32)[:, None, None]
        noise = rng.normal(0, 0.05, (3, s // 8, s // 8)).astype(np.float32)
        noise = np.kron(noise, np.ones((8, 8), np.float32))
        img = base + noise
        w, h = rng.integers(s // 5, s // 2, size=2)
        x0, y0 = rng.integers(2, s - w - 2), rng.integers(2, s - h - 2)
        if i % 2 == 0:
            m = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        else:
            cx, cy = x0 + w / 2 - 0.5, y0 + h / 2 - 0.5
            m = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1.0
        lab = 1 + (i // 2) % 2
        colour = np.array([0.95, 0.8, 0.5] if lab == 1 else [0.4, 0.6, 0.9], np.float32)
        img = np.where(m[None], colour[:, None, None], img)
        ys, xs = np.nonzero(m)
        boxes[i, 0] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        labels[i, 0] = lab
        images[i] = (img - 0.5) / 0.25
        masks[i, 0] = m
    return Batch(
        torch.from_numpy(images),
        torch.from_numpy(masks),
        torch.from_numpy(boxes),
        torch.from_numpy(labels),
        torch.ones(n, dtype=torch.int64),
        torch.from_numpy(labels[:, 0].copy()),
        torch.full((n, 2), -1, dtype=torch.int64),
    )
