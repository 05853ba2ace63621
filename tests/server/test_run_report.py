"""The federated run report (issue 15): run settings, integers, per-round rendering.

Run directories are written by the server's own code (``save_run_state``,
``write_round_metrics``, ``study_id``), metrics by a real ``MetricAccumulator``.
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from endofed.server.loop import study_id
from endofed.server.progress import progress_text, round_counts, round_progress
from endofed.server.report import (
    PROGRESS_LOG,
    render_run_report,
    report_round,
    wait_for_report,
)
from endofed.server.run_state import RunState, save_run_state, write_round_metrics
from endofed.shared.metrics import MetricAccumulator

RUN_CONFIG = {
    "strategy": "fedprox", "proximal-mu": 0.01, "preset": "tiny", "image-size": 64,
    "finetune": "auto", "weights-path": "auto", "num-server-rounds": 3, "local-epochs": 2,
    "batch-size": 4, "learning-rate": 0.001, "fraction-train": 1.0, "min-train-nodes": 2,
    "dp-epsilon": 8.0, "dp-delta": 1e-5, "dp-max-grad-norm": 1.0, "threshold-rule": "youden",
    "central-dp": "none", "secagg": False,
}
EVENTS = [{"round": 2, "site": "site_c", "node": 7, "event": "declined",
           "reason": "privacy budget exhausted"}]


def _history(rounds: int = 2) -> list[dict]:
    rows = []
    for r in range(1, rounds + 1):
        rows.append({"round": r, "site": "global", "sites-aggregated": 2.0, "num_images": 9.0,
                     "map50": 0.1 * r, "dice_lesion": 0.2 * r, "auc": 0.6,
                     "round-seconds": 30.0 + r})
        for site, eps in (("site_a", 8.0), ("site_b", 4.0)):
            rows.append({"round": r, "site": site, "num-examples": 26.0, "num_images": 4.0,
                         "train-loss": 1.5, "map50": 0.05 * r, "epsilon-spent": 1.25 * r,
                         "epsilon-target": eps})
        rows.append({"round": r, "site": "site_c", "declined": 1.0} if r == 2 else
                    {"round": r, "site": "site_c", "num-examples": 12.0, "train-loss": 2.0,
                     "epsilon-spent": 3.0, "epsilon-target": 3.0})
    return rows


def _run_dir(tmp_path: Path, eval_metrics: dict) -> Path:
    run_dir = tmp_path / "polyps"
    run_dir.mkdir()
    study_id(run_dir)
    save_run_state(run_dir, RunState(round=2, arrays={"w": np.zeros(3, np.float32)},
                                     history=_history(), run_config=RUN_CONFIG,
                                     events=EVENTS))
    write_round_metrics(run_dir, 2, eval_metrics)
    return run_dir


@pytest.fixture
def eval_metrics() -> dict:
    acc = MetricAccumulator(class_names=["lesion"])
    true = np.zeros((3, 4, 4), np.float32)
    true[0, :2] = 1
    acc.update(mask_prob=true[:, None] * 0.9, mask_true=true)
    return acc.compute()


def test_report_starts_with_the_run_settings(tmp_path, eval_metrics) -> None:
    run_dir = _run_dir(tmp_path, eval_metrics)
    text = render_run_report(run_dir).read_text()  # settings from checkpoints/last.pt
    settings = text[text.index("## Run settings"):text.index("## Headline metrics")]
    sid = json.loads((run_dir / "study.json").read_text())["study-id"]
    assert f"| Run / study id | `polyps` / `{sid}` |" in settings
    assert "| Strategy | `fedprox` (proximal-mu=0.01) |" in settings
    assert "preset `tiny`, 64 px" in settings
    assert "| Sites | 3: site_a, site_b, site_c |" in settings
    assert "2 of 3 rounds × 2 local epoch(s)" in settings
    assert "target per site: site_a ε 8, site_b ε 4 (run config dp-epsilon 8" in settings
    assert "`youden`" in settings
    assert f"endofed {metadata.version('endofed')}" in settings
    assert text.index("## Run settings") < text.index("## Headline metrics")
    assert "Round 2 of 3 (in progress" in text


def test_counts_are_integers_and_columns_are_words(tmp_path, eval_metrics) -> None:
    text = render_run_report(_run_dir(tmp_path, eval_metrics), run_config=RUN_CONFIG,
                             events=EVENTS).read_text()
    assert "26.0000" not in text and "| 26 |" in text
    assert "| site_a | trained | 26 | 4 | 0.1000 |" in text
    assert "| site_c | declined |" in text
    assert "| **global** | merged (2 aggregated) | 52 | 9 |" in text
    assert "| Training images | Validation images | mAP@0.5 |" in text
    assert "map50" not in text and "num-examples" not in text
    # the per-round table: rounds and site counts as integers
    assert "| 2 | 2 / 1 / 0 / 0 | 0.2000 |" in text
    # events from the running server, ε per site with integer rounds
    assert "| 2 | site_c | declined | privacy budget exhausted |" in text
    assert "| Round | site_a | site_b | site_c |" in text and "| 1 | 1.250 | 1.250 | 3.000 |" \
        in text
    for png in ("rounds.png", "sites.png", "epsilon.png"):
        assert (tmp_path / "polyps" / png).stat().st_size > 1000


def test_progress_line_counts_sites_and_shows_metrics(tmp_path) -> None:
    line = round_progress(_history(), 2, 3)
    assert line == ("EndoFed round 2/3: 2 sites trained, 1 declined, 0 refused, 0 offline"
                    " | global mAP@0.5 0.200, Dice (lesion images) 0.400, AUC 0.600"
                    " | ε spent ≤ 2.50 (target 4, 8) | round 32 s, total 1 min 03 s")
    assert round_counts([{"site": "x", "rejected": 1.0}, {"site": "y", "missing": 1.0},
                         {"site": "z"}]) == {"trained": 0, "declined": 0, "refused": 1,
                                             "offline": 1}
    flower = "\x1b[92mINFO \x1b[0m: 12/02/2026 04:28:22:INFO:" + line + "\n"
    assert progress_text(flower) == line
    assert progress_text("INFO: configure_train: Sampled 3 nodes") is None


def test_report_round_logs_appends_and_renders(tmp_path, eval_metrics, caplog) -> None:
    run_dir = _run_dir(tmp_path, eval_metrics)
    with caplog.at_level(logging.INFO, logger="endofed"):
        line = report_round(run_dir, _history(), server_round=2, total=3,
                            run_config=RUN_CONFIG, events=EVENTS)
        assert wait_for_report(run_dir, timeout=120)  # rendered in the background
    assert line in caplog.text
    assert (run_dir / PROGRESS_LOG).read_text() == line + "\n"
    assert (run_dir / "report.md").read_text().startswith("# EndoFed run polyps: round 2")
    # a report that cannot be rendered is a warning, never a failed study
    with caplog.at_level(logging.WARNING, logger="endofed"):
        report_round(tmp_path / "empty", [], server_round=1, total=3, run_config={},
                     events=[])
        assert wait_for_report(tmp_path / "empty", timeout=120)
    assert "progress.log not written" in caplog.text
    assert "not re-rendered (FileNotFoundError" in caplog.text
