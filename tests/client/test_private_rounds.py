"""A site's DP rounds through the client path (real Opacus, tiny preset, six images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from endofed.client.training import local_train, site_ledger
from endofed.privacy.accounting import PrivacyBudgetError, compute_epsilon
from endofed.privacy.dp import DPEngine, build_dp_engine
from endofed.shared.data.collate import Batch
from endofed.shared.engine import Trainer
from endofed.shared.model import trainable_state


def dp_engine(rt) -> DPEngine:
    """The site's Opacus objects, built the way its first DP round builds them."""
    if rt.dp_engine is None:
        cfg = rt.cfg
        rt.dp_engine = build_dp_engine(
            model=rt.model, dataset=rt.train_set, train=cfg.train, privacy=cfg.privacy,
            batch_size=cfg.dp_batch_sizes[0], device=rt.device, site=rt.name,
        )
    return rt.dp_engine


def _weights(rt) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in trainable_state(rt.model).items()}


def test_rounds_restart_and_budget(make_runtime) -> None:
    """Three rounds spend the budget; a restart keeps it; a lowered target declines."""
    rt = make_runtime()
    site = dp_engine(rt)
    assert site.steps_per_epoch == 2 and site.sample_rate == 0.5
    assert site.optimizer.expected_batch_size == 3  # int(6 images x 0.5)
    weights = _weights(rt)
    spent = []
    for r in (1, 2, 3):
        weights, metrics = local_train(rt, weights, {"server-round": r})
        for key in ("epsilon-spent", "epsilon-target", "dp-noise-multiplier", "dp-sample-rate"):
            assert key in metrics
        assert metrics["dp-sample-rate"] == 0.5
        assert metrics["epsilon-target"] == 8.0
        assert metrics["dp-steps"] == 2.0  # every logical step, empty ones included
        # Nothing computed from the images without noise leaves a DP site.
        assert not any(k.startswith("train-loss") for k in metrics)
        assert "train-images" not in metrics
        spent.append(metrics["epsilon-spent"])
    assert spent[0] > 0 and spent == sorted(spent)
    assert spent[0] < spent[1] < spent[2] <= 8.0
    assert spent[2] >= 0.5 * 8.0, "noise is absurdly conservative"
    # The reported epsilon is what an independent accountant says about the steps.
    sigma = metrics["dp-noise-multiplier"]
    assert spent[2] == pytest.approx(
        compute_epsilon([(sigma, 0.5, 6)], delta=1e-5, accountant="rdp"), rel=1e-6
    )
    ledger_file = site_ledger(rt).path
    payload = json.loads(ledger_file.read_text())
    assert [r["round"] for r in payload["rounds"]] == [1, 2, 3]
    assert all(r["status"] == "done" for r in payload["rounds"])
    assert payload["epsilon_spent"] == pytest.approx(spent[2])

    # A restarted SuperNode (new runtime, new objects) on the same state dir.
    rt2 = make_runtime()
    site2 = dp_engine(rt2)
    assert site2 is not site
    assert site_ledger(rt2).epsilon_spent() == pytest.approx(spent[2])

    # Lowering the target below what is spent: declined before any training.
    rt3 = make_runtime(**{"dp-epsilon": 4.0})
    arrays = {k: v + 0.5 for k, v in _weights(rt3).items()}
    before_file = ledger_file.read_text()
    with pytest.raises(PrivacyBudgetError) as info:
        local_train(rt3, arrays, {"server-round": 4})
    assert info.value.spent == pytest.approx(spent[2])
    assert info.value.target == 4.0
    after = _weights(rt3)
    for k, v in arrays.items():  # the global weights, untouched by any step
        np.testing.assert_array_equal(after[k], v)
    payload = json.loads(ledger_file.read_text())
    assert len(payload["rounds"]) == 3
    assert payload["epsilon_target"] == 4.0  # new target applies, spent stays
    assert any(e["event"] == "epsilon_target-changed" for e in payload["events"])
    assert json.loads(before_file)["history"] == payload["history"]


