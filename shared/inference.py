"""Running a trained model on new images: predictions, overlays, ONNX export.

This is the clinician/integrator side: ``endofed predict`` and ``endofed export``.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib.metadata
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from endofed.shared.config import ConfigError, EndoFedConfig
from endofed.shared.data.inputs import collect_images
from endofed.shared.data.layouts import ImageReadError, read_image
from endofed.shared.data.sample import Sample, SampleMeta
from endofed.shared.data.transforms import build_transforms, to_tv_sample
from endofed.shared.data.video import DEFAULT_VIDEO_FPS, probe_video, read_video_frames
from endofed.shared.metrics.operating_point import (
    OperatingPoint,
    default_operating_point,
    from_checkpoint_extra,
)
from endofed.shared.model import (
    ImprovedSSD,
    build_model,
    load_model_checkpoint,
    load_trainable_state,
)
from endofed.shared.model.export import OUTPUT_NAMES, export_onnx
from endofed.shared.model.presets import SSDConfig
from endofed.shared.model.weights import (
    WEIGHTS_AUTO,
    WEIGHTS_NONE,
    WEIGHTS_PRETRAINED,
    UnreadableFileError,
    is_checkpoint,
    load_torch_file,
)
from endofed.shared.overlay_detector import overlay_detector_for
from endofed.shared.predict_view import render_predict_view, verdict_text
from endofed.shared.preprocessing import OverlayDetector, PreprocessConfig, preprocess_sample

log = logging.getLogger(__name__)

#: Most frames a video contact sheet shows.
CONTACT_SHEET_MAX = 24


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
    score_thresh: float | None = None  # boxes below this detection score are dropped
    # the part of the image the model saw after the checkpoint's preprocessing crop
    # (x0, y0, x1, y1); None without preprocessing. Outputs are mapped back to the image.
    crop_box: tuple[int, int, int, int] | None = None

    @property
    def verdict(self) -> str:
        """The verdict in words (:func:`~shared.predict_view.verdict_text`)."""
        return verdict_text(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.source,
            "verdict": self.verdict,
            "boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
            "labels": self.labels,
            "scores": [round(float(s), 4) for s in self.scores],
            "score_thresh": self.score_thresh,
            "image_probs": {k: round(v, 4) for k, v in self.image_probs.items()},
            "predicted_class": max(self.image_probs, key=self.image_probs.get),
            "lesion_probability": round(float(self.lesion_probability), 4),
            "lesion": self.lesion,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "lesion_area_fraction": float((self.mask_prob > 0.5).mean()),
            "crop_box": list(self.crop_box) if self.crop_box is not None else None,
            "latency_ms": round(self.latency_ms, 2),
        }


def software_version() -> str:
    """The installed EndoFed version (``endofed.__version__`` or the package metadata)."""
    mod = sys.modules.get("endofed")
    version = getattr(mod, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("endofed")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A model file read for prediction: the model and what it says about itself."""

    model: ImprovedSSD
    class_names: list[str]
    operating_point: OperatingPoint
    preprocess: PreprocessConfig | None
    identity: dict[str, Any]


def _preprocess_from_extra(extra: Mapping[str, Any], origin: str) -> PreprocessConfig | None:
    record = extra.get("preprocess")
    if record is None:
        log.info("%s records no preprocessing; images are predicted as they are", origin)
        return None
    if not isinstance(record, Mapping) or "enabled" not in record:
        raise UnreadableFileError(f"model file {origin}: unreadable preprocessing record")
    if not record["enabled"]:
        return None
    try:
        return PreprocessConfig.from_record(dict(record.get("config") or {}), origin=origin)
    except (TypeError, ValueError) as exc:
        raise UnreadableFileError(f"model file {origin}: {exc}") from None


def _weights_source(value: str) -> str:
    if value in ("", WEIGHTS_AUTO, WEIGHTS_PRETRAINED, WEIGHTS_NONE):
        return value or WEIGHTS_AUTO
    return str(Path(value).expanduser())


