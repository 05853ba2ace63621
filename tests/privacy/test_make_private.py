"""`make_private` on plain torch objects: no client runtime, no Flower, real Opacus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant

from endofed.privacy.accounting import PrivacyBudgetError
from endofed.privacy.dp import StudyPlan, make_private
from endofed.privacy.ledger import PrivacyLedger
from endofed.privacy.reply_policy import DP_REPORTABLE_METRICS, private_reply_metrics
from endofed.shared.config import PrivacyConfig, TrainConfig
from endofed.shared.data import DetectionDataset, scan_site
from endofed.shared.engine import Trainer
from endofed.shared.model import build_model


@pytest.fixture
def dataset(kvasir_site) -> DetectionDataset:
    """Six 64 x 64 images, five with a lesion."""
    specs = {f"img{i}": [(8 + 3 * i, 10, 40 + i, 44)] for i in range(5)}
    specs["normal"] = []
    root = kvasir_site(specs, size=(64, 64))
    return DetectionDataset(scan_site(root).records, image_size=64, train=False, max_boxes=4)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset="tiny", num_classes=1, image_size=64)


def _ledger(tmp_path: Path, epsilon: float = 8.0) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "ledger.json", site="a", epsilon_target=epsilon,
                         delta=1e-5, accountant="rdp")


PRIVACY = PrivacyConfig(epsilon=8.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp")
TRAIN = TrainConfig(epochs=1, learning_rate=1e-3, device="cpu")


def _plan(server_round: int, total: int = 2, study: str = "s1") -> StudyPlan:
    return StudyPlan(run="r", study=study, server_round=server_round, total_rounds=total,
                     local_epochs=1)


def _train(private) -> dict[str, float]:
    trainer = Trainer(private.module, private.train_config, device=torch.device("cpu"),
                      optimizer=private.optimizer, on_empty_batch=private.on_empty_batch,
                      progress=False)
    trainer.fit(private.loader, epochs=1)
    return private.finish()


def test_rounds_spend_what_an_independent_accountant_computes(dataset, tmp_path) -> None:
    model = _model()
    ledger = _ledger(tmp_path)
    first = make_private(model=model, dataset=dataset, train=TRAIN, privacy=PRIVACY,
                         ledger=ledger, plan=_plan(1), batch_size=4, device=torch.device("cpu"))
    assert isinstance(first.module, GradSampleModule) and first.module._module is model
    assert first.train_config.amp is False and first.train_config.grad_clip == 0.0
    m1 = _train(first)
    # The second round reuses the engine: same wrapped module, no second set of hooks.
    second = make_private(model=model, dataset=dataset, train=TRAIN, privacy=PRIVACY,
                          ledger=ledger, plan=_plan(2), batch_size=4,
                          device=torch.device("cpu"), engine=first.engine)
    assert second.module is first.module
    m2 = _train(second)
    assert m1["dp-steps"] == m2["dp-steps"] == 2.0  # k = round(6 / 4) = 2 per epoch
    sigma = m2["dp-noise-multiplier"]
    reference = RDPAccountant()
    reference.history = [(sigma, 0.5, 4)]
    expected = reference.get_epsilon(delta=1e-5)
    assert m2["epsilon-spent"] == pytest.approx(expected, rel=1e-6)
    assert 0.99 * 8.0 <= m2["epsilon-spent"] <= 8.0  # the study lands on its target
    assert json.loads(ledger.path.read_text())["epsilon_spent"] == pytest.approx(expected)


def test_a_round_over_budget_is_refused_before_any_step(dataset, tmp_path) -> None:
    model = _model()
    ledger = _ledger(tmp_path)
    _train(make_private(model=model, dataset=dataset, train=TRAIN, privacy=PRIVACY,
                        ledger=ledger, plan=_plan(1, total=1), batch_size=4,
                        device=torch.device("cpu")))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ledger_text = ledger.path.read_text()
    with pytest.raises(PrivacyBudgetError, match="dp-min-study-budget") as info:
        make_private(model=model, dataset=dataset, train=TRAIN, privacy=PRIVACY,
                     ledger=ledger, plan=_plan(1, total=1, study="s2"), batch_size=4,
                     device=torch.device("cpu"))
    assert info.value.target == 8.0 and info.value.spent > 0.99 * 8.0
    after = model.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    assert json.loads(ledger.path.read_text())["rounds"] == json.loads(ledger_text)["rounds"]


def test_an_engine_for_another_dataset_is_refused(dataset, tmp_path) -> None:
    model = _model()
    first = make_private(model=model, dataset=dataset, train=TRAIN, privacy=PRIVACY,
                         ledger=_ledger(tmp_path), plan=_plan(1), batch_size=4,
                         device=torch.device("cpu"))
    smaller = DetectionDataset(dataset.records[:3], image_size=64, train=False, max_boxes=4)
    with pytest.raises(ValueError, match="built for 6 images"):
        make_private(model=model, dataset=smaller, train=TRAIN, privacy=PRIVACY,
                     ledger=_ledger(tmp_path / "b"), plan=_plan(1), batch_size=4,
                     device=torch.device("cpu"), engine=first.engine)


def test_plan_reads_the_round_config_and_falls_back_to_the_site() -> None:
    plan = StudyPlan.from_round_config(
        {"server-round": 3, "num-server-rounds": 5, "study-id": "x", "run-name": "n"},
        run="local", total_rounds=9, local_epochs=2, max_steps_per_epoch=3,
    )
    assert (plan.run, plan.study, plan.server_round, plan.total_rounds) == ("n", "x", 3, 5)
    assert plan.round_steps(10) == 6  # 2 epochs x min(10, 3)
    assert plan.planned_steps(10) == 3 * 6  # rounds 3, 4, 5
    old = StudyPlan.from_round_config({}, run="local", total_rounds=4, local_epochs=1)
    assert (old.study, old.server_round, old.total_rounds) == ("local", 1, 4)


def test_only_reportable_metrics_leave_a_dp_site() -> None:
    metrics = {"num-examples": 6.0, "train-loss": 1.5, "train-images": 4.0,
               "train-seconds": 0.2, "epsilon-spent": 3.0, "dp-steps": 2.0}
    sent, kept = private_reply_metrics(metrics)
    assert set(sent) == {"num-examples", "train-seconds", "epsilon-spent", "dp-steps"}
    assert set(kept) == {"train-loss", "train-images"}
    assert not any(k.startswith("train-loss") for k in DP_REPORTABLE_METRICS)
    np.testing.assert_equal(sent["epsilon-spent"], 3.0)
