"""Running a trained model on new images: predictions, overlays, ONNX export.

This is the clinician/integrator side: ``endofed predict`` and ``endofed export``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from endofed.shared.data.inputs import collect_images
from endofed.shared.data.layouts import ImageReadError, read_image
from endofed.shared.data.transforms import build_transforms, to_tv_sample
from endofed.shared.metrics.operating_point import (
    OperatingPoint,
    default_operating_point,
    from_checkpoint_extra,
)
from endofed.shared.model import ImprovedSSD, load_model_checkpoint, read_checkpoint
from endofed.shared.model.export import OUTPUT_NAMES, export_onnx

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Model output for one image, in that image's own pixel coordinates."""

    source: str
    boxes: np.ndarray  # (N, 4) XYXY
    labels: list[str]
    scores: np.ndarray
    image_probs: dict[str, float]
    mask_prob: np.ndarray  # (H, W) float32
    attention: np.ndarray  # (H, W) float32 in [0, 1]
    latency_ms: float
    # The lesion / no-lesion verdict: lesion probability (1 - p(normal)) > threshold.
    lesion_probability: float = float("nan")
    lesion: bool | None = None
    threshold: float | None = None
    threshold_rule: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.source,
            "boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
            "labels": self.labels,
            "scores": [round(float(s), 4) for s in self.scores],
            "image_probs": {k: round(v, 4) for k, v in self.image_probs.items()},
            "predicted_class": max(self.image_probs, key=self.image_probs.get),
            "lesion_probability": round(float(self.lesion_probability), 4),
            "lesion": self.lesion,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "lesion_area_fraction": float((self.mask_prob > 0.5).mean()),
            "latency_ms": round(self.latency_ms, 2),
        }


class Predictor:
    """Wraps a model with the evaluation transform and maps outputs back to the image."""

    def __init__(
        self,
        model: ImprovedSSD,
        *,
        class_names: Sequence[str],
        device: torch.device,
        score_thresh: float = 0.3,
        operating_point: OperatingPoint | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.class_names = list(class_names)
        self.score_thresh = score_thresh
        # the image-level verdict's threshold; None: lesion probability > 0.5
        self.operating_point = operating_point or default_operating_point()
        self.image_size = int(model.config.image_size)
        self.transform = build_transforms(self.image_size, train=False)

    @classmethod
    def from_checkpoint(
        cls, path: Path, *, device: torch.device, score_thresh: float = 0.3
    ) -> Predictor:
        """Load a model saved by training, a federated run (final_model.pt) or export.

        The image-level threshold is the checkpoint's ``extra["operating_point"]``; a
        checkpoint without one gets 0.5 and a logged warning.
        """
        model = load_model_checkpoint(path, map_location=device)
        extra = read_checkpoint(path).get("extra", {})
        names = extra.get("class_names") or [f"class_{i}" for i in range(1, model.num_classes + 1)]
        point = from_checkpoint_extra(extra, origin=str(path))
        return cls(model, class_names=names, device=device, score_thresh=score_thresh,
                   operating_point=point)

    def _input(self, image: np.ndarray) -> torch.Tensor:
        h, w = image.shape[:2]
        sample = to_tv_sample(image, np.zeros((h, w), bool), np.zeros((0, 4)), np.zeros(0))
        return self.transform(sample)["image"][None].to(self.device)

    @torch.no_grad()
    def predict(self, image: np.ndarray, *, source: str = "") -> Prediction:
        """Predict on one RGB uint8 image of any size."""
        h, w = image.shape[:2]
        x = self._input(image)
        t0 = time.perf_counter()
        outputs = self.model(x)
        post = self.model.postprocess(outputs, score_thresh=self.score_thresh)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        latency = (time.perf_counter() - t0) * 1000.0
        det = post.detections[0]
        scale = np.array([w / self.image_size, h / self.image_size] * 2, dtype=np.float32)
        boxes = det["boxes"].cpu().numpy().astype(np.float32) * scale
        labels = [self.class_names[int(k) - 1] for k in det["labels"].cpu()]
        probs = post.image_probs[0].cpu().numpy()
        names = ["normal", *self.class_names]
        mask = post.mask_prob[0, 0].cpu().numpy().astype(np.float32)
        att = outputs["attention"][0, 0].float().cpu().numpy()
        return Prediction(
            source=source,
            boxes=boxes,
            labels=labels,
            scores=det["scores"].cpu().numpy(),
            image_probs={n: float(p) for n, p in zip(names, probs)},
            mask_prob=cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR),
            attention=cv2.resize(att, (w, h), interpolation=cv2.INTER_LINEAR),
            latency_ms=latency,
            lesion_probability=1.0 - float(probs[0]),
            lesion=bool(self.operating_point.is_lesion(probs[:1])[0]),
            threshold=self.operating_point.threshold,
            threshold_rule=self.operating_point.rule,
        )


