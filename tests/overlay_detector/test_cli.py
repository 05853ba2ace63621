"""``endofed overlay-detector train|eval``: a checkpoint is written, evaluated, errors clear."""

from __future__ import annotations

import json

import pytest

from endofed.cli import main


def test_overlay_train_then_eval(tmp_path, capsys):
    ckpt = tmp_path / "overlay.pt"
    assert main(["overlay-detector", "train", "--out", str(ckpt), "--images", "8", "--epochs", "1",
                 "--image-size", "64", "--batch-size", "4", "--device", "cpu"]) == 0
    assert ckpt.is_file() and "wrote overlay detector" in capsys.readouterr().out
    assert main(["overlay-detector", "eval", str(ckpt), "--images", "4", "--size", "96"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["recall"]) == {"border", "text", "box", "tube", "all"}
    assert result["recall"]["border"]["total"] > 0


def test_overlay_eval_of_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["overlay-detector", "eval", str(tmp_path / "nope.pt"), "--images", "2"])
