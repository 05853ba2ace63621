"""Device colour profiles: sites differ in colour; profiles are seeded."""

from __future__ import annotations

import numpy as np

from endofed.shared.data.synthetic import LesionConfig, device_profile_for_site, render_frame


def test_device_profiles_give_sites_different_colours() -> None:
    profiles = [device_profile_for_site(k, seed=3) for k in range(4)]
    assert device_profile_for_site(2, seed=3) == profiles[2]
    assert device_profile_for_site(2, seed=4) != profiles[2]
    cfg = LesionConfig(empty_fraction=1.0)
    means = []
    for p in profiles:  # the same scenes through each device
        imgs = [render_frame(np.random.default_rng(i), size=64, profile=p, lesions=cfg,
                             overlays=False).image for i in range(6)]
        means.append(np.mean([im.reshape(-1, 3).mean(0) for im in imgs], axis=0))
    means = np.asarray(means)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(means[i] - means[j]).max() > 3.0, (i, j, means)


def test_a_profile_carries_its_overlay_layout() -> None:
    p = device_profile_for_site(1, seed=0)
    style = p.overlay_style()
    assert style.fov_shapes == (p.fov_shape,) and style.device_names == (p.name,)
    assert style.panel_probability == p.box_probability
    assert style.tube_probability == p.tube_probability and style.text_scale == p.text_scale
