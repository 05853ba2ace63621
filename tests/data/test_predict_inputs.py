"""``endofed predict`` inputs: regular files only, the site scan's checks, no colliding outputs.

Real files in ``tmp_path`` (cv2 images, a FIFO from ``os.mkfifo``, a PNG header that
claims 50000x50000) and a real tiny model checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from endofed.commands import predict as predict_command
from endofed.shared.data.inputs import collect_images
from endofed.shared.model import build_model, save_checkpoint

from .test_site_hardening import png_header_only


def _names(inputs, **kw) -> dict[str, str]:
    images, _ = collect_images(inputs, **kw)
    return {str(i.path): i.name for i in images}


def test_output_names_mirror_the_folder_and_never_collide(tmp_path, frame, save_rgb):
    img = frame(32, 32)[0]
    for rel in ("a/s.png", "b/s.png", "s.jpg", "s.png", "summary.png", "S.bmp"):
        save_rgb(tmp_path / "in" / rel, img)
    save_rgb(tmp_path / "other" / "s.png", img)
    names = _names([tmp_path / "in", tmp_path / "other", tmp_path / "in" / "a" / "s.png"])
    d = str(tmp_path / "in")
    assert names == {
        f"{d}/S.bmp": "S",
        f"{d}/a/s.png": "a/s",
        f"{d}/b/s.png": "b/s",
        f"{d}/s.jpg": "s-2",  # "s" taken (case-insensitively) by S.bmp
        f"{d}/s.png": "s-3",
        f"{d}/summary.png": "summary-2",  # summary.json is the run's summary
        f"{tmp_path}/other/s.png": "s-4",
    }  # and in/a/s.png given again is listed once
    assert len(set(names.values())) == len(names)


def test_non_regular_files_and_the_output_folder_are_left_out(tmp_path, frame, save_rgb):
    save_rgb(tmp_path / "in" / "ok.png", frame(32, 32)[0])
    save_rgb(tmp_path / "in" / "out" / "ok_overlay.png", frame(32, 32)[0])
    os.mkfifo(tmp_path / "in" / "pipe.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "in" / "dangling.png")
    images, problems = collect_images([tmp_path / "in"], exclude=tmp_path / "in" / "out")
    assert [i.name for i in images] == ["ok"]
    reasons = {Path(p).name: r for p, r in problems}
    assert "named pipe" in reasons["pipe.png"] and "cannot read" in reasons["dangling.png"]
    with pytest.raises(FileNotFoundError, match="nope"):
        collect_images([tmp_path / "nope"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=64, weights_path=None).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_checkpoint(path, model, extra={"class_names": ["lesion"]})


def _predict(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="endofed")
    predict_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _run(checkpoint: Path, root: Path, out: Path) -> dict:
    argv = ["predict", str(checkpoint), str(root), "--out", str(out), "--device", "cpu"]
    assert _predict(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_predict_same_name_in_two_folders_writes_two_files(tmp_path, checkpoint, frame,
                                                          save_rgb):
    root = tmp_path / "in"
    save_rgb(root / "a" / "s.png", frame(64, 80, [(10, 10, 40, 40)], seed=1)[0])
    save_rgb(root / "b" / "s.png", frame(64, 80, seed=2)[0])
    out = tmp_path / "out"
    summary = _run(checkpoint, root, out)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert written == ["a/s.json", "b/s.json", "summary.json"]
    assert summary["images"] == 2  # as many as JSON files written (the old code: 2 for 1)
    sources = {json.loads((out / w).read_text())["image"] for w in written[:2]}
    assert sources == {str(root / "a" / "s.png"), str(root / "b" / "s.png")}
    assert (out / "a" / "s_overlay.png").is_file() and (out / "b" / "s_overlay.png").is_file()


@pytest.mark.timeout(120)
def test_predict_skips_a_fifo(tmp_path, checkpoint, frame, save_rgb):
    root = tmp_path / "in"
    save_rgb(root / "ok.png", frame(64, 80, seed=1)[0])
    os.mkfifo(root / "pipe.png")  # the old predict blocked here for ever
    summary = _run(checkpoint, root, tmp_path / "out")
    assert summary["images"] == 1
    ((file, reason),) = [(s["file"], s["reason"]) for s in summary["skipped"]]
    assert file.endswith("pipe.png") and "named pipe" in reason


def test_predict_skips_a_decompression_bomb(tmp_path, checkpoint, frame, save_rgb):
    root = tmp_path / "in"
    save_rgb(root / "ok.png", frame(64, 80, seed=1)[0])
    png_header_only(root / "bomb.png", 50000, 50000)  # the old predict: cv2 traceback
    summary = _run(checkpoint, root, tmp_path / "out")
    assert summary["images"] == 1
    ((file, reason),) = [(s["file"], s["reason"]) for s in summary["skipped"]]
    assert file.endswith("bomb.png") and "decompression bomb" in reason
