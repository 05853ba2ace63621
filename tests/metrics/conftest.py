"""Shared fixtures for the metrics tests: a seeded random evaluation set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@dataclass
class RandomEvalSet:
    """Per-image detections/targets plus image-level and mask arrays."""

    class_names: list[str]
    morphology_names: list[str]
    detections: list[dict[str, np.ndarray]]
    targets: list[dict[str, np.ndarray]]
    image_probs: np.ndarray
    image_labels: np.ndarray
    mask_prob: np.ndarray
    mask_true: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, idx: slice | np.ndarray) -> dict:
        ids = np.arange(len(self))[idx]
        return {
            "detections": [self.detections[i] for i in ids],
            "targets": [self.targets[i] for i in ids],
            "image_probs": self.image_probs[ids],
            "image_labels": self.image_labels[ids],
            "mask_prob": self.mask_prob[ids],
            "mask_true": self.mask_true[ids],
        }


def _random_box(rng: np.random.Generator, size: float) -> np.ndarray:
    x0, y0 = rng.uniform(0, size * 0.7, 2)
    w, h = rng.uniform(size * 0.08, size * 0.3, 2)
    return np.array([x0, y0, min(x0 + w, size), min(y0 + h, size)])


def make_random_eval_set(
    seed: int = 0, n_images: int = 60, num_classes: int = 3, size: int = 32
) -> RandomEvalSet:
    """Random but realistic data: jittered true positives, false positives, misses."""
    rng = np.random.default_rng(seed)
    class_names = [f"c{i}" for i in range(1, num_classes + 1)]
    morphology_names = ["uplift", "flat", "depression"]
    detections, targets = [], []
    image_labels = np.zeros(n_images, dtype=np.int64)
    for i in range(n_images):
        n_gt = int(rng.integers(0, 4))
        gt_boxes = np.array([_random_box(rng, 256.0) for _ in range(n_gt)]).reshape(-1, 4)
        gt_labels = rng.integers(1, num_classes + 1, n_gt)
        morph = rng.integers(-1, len(morphology_names), n_gt)
        targets.append({"boxes": gt_boxes, "labels": gt_labels, "morphology": morph})
        image_labels[i] = gt_labels[0] if n_gt else 0
        det_boxes, det_labels, det_scores = [], [], []
        for box, lab in zip(gt_boxes, gt_labels):
            for _ in range(int(rng.integers(0, 3))):  # 0..2 detections per lesion
                jitter = rng.normal(0, 0.12, 4) * (box[2:] - box[:2]).repeat(2)
                det_boxes.append(box + jitter)
                wrong = rng.random() < 0.15
                det_labels.append(int(rng.integers(1, num_classes + 1)) if wrong else int(lab))
                det_scores.append(float(rng.beta(4, 2)))
        for _ in range(int(rng.integers(0, 4))):  # pure false positives
            det_boxes.append(_random_box(rng, 256.0))
            det_labels.append(int(rng.integers(1, num_classes + 1)))
            det_scores.append(float(rng.beta(2, 4)))
        db = np.array(det_boxes).reshape(-1, 4)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1.0)
        detections.append(
            {
                "boxes": db,
                "labels": np.array(det_labels, dtype=np.int64),
                "scores": np.array(det_scores),
            }
        )
    logits = rng.normal(0, 1, (n_images, num_classes + 1))
    logits[np.arange(n_images), image_labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mask_true = np.zeros((n_images, 1, size, size), dtype=np.float32)
    mask_prob = np.zeros((n_images, 1, size, size), dtype=np.float32)
    for i in range(n_images):
        if image_labels[i] > 0:
            x0, y0 = rng.integers(0, size // 2, 2)
            mask_true[i, 0, y0 : y0 + 10, x0 : x0 + 12] = 1
        mask_prob[i, 0] = np.clip(mask_true[i, 0] * 0.7 + rng.uniform(0, 0.6, (size, size)), 0, 1)
    return RandomEvalSet(
        class_names,
        morphology_names,
        detections,
        targets,
        probs,
        image_labels,
        mask_prob,
        mask_true,
    )


@pytest.fixture(scope="session")
def eval_set() -> RandomEvalSet:
    return make_random_eval_set(seed=0)


@pytest.fixture(scope="session")
def make_eval_set():
    """The random evaluation-set factory (``seed``, ``n_images``, ``num_classes``)."""
    return make_random_eval_set
