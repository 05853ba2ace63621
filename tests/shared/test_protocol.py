"""The network protocol module against what Flower and the trainer actually use."""

from __future__ import annotations

import torch
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from endofed.shared import protocol
from endofed.shared.config import TrainConfig
from endofed.shared.data import collate_detection
from endofed.shared.engine import Trainer
from endofed.shared.model import build_model


def test_flower_owned_keys_match_flower() -> None:
    assert protocol.CLIPPING_NORM == KEY_CLIPPING_NORM
    assert protocol.NORM_BIT == KEY_NORM_BIT
    assert protocol.SECAGG_CONFIGS == RECORD_KEY_CONFIGS


def test_every_metric_the_trainer_reports_is_declared() -> None:
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=64)
    item = (torch.rand(3, 64, 64), torch.zeros(1, 64, 64), torch.zeros(4, 4),
            torch.zeros(4, dtype=torch.long), torch.tensor(0), torch.tensor(0),
            torch.full((4,), -1, dtype=torch.long))
    batch = collate_detection([item, item], image_size=64, max_boxes=4)
    trainer = Trainer(model, TrainConfig(device="cpu", amp=False), device=torch.device("cpu"),
                      progress=False)
    result = trainer.fit([batch], epochs=1)
    undeclared = set(result.metrics()) - set(protocol.TRAIN_METRICS)
    assert not undeclared, f"declare {sorted(undeclared)} in endofed.shared.protocol"


def test_keys_are_unique_and_documented() -> None:
    for table in (protocol.ROUND_CONFIG, protocol.TRAIN_METRICS, protocol.EVALUATE_METRICS):
        for name, key in table.items():
            assert key.name == name and key.meaning.strip()
