"""``endofed predict``: the JSON's provenance, the verdict in words, the predict view,
round checkpoints, the checkpoint's preprocessing, video input."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from endofed.cli import main
from endofed.shared.build import checkpoint_preprocess, model_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.sample import Sample, SampleMeta
from endofed.shared.data.synthetic import render_frame, write_site
from endofed.shared.inference import Prediction, Predictor
from endofed.shared.metrics.operating_point import OperatingPoint
from endofed.shared.model import save_checkpoint, trainable_state
from endofed.shared.predict_view import (
    OUTSIDE_FOV_RGB,
    predict_view_layout,
    render_predict_view,
)
from endofed.shared.preprocessing import PreprocessConfig, preprocess_sample

CPU = torch.device("cpu")
RUN_CONFIG = {"preset": "tiny", "image-size": 64, "class-names": "lesion", "seed": 3,
              "run-name": "study-a"}


def _point(t: float, rule: str = "youden") -> dict:
    return OperatingPoint(rule=rule, threshold=t, sensitivity=0.9, specificity=0.8,
                          num_positive=5, num_negative=5, score_bins=1000).to_dict()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_view")
    site = tmp / "site"
    write_site(site, n_images=3, seed=11, size=96)
    cfg = EndoFedConfig.from_flower(RUN_CONFIG)
    torch.manual_seed(0)
    model = model_for(cfg).eval()
    files = {}
    for name, t in (("mid", 0.43), ("low", 0.0), ("high", 1.0)):
        files[name] = save_checkpoint(tmp / f"{name}.pt", model, extra={
            "class_names": ["lesion"], "operating_point": _point(t),
            "run_name": "study-a", "study_id": "abc123", "round": 4,
            "preprocess": {"enabled": False}})
    return tmp, site, model, files


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
            if p.name != "summary.json"]


def test_predict_json_carries_model_identity_threshold_version_and_time(env):
    tmp, site, _, files = env
    out = tmp / "out_mid"
    before = datetime.now(UTC).replace(microsecond=0)
    assert main(["predict", str(files["mid"]), str(site / "images"), "--out", str(out),
                 "--device", "cpu"]) == 0
    after = datetime.now(UTC)
    records = _records(out)
    assert len(records) == 3
    sha = hashlib.sha256(files["mid"].read_bytes()).hexdigest()
    for r in records:
        assert r["model"]["sha256"] == sha
        assert r["model"]["preset"] == "tiny"
        assert (r["model"]["run_name"], r["model"]["study_id"], r["model"]["round"]) == (
            "study-a", "abc123", 4)
        assert r["threshold"] == 0.43 and r["threshold_rule"] == "youden"
        assert r["software"]["endofed"] == importlib.metadata.version("endofed")
        stamp = datetime.fromisoformat(r["timestamp_utc"])
        assert stamp.utcoffset() == timedelta(0) and before <= stamp <= after
        assert r["preprocess"] is None
        # one predict-view PNG per image, readable, larger than the image
        png = cv2.imread(str(out / f"{Path(r['image']).stem}_overlay.png"))
        assert png is not None and png.shape[1] > 2 * 96
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["sha256"] == sha and summary["operating_point"]["threshold"] == 0.43


@pytest.mark.parametrize("which, lesion", [("low", True), ("high", False)])
def test_verdict_in_words_for_a_forced_threshold(env, which, lesion):
    tmp, site, _, files = env
    out = tmp / f"out_{which}"
    assert main(["predict", str(files[which]), str(site / "images"), "--out", str(out),
                 "--no-overlay", "--device", "cpu"]) == 0
    for r in _records(out):
        assert r["lesion"] is lesion
        if lesion:
            m = re.fullmatch(r"Lesion found \(p=([0-9.]+) >= ([0-9.]+), rule youden\)",
                             r["verdict"])
        else:
            m = re.fullmatch(r"No lesion found \(p=([0-9.]+) < ([0-9.]+), rule youden\)",
                             r["verdict"])
        assert m, r["verdict"]
        assert float(m[1]) == pytest.approx(r["lesion_probability"], abs=5e-3)
        assert float(m[2]) == (0.0 if lesion else 1.0)


def _disc_frame(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc on black with white burnt-in text in the border; the disc mask."""
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2 - 10) ** 2 <= 52**2
    tex = (rng.integers(90, 200, (h, w, 3))).astype(np.uint8)
    img[disc] = tex[disc]
    cv2.putText(img, "ID 42", (2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return img, disc


def test_attention_panel_is_blank_outside_the_field_of_view():
    img, disc = _disc_frame()
    h, w = disc.shape
    pred = Prediction(source="", boxes=np.zeros((0, 4), np.float32), labels=[],
                      scores=np.zeros(0), image_probs={"normal": 0.9, "lesion": 0.1},
                      mask_prob=np.zeros((h, w), np.float32),
                      attention=np.ones((h, w), np.float32), latency_ms=0.0,
                      lesion_probability=0.1, lesion=False, threshold=0.43,
                      threshold_rule="youden")
    view = render_predict_view(img, pred)
    lay = predict_view_layout(img.shape)
    assert view.shape[:2] == (lay.height, lay.width)
    x0, y0, x1, y1 = lay.attention
    panel = cv2.resize(view[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_NEAREST).astype(int)
    k = np.ones((7, 7), np.uint8)
    inside = cv2.erode(disc.astype(np.uint8), k).astype(bool)
    outside = cv2.erode((~disc).astype(np.uint8), k).astype(bool)
    outside[:3], outside[-3:], outside[:, :3], outside[:, -3:] = False, False, False, False
    # outside the disc (the burnt-in text included): the blank colour, no attention
    assert np.abs(panel[outside] - np.array(OUTSIDE_FOV_RGB)).max() <= 2
    # inside: attention 1 is viridis' top colour (253, 231, 37)
    assert np.abs(panel[inside] - np.array([253, 231, 37])).max() <= 3
    # the image panel shows the image untinted (the black border stays black)
    ix0, iy0, ix1, iy1 = lay.image
    left = cv2.resize(view[iy0:iy1, ix0:ix1], (w, h), interpolation=cv2.INTER_AREA).astype(int)
    assert left[outside & (np.arange(w)[None, :] > 60)].max() <= 8


def test_round_checkpoint_predicts_like_the_full_model(tmp_path):
    from endofed.server.run_state import RunState, save_run_state, write_round_metrics

    cfg = EndoFedConfig.from_flower(RUN_CONFIG)
    torch.manual_seed(cfg.train.seed)  # as the server builds its model
    model = model_for(cfg).eval()
    with torch.no_grad():  # a "trained" global model: not the initial weights
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    arrays = {k: v.numpy() for k, v in trainable_state(model).items()}
    run_dir = tmp_path / "runs" / "study-a"
    save_run_state(run_dir, RunState(round=2, arrays=arrays, run_config=dict(RUN_CONFIG)))
    write_round_metrics(run_dir, 2, {"operating_point": _point(0.37, "sensitivity:0.9")})
    (run_dir / "study.json").write_text(json.dumps({"study-id": "s-1"}))
    full = save_checkpoint(tmp_path / "full.pt", model, extra={"class_names": ["lesion"]})

    last = run_dir / "checkpoints" / "last.pt"
    got = Predictor.from_checkpoint(last, device=CPU)
    ref = Predictor.from_checkpoint(full, device=CPU)
    assert got.operating_point.threshold == 0.37
    assert got.identity["round"] == 2 and got.identity["study_id"] == "s-1"
    assert got.identity["sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    img = render_frame(np.random.default_rng(5), size=80).image
    a, b = got.predict(img), ref.predict(img)
    assert a.lesion_probability == pytest.approx(b.lesion_probability, abs=1e-6)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)
    out = tmp_path / "pred"
    cv2.imwrite(str(tmp_path / "f.png"), img[..., ::-1])
    assert main(["predict", str(last), str(tmp_path / "f.png"), "--out", str(out),
                 "--no-overlay", "--device", "cpu"]) == 0
    assert json.loads((out / "f.json").read_text())["model"]["kind"] == "round checkpoint"


def test_checkpoint_preprocessing_equals_preprocessing_by_hand(env, tmp_path):
    _, _, model, _ = env
    pcfg = PreprocessConfig(median=False, wavelet=False)  # overlay crop + text inpainting
    with_pre = save_checkpoint(tmp_path / "pre.pt", model, extra={
        "class_names": ["lesion"], "operating_point": _point(0.43),
        "preprocess": {"enabled": True, "config": pcfg.to_dict()}})
    plain = save_checkpoint(tmp_path / "plain.pt", model, extra={
        "class_names": ["lesion"], "operating_point": _point(0.43)})
    frame = render_frame(np.random.default_rng(2), size=(120, 150))
    h, w = frame.image.shape[:2]
    sample = Sample(frame.image, np.zeros((h, w), bool), np.zeros((0, 4), np.float32),
                    np.zeros(0, np.int64), SampleMeta(source="x"))
    cropped, info = preprocess_sample(sample, pcfg)
    x0, y0, x1, y1 = info.crop_box
    assert (x1 - x0, y1 - y0) != (w, h)  # the frame's black border is cropped away

    a = Predictor.from_checkpoint(with_pre, device=CPU, score_thresh=0.0).predict(frame.image)
    b = Predictor.from_checkpoint(plain, device=CPU, score_thresh=0.0).predict(cropped.image)
    assert a.crop_box == info.crop_box
    assert a.lesion_probability == pytest.approx(b.lesion_probability, abs=1e-6)
    np.testing.assert_allclose(a.boxes, b.boxes + np.array([x0, y0, x0, y0]), atol=1e-3)
    np.testing.assert_allclose(a.attention[y0:y1, x0:x1], b.attention, atol=1e-5)
    assert a.attention.shape == (h, w) and not a.attention[:y0].any()
    # and the same model without its preprocessing sees another picture
    c = Predictor.from_checkpoint(plain, device=CPU).predict(frame.image)
    assert c.lesion_probability != pytest.approx(a.lesion_probability, abs=1e-6)


def test_training_records_its_preprocessing():
    on = EndoFedConfig.from_mapping({"preprocess": True, "preprocess-wavelet": False})
    rec = checkpoint_preprocess(on)
    assert rec["enabled"] and rec["config"]["wavelet"] is False and rec["config"]["crop"]
    assert PreprocessConfig.from_record(rec["config"]) == PreprocessConfig(wavelet=False)
    assert checkpoint_preprocess(EndoFedConfig.from_mapping({})) == {"enabled": False}


def _write_video(path: Path, n: int, fps: float, size=(96, 80)) -> list[np.ndarray]:
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    assert writer.isOpened()
    rng = np.random.default_rng(1)
    frames = [render_frame(rng, size=(size[1], size[0])).image for _ in range(n)]
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return frames


@pytest.mark.parametrize("fps, expected", [("1", [0, 10, 20]), ("4", [0, 3, 5, 8, 10, 13,
                                                                        15, 18, 20, 23])])
def test_video_predict_writes_a_timeline_at_the_sampling_rate(env, tmp_path, fps, expected):
    _, _, _, files = env
    video = tmp_path / "procedure.mp4"
    _write_video(video, n=25, fps=10.0)  # 2.5 s
    out = tmp_path / "out"
    assert main(["predict", str(files["high"]), str(video), "--out", str(out),
                 "--video-fps", fps, "--device", "cpu"]) == 0
    timeline = json.loads((out / "procedure_timeline.json").read_text())
    assert timeline["sampled_frames"] == len(expected) == len(timeline["frames"])
    assert [f["index"] for f in timeline["frames"]] == expected
    assert [f["time_s"] for f in timeline["frames"]] == pytest.approx([i / 10 for i in expected])
    assert timeline["model"]["sha256"] == hashlib.sha256(files["high"].read_bytes()).hexdigest()
    # threshold 1: nothing flagged, so the sheet shows the most probable frames and says so
    assert timeline["flagged_frames"] == 0
    assert timeline["contact_sheet_shows"].startswith("top-")
    assert cv2.imread(str(out / "procedure_contact_sheet.png")) is not None
    # each entry is the prediction on that decoded frame (read independently here)
    cap, decoded = cv2.VideoCapture(str(video)), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    pred = Predictor.from_checkpoint(files["high"], device=CPU)
    for entry in timeline["frames"][:3]:
        p = pred.predict(decoded[entry["index"]]).lesion_probability
        assert entry["lesion_probability"] == pytest.approx(p, abs=1e-4)
        assert entry["verdict"].startswith("No lesion found (p=")


def test_video_flagged_frames_and_a_broken_video(env, tmp_path):
    _, _, _, files = env
    video = tmp_path / "clip.avi"
    _write_video(video, n=6, fps=2.0)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    assert main(["predict", str(files["low"]), str(video), str(tmp_path / "broken.mp4"),
                 "--out", str(out), "--device", "cpu"]) == 0
    timeline = json.loads((out / "clip_timeline.json").read_text())
    assert timeline["sampled_frames"] == 3 and timeline["flagged_frames"] == 3
    assert timeline["contact_sheet_shows"] == "flagged"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 1 and summary["flagged_video_frames"] == 3
    assert [s["file"] for s in summary["skipped"]] == [str(tmp_path / "broken.mp4")]
    assert "broken.mp4" in summary["skipped"][0]["reason"]


def test_central_training_checkpoints_record_preprocessing_and_last_pt_predicts(tmp_path):
    site = tmp_path / "site"
    write_site(site, n_images=8, seed=2, size=64)
    run = tmp_path / "run"
    assert main(["train", str(site), "--out", str(run), "--preset", "tiny", "--image-size",
                 "64", "--epochs", "1", "--device", "cpu", "--threads", "1",
                 "--weights", "none", "-c", "preprocess=true"]) == 0
    model_pt, last = run / "model.pt", run / "checkpoints" / "last.pt"
    best = Predictor.from_checkpoint(model_pt, device=CPU)
    resumed = Predictor.from_checkpoint(last, device=CPU)  # the resume state, not refused
    assert best.preprocess == resumed.preprocess == PreprocessConfig.from_section(
        EndoFedConfig.from_mapping({"preprocess": True}).preprocess)
    assert resumed.identity["kind"] == "training resume state"
    assert resumed.identity["epoch"] == 1
    # one epoch: the best model is the last one, threshold included
    assert resumed.operating_point.threshold == pytest.approx(best.operating_point.threshold)
    img = render_frame(np.random.default_rng(8), size=(96, 112)).image
    a, b = best.predict(img), resumed.predict(img)
    assert a.crop_box is not None and a.crop_box == b.crop_box
    assert a.lesion_probability == pytest.approx(b.lesion_probability, abs=1e-6)
