"""Postprocessing (decode, NMS, image probabilities) and ONNX export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torchvision.ops import box_iou

from endofed.shared.model import build_model, export_onnx, image_probabilities


def _outputs(model, b: int = 1) -> dict[str, torch.Tensor]:
    a, k = model.anchors.shape[0], model.num_classes
    return {
        "cls_logits": torch.full((b, a, k), -10.0),
        "bbox_regression": torch.zeros(b, a, 4),
        "mask_logits": torch.full((b, 1, 12, 12), -5.0),
        "attention": torch.zeros(b, 1, 12, 12),
    }


def test_postprocess_decodes_nms_and_image_probs() -> None:
    model = build_model(preset="tiny", num_classes=3, image_size=96)
    anchors = model.anchors
    out = _outputs(model, 2)
    # Image 0: a strong class-2 anchor, a heavily overlapping weaker class-2 one, and the
    # same weaker box as class 3 (different class: survives per-class NMS).
    ious = box_iou(anchors[100:101], anchors)[0]
    ious[100] = 0
    twin = int(ious.argmax())
    assert ious[twin] > 0.45
    out["cls_logits"][0, 100, 1] = 4.0
    out["cls_logits"][0, twin, 1] = 2.0
    out["cls_logits"][0, twin, 2] = 1.0
    out["mask_logits"][0, :, 2:6, 2:6] = 5.0
    pp = model.postprocess(out)
    det0, det1 = pp.detections
    assert det0["labels"].tolist() == [2, 3]
    expected = anchors[100].clamp(0, 96)
    torch.testing.assert_close(det0["boxes"][0], expected)
    torch.testing.assert_close(det0["scores"], torch.sigmoid(torch.tensor([4.0, 1.0])))
    assert det1["boxes"].shape == (0, 4) and det1["labels"].numel() == 0
    assert (det0["boxes"] >= 0).all() and (det0["boxes"] <= 96).all()

    assert pp.mask_prob.shape == (2, 1, 96, 96)
    assert pp.mask_prob[0, 0, 24, 24] > 0.9 and pp.mask_prob[0, 0, 80, 80] < 0.1
    probs = pp.image_probs
    assert probs.shape == (2, 4)
    assert probs[0].argmax() == 2 and probs[1].argmax() == 0
    # the mask peak (logit 5) is stronger evidence than the best anchor (logit 4)
    torch.testing.assert_close(probs[0, 2], torch.sigmoid(torch.tensor(5.0)))
    torch.testing.assert_close(probs[0, 0], 1 - torch.sigmoid(torch.tensor(5.0)))
    torch.testing.assert_close(probs, image_probabilities(out["cls_logits"], out["mask_logits"]))


def test_image_probabilities_combine_anchor_and_mask_evidence() -> None:
    cls = torch.full((2, 10, 2), -6.0)
    cls[0, 3, 0] = -1.0  # weak class-1 anchor (p = 0.27) ...
    cls[0, 4, 1] = -2.0  # ... and a weaker class-2 one (p = 0.12)
    mask = torch.full((2, 1, 4, 4), -6.0)
    mask[0, 0, 1, 1] = 2.0  # ... but the segmentation branch is confident (p = 0.88)
    without = image_probabilities(cls)
    torch.testing.assert_close(without[0, 1], torch.sigmoid(torch.tensor(-1.0)))
    assert without[0].argmax() == 0  # anchors alone would call it normal
    both = image_probabilities(cls, mask)
    m, s1, s2 = (torch.sigmoid(torch.tensor(v)) for v in (2.0, -1.0, -2.0))
    torch.testing.assert_close(both[0, 1], m)
    torch.testing.assert_close(both[0, 2], s2 * m / s1)  # class ranking is kept
    torch.testing.assert_close(both[0, 0], 1 - m)
    assert both[0].argmax() == 1
    # a normal image stays normal, and weak mask evidence never lowers anchor evidence
    assert both[1].argmax() == 0
    torch.testing.assert_close(both[1], without[1])


def test_postprocess_thresholds_and_limits() -> None:
    model = build_model(preset="tiny", num_classes=1, image_size=96)
    out = _outputs(model)
    out["cls_logits"][0, ::7, 0] = 0.0  # many anchors at p = 0.5
    pp = model.postprocess(out, score_thresh=0.6)
    assert pp.detections[0]["boxes"].shape[0] == 0
    pp = model.postprocess(out, max_detections=5, nms_thresh=1.0)
    assert pp.detections[0]["boxes"].shape[0] == 5


def test_onnx_export_matches_eager(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=2, image_size=96)
    path = export_onnx(model, tmp_path / "tiny.onnx")
    assert model.training  # mode restored
    model.eval()
    x = torch.randn(3, 3, 96, 96)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    for name, arr in zip(["cls_logits", "bbox_regression", "mask_logits", "attention"], got,
                         strict=True):
        np.testing.assert_allclose(arr, ref[name].numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
