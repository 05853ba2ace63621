"""A folder of procedure videos as site data: sampled frames, masks, one group per video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from endofed.shared.data.layouts import read_image
from endofed.shared.data.site import detect_layout, scan_site
from endofed.shared.data.split import split_records
from endofed.shared.data.synthetic import render_frame
from endofed.shared.data.video import read_video_frames


def _write(path: Path, n: int, fps: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = [render_frame(rng, size=(64, 80)).image for _ in range(n)]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (80, 64))
    assert w.isOpened()
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    return frames


def test_video_site_frames_groups_and_masks(tmp_path):
    root = tmp_path / "site"
    (root / "masks").mkdir(parents=True)
    for i in range(4):
        _write(root / f"proc{i}.mp4", n=30, fps=10.0, seed=i)  # 3 s: frames 0, 10, 20
    mask = np.zeros((64, 80), np.uint8)
    mask[20:40, 30:50] = 255
    cv2.imwrite(str(root / "masks" / "proc1_10.png"), mask)
    (root / "notes.txt").write_text("not a video")

    assert detect_layout(root) == "video"
    index = scan_site(root, site="v")
    records = index.records
    assert len(records) == 4 * 3
    assert sorted(str(r.image_path).rsplit("#", 1)[1] for r in records
                  if "proc0" in str(r.image_path)) == ["0", "10", "20"]
    lesion = [r for r in records if len(r.boxes)]
    assert [str(r.image_path).endswith("proc1.mp4#10") for r in lesion] == [True]
    np.testing.assert_allclose(lesion[0].boxes, [[30, 20, 50, 40]])
    # one group per video, and the split never cuts a video
    assert len({r.group_id for r in records}) == 4
    sides = split_records(records, (0.5, 0.5), seed=0)
    for side in sides.values():
        groups = {r.group_id for r in side}
        assert all(sum(r.group_id == g for r in side) == 3 for g in groups)
    # the record path decodes to the frame the sequential reader yields for that index
    seq = {f.index: f.image for f in read_video_frames(root / "proc2.mp4", fps=1.0)}
    np.testing.assert_array_equal(read_image(Path(f"{root / 'proc2.mp4'}#20")), seq[20])
