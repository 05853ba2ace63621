"""Pretrained loading, fine-tuning modes, trainable state and checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from endofed.shared.model import (
    SSDConfig,
    build_model,
    get_preset,
    load_model_checkpoint,
    load_trainable_state,
    save_checkpoint,
    trainable_state,
)


def test_local_mode_freezes_the_backbone_and_keeps_it_out_of_the_state() -> None:
    glob = build_model(preset="tiny", num_classes=2)
    local = build_model(preset="tiny", num_classes=2, finetune="local")
    body = {f"backbone.body.{n}" for n, _ in local.backbone.body.named_parameters()}
    assert body and body <= set(glob.trainable_names())
    assert not body & set(local.trainable_names())
    assert not body & set(trainable_state(local))
    assert all(not p.requires_grad for p in local.backbone.body.parameters())
    # Heads, segmentation branch, RFPN and the SSD extras still train.
    for prefix in ("head.", "segmentation.", "rfpn.", "backbone.extras."):
        assert any(n.startswith(prefix) for n in local.trainable_names()), prefix
    assert list(trainable_state(glob)) == [n for n, _ in glob.named_parameters()]


def test_trainable_state_round_trip() -> None:
    torch.manual_seed(0)
    a = build_model(preset="tiny", num_classes=2)
    torch.manual_seed(1)
    b = build_model(preset="tiny", num_classes=2)
    x = torch.randn(2, 3, 96, 96)
    assert not torch.allclose(a(x)["cls_logits"], b(x)["cls_logits"])
    state = trainable_state(a)
    load_trainable_state(b, state)
    torch.testing.assert_close(a(x)["cls_logits"], b(x)["cls_logits"])
    # The state is a copy: training a afterwards does not change it.
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not torch.equal(state[next(iter(state))], next(a.parameters()))
    # An ordered list of numpy arrays (what the federation ships) works too.
    c = build_model(preset="tiny", num_classes=2)
    load_trainable_state(c, [v.numpy() for v in trainable_state(b).values()])
    torch.testing.assert_close(b(x)["mask_logits"], c(x)["mask_logits"])


def test_trainable_state_mismatches_are_reported() -> None:
    model = build_model(preset="tiny", num_classes=2)
    state = trainable_state(model)
    name = next(iter(state))
    bad = dict(state)
    bad[name] = np.zeros((1, 2, 3), np.float32)
    before = next(model.parameters()).clone()
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_trainable_state(model, bad)
    assert torch.equal(before, next(model.parameters()))  # nothing was written
    missing = dict(state)
    del missing[name]
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state(model, missing)
    with pytest.raises(ValueError, match="expects"):
        load_trainable_state(model, list(state.values())[:-1])
    local = build_model(preset="tiny", num_classes=2, finetune="local")
    with pytest.raises(ValueError, match="unexpected"):
        load_trainable_state(local, state)


def test_checkpoint_rebuilds_the_model(tmp_path) -> None:
    model = build_model(preset="tiny", num_classes=3, image_size=64, finetune="local",
                        class_names=("a", "b", "c"))
    path = save_checkpoint(tmp_path / "m.pt", model, {"round": 4})
    loaded = load_model_checkpoint(path, map_location="cpu")
    assert loaded.config == model.config and loaded.config.class_names == ("a", "b", "c")
    assert loaded.finetune == "local" and loaded.num_classes == 3
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x)["cls_logits"], loaded(x)["cls_logits"])
    again = build_model(preset="tiny", num_classes=3, image_size=64, weights_path=path)
    torch.testing.assert_close(model(x)["bbox_regression"], again(x)["bbox_regression"])
    with pytest.raises(ValueError, match="does not fit"):
        build_model(preset="tiny", num_classes=2, image_size=64, weights_path=path)


def test_vgg16_torchvision_weights_load(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # not used by SSD
    torch.save(state, tmp_path / "vgg16.pth")
    with caplog.at_level(logging.INFO, logger="endofed.shared.model.weights"):
        model = build_model(preset="paper", num_classes=1, weights_path=tmp_path / "vgg16.pth")
    assert "loaded 26 backbone tensors" in caplog.text
    torch.testing.assert_close(model.backbone.body.stage4[0].conv.weight, features[0].weight)
    # conv4_3 is features[21]; conv5_3 is features[28].
    conv43 = model.backbone.body.stage4[-1].conv
    torch.testing.assert_close(conv43.weight, features[21].weight)
    torch.testing.assert_close(model.backbone.body.stage7[3].conv.bias, features[28].bias)
    assert model.config.body_norm == "folded"
    body = model.backbone.body
    # As torchvision's vgg16: no norm anywhere in the body (fc6/fc7 included).
    assert not [n for n, m in body.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.extras.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    features.eval()
    with torch.no_grad():
        c4 = body.stage4(x)
        torch.testing.assert_close(c4, features[:23](x), rtol=1e-4, atol=1e-4)  # conv4_3 ReLU
        c53 = body.stage7[:4](c4)
        torch.testing.assert_close(c53, features[:30](x), rtol=1e-4, atol=1e-4)  # conv5_3 ReLU
        assert body.stage7(c4).shape == (2, 1024, 4, 4)  # fc7 (random, as in torchvision SSD)

    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(model, strict=False) == []


def _randomise_batchnorm(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm affine and running statistics (as a trained network has)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """torchvision's resnet50 (random weights, randomised BN), eval mode, and its file."""
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None)
    _randomise_batchnorm(ref, seed=1)
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    return ref.eval(), path


