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


# -- issue 15: a report that stands alone -------------------------------------------------
def _rounds_frame(rounds: int = 3) -> pd.DataFrame:
    rows = []
    for r in range(1, rounds + 1):
        for i, site in enumerate(("global", "site_a", "site_b")):
            rows.append({"round": r, "site": site, "map50": 0.0, "train-loss": 2.0 - 0.1 * r,
                         "auc": math.nan if site == "site_a" else 0.5 + 0.1 * i})
    return pd.DataFrame(rows)


def test_curve_panels_have_words_integer_rounds_and_the_metrics_range(tmp_path) -> None:
    from endofed.shared.metrics.plots import metric_curves_figure

    fig = metric_curves_figure(_rounds_frame(), ["map50", "auc", "train-loss"])
    ax_map, ax_auc, ax_loss = fig.axes[:3]
    assert [ax.get_title() for ax in (ax_map, ax_auc, ax_loss)] == [
        "mAP@0.5", "AUC (one-vs-rest)", "Training loss"]
    fig.canvas.draw()
    for ax in (ax_map, ax_auc, ax_loss):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    # a constant 0 stays on the 0-1 axis of a rate (not -0.04..0.04)
    lo, hi = ax_map.get_ylim()
    assert lo == pytest.approx(-0.02) and hi == pytest.approx(1.02)
    assert ax_auc.get_ylim() == pytest.approx((-0.02, 1.02))
    assert ax_loss.get_ylim()[0] == 0.0  # a loss axis starts at 0
    _assert_png(plot_metric_curves(_rounds_frame(), ["map50"], tmp_path / "c.png"))


def test_global_line_is_drawn_apart_and_listed_first() -> None:
    from endofed.shared.metrics.plots import metric_curves_figure

    fig = metric_curves_figure(_rounds_frame(), ["map50", "auc"])
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    glob = lines.pop("global (merged over sites)")
    assert glob.get_color() == "black"
    assert all(glob.get_linewidth() > 2 * ln.get_linewidth() for ln in lines.values())
    assert all(glob.get_zorder() > ln.get_zorder() for ln in lines.values())
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "global (merged over sites)", "site_a", "site_b"]
    # a site keeps its colour in every panel, even where another site has no values
    colour = {ax: {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
              for ax in fig.axes[:2]}
    assert colour[fig.axes[1]]["site_b"] == colour[fig.axes[0]]["site_b"]


def test_site_bars_put_global_first_on_a_0_1_axis() -> None:
    from endofed.shared.metrics.plots import site_bars_figure

    fig = site_bars_figure(_rounds_frame(), "map50")
    ax = fig.axes[0]
    assert ax.get_title() == "mAP@0.5 per site, round 3"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["global", "site_a", "site_b"]
    assert ax.get_ylim() == pytest.approx((0.0, 1.08))


def test_dice_is_split_into_lesion_and_lesion_free_images(tmp_path) -> None:
    """Hand case: 2 lesion images (Dice 0.6 and 0), 3 lesion-free images of which 2 have
    no predicted mask (Dice 1) and 1 a false one (Dice 0)."""
    true = np.zeros((5, 4, 4), dtype=np.float32)
    prob = np.zeros((5, 4, 4), dtype=np.float32)
    true[0, 0, :] = 1              # 4 true pixels
    prob[0, 0, :2] = prob[0, 1, 0] = 0.9  # TP 2, FP 1, FN 2 -> Dice 4/7
    true[1, 2, 2] = 1              # missed -> 0
    prob[4, 3, 3] = 0.8            # lesion-free image with a false mask -> 0
    acc = MetricAccumulator(class_names=["lesion"])
    acc.update(mask_prob=prob[:, None], mask_true=true)
    m = acc.compute()
    assert m["seg_images"] == 5 and m["seg_lesion_images"] == 2
    assert m["dice_lesion"] == pytest.approx((4 / 7 + 0) / 2)
    assert m["dice_lesion_free"] == pytest.approx(2 / 3)
    assert m["dice"] == pytest.approx((4 / 7 + 0 + 1 + 1 + 0) / 5)
    text = write_evaluation_report(m, tmp_path, title="dice").read_text()
    assert "Dice (mean per image)" not in text
    assert f"| Lesion images (lesion mask not empty) | 2 | {(4 / 7) / 2:.4f} |" in text
    assert f"| Lesion-free images (empty mask) | 3 | {2 / 3:.4f} |" in text
    assert "1 when nothing is predicted and 0 otherwise" in text
    assert f"| Dice, lesion images (mean per image with a lesion mask) | {(4 / 7) / 2:.4f} |" \
        in text


def test_report_files_are_replaced_atomically(tmp_path, eval_set) -> None:
    """A reader holding the old report keeps a whole file; no temporary file is left."""
    acc = MetricAccumulator(class_names=eval_set.class_names,
                            morphology_names=eval_set.morphology_names)
    acc.update(**eval_set.batch(slice(None)))
    metrics = acc.compute()
    report = write_evaluation_report(metrics, tmp_path, title="first")
    names = ("report.md", "metrics.json", "roc.png", "confusion_matrix.png", "localization.png")
    before = {n: (tmp_path / n).stat().st_ino for n in names}
    with report.open() as old:
        write_evaluation_report(metrics, tmp_path, title="second")
        assert old.read().startswith("# first")  # the old file, whole
    assert {n: (tmp_path / n).stat().st_ino for n in names} != before
    assert all((tmp_path / n).stat().st_ino != before[n] for n in names)  # renamed in
    assert report.read_text().startswith("# second")
    assert list(tmp_path.glob(".*.tmp")) == []


def test_headline_leads_with_the_verdict_at_the_models_threshold(tmp_path, eval_set) -> None:
    """The headline's sensitivity / specificity are those of the stored threshold (the
    verdict predict gives), not only the argmax's: a demo model read 1.00 / 0.00 at
    0.5 in the headline while its threshold gave 0.80 / 1.00."""
    from endofed.shared.metrics.operating_point import at_threshold

    acc = MetricAccumulator(class_names=eval_set.class_names,
                            morphology_names=eval_set.morphology_names)
    acc.update(**eval_set.batch(slice(None)))
    metrics = acc.compute()
    metrics["operating_point"] = at_threshold(acc.state(), 0.8, rule="sensitivity:0.9").to_dict()
    text = write_evaluation_report(metrics, tmp_path / "eval", title="t").read_text()
    # independent reference: lesion probability = 1 - p(normal), lesion image = label != 0
    lesion_prob = 1.0 - eval_set.image_probs[:, 0]
    is_lesion = eval_set.image_labels != 0
    sens = float(np.mean(lesion_prob[is_lesion] > 0.8))
    spec = float(np.mean(lesion_prob[~is_lesion] <= 0.8))
    headline = text.split("\n## ")[1]
    at = "at the lesion threshold 0.8000 (rule `sensitivity:0.9`)"
    rows = [ln for ln in headline.splitlines() if ln.startswith("| Sensitivity")
            or ln.startswith("| Specificity")]
    assert rows[0] == f"| Sensitivity (lesion vs normal) {at} | {sens:.4f} |"
    assert rows[1] == f"| Specificity (lesion vs normal) {at} | {spec:.4f} |"
    assert rows[2].startswith("| Sensitivity (lesion vs normal), argmax verdict (threshold 0.5) |")
