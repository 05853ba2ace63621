"""DICOM input: the reader, the site layout, ``site check`` and ``predict`` on .dcm files.

Every DICOM file is written here with pydicom from synthetic frames (never real data).
Expected pixels come from the source arrays, Pillow's own JPEG decoder and Pillow's
JFIF YCbCr conversion (independent of pydicom's colour code).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from endofed.commands import site as site_command
from endofed.shared.data.dicom import UnsupportedDicomError, read_frame, read_header
from endofed.shared.data.layouts import read_image
from endofed.shared.data.layouts._base import MAX_IMAGE_PIXELS, TooLargeError
from endofed.shared.data.site import SiteDataError, detect_layout, load_sample, scan_site
from endofed.shared.data.split import split_records

ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
JPEG_2000 = "1.2.840.10008.1.2.4.90"


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv("ENDOFED_PATIENT_ID_SALT", "test-salt-not-a-secret")


def smooth_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 gradients (JPEG-friendly), different per frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        r = 40 + 150 * x / w + 10 * i
        g = 60 + 120 * y / h
        b = 200 - 100 * (x + y) / (w + h) - 20 * i
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.asarray(out), 0, 255).astype(np.uint8)


def write_dicom(
    path: Path, frames: np.ndarray, *, photometric: str = "RGB", sop: str = ENDOSCOPIC,
    syntax: str | None = None, patient_id: str = "PAT-0001", rows: int | None = None,
    columns: int | None = None,
) -> Path:
    """Write ``frames`` (``(N, H, W, 3)``, or ``(N, H, W)`` for MONOCHROME2) as DICOM.

    ``photometric``: RGB (as is), YBR_FULL_422 (uncompressed, chroma of each pixel pair
    from the pair's first pixel; JPEG: Pillow-encoded, one fragment per frame) or
    MONOCHROME2. ``rows``/``columns`` override the header size (a lying header).
    """
    frames = np.asarray(frames, np.uint8)
    n, h, w = frames.shape[:3]
    jpeg = syntax == JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, "Test^Synthetic", "ES"
    ds.Rows, ds.Columns = rows or h, columns or w
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = photometric
    if n > 1:
        ds.NumberOfFrames = n
    if photometric == "MONOCHROME2":
        ds.SamplesPerPixel = 1
        pixels = frames.tobytes()
    else:
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        if jpeg:
            parts = []
            for f in frames:
                buf = io.BytesIO()
                Image.fromarray(f).save(buf, "JPEG", quality=95)
                parts.append(buf.getvalue())
            pixels = encapsulate(parts)
        elif syntax is not None and syntax != ExplicitVRLittleEndian:
            pixels = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64] * n)  # not decoded
        elif photometric == "YBR_FULL_422":
            ycc = np.stack([np.asarray(Image.fromarray(f).convert("YCbCr")) for f in frames])
            packed = np.empty((n, h, w // 2, 4), np.uint8)
            packed[..., 0], packed[..., 1] = ycc[:, :, 0::2, 0], ycc[:, :, 1::2, 0]
            packed[..., 2], packed[..., 3] = ycc[:, :, 0::2, 1], ycc[:, :, 0::2, 2]
            pixels = packed.tobytes()
        else:
            pixels = frames.tobytes()
    ds.PixelData = pixels
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def pair_constant(frames: np.ndarray) -> np.ndarray:
    """Frames whose pixel pairs share a colour (4:2:2 loses nothing on them)."""
    return np.repeat(frames[:, :, 0::2], 2, axis=2)


# ----------------------------------------------------------------------------- reader


def test_rgb_single_frame_round_trips_exactly(tmp_path):
    src = smooth_frames(1)
    path = write_dicom(tmp_path / "still.dcm", src)
    assert np.array_equal(read_frame(path), src[0])
    assert np.array_equal(read_image(path), src[0])  # the site scan's reader dispatches
    head = read_header(path)
    assert (head.rows, head.columns, head.frames) == (48, 64, 1)


def test_ybr_full_422_multi_frame_is_rgb(tmp_path):
    src = pair_constant(smooth_frames(3))
    path = write_dicom(tmp_path / "clip.dcm", src, photometric="YBR_FULL_422",
                       sop=PHOTOGRAPHIC)
    assert read_header(path).frames == 3
    for n in (1, 2, 3):
        got = read_frame(f"{path}#{n}").astype(int)
        assert got.shape == (48, 64, 3)
        ycc = Image.fromarray(src[n - 1]).convert("YCbCr")  # what the file stores
        reference = np.asarray(ycc.convert("RGB")).astype(int)  # Pillow's JFIF inverse
        assert np.abs(got - reference).max() <= 1
        assert np.abs(got - src[n - 1]).max() <= 3  # two 8-bit YCbCr roundings
    with pytest.raises(ValueError, match="frame 4 asked for, the file has 3"):
        read_frame(f"{path}#4")


def test_jpeg_baseline_decodes_with_pillow(tmp_path):
    src = smooth_frames(2)
    path = write_dicom(tmp_path / "jpeg.dcm", src, photometric="YBR_FULL_422",
                       syntax=JPEGBaseline8Bit)
    for n in (1, 2):
        got = read_frame(f"{path}#{n}")
        buf = io.BytesIO()
        Image.fromarray(src[n - 1]).save(buf, "JPEG", quality=95)
        reference = np.asarray(Image.open(buf).convert("RGB"))
        assert np.abs(got.astype(int) - reference).max() <= 1  # Pillow decoded it
        err = np.abs(got.astype(int) - src[n - 1])
        assert err.mean() < 2.0 and err.max() <= 12  # JPEG tolerance vs the source


def test_monochrome2_becomes_three_channels(tmp_path):
    grey = smooth_frames(1)[..., 1]
    got = read_frame(write_dicom(tmp_path / "m.dcm", grey, photometric="MONOCHROME2"))
    assert got.shape == (48, 64, 3) and all(np.array_equal(got[..., c], grey[0])
                                            for c in range(3))


def test_other_sop_class_and_syntax_are_refused_in_one_line(tmp_path):
    ct = write_dicom(tmp_path / "ct.dcm", smooth_frames(1), sop=CT_IMAGE)
    with pytest.raises(UnsupportedDicomError) as exc:
        read_frame(ct)
    msg = str(exc.value)
    assert "\n" not in msg and CT_IMAGE in msg and "VL Endoscopic Image Storage" in msg
    j2k = write_dicom(tmp_path / "j2k.dcm", smooth_frames(1), syntax=JPEG_2000)
    with pytest.raises(UnsupportedDicomError, match=f"transfer syntax {JPEG_2000} is not "
                       "supported; supported: .*JPEG Baseline"):
        read_header(j2k)


def test_pixel_cap_applies_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "bomb.dcm", smooth_frames(1, 8, 8), rows=9000,
                       columns=9000)  # header lies: 81 M pixels, 192 bytes of data
    assert 9000 * 9000 > MAX_IMAGE_PIXELS
    with pytest.raises(TooLargeError, match="9000x9000 pixels per frame"):
        read_frame(path)


# ----------------------------------------------------------------------------- site


def _mask_png(path: Path, h: int, w: int, box: tuple[int, int, int, int]) -> None:
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), m)


def dicom_site(root: Path) -> Path:
    """Two patients: A (a 3-frame clip, mask on frame 2; a still with a mask), B (a
    JPEG still without mask), and one CT file that must be refused."""
    write_dicom(root / "A" / "clip.dcm", pair_constant(smooth_frames(3)),
                photometric="YBR_FULL_422", patient_id="PAT-A-7741")
    write_dicom(root / "A" / "still.dcm", smooth_frames(1, seed=1), patient_id="PAT-A-7741")
    write_dicom(root / "B" / "b.dcm", smooth_frames(1), photometric="YBR_FULL_422",
                syntax=JPEGBaseline8Bit, patient_id="PAT-B-1029")
    write_dicom(root / "ct.dcm", smooth_frames(1), sop=CT_IMAGE, patient_id="PAT-C-5555")
    _mask_png(root / "masks" / "clip_2.png", 48, 64, (10, 8, 30, 24))
    _mask_png(root / "masks" / "still.png", 48, 64, (40, 20, 60, 40))
    return root


def test_site_scan_frames_masks_and_refusals(tmp_path):
    root = dicom_site(tmp_path / "site")
    assert detect_layout(root) == "dicom"
    index = scan_site(root)
    by_name = {Path(str(r.image_path)).name: r for r in index.records}
    assert sorted(by_name) == ["b.dcm", "clip.dcm#1", "clip.dcm#2", "clip.dcm#3",
                               "still.dcm"]
    assert by_name["clip.dcm#2"].boxes.tolist() == [[10, 8, 30, 24]]
    assert by_name["still.dcm"].boxes.tolist() == [[40, 20, 60, 40]]
    assert len(by_name["clip.dcm#1"].boxes) == 0 and len(by_name["b.dcm"].boxes) == 0
    [problem] = index.report.problems
    assert problem.path.endswith("ct.dcm") and CT_IMAGE in problem.reason
    sample = load_sample(by_name["clip.dcm#2"])
    assert sample.image.shape == (48, 64, 3) and sample.mask[8:24, 10:30].all()
    groups = {n: r.group_id for n, r in by_name.items()}
    assert len({groups[n] for n in ("clip.dcm#1", "clip.dcm#2", "clip.dcm#3",
                                    "still.dcm")}) == 1
    assert groups["b.dcm"] != groups["still.dcm"]
    assert all("PAT-" not in g for g in groups.values())  # hashed, never the raw id


def test_without_masks_folder_the_scan_says_how_to_declare_lesion_free(tmp_path):
    write_dicom(tmp_path / "s" / "x.dcm", smooth_frames(1))
    with pytest.raises(SiteDataError, match="needs a masks/ folder.*empty masks/ folder"):
        scan_site(tmp_path / "s")
    (tmp_path / "s" / "masks").mkdir()
    assert len(scan_site(tmp_path / "s").records) == 1


def test_multi_frame_patient_stays_on_one_side_of_the_split(tmp_path):
    root = tmp_path / "site"
    (root / "masks").mkdir(parents=True)
    for p in range(6):
        write_dicom(root / f"p{p}.dcm", smooth_frames(4, 16, 16, seed=p),
                    patient_id=f"PATIENT-{p}")
    records = scan_site(root).records
    assert len(records) == 24
    for seed in range(5):
        parts = split_records(records, (0.5, 0.25, 0.25), seed=seed, stratify=False)
        side_of = {}
        for side, recs in parts.items():
            for r in recs:
                file = str(r.image_path).split("#")[0]
                assert side_of.setdefault(file, side) == side, (file, seed)
        assert len(set(side_of.values())) > 1  # patients did go to different sides


def test_site_check_json_never_shows_the_raw_patient_id(tmp_path, capsys, caplog):
    root = dicom_site(tmp_path / "site")
    parser = argparse.ArgumentParser(prog="endofed")
    site_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["site", "check", str(root), "--json"])
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    with caplog.at_level(logging.DEBUG):
        assert args.func(args) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["layout"] == "dicom" and summary["usable"] == 5
    assert summary["groups"] == 2 and summary["images_with_masks"] == 2
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in before]
    texts = [out, err, *(r.getMessage() for r in caplog.records),
             *(p.read_bytes().decode("latin-1") for p in written)]
    for raw in ("PAT-A-7741", "PAT-B-1029", "PAT-C-5555"):
        assert not any(raw in t for t in texts), raw


# ----------------------------------------------------------------------------- predict


def test_predict_writes_one_result_per_frame(tmp_path):
    import torch

    from endofed.commands import predict as predict_command
    from endofed.shared.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=64, weights_path=None).eval()
    ckpt = save_checkpoint(tmp_path / "model.pt", model, extra={"class_names": ["lesion"]})
    root = tmp_path / "in"
    write_dicom(root / "clip.dcm", smooth_frames(3), sop=PHOTOGRAPHIC)
    write_dicom(root / "j.dcm", smooth_frames(1), photometric="YBR_FULL_422",
                syntax=JPEGBaseline8Bit)
    write_dicom(root / "ct.dcm", smooth_frames(1), sop=CT_IMAGE)
    out = tmp_path / "out"
    parser = argparse.ArgumentParser(prog="endofed")
    predict_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", str(ckpt), str(root), "--out", str(out),
                              "--device", "cpu"])
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    written = sorted(p.name for p in out.glob("*.json"))
    assert written == ["clip_frame1.json", "clip_frame2.json", "clip_frame3.json",
                       "j.json", "summary.json"]
    assert summary["images"] == 4 and (out / "clip_frame2_overlay.png").is_file()
    assert json.loads((out / "clip_frame2.json").read_text())["image"].endswith(
        "clip.dcm#2")
    ((file, reason),) = [(s["file"], s["reason"]) for s in summary["skipped"]]
    assert file.endswith("ct.dcm") and "SOP class" in reason and "\n" not in reason


def test_a_rewritten_file_is_read_again(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", smooth_frames(2), patient_id="P1")
    first = read_frame(f"{path}#2")
    write_dicom(path, smooth_frames(2, 32, 32), patient_id="P1")  # same name, new file
    assert read_frame(f"{path}#2").shape == (32, 32, 3) != first.shape


def test_preprocessing_cache_keys_each_frame_of_a_file(tmp_path):
    from endofed.shared.preprocessing.cache import SiteCache

    root = tmp_path / "site"
    (root / "masks").mkdir(parents=True)
    write_dicom(root / "clip.dcm", smooth_frames(3, 64, 64))
    records = scan_site(root).records
    cache = SiteCache(tmp_path / "cache")
    assert len({cache.key(r) for r in records}) == 3  # the old key: os.stat failed
    sample, _ = cache.get(records[1])
    assert sample.image.ndim == 3 and sample.image.shape[2] == 3