def _load_round_checkpoint(path: Path, payload: Mapping[str, Any]) -> LoadedModel:
    """A server round checkpoint (``checkpoints/last.pt``, ``round_NNN.pt``).

    It holds the global model's trainable arrays and the run config: the model is
    rebuilt from the run config exactly as the server built it (same seed, preset and
    weights, so the frozen part is the same), then the arrays are loaded. The round's
    operating point comes from ``<run>/rounds/round_NNN.json`` when it is there.
    """
    origin = str(path)
    run_config = payload.get("run_config")
    if not isinstance(run_config, Mapping) or not run_config:
        raise UnreadableFileError(
            f"model file {path}: a round checkpoint without its run config (written by an "
            "older server); use the run's final_model.pt or model_best.pt"
        )
    try:
        cfg = EndoFedConfig.from_flower(dict(run_config))
    except ConfigError as exc:
        raise UnreadableFileError(f"model file {path}: its run config is refused ({exc})") from None
    rnd = int(payload["round"])
    torch.manual_seed(cfg.train.seed)  # the server's initial model (frozen part included)
    model = build_model(
        preset=cfg.model.preset, num_classes=len(cfg.data.class_names),
        image_size=cfg.data.image_size, weights_path=_weights_source(cfg.model.weights_path),
        finetune=cfg.finetune_mode,
    )
    arrays = payload["arrays"]
    if not isinstance(arrays, Mapping):
        raise UnreadableFileError(f"model file {path}: round checkpoint arrays are not a mapping")
    try:
        load_trainable_state(model, {k: torch.as_tensor(v) for k, v in arrays.items()})
    except ValueError as exc:
        raise UnreadableFileError(f"model file {path}: {exc}") from None
    run_dir = path.resolve().parent.parent
    extra: dict[str, Any] = {}
    metrics_file = run_dir / "rounds" / f"round_{rnd:03d}.json"
    if metrics_file.is_file():
        try:
            extra["operating_point"] = json.loads(metrics_file.read_text()).get("operating_point")
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); no operating point for round %d",
                        metrics_file, exc, rnd)
    study = None
    try:
        study = json.loads((run_dir / "study.json").read_text()).get("study-id")
    except (OSError, ValueError, AttributeError):
        pass
    point = from_checkpoint_extra(extra, origin=f"{origin} (round {rnd})")
    preprocess = PreprocessConfig.from_section(cfg.preprocess) if cfg.preprocess.preprocess \
        else None
    identity = {"kind": "round checkpoint", "preset": cfg.model.preset,
                "image_size": int(model.config.image_size),
                "run_name": cfg.federation.run_name, "study_id": study, "round": rnd}
    return LoadedModel(model, list(cfg.data.class_names), point, preprocess, identity)


def _load_resume_state(path: Path, payload: Mapping[str, Any]) -> LoadedModel:
    """A central training resume state (``endofed train``'s ``checkpoints/last.pt``).

    The model is rebuilt from the state's identity (preset, size, classes,
    architecture). The threshold is that epoch's validation operating point from the
    ``epochs.json`` beside it when present (else 0.5 with a warning).
    """
    ident = payload.get("identity")
    if not isinstance(ident, Mapping) or "architecture" not in ident:
        raise UnreadableFileError(f"model file {path}: a training resume state without its "
                                  "model identity; use the run's model.pt")
    arch = {**dict(ident["architecture"]), "name": ident.get("preset"),
            "image_size": ident.get("image-size")}
    try:
        model = ImprovedSSD(SSDConfig.from_dict(arch), int(ident["num-classes"]))
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise UnreadableFileError(f"model file {path}: resume state does not rebuild a "
                                  f"model ({first})") from None
    model.set_finetune(str(ident.get("finetune", "global")))
    epoch = int(payload.get("epoch", 0))
    extra: dict[str, Any] = dict(payload.get("extra") or {})
    epochs_file = path.parent / "epochs.json"
    try:
        rows = json.loads(epochs_file.read_text()) if epochs_file.is_file() else []
        row = next((r for r in rows if int(r.get("epoch", -1)) == epoch), None)
        if row is not None and row.get("val_op_threshold") is not None:
            extra["operating_point"] = {
                **default_operating_point().to_dict(), "rule": f"validation, epoch {epoch}",
                "threshold": float(row["val_op_threshold"]),
                "sensitivity": row.get("val_op_sensitivity", float("nan")),
                "specificity": row.get("val_op_specificity", float("nan")), "note": ""}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable (%s); no operating point for epoch %d",
                    epochs_file, exc, epoch)
    names = list(ident.get("class-names") or
                 [f"class_{i}" for i in range(1, model.num_classes + 1)])
    point = from_checkpoint_extra(extra, origin=f"{path} (epoch {epoch})")
    identity = {"kind": "training resume state", "preset": ident.get("preset"),
                "image_size": int(model.config.image_size), "epoch": epoch}
    return LoadedModel(model, names, point, _preprocess_from_extra(extra, str(path)), identity)


