"""Joint image + boxes + mask augmentation with ``torchvision.transforms.v2``.

The pipeline works on a dict sample (see :func:`to_tv_sample`)::

    {"image": tv_tensors.Image uint8 (3, H, W),
     "boxes": tv_tensors.BoundingBoxes XYXY (N, 4),
     "mask": tv_tensors.Mask uint8 (1, H, W),
     "labels": int64 (N,), "morphology": int64 (N,)}

Every geometric transform moves the image, the boxes and the mask together;
:class:`~torchvision.transforms.v2.SanitizeBoundingBoxes` then drops degenerate
boxes together with their ``labels`` and ``morphology`` entries. Output: a float
image resized to ``image_size x image_size`` and normalised with ImageNet statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# zoom-out canvas colour: the ImageNet mean in uint8, i.e. 0 after normalisation
_FILL_RGB = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)


def _labels_getter(sample: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return tuple(sample[k] for k in ("labels", "morphology") if k in sample)


class SanitizeBoxesKeepMask(v2.Transform):
    """``SanitizeBoundingBoxes`` that leaves the (union) lesion mask alone.

    torchvision filters any ``tv_tensors.Mask`` with the per-box validity vector,
    assuming one mask per box; our mask is the union of all lesions (1 channel), so it
    would vanish whenever a single box is dropped. This wrapper takes masks out of the
    dict sample, sanitises boxes together with ``labels``/``morphology`` and puts the
    masks back unchanged.
    """

    def __init__(self, min_size: float = 1.0, min_area: float = 1.0) -> None:
        super().__init__()
        self.inner = v2.SanitizeBoundingBoxes(
            min_size=min_size, min_area=min_area, labels_getter=_labels_getter
        )

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        if not isinstance(sample, dict):
            raise TypeError("SanitizeBoxesKeepMask expects a dict sample (see to_tv_sample)")
        masks = {k: v for k, v in sample.items() if isinstance(v, tv_tensors.Mask)}
        out = self.inner({k: v for k, v in sample.items() if k not in masks})
        return {k: masks[k] if k in masks else out[k] for k in sample}


class RandomCameraShift(v2.Transform):
    """A different endoscope's colour response: per-channel gain (white balance) and gamma.

    Applied to images only (boxes and masks are untouched). Gains are drawn in
    ``1 +- gain`` per channel, the gamma in ``[1 / (1 + gamma), 1 + gamma]``; an
    unseen centre's camera differs from the training ones in exactly these ways
    (:mod:`endofed.simulations.device_shift` simulates them per virtual hospital).
    """

    def __init__(self, gain: float = 0.12, gamma: float = 0.25) -> None:
        super().__init__()
        self.gain = float(gain)
        self.gamma = float(gamma)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        gains = 1.0 + (torch.rand(3) * 2.0 - 1.0) * self.gain
        log_g = (torch.rand(()) * 2.0 - 1.0) * float(np.log1p(self.gamma))
        return {"gains": gains, "gamma": float(torch.exp(log_g))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        x = inpt.as_subclass(torch.Tensor).float() / 255.0
        x = (x * params["gains"].view(3, 1, 1)).clamp(0, 1) ** params["gamma"]
        out = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        return tv_tensors.wrap(out, like=inpt)


def build_transforms(
    image_size: int,
    *,
    train: bool,
    hflip: float = 0.5,
    vflip: float = 0.5,
    rotation: float = 15.0,
    rotation_p: float = 0.5,
    zoom_out: float = 1.6,
    zoom_out_p: float = 0.25,
    zoom_in: float = 0.5,
    zoom_in_p: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.15,
    hue: float = 0.02,
    jitter_p: float = 0.8,
    camera_gain: float = 0.12,
    camera_gamma: float = 0.25,
    camera_p: float = 0.5,
    blur_p: float = 0.15,
    min_box_size: float = 2.0,
    normalize: bool = True,
) -> v2.Compose:
    """The joint transform for training (``train=True``) or evaluation.

    Training, in this order: zoom in (random crop keeping ``zoom_in..1`` of the area,
    resized to ``image_size``), horizontal/vertical flips, rotation by up to
    ``rotation`` degrees, zoom out (canvas up to ``zoom_out`` times larger) and
    lighting/colour jitter, another camera's colour response
    (:class:`RandomCameraShift`) and a slight blur, each with its probability (``*_p``;
    0 disables a step).
    Both modes resize to ``image_size`` (square), drop boxes smaller than
    ``min_box_size`` px (with their labels/morphology) and normalise (ImageNet
    mean/std) unless ``normalize=False``. Rotated boxes are the enclosing boxes of
    the rotated corners (exact for rectangles unless clipped at the border).
    """
    size = (image_size, image_size)
    steps: list[v2.Transform] = []
    if train:
        # zoom in first, on the (larger) working image: keeps detail, and every later
        # step runs on S x S pixels, which is what makes the pipeline fast
        if zoom_in < 1 and zoom_in_p > 0:
            steps.append(
                v2.RandomApply(
                    [v2.RandomResizedCrop(image_size, scale=(zoom_in, 1.0),
                                          ratio=(3 / 4, 4 / 3), antialias=True)],
                    p=zoom_in_p,
                )
            )
        steps.append(v2.Resize(size, antialias=True))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip))
        if vflip > 0:
            steps.append(v2.RandomVerticalFlip(p=vflip))
        if rotation > 0 and rotation_p > 0:
            steps.append(
                v2.RandomApply(
                    [v2.RandomRotation(rotation, interpolation=v2.InterpolationMode.BILINEAR)],
                    p=rotation_p,
                )
            )
        if zoom_out > 1 and zoom_out_p > 0:
            steps.append(
                v2.RandomZoomOut(
                    fill={tv_tensors.Image: _FILL_RGB, "others": 0},
                    side_range=(1.0, zoom_out),
                    p=zoom_out_p,
                )
            )
        if jitter_p > 0:
            steps.append(
                v2.RandomApply(
                    [v2.ColorJitter(brightness=brightness, contrast=contrast,
                                    saturation=saturation, hue=hue or None)],
                    p=jitter_p,
                )
            )
        if camera_p > 0:
            steps.append(v2.RandomApply([RandomCameraShift(camera_gain, camera_gamma)],
                                        p=camera_p))
        if blur_p > 0:  # optics / motion softness of another scope
            steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.3, 1.5))], p=blur_p))
    steps += [
        v2.Resize(size, antialias=True),
        v2.ClampBoundingBoxes(),
        SanitizeBoxesKeepMask(min_size=min_box_size),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        steps.append(v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)))
    return v2.Compose(steps)


def to_tv_sample(
    image: np.ndarray,
    mask: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    morphology: np.ndarray | None = None,
) -> dict[str, Any]:
    """Wrap numpy arrays (HWC RGB uint8, HW bool, XYXY boxes) as a v2 dict sample."""
    h, w = image.shape[:2]
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    m = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None])
    b = tv_tensors.BoundingBoxes(
        torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
        format=tv_tensors.BoundingBoxFormat.XYXY,
        canvas_size=(h, w),
    )
    n = b.shape[0]
    morph = np.full(n, -1) if morphology is None else np.asarray(morphology)
    return {
        "image": img,
        "boxes": b,
        "mask": m,
        "labels": torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(n),
        "morphology": torch.as_tensor(morph, dtype=torch.int64).reshape(n),
    }


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: ``(..., 3, H, W)`` float back to ``[0, 1]``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)
    return (images * std[:, None, None] + mean[:, None, None]).clamp(0, 1)
