"""Device colour profiles: what one endoscope vendor / processor does to the colours."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from endofed.shared.data.synthetic.overlay_style import FOV_SHAPES, OverlayStyle
from endofed.shared.data.synthetic.raster import as_rgb, blur


@dataclass(frozen=True)
class DeviceProfile:
    """Colour and layout signature of one endoscope vendor / processor.

    ``gain`` multiplies R, G, B; ``gamma`` is applied after gain (``> 1`` darkens);
    ``brightness`` is an additive offset in ``[0, 1]`` units; ``noise_sigma`` is the
    sensor noise standard deviation in ``[0, 1]`` units; ``sharpness`` ``> 0``
    sharpens (unsharp-mask amount) and ``< 0`` blurs (Gaussian sigma ``-sharpness``
    pixels at 256 px, scaled with the frame). The layout fields decide how the
    processor draws its overlays (:meth:`overlay_style`).
    """

    name: str = "generic"
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    brightness: float = 0.0
    noise_sigma: float = 0.01
    sharpness: float = 0.0
    fov_shape: str = "octagon"
    text_scale: float = 1.0
    box_probability: float = 0.35
    tube_probability: float = 0.15

    def __post_init__(self) -> None:
        if self.fov_shape not in FOV_SHAPES:
            raise ValueError(f"fov_shape must be one of {FOV_SHAPES}, got {self.fov_shape!r}")
        if len(self.gain) != 3 or min(self.gain) <= 0:
            raise ValueError(f"gain must be three positive floats, got {self.gain!r}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma!r}")

    def overlay_style(self) -> OverlayStyle:
        """The overlays this processor burns in (the other parameters: the defaults)."""
        return OverlayStyle(
            fov_shapes=(self.fov_shape,),
            text_scale=self.text_scale,
            panel_probability=self.box_probability,
            tube_probability=self.tube_probability,
            device_names=(self.name,),
        )


# Vendor-like bases (fictional names); sites cycle through them, with a seeded jitter.
VENDOR_PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile("ENDO-VX 190", (1.04, 0.96, 0.92), 0.95, 0.01, 0.008, 0.4, "octagon",
                  1.0, 0.45, 0.15),
    DeviceProfile("LUMA HD-3", (0.94, 1.02, 1.10), 1.10, -0.02, 0.015, -0.6, "circle",
                  0.9, 0.20, 0.20),
    DeviceProfile("OPTIQ CV-7", (1.12, 0.88, 0.96), 1.00, 0.03, 0.012, 0.0, "octagon",
                  1.1, 0.30, 0.10),
    DeviceProfile("VISTA 4K", (0.98, 1.06, 0.90), 0.90, -0.01, 0.020, 0.8, "circle",
                  1.0, 0.35, 0.25),
)


def device_profile_for_site(site_index: int, seed: int = 0) -> DeviceProfile:
    """The device profile of site ``site_index`` (0-based): a vendor base plus jitter.

    Sites cycle through four vendor-like bases, so neighbouring sites always differ in
    colour; the jitter (seeded by ``seed`` and ``site_index``) makes sites that share
    a base differ too.
    """
    if site_index < 0:
        raise ValueError(f"site_index must be >= 0, got {site_index}")
    base = VENDOR_PROFILES[site_index % len(VENDOR_PROFILES)]
    rng = np.random.default_rng([int(seed), int(site_index), 0xDE71CE])
    gain = tuple(float(g * rng.uniform(0.96, 1.04)) for g in base.gain)
    return DeviceProfile(
        name=base.name,
        gain=gain,  # type: ignore[arg-type]
        gamma=float(base.gamma * rng.uniform(0.95, 1.05)),
        brightness=float(base.brightness + rng.uniform(-0.015, 0.015)),
        noise_sigma=float(base.noise_sigma * rng.uniform(0.8, 1.2)),
        sharpness=float(base.sharpness + rng.uniform(-0.1, 0.1)),
        fov_shape=base.fov_shape,
        text_scale=base.text_scale,
        box_probability=base.box_probability,
        tube_probability=base.tube_probability,
    )


def apply_device(rng: np.random.Generator, img: np.ndarray, p: DeviceProfile) -> np.ndarray:
    """Apply an endoscope vendor profile (gain, brightness, gamma, blur/sharpen, noise) to a
    float RGB image in [0, 1]; a new image."""
    s = min(img.shape[:2])
    affine = np.concatenate([np.diag(p.gain), np.full((3, 1), p.brightness)], 1)
    out = np.clip(cv2.transform(img, affine.astype(np.float32)), 0, 1)
    out = cv2.pow(out, float(p.gamma))
    if p.sharpness < 0:
        out = blur(out, -p.sharpness * s / 256)
    elif p.sharpness > 0:
        out = out + p.sharpness * (out - blur(out, max(0.8, s / 256)))
    # Sensor noise (luminance).
    noise = rng.standard_normal(out.shape[:2], dtype=np.float32) * np.float32(p.noise_sigma)
    return np.clip(cv2.add(out, as_rgb(noise)), 0, 1)