def test_new_study_after_a_spent_budget_declines(make_runtime) -> None:
    """A study that used the whole budget leaves nothing useful for the next study.

    The second study (new run name, new SuperNode process) must decline, not train
    with an enormous noise multiplier that squeezes into the epsilon left over.
    """
    rt = make_runtime(**{"num-server-rounds": 1, "run-name": "study-1"})
    weights, metrics = local_train(rt, _weights(rt), {"server-round": 1, "run-name": "study-1"})
    assert 0.99 * 8.0 <= metrics["epsilon-spent"] <= 8.0
    assert metrics["dp-noise-multiplier"] <= 10.0

    rt2 = make_runtime(**{"num-server-rounds": 1, "run-name": "study-2"})
    arrays = {k: v + 0.25 for k, v in weights.items()}
    with pytest.raises(PrivacyBudgetError, match="dp-min-study-budget") as info:
        local_train(rt2, arrays, {"server-round": 1, "run-name": "study-2"})
    assert info.value.spent == pytest.approx(metrics["epsilon-spent"])
    for k, v in arrays.items():  # declined before any step
        np.testing.assert_array_equal(_weights(rt2)[k], v)
    ledger = json.loads(site_ledger(rt2).path.read_text())
    assert [r["run"] for r in ledger["rounds"]] == ["study-1"]

    # Without the new-study floor the noise cap still refuses a round made of noise.
    rt3 = make_runtime(**{"num-server-rounds": 1, "run-name": "study-3",
                          "dp-min-study-budget": 0.0, "dp-max-noise-multiplier": 2.0})
    with pytest.raises(PrivacyBudgetError, match="dp-max-noise-multiplier"):
        local_train(rt3, arrays, {"server-round": 1, "run-name": "study-3"})

    # A site that allows both may squeeze in a (very noisy) round, never past its target.
    rt4 = make_runtime(**{"num-server-rounds": 1, "run-name": "study-4",
                          "dp-min-study-budget": 0.0, "dp-max-noise-multiplier": 1000.0})
    _, m4 = local_train(rt4, arrays, {"server-round": 1, "run-name": "study-4"})
    assert m4["dp-noise-multiplier"] > 2.0
    assert metrics["epsilon-spent"] < m4["epsilon-spent"] <= 8.0


def test_studies_are_told_apart_by_study_id_not_run_name(make_runtime) -> None:
    """Two coordinators' studies both named 'default' are two studies for the ledger."""
    rt = make_runtime(**{"num-server-rounds": 1})
    first = {"server-round": 1, "run-name": "default", "study-id": "a1"}
    weights, metrics = local_train(rt, _weights(rt), first)
    assert 0.99 * 8.0 <= metrics["epsilon-spent"] <= 8.0
    with pytest.raises(PrivacyBudgetError, match="dp-min-study-budget"):
        local_train(make_runtime(**{"num-server-rounds": 1}), weights,
                    {"server-round": 1, "run-name": "default", "study-id": "b2"})
    ledger = json.loads(site_ledger(rt).path.read_text())
    assert [(r["run"], r["study"]) for r in ledger["rounds"]] == [("default", "a1")]


def test_a_study_under_way_keeps_training_near_its_target(make_runtime) -> None:
    """The new-study floor never blocks the later rounds of a study already running."""
    rt = make_runtime(**{"num-server-rounds": 3, "run-name": "long",
                         "dp-min-study-budget": 0.9})
    weights = _weights(rt)
    for r in (1, 2, 3):
        weights, metrics = local_train(rt, weights, {"server-round": r, "run-name": "long"})
    assert 0.99 * 8.0 <= metrics["epsilon-spent"] <= 8.0


def test_noise_cannot_be_regenerated_from_the_run_config(make_runtime, tmp_path) -> None:
    """Same run config (seed included), same data, same global weights: different noise.

    The coordinating center chooses ``seed``; if the DP noise followed from it, the
    center could regenerate and subtract it.
    """
    updates = []
    for _ in range(2):
        rt = make_runtime(**{"run-name": "same"})
        start = _weights(rt)
        if updates:
            for k, v in updates[0][0].items():  # identical starting point
                np.testing.assert_array_equal(start[k], v)
        after, metrics = local_train(rt, start, {"server-round": 1, "run-name": "same"})
        updates.append((start, after, metrics["dp-noise-multiplier"]))
        site_ledger(rt).path.unlink()  # the second is a twin site, not a rerun
    assert updates[0][2] == updates[1][2]  # same noise multiplier, same plan
    diffs = [np.abs(updates[0][1][k] - updates[1][1][k]).max() for k in updates[0][1]]
    assert max(diffs) > 0, "two sites with the same seed drew identical DP noise"


def test_secure_rng_without_torchcsprng_fails_fast(dp_run_config) -> None:
    import importlib.util

    from endofed.shared.config import ConfigError, EndoFedConfig

    if importlib.util.find_spec("torchcsprng") is not None:
        pytest.skip("torchcsprng is installed here")
    with pytest.raises(ConfigError, match="dp-secure-rng"):
        EndoFedConfig.from_flower({**dp_run_config, "dp-secure-rng": True}, {})


