"""Pretrained loading, fine-tuning modes, trainable state and checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision

from endofed.shared.model import (
    build_model,
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


def test_resnet_torchvision_weights_skip_batchnorm(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        ref.bn1.weight.fill_(3.0)
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    with caplog.at_level(logging.INFO, logger="endofed.shared.model.weights"):
        model = build_model(preset="r50x1", num_classes=2, image_size=128,
                            weights_path=tmp_path / "r50.pth", finetune="local")
    body = model.backbone.body
    torch.testing.assert_close(body.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(body.layer3[2].conv2.weight, ref.layer3[2].conv2.weight)
    assert isinstance(body.bn1, torch.nn.GroupNorm)
    assert torch.all(body.bn1.weight == 1.0)  # BatchNorm affine is not copied into GN
    assert "BatchNorm" in caplog.text
    assert not any(n.startswith("backbone.body.") for n in model.trainable_names())


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
    with pytest.raises(ValueError, match="no tensor fits"):
        from endofed.shared.model import load_backbone_weights

        load_backbone_weights(wide, tmp_path / "r50.pth")
