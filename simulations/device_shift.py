"""Simulate different endoscope vendors on one data set (colour, brightness, noise).

A :class:`~shared.data.synthetic.DeviceProfile` (gain, gamma, brightness, blur or
sharpening, sensor noise) is applied to real frames exactly as the synthetic
generator applies it to its rendered frames, so a single public data set can play
several hospitals whose cameras differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from endofed.shared.data.synthetic import DeviceProfile, apply_device, device_profile_for_site


def apply_device_profile(
    image: np.ndarray, profile: DeviceProfile, rng: np.random.Generator
) -> np.ndarray:
    """``image`` (RGB ``uint8``, ``(H, W, 3)``) as seen through ``profile``'s camera.

    The geometry is unchanged, so boxes and masks stay valid. ``rng`` draws the
    sensor noise: the same generator state gives the same bytes.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}"
        )
    out = apply_device(rng, image.astype(np.float32) / 255.0, profile)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def site_profiles(num_sites: int, seed: int = 0) -> list[DeviceProfile]:
    """One device profile per virtual hospital (neighbouring sites always differ)."""
    return [device_profile_for_site(i, seed) for i in range(num_sites)]


def profile_rng(seed: int, site_index: int, key: Sequence[int] | int) -> np.random.Generator:
    """A generator that depends only on (seed, site, image key): cache-stable noise."""
    key = [int(k) for k in key] if isinstance(key, Sequence) else [int(key)]
    return np.random.default_rng([int(seed), int(site_index), 0x5A1F7, *key])