def test_empty_batch_step_is_noisy_and_accounted(make_runtime) -> None:
    rt = make_runtime()
    site = dp_engine(rt)
    site.optimizer.noise_multiplier = 2.0
    site.accountant.history = []
    params = {id(p): p.detach().clone() for p in site.optimizer.params}
    site.empty_step()
    assert site.accountant.history == [(2.0, 0.5, 1)]
    grads = torch.cat([p.grad.flatten() for p in site.optimizer.params])
    # Pure noise N(0, (sigma * C)^2) divided by the expected batch size (mean loss).
    expected_std = 2.0 * 1.0 / site.optimizer.expected_batch_size
    assert grads.std().item() == pytest.approx(expected_std, rel=0.05)
    assert abs(grads.mean().item()) < 0.05 * expected_std
    moved = sum(not torch.equal(p.detach(), params[id(p)]) for p in site.optimizer.params)
    assert moved == len(params)


def test_empty_batch_from_poisson_loader_reaches_the_hook(make_runtime) -> None:
    """An empty Poisson draw is a shaped empty Batch and the trainer steps through it."""
    rt = make_runtime()
    site = dp_engine(rt)
    # Draw until an empty batch appears (q = 0.5 over 6 images: P(empty) = 1/64).
    empties = []
    for _, b in zip(range(3000), _forever(site.loader)):
        assert isinstance(b, Batch)
        if len(b) == 0:
            empties.append(b)
            break
    assert empties, "no empty Poisson draw in 3000 batches"
    assert empties[0].images.shape == (0, 3, 64, 64)
    assert empties[0].boxes.shape[1:] == (rt.cfg.data.max_boxes, 4)
    calls = []
    trainer = Trainer(site.module, rt.cfg.train, device=rt.device, optimizer=site.optimizer,
                      on_empty_batch=lambda: calls.append(site.empty_step()), progress=False)
    site.accountant.history = []
    stats = trainer.train_epoch([empties[0]])
    assert stats.empty_batches == 1 and len(calls) == 1
    assert sum(s for *_, s in site.accountant.history) == 1


def _forever(loader):
    while True:
        yield from loader


def test_per_sample_clipping_is_on(make_runtime) -> None:
    rt = make_runtime(**{"dp-max-grad-norm": 1e-3})
    site = dp_engine(rt)
    site.optimizer.noise_multiplier = 0.0
    batch = next(b for b in _forever(site.logical_loader) if len(b) >= 2)
    trainer = Trainer(site.module, rt.cfg.train, device=rt.device, optimizer=site.optimizer,
                      progress=False)
    trainer.train_step(batch)
    params = site.optimizer.params
    assert params and all(p.grad_sample is not None for p in params)
    assert all(p.grad_sample.shape == (len(batch), *p.shape) for p in params)
    per_sample = torch.stack(
        [p.grad_sample.reshape(len(batch), -1).norm(dim=1) for p in params], dim=1
    ).norm(dim=1)
    assert (per_sample > 1e-3).all(), "raw per-sample gradients should exceed the clip bound"
    summed = torch.cat([p.summed_grad.flatten() for p in params]).norm()
    assert summed <= len(batch) * 1e-3 * (1 + 1e-4)


def test_batch_memory_manager_caps_physical_batches(make_runtime) -> None:
    rt = make_runtime(**{"batch-size": 8, "dp-max-physical-batch-size": 2,
                         "num-server-rounds": 1})
    site = dp_engine(rt)
    assert site.steps_per_epoch == 1 and site.optimizer.expected_batch_size == 6
    sizes = []
    for batch in site.loader:
        assert isinstance(batch, Batch)
        sizes.append(len(batch))
    assert max(sizes) <= 2


@pytest.mark.slow
def test_batch_memory_manager_round_counts_logical_steps(make_runtime) -> None:
    rt = make_runtime(**{"batch-size": 8, "dp-max-physical-batch-size": 2,
                         "num-server-rounds": 1})
    _, metrics = local_train(rt, _weights(rt), {"server-round": 1})
    assert metrics["dp-steps"] == 1.0  # one logical step, however many physical batches
    assert 0 < metrics["epsilon-spent"] <= 8.0


def test_delta_not_below_one_over_n_is_warned(make_runtime, caplog) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="endofed.privacy.dp"):
        dp_engine(make_runtime(**{"dp-delta": 0.2}))  # six images: 1/N = 0.167
    assert any("1/N" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="endofed.privacy.dp"):
        dp_engine(make_runtime())
    assert not any("1/N" in r.getMessage() for r in caplog.records)
