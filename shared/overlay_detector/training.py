"""Training the learned overlay detector: the improved SSD (``tiny`` preset) on composites.

The paper (section 2.1.2) finds overlay noise with a learned detector (YOLOv3); this
trains the project's own detector (:mod:`endofed.shared.model`, with the engine's
:class:`~endofed.shared.engine.Trainer`) on :func:`make_composites`, whose boxes and
types are exact.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from endofed.shared.config import TrainConfig
from endofed.shared.engine import Trainer, resolve_device
from endofed.shared.model import build_model, save_checkpoint
from endofed.shared.overlay_detector.composites import composite_dataset, make_composites
from endofed.shared.overlay_detector.detector import CHECKPOINT_KIND, CLASS_NAMES

logger = logging.getLogger(__name__)


def train_overlay_detector(
    out_file: str | Path,
    *,
    backgrounds: str | Path | None = None,
    n_images: int = 256,
    image_size: int = 128,
    epochs: int = 20,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    preset: str = "tiny",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Path:
    """Train an overlay detector on composites and save it to ``out_file``.

    Composites are drawn at twice ``image_size`` (backgrounds: the images of the
    folder ``backgrounds``, default synthetic clean frames). The checkpoint's
    ``extra`` holds ``{"kind": "overlay-detector", "class_names": [...],
    "image_size": S}`` (what :class:`LearnedDetector` checks).
    """
    if n_images < 1 or epochs < 1:
        raise ValueError(f"n_images and epochs must be >= 1, got {n_images} and {epochs}")
    dev = torch.device(device) if device is not None else resolve_device("auto")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    comps = make_composites(n_images, backgrounds=backgrounds, size=2 * image_size, seed=seed)
    dataset = composite_dataset(comps, image_size=image_size, train=True)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=min(batch_size, n_images), shuffle=True,
                        collate_fn=dataset.collate_fn(), generator=gen, drop_last=False)
    model = build_model(preset=preset, num_classes=len(CLASS_NAMES), image_size=image_size,
                        class_names=CLASS_NAMES).to(dev)
    config = TrainConfig(epochs=epochs, learning_rate=learning_rate, seed=seed,
                         warmup_steps=min(20, len(loader) * epochs // 10))
    config.validate()
    result = Trainer(model, config, device=dev, progress=progress).fit(loader, epochs=epochs)
    last = result.epochs[-1] if result.epochs else None
    logger.info("overlay detector: %d composites, %d epochs in %.1f s (last loss %.3f)",
                n_images, epochs, time.perf_counter() - t0, last.loss if last else float("nan"))
    extra: dict[str, Any] = {
        "kind": CHECKPOINT_KIND,
        "class_names": list(CLASS_NAMES),
        "image_size": int(image_size),
        "n_images": int(n_images),
        "epochs": int(epochs),
        "backgrounds": "folder" if backgrounds is not None else "synthetic",
        "seed": int(seed),
    }
    return save_checkpoint(out_file, model.cpu(), extra=extra)
