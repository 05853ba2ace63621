"""One training engine for central, federated and simulated training."""

from endofed.shared.engine.device import configure_threads, resolve_device
from endofed.shared.engine.evaluator import evaluate
from endofed.shared.engine.optim import build_optimizer, build_scheduler, study_schedule_span
from endofed.shared.engine.trainer import EpochStats, Trainer, TrainResult

__all__ = [
    "EpochStats",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "study_schedule_span",
    "configure_threads",
    "evaluate",
    "resolve_device",
]
