"""Shared test setup: one torch thread, small on-disk image folders, real-data path."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

torch.set_num_threads(1)
cv2.setNumThreads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]

Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (pixel edges)


def draw_frame(
    height: int, width: int, boxes: Sequence[Box] = (), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB endoscopy-ish frame with rectangular lesions and its exact uint8 mask (0/255)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 170
    img[..., 1] = 90
    img[..., 2] = 80
    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = (220, 60, 60)
        mask[y0:y1, x0:x1] = 255
    return img, mask


def write_rgb(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cv2 could not write {path}")
    return path


def write_gray(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cv2 could not write {path}")
    return path


@pytest.fixture
def frame() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``frame(h, w, boxes, seed)`` -> (RGB image, 0/255 mask) with rectangle lesions."""
    return draw_frame


@pytest.fixture
def save_rgb() -> Callable[[Path, np.ndarray], Path]:
    """``save_rgb(path, rgb_array)`` writes an image with cv2 (parents created)."""
    return write_rgb


@pytest.fixture
def save_gray() -> Callable[[Path, np.ndarray], Path]:
    """``save_gray(path, array)`` writes a single-channel image with cv2."""
    return write_gray


@pytest.fixture
def kvasir_site(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a Kvasir-SEG style folder.

    ``kvasir_site(specs, ext=".png", mask_ext=".png", name="site")`` where ``specs`` maps
    a stem to its list of boxes (``None`` = no mask file at all). Returns the root.
    """

    def make(
        specs: dict[str, Sequence[Box] | None],
        *,
        size: tuple[int, int] = (96, 128),
        ext: str = ".png",
        mask_ext: str = ".png",
        name: str = "site",
    ) -> Path:
        root = tmp_path / name
        (root / "images").mkdir(parents=True, exist_ok=True)
        for i, (stem, boxes) in enumerate(specs.items()):
            img, mask = draw_frame(*size, boxes or (), seed=i)
            write_rgb(root / "images" / f"{stem}{ext}", img)
            if boxes is not None:
                write_gray(root / "masks" / f"{stem}{mask_ext}", mask)
        return root

    return make


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing ``n`` plain RGB images (no lesion) into ``tmp_path/<name>/images``."""

    def make(n: int, *, size: tuple[int, int] = (64, 80), name: str = "plain") -> Path:
        root = tmp_path / name
        for i in range(n):
            img, _ = draw_frame(*size, seed=100 + i)
            write_rgb(root / "images" / f"img{i:03d}.jpg", img)
        return root

    return make


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Real data sets: ``$ENDOFED_SHARED_DATA`` or ``<repo>/../shared/data``; skip if absent."""
    env = os.environ.get("ENDOFED_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not available at {path}")
    return path
