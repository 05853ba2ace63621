"""A run directory written round by round with the server's own writers.

:class:`FakeRun` appends rounds the way :class:`~endofed.server.loop.FederatedRun` does
(``save_run_state`` writes ``metrics.csv`` and the round checkpoint,
``write_round_metrics`` the merged metrics with the operating point, the progress line
of :func:`~endofed.server.progress.round_progress` goes to ``progress.log``), without
Flower: for the live dashboard test and the benchmark. The arrays are a tiny model's, so
round checkpoints and ``final_model.pt`` load in the case viewer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endofed.server.progress import round_progress
from endofed.server.report import PROGRESS_LOG, render_run_report
from endofed.server.run_state import (
    FINAL_MODEL,
    RunState,
    save_run_state,
    to_checkpoint,
    write_round_metrics,
)
from endofed.shared.model import build_model, save_checkpoint, trainable_state
from endofed.shared.util.atomic import atomic_write_json


class FakeRun:
    """``sites`` sites; ``declined`` ones decline every round (exhausted DP budget)."""

    def __init__(self, run_dir: Path, *, total: int, sites: int = 3,
                 declined: tuple[str, ...] = (), epsilon: float | None = 8.0,
                 image_size: int = 64) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total, self.declined, self.epsilon = total, set(declined), epsilon
        self.sites = [f"site_{i}" for i in range(1, sites + 1)]
        torch.manual_seed(0)
        self.model = build_model(preset="tiny", num_classes=1, image_size=image_size,
                                 weights_path=None)
        self.run_config = {"num-server-rounds": total, "preset": "tiny",
                           "image-size": image_size, "finetune": "global",
                           "dp-epsilon": epsilon or 0.0, "run-name": self.run_dir.name}
        self.state = RunState(round=0, arrays=self._arrays(), run_config=self.run_config)
        atomic_write_json(self.run_dir / "study.json",
                          {"study-id": f"study-{self.run_dir.name}",
                           "run-dir": str(self.run_dir)}, indent=None)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in trainable_state(self.model).items()}

    def operating_point(self, r: int) -> dict[str, Any]:
        return {"rule": "youden", "threshold": 0.5, "sensitivity": 0.8, "specificity": 0.7,
                "num_positive": 10, "num_negative": 10, "score_bins": 1000, "note": ""}

    def add_round(self) -> int:
        """Write the next round; returns its number."""
        r = self.state.round + 1
        quality = 1.0 - math.exp(-r / 3)
        trained = [s for s in self.sites if s not in self.declined]
        for i, site in enumerate(self.sites):
            row: dict[str, Any] = {"round": r, "site": site}
            if self.epsilon:
                row["epsilon-target"] = self.epsilon
            if site in self.declined:
                row["declined"] = 1.0
                self.state.events.append({"round": r, "site": site, "node": i + 1,
                                          "event": "declined",
                                          "reason": "privacy budget exhausted"})
            else:
                row.update({"num-examples": 20 + 4 * i, "train-loss": 2.0 / (r + i),
                            "map50": 0.5 * quality + 0.02 * i,
                            "dice_lesion": 0.6 * quality, "auc": 0.5 + 0.4 * quality,
                            "sensitivity": 0.8, "specificity": 0.7})
                if self.epsilon:
                    row["epsilon-spent"] = self.epsilon * r / (self.total + 1)
            self.state.history.append(row)
        self.state.history.append({
            "round": r, "site": "global", "sites-aggregated": float(len(trained)),
            "map50": 0.55 * quality, "dice_lesion": 0.62 * quality,
            "auc": 0.5 + 0.45 * quality, "op_threshold": 0.5, "round-seconds": 1.5,
            "train-loss": 2.0 / r,
        })
        write_round_metrics(self.run_dir, r, {"map50": 0.55 * quality,
                                              "operating_point": self.operating_point(r)})
        self.state.round = r
        self.state.arrays = self._arrays()
        save_run_state(self.run_dir, self.state)
        with (self.run_dir / PROGRESS_LOG).open("a", encoding="utf-8") as fh:
            fh.write(round_progress(self.state.history, r, self.total) + "\n")
        return r

    def finish(self, *, report: bool = True) -> Path:
        """``final_model.pt`` (and the report with its PNGs) as the server writes them."""
        save_checkpoint(self.run_dir / FINAL_MODEL, self.model, extra=to_checkpoint({
            "class_names": ["lesion"], "run_name": self.run_dir.name,
            "rounds": self.state.round, "operating_point": self.operating_point(0)}))
        if report:
            render_run_report(self.run_dir, run_config=self.run_config,
                              events=self.state.events)
        return self.run_dir


def finished_run(run_dir: Path, *, rounds: int = 3, sites: int = 3,
                 declined: tuple[str, ...] = ("site_3",), report: bool = True) -> Path:
    """A finished run with ``declined`` sites declining for budget."""
    run = FakeRun(run_dir, total=rounds, sites=sites, declined=declined)
    for _ in range(rounds):
        run.add_round()
    return run.finish(report=report)
