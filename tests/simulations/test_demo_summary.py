"""The demo's last line: the final global model's figures and its verdict's threshold."""

from __future__ import annotations

import json

from endofed.commands.demo import _global_summary


def test_summary_line_reads_the_operating_point_from_metrics_json(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({
        "map50": 0.4582, "dice_lesion": 0.652, "sensitivity": 1.0, "specificity": 0.0,
        "operating_point": {"rule": "youden", "threshold": 0.933, "sensitivity": 0.8,
                            "specificity": 1.0}}))
    line = _global_summary(path)
    assert line == ("global model on the held-out images: mAP@0.5 0.458, Dice (lesion "
                    "images) 0.652; lesion when probability > 0.933 (rule youden): "
                    "sensitivity 0.80, specificity 1.00")


def test_summary_line_without_metrics_or_threshold(tmp_path) -> None:
    assert _global_summary(tmp_path / "missing.json") == ""
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"map50": 0.1, "operating_point": {"threshold": None}}))
    assert _global_summary(path) == "global model on the held-out images: mAP@0.5 0.100"