def load_for_prediction(path: Path, *, device: torch.device) -> LoadedModel:
    """Read any model file EndoFed writes for prediction (``weights_only``, no code).

    A full model checkpoint (``model.pt``, ``final_model.pt``, ``model_best.pt``, the
    export's), a server round checkpoint (``checkpoints/last.pt``, ``round_NNN.pt``)
    or a central training resume state (``endofed train``'s ``checkpoints/last.pt``).
    Identity: SHA-256 of the file, preset, run name / study id, round or epoch when
    the file records them.
    """
    path = Path(path)
    payload = load_torch_file(path, what="model file")
    if isinstance(payload, Mapping) and is_checkpoint(payload):
        model = load_model_checkpoint(path)
        extra = dict(payload.get("extra") or {})
        names = extra.get("class_names") or [f"class_{i}" for i in range(1, model.num_classes + 1)]
        point = from_checkpoint_extra(extra, origin=str(path))
        identity = {"kind": "model checkpoint", "preset": payload.get("config", {}).get("name"),
                    "image_size": int(model.config.image_size),
                    "run_name": extra.get("run_name"), "study_id": extra.get("study_id"),
                    "round": extra.get("round", extra.get("rounds")),
                    "epoch": extra.get("epoch")}
        loaded = LoadedModel(model, list(names), point,
                             _preprocess_from_extra(extra, str(path)), identity)
    elif isinstance(payload, Mapping) and "round" in payload and "arrays" in payload:
        loaded = _load_round_checkpoint(path, payload)
    elif isinstance(payload, Mapping) and payload.get("format") == "endofed-resume":
        loaded = _load_resume_state(path, payload)
    else:
        raise UnreadableFileError(
            f"model file {path} is neither an EndoFed model checkpoint, a server round "
            "checkpoint nor a training resume state (no format marker, no round / arrays)"
        )
    loaded.identity = {"file": str(path), "sha256": file_sha256(path),
                       **{k: v for k, v in loaded.identity.items() if v is not None}}
    loaded.model.to(device)
    return loaded


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
        preprocess: PreprocessConfig | None = None,
        detector: OverlayDetector | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.class_names = list(class_names)
        self.score_thresh = score_thresh
        # the image-level verdict's threshold; None: lesion probability > 0.5
        self.operating_point = operating_point or default_operating_point()
        self.image_size = int(model.config.image_size)
        self.transform = build_transforms(self.image_size, train=False)
        # the preprocessing the model was trained with (applied before every prediction)
        self.preprocess = preprocess
        if preprocess is not None and detector is None and preprocess.detect_overlays and (
            preprocess.crop or preprocess.inpaint_text
        ):
            detector = overlay_detector_for(preprocess, device=device)
        self.detector = detector
        self.identity = dict(identity or {})

    @classmethod
    def from_checkpoint(
        cls, path: Path, *, device: torch.device, score_thresh: float = 0.3
    ) -> Predictor:
        """Load a model saved by training, a federated run (final_model.pt, model_best.pt,
        a round checkpoint such as checkpoints/last.pt) or export.

        The image-level threshold is the checkpoint's ``extra["operating_point"]`` (a
        round checkpoint: that round's, from the run's ``rounds/`` folder); a checkpoint
        without one gets 0.5 and a logged warning. The preprocessing the checkpoint
        records is applied to every image before the model sees it.
        """
        loaded = load_for_prediction(Path(path), device=device)
        return cls(loaded.model, class_names=loaded.class_names, device=device,
                   score_thresh=score_thresh, operating_point=loaded.operating_point,
                   preprocess=loaded.preprocess, identity=loaded.identity)

    def provenance(self) -> dict[str, Any]:
        """Model identity, threshold and its rule, preprocessing, software version, UTC time."""
        op = self.operating_point
        return {
            "model": dict(self.identity),
            "threshold": op.threshold,
            "threshold_rule": op.rule,
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else None,
            "software": {"endofed": software_version()},
            "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def describe(self) -> str:
        """One line naming the model for a picture's subtitle."""
        ident = self.identity
        parts = [f"model {Path(str(ident.get('file', '?'))).name}"]
        if ident.get("sha256"):
            parts[0] += f" (sha256 {str(ident['sha256'])[:12]})"
        for key in ("preset", "run_name", "round", "epoch"):
            if ident.get(key) is not None:
                parts.append(f"{key.replace('_', ' ')} {ident[key]}")
        parts.append("preprocessing " + ("on" if self.preprocess is not None else "off"))
        return " · ".join(parts)

    def _input(self, image: np.ndarray) -> torch.Tensor:
        h, w = image.shape[:2]
        sample = to_tv_sample(image, np.zeros((h, w), bool), np.zeros((0, 4)), np.zeros(0))
        return self.transform(sample)["image"][None].to(self.device)

    def _preprocessed(self, image: np.ndarray, source: str) -> tuple[np.ndarray, tuple[int, ...]]:
        h, w = image.shape[:2]
        sample = Sample(image=image, mask=np.zeros((h, w), bool),
                        boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                        meta=SampleMeta(source=source))
        out, info = preprocess_sample(sample, self.preprocess, detector=self.detector)
        return out.image, tuple(int(v) for v in info.crop_box)

    @torch.no_grad()
    def predict(self, image: np.ndarray, *, source: str = "") -> Prediction:
        """Predict on one RGB uint8 image of any size (outputs in its own coordinates).

        With a checkpoint that records preprocessing, the image is preprocessed first
        (overlay crop, text inpainting, denoising); boxes, mask and attention are mapped
        back to the full image (zero outside the crop).
        """
        full_h, full_w = image.shape[:2]
        crop: tuple[int, int, int, int] | None = None
        if self.preprocess is not None:
            image, crop = self._preprocessed(image, source)  # type: ignore[assignment]
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
        mask = cv2.resize(post.mask_prob[0, 0].cpu().numpy().astype(np.float32), (w, h),
                          interpolation=cv2.INTER_LINEAR)
        att = cv2.resize(outputs["attention"][0, 0].float().cpu().numpy(), (w, h),
                         interpolation=cv2.INTER_LINEAR)
        if crop is not None:
            x0, y0, x1, y1 = crop
            boxes = boxes + np.array([x0, y0, x0, y0], np.float32)
            full_mask = np.zeros((full_h, full_w), np.float32)
            full_att = np.zeros((full_h, full_w), np.float32)
            full_mask[y0:y1, x0:x1] = mask
            full_att[y0:y1, x0:x1] = att
            mask, att = full_mask, full_att
        return Prediction(
            source=source,
            boxes=boxes,
            labels=labels,
            scores=det["scores"].cpu().numpy(),
            image_probs={n: float(p) for n, p in zip(names, probs)},
            mask_prob=mask,
            attention=att,
            latency_ms=latency,
            lesion_probability=1.0 - float(probs[0]),
            lesion=bool(self.operating_point.is_lesion(probs[:1])[0]),
            threshold=self.operating_point.threshold,
            threshold_rule=self.operating_point.rule,
            score_thresh=self.score_thresh,
            crop_box=crop,
        )


def render_overlay(image: np.ndarray, pred: Prediction) -> np.ndarray:
    """The predict view (:func:`~shared.predict_view.render_predict_view`); kept under its
    old name for callers of the first overlay."""
    return render_predict_view(image, pred)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the PNG")


def _thumbnail(image: np.ndarray, pred: Prediction, side: int = 320) -> np.ndarray:
    """A small annotated copy of a frame: boxes (yellow) and the mask outline (green)."""
    h, w = image.shape[:2]
    s = side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    mask = cv2.resize((pred.mask_prob > 0.5).astype(np.uint8), small.shape[1::-1],
                      interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = small.copy()
    cv2.drawContours(out, contours, -1, (0, 230, 64), 2)
    for box in pred.boxes:
        x0, y0, x1, y1 = (int(round(float(v) * s)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 221, 0), 2)
    return out


def render_contact_sheet(
    frames: Sequence[tuple[float, np.ndarray, Prediction]], *, title: str
) -> np.ndarray:
    """A grid of annotated frames, each captioned with its time, p and verdict (RGB)."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(frames))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig_w = max(3.4 * cols, 8.0)
    lines = textwrap.wrap(title, width=int(fig_w * 10))
    head = 0.3 + 0.25 * len(lines)  # inches above the grid
    fig_h = 3.0 * rows + head
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    fig.suptitle("\n".join(lines), fontsize=12, fontweight="bold", x=0.01, y=1 - 0.1 / fig_h,
                 ha="left", va="top")
    for i, (t, img, pred) in enumerate(frames):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_thumbnail(img, pred))
        ax.set_xticks([])
        ax.set_yticks([])
        word = "lesion" if pred.lesion else "no lesion"
        ax.set_title(f"t={t:.1f} s  p={pred.lesion_probability:.2f}  {word}", fontsize=9,
                     color=(0.78, 0.12, 0.12) if pred.lesion else (0.1, 0.43, 0.16))
    fig.tight_layout(rect=(0, 0, 1, 1 - head / fig_h))
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def predict_video(
    predictor: Predictor, path: Path, out_dir: Path, name: str, *,
    fps: float = DEFAULT_VIDEO_FPS, sheet: bool = True, top_k: int = 8,
) -> dict[str, Any]:
    """Predict on a video sampled at ``fps`` frames/s.

    Writes ``<name>_timeline.json`` (per sampled frame: index, time in s, lesion
    probability, verdict, boxes) and ``<name>_contact_sheet.png``: the flagged frames
    (at most :data:`CONTACT_SHEET_MAX`, the most probable, in time order) or, when
    none is flagged, the ``top_k`` most probable, and the sheet's title says which.
    Returns the timeline's summary (no per-frame entries).
    """
    info = probe_video(path)
    entries: list[dict[str, Any]] = []
    flagged: list[tuple[float, int, float, np.ndarray, Prediction]] = []  # min-heaps on p
    top: list[tuple[float, int, float, np.ndarray, Prediction]] = []
    for frame in read_video_frames(path, fps=fps):
        pred = predictor.predict(frame.image, source=f"{path}@{frame.time_s:.3f}s")
        entries.append({
            "index": frame.index, "time_s": round(frame.time_s, 3),
            "lesion_probability": round(float(pred.lesion_probability), 4),
            "lesion": pred.lesion, "verdict": pred.verdict,
            "boxes": [[round(float(v), 2) for v in b] for b in pred.boxes],
            "labels": pred.labels, "scores": [round(float(s), 4) for s in pred.scores],
        })
        if sheet:
            item = (float(pred.lesion_probability), -frame.index, frame.time_s, frame.image, pred)
            heap, cap = (flagged, CONTACT_SHEET_MAX) if pred.lesion else (top, top_k)
            (heapq.heappush if len(heap) < cap else heapq.heappushpop)(heap, item)
    n_flagged = sum(bool(e["lesion"]) for e in entries)
    record: dict[str, Any] = {
        "video": str(path), "native_fps": info.fps, "frames_in_video": info.frame_count,
        "sampling_fps": fps, "sampled_frames": len(entries), "flagged_frames": n_flagged,
        **predictor.provenance(),
    }
    target = out_dir / f"{name}_timeline.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    if sheet:
        chosen = flagged if flagged else top
        chosen = sorted(chosen, key=lambda it: it[2])  # in time order
        op = predictor.operating_point
        if flagged:
            shown = f" (the {len(chosen)} most probable shown)" if n_flagged > len(chosen) else ""
            title = (f"{Path(path).name}: {n_flagged} of {len(entries)} sampled frames flagged "
                     f"(lesion p >= {op.threshold:.2f}, rule {op.rule}){shown}")
        else:
            title = (f"{Path(path).name}: no frame flagged of {len(entries)} sampled "
                     f"(threshold {op.threshold:.2f}); the {len(chosen)} most probable shown")
        sheet_path = out_dir / f"{name}_contact_sheet.png"
        _write_png(sheet_path, render_contact_sheet(
            [(t, img, pred) for _, _, t, img, pred in chosen], title=title))
        record["contact_sheet"] = str(sheet_path)
        record["contact_sheet_shows"] = (
            "flagged" if flagged else f"top-{len(chosen)} (none flagged)")
    target.write_text(json.dumps({**record, "frames": entries}, indent=1))
    record["timeline"] = str(target)
    return record


def predict_to_dir(
    predictor: Predictor, inputs: Sequence[Path], out_dir: Path, *, overlays: bool = True,
    video_fps: float = DEFAULT_VIDEO_FPS,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """One JSON (and predict-view PNG) per image, a timeline per video; unreadable
    files are reported, not fatal.

    Inputs are listed and named by :func:`~shared.data.inputs.collect_images` (output
    names mirror the path inside a given folder and never collide) and read with the
    site scan's ``read_image`` (regular files only, pixel cap before decoding). Every
    JSON carries :meth:`Predictor.provenance`. A video's record (``"video"`` key) is
    its timeline summary (:func:`predict_video`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    images, problems = collect_images(inputs, exclude=out_dir)
    results = []
    subtitle = predictor.describe()
    for item in images:
        if item.is_video:
            try:
                results.append(predict_video(predictor, item.path, out_dir, item.name,
                                             fps=video_fps, sheet=overlays))
            except ImageReadError as exc:
                problems.append((str(item.path), str(exc)))
                log.warning("%s: %s, skipped", item.path, exc)
            continue
        try:
            rgb = read_image(item.path)
        except ImageReadError as exc:
            problems.append((str(item.path), str(exc)))
            log.warning("%s: %s, skipped", item.path, exc)
            continue
        pred = predictor.predict(rgb, source=str(item.path))
        record = {**pred.to_json(), **predictor.provenance()}
        target = out_dir / f"{item.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=1))
        if overlays:
            view = render_predict_view(
                rgb, pred, subtitle=f"{Path(item.path).name} · {subtitle}")
            _write_png(out_dir / f"{item.name}_overlay.png", view)
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
