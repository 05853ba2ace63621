"""The evaluation report writer and the run-plot helpers produce valid files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from endofed.shared.metrics import (
    MetricAccumulator,
    plot_metric_curves,
    plot_site_bars,
    write_evaluation_report,
)


def _assert_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100
        im.verify()


def test_report_files_and_content(tmp_path, eval_set) -> None:
    acc = MetricAccumulator(
        class_names=eval_set.class_names,
        morphology_names=eval_set.morphology_names,
        loc_score_threshold=0.3,
    )
    acc.update(**eval_set.batch(slice(None)), latency_ms=30.0)
    metrics = acc.compute()
    report = write_evaluation_report(
        metrics, tmp_path / "eval", title="Site A test", extra_sections={"Notes": "hello"}
    )
    out = tmp_path / "eval"
    assert report == out / "report.md"
    for name in ("roc.png", "confusion_matrix.png", "localization.png"):
        _assert_png(out / name)

    data = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert data["map50"] == pytest.approx(metrics["map50"])
    assert data["confusion_matrix"] == metrics["confusion_matrix"]
    assert set(data["localization"]["overall"]["share"]) == {"0.6", "0.7", "0.8", "0.9"}

    text = report.read_text()
    assert text.startswith("# Site A test")
    assert "## Notes\n\nhello" in text
    overall = metrics["localization"]["overall"]
    share = overall["share"][0.6]
    assert f"| **Total** | {overall['total']} | {overall['hits'][0.6]} | {100 * share:.2f}%" in text
    cm = metrics["confusion_matrix"]
    assert "| **normal** | " + " | ".join(str(v) for v in cm[0]) + " |" in text
    assert f"| mAP@0.5 | {metrics['map50']:.4f} |" in text


def test_report_on_empty_metrics(tmp_path) -> None:
    metrics = MetricAccumulator(class_names=["a"], morphology_names=["flat"]).compute()
    report = write_evaluation_report(metrics, tmp_path, title="empty")
    data = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert data["map50"] is None and data["num_images"] == 0
    assert "n/a" in report.read_text()
    for name in ("roc.png", "confusion_matrix.png", "localization.png"):
        _assert_png(tmp_path / name)


def test_run_plots(tmp_path) -> None:
    rows = []
    for r in range(1, 5):
        for site in ("global", "site_a", "site_b"):
            rows.append(
                {
                    "round": r,
                    "site": site,
                    "map50": 0.1 * r,
                    "loss": 1 / r,
                    "auc": math.nan if site == "site_b" else 0.5 + 0.1 * r,
                }
            )
    df = pd.DataFrame(rows)
    _assert_png(plot_metric_curves(df, ["map50", "loss", "auc", "map50"], tmp_path / "c.png"))
    _assert_png(plot_site_bars(df, "map50", tmp_path / "b.png"))
    _assert_png(plot_site_bars(df.assign(map50=np.nan), "map50", tmp_path / "e.png"))
    with pytest.raises(ValueError, match="lacks columns"):
        plot_metric_curves(df, ["nope"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="lacks columns"):
        plot_site_bars(df.drop(columns="site"), "map50", tmp_path / "x.png")