def render_overlay(image: np.ndarray, pred: Prediction) -> np.ndarray:
    """RGB overlay: attention heat map, mask contour (green), boxes with labels (yellow)."""
    heat = cv2.applyColorMap(
        (np.clip(pred.attention, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET
    )[:, :, ::-1]
    out = cv2.addWeighted(image, 0.65, heat, 0.35, 0)
    contours, _ = cv2.findContours(
        (pred.mask_prob > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    thick = max(1, round(max(image.shape[:2]) / 300))
    cv2.drawContours(out, contours, -1, (0, 255, 0), thick)
    for box, label, score in zip(pred.boxes, pred.labels, pred.scores):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 0), thick)
        cv2.putText(out, f"{label} {score:.2f}", (x0, max(12, y0 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (255, 255, 0), thick)
    return out


def predict_to_dir(
    predictor: Predictor, inputs: Sequence[Path], out_dir: Path, *, overlays: bool = True
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """One JSON (and overlay PNG) per image; unreadable files are reported, not fatal.

    Inputs are listed and named by :func:`~shared.data.inputs.collect_images` (output
    names mirror the path inside a given folder and never collide) and read with the
    site scan's ``read_image`` (regular files only, pixel cap before decoding).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    images, problems = collect_images(inputs, exclude=out_dir)
    results = []
    for item in images:
        try:
            rgb = read_image(item.path)
        except ImageReadError as exc:
            problems.append((str(item.path), str(exc)))
            log.warning("%s: %s, skipped", item.path, exc)
            continue
        pred = predictor.predict(rgb, source=str(item.path))
        record = pred.to_json()
        target = out_dir / f"{item.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=1))
        if overlays:
            cv2.imwrite(str(out_dir / f"{item.name}_overlay.png"),
                        cv2.cvtColor(render_overlay(rgb, pred), cv2.COLOR_RGB2BGR))
        results.append(record)
    return results, problems


def export_and_check(
    model: ImprovedSSD, out_file: Path, *, opset: int = 17, check: bool = True,
    atol: float = 1e-3,
) -> dict[str, Any]:
    """Export with :func:`shared.model.export_onnx` and compare onnxruntime to eager.

    Anchors (needed to decode ``bbox_regression``) are written beside the file as
    ``<name>.anchors.npy``. Raises if any output differs by more than ``atol``.
    """
    model = model.cpu().eval()
    export_onnx(model, out_file, opset=opset)
    np.save(out_file.with_suffix(".anchors.npy"), model.anchors.cpu().numpy())
    s = int(model.config.image_size)
    report: dict[str, Any] = {"file": str(out_file), "image_size": s,
                              "outputs": list(OUTPUT_NAMES)}
    if check:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 3, s, s)
        with torch.no_grad():
            out = model(x)
        eager = [out[k].numpy() for k in OUTPUT_NAMES]
        onnx_out = sess.run(None, {"images": x.numpy()})
        diffs = {n: float(np.abs(a - b).max()) for n, a, b in zip(OUTPUT_NAMES, eager, onnx_out)}
        report["max_abs_diff"] = diffs
        report["matches_eager"] = all(d <= atol for d in diffs.values())
        if not report["matches_eager"]:
            raise RuntimeError(f"ONNX outputs differ from eager beyond {atol}: {diffs}")
    return report
