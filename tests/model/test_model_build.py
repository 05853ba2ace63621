"""Presets build, run and have the shapes the contracts promise."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from endofed.shared.model import PRESETS, build_model, get_preset

HEAVY = ["r50x2", "r50x3", "r101x1", "r101x2", "r101x3", "r152x3"]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_outputs(model: nn.Module, size: int, batch: int = 1) -> dict[str, torch.Tensor]:
    out = model(torch.randn(batch, 3, size, size))
    a, k = model.anchors.shape[0], model.num_classes
    assert out["cls_logits"].shape == (batch, a, k)
    assert out["bbox_regression"].shape == (batch, a, 4)
    assert out["mask_logits"].shape[:2] == (batch, 1)
    assert out["attention"].shape == out["mask_logits"].shape
    assert 0.0 <= out["attention"].min() and out["attention"].max() <= 1.0
    assert all(torch.isfinite(v).all() for v in out.values())
    return out


def test_registry_has_the_paper_family() -> None:
    expected = {"paper", "cpu", "tiny", "r152x3"}
    expected |= {f"r{d}x{w}" for d in (50, 101) for w in (1, 2, 3)}
    assert expected <= set(PRESETS)
    assert get_preset("r150x3") is PRESETS["r152x3"]


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="r50x1") as info:
        build_model(preset="r18x9", num_classes=1)
    assert "tiny" in str(info.value)


def test_unknown_override_and_bad_args() -> None:
    with pytest.raises(ValueError, match="rfpn_stepz"):
        build_model(preset="tiny", num_classes=1, rfpn_stepz=3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(preset="tiny", num_classes=0)
    with pytest.raises(ValueError, match="finetune"):
        build_model(preset="tiny", num_classes=1, finetune="partial")
    with pytest.raises(TypeError):
        build_model("tiny", 1)  # type: ignore[misc]  # keyword-only


def test_paper_preset_is_ssd300() -> None:
    model = build_model(preset="paper", num_classes=3)
    # SSD300 (Liu et al. 2016) has 8732 default boxes on 38/19/10/5/3/1 maps.
    assert model.anchors.shape == (8732, 4)
    assert model.feature_sizes(300) == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert model.backbone.out_channels[:2] == [512, 1024]
    with torch.no_grad():
        out = _check_outputs(model, 300)
    assert out["mask_logits"].shape[-2:] == (38, 38)


def test_paper_rejects_too_small_images() -> None:
    with pytest.raises(ValueError, match="too small|non-empty"):
        build_model(preset="paper", num_classes=1, image_size=96)


@pytest.mark.parametrize("preset,size", [("tiny", 64), ("tiny", 128), ("cpu", 160), ("r50x1", 128)])
def test_forward_backward(preset: str, size: int) -> None:
    model = build_model(preset=preset, num_classes=2, image_size=size)
    out = _check_outputs(model, size, batch=2 if preset in ("tiny", "cpu") else 1)
    sum(v.float().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_anchors_are_pixels_inside_the_image() -> None:
    model = build_model(preset="tiny", num_classes=1, image_size=96)
    a = model.anchors
    centres = (a[:, :2] + a[:, 2:]) / 2
    assert centres.min() > 0 and centres.max() < 96
    assert ((a[:, 2:] - a[:, :2]) <= 96 + 1e-4).all()  # torchvision clips w, h to the image
    assert (a[:, 2] > a[:, 0]).all() and (a[:, 3] > a[:, 1]).all()
    expected = sum(h * w * n for (h, w), n in zip(
        model.feature_sizes(96), [4, 6, 6, 6, 4, 4], strict=True))
    assert a.shape[0] == expected


@pytest.mark.parametrize("preset", ["tiny", "cpu", "paper", "r50x1"])
def test_no_batchnorm_no_inplace_and_opacus_valid(preset: str) -> None:
    model = build_model(preset=preset, num_classes=2)
    assert ModuleValidator.validate(model, strict=False) == []
    for name, m in model.named_modules():
        assert not isinstance(m, nn.modules.batchnorm._BatchNorm), name
        assert not getattr(m, "inplace", False), f"{name} is in-place"
    # L2Norm (paper only) is a leaf owning its weight.
    for name, m in model.named_modules():
        if type(m).__name__ == "L2Norm":
            assert list(m.children()) == [] and "weight" in dict(m.named_parameters()), name


def test_big_presets_build_on_meta_and_grow_with_depth_and_width() -> None:
    counts = {}
    with torch.device("meta"):
        for name in ["r50x1", *HEAVY]:
            counts[name] = _n_params(build_model(preset=name, num_classes=3))
    assert counts["r50x1"] < counts["r50x2"] < counts["r50x3"]
    assert counts["r101x1"] < counts["r101x2"] < counts["r101x3"] < counts["r152x3"]
    assert counts["r50x1"] < counts["r101x1"]
    # ResNet-50 body alone has ~23.5M params without fc; the whole detector more.
    assert 23e6 < counts["r50x1"] < 60e6
    assert counts["r152x3"] > 400e6


def test_rfpn_steps_zero_gives_plain_ssd_heads() -> None:
    plain = build_model(preset="tiny", num_classes=1, rfpn_steps=0)
    assert plain.rfpn is None
    deeper = build_model(preset="tiny", num_classes=1, rfpn_steps=3)
    assert deeper.rfpn is not None and deeper.rfpn.steps == 3
    for m in (plain, deeper):
        _check_outputs(m, 96)