def _torchvision_resnet_maps(ref: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
    c2 = ref.layer2(ref.layer1(x))
    c3 = ref.layer3(c2)
    return [c2, c3, ref.layer4(c3)]


def test_resnet_torchvision_file_folds_batchnorm_and_matches_eval_mode(
    resnet50_file, batch_factory, caplog
) -> None:
    ref, path = resnet50_file
    with caplog.at_level(logging.INFO, logger="endofed.shared.model.weights"):
        model = build_model(preset="r50x1", num_classes=2, image_size=64,
                            weights_path=path, finetune="local")
    assert model.config.body_norm == "folded"  # chosen for a torchvision file
    assert "loaded 318 backbone tensors" in caplog.text  # 53 convs + 53 x 5 BN tensors
    assert "53 BatchNorm folded" in caplog.text
    body = model.backbone.body
    norms = (torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    assert not [n for n, m in body.named_modules() if isinstance(m, norms)]
    assert isinstance(body.bn1, torch.nn.Identity)
    assert isinstance(body.layer1[0].downsample[1], torch.nn.Identity)
    assert body.layer3[2].conv2.bias is not None
    # Everything outside the body keeps GroupNorm.
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.extras.modules())

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        ours = body(x)
        theirs = _torchvision_resnet_maps(ref, x)
    # Random weights under random BN statistics grow the activations to O(100): compare
    # to 1e-4 of each map's largest value (float32 rounding grows with it).
    for name, a, b in zip(("layer2", "layer3", "layer4"), ours, theirs, strict=True):
        assert a.shape == b.shape, name
        scale = float(b.abs().max())
        assert scale > 1.0, name
        torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")

    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    model.train()
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(n.startswith("backbone.body.") for n in model.trainable_names())
    batch = batch_factory([[(8, 8, 40, 44, 1)], []], 64)
    gsm = GradSampleModule(model, loss_reduction="sum")
    model.compute_loss(gsm(batch.images), batch).total.sum().backward()
    frozen = [n for n, p in body.named_parameters() if getattr(p, "grad_sample", None) is not None]
    assert not frozen
    lacking = [n for n, p in model.named_parameters()
               if p.requires_grad and getattr(p, "grad_sample", None) is None]
    assert not lacking
    gsm._close()


def test_folded_checkpoint_rebuilds_the_folded_body(resnet50_file, tmp_path) -> None:
    _, path = resnet50_file
    model = build_model(preset="r50x1", num_classes=2, image_size=64, weights_path=path)
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    loaded = load_model_checkpoint(ckpt).eval()
    assert loaded.config.body_norm == "folded"
    again = build_model(preset="r50x1", num_classes=2, image_size=64, weights_path=ckpt).eval()
    assert again.config.body_norm == "folded"  # taken from the checkpoint, not the preset
    with torch.no_grad():
        want = model(x)["cls_logits"]
        torch.testing.assert_close(loaded(x)["cls_logits"], want)
        torch.testing.assert_close(again(x)["cls_logits"], want)
    with pytest.raises(ValueError, match="does not fit"):
        build_model(preset="r50x1", num_classes=2, image_size=64, weights_path=ckpt,
                    body_norm="group")


def test_resnet_file_into_an_explicit_group_norm_body_warns(resnet50_file, caplog) -> None:
    """``body_norm="group"`` given explicitly keeps the old conv-only load, with a warning."""
    ref, path = resnet50_file
    with caplog.at_level(logging.INFO, logger="endofed.shared.model.weights"):
        model = build_model(preset="r50x1", num_classes=2, image_size=64, weights_path=path,
                            body_norm="group")
    body = model.backbone.body
    assert isinstance(body.bn1, torch.nn.GroupNorm)
    torch.testing.assert_close(body.layer3[2].conv2.weight, ref.layer3[2].conv2.weight)
    assert "no longer compute what they were trained to" in caplog.text


def test_body_norm_is_validated() -> None:
    with pytest.raises(ValueError, match="body_norm must be one of"):
        build_model(preset="tiny", num_classes=1, body_norm="batch")
    with pytest.raises(ValueError, match="needs a backbone in"):
        build_model(preset="tiny", num_classes=1, body_norm="folded")
    with pytest.raises(ValueError, match="needs a backbone in"):
        SSDConfig.from_dict({**get_preset("lite0").to_dict(), "body_norm": "folded"}).validate()
    assert get_preset("r50x1").body_norm == "group"  # training from scratch by default


def test_unusable_weight_files_fail_clearly(tmp_path) -> None:
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        build_model(preset="tiny", num_classes=1, weights_path=tmp_path / "r50.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        build_model(preset="tiny", num_classes=1, weights_path=tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="nothere"):
        build_model(preset="tiny", num_classes=1, weights_path=tmp_path / "nothere.pth")
    with torch.device("meta"):
        wide = build_model(preset="r50x2", num_classes=1)
    wide.to_empty(device="cpu")
    from endofed.shared.model import load_backbone_weights

    with pytest.raises(ValueError, match="no tensor fits"):
        load_backbone_weights(wide, tmp_path / "r50.pth")
    with torch.device("meta"):
        wide = build_model(preset="r50x2", num_classes=1, body_norm="folded")
    wide.to_empty(device="cpu")
    with pytest.raises(ValueError, match=r"r50\.pth: no tensor fits"):
        load_backbone_weights(wide, tmp_path / "r50.pth")
