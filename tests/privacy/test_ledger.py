"""The persistent privacy ledger and history-aware noise calibration (no model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opacus.accountants.utils import get_noise_multiplier

from endofed.privacy.accounting import (
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compress_history,
    compute_epsilon,
)
from endofed.privacy.ledger import LedgerError, PrivacyLedger, default_state_root, ledger_path
from endofed.shared.config import EndoFedConfig

REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-5


def _ledger(path: Path, target: float = 8.0, **kw) -> PrivacyLedger:
    return PrivacyLedger(path, site="a", epsilon_target=target, delta=DELTA,
                         accountant=kw.pop("accountant", "rdp"), **kw)


def test_calibration_without_history_matches_opacus() -> None:
    ours = calibrate_noise_multiplier(history=[], sample_rate=0.25, steps=40,
                                      target_epsilon=4.0, delta=DELTA, accountant="rdp")
    theirs = get_noise_multiplier(target_epsilon=4.0, target_delta=DELTA, sample_rate=0.25,
                                  steps=40, accountant="rdp")
    assert ours == pytest.approx(theirs, rel=0.02)
    eps = compute_epsilon([(ours, 0.25, 40)], delta=DELTA, accountant="rdp")
    assert 0.99 * 4.0 <= eps <= 4.0


def test_calibration_accounts_for_history() -> None:
    history = [(1.5, 0.25, 10)]
    spent = compute_epsilon(history, delta=DELTA, accountant="rdp")
    assert 0 < spent < 6.0
    sigma = calibrate_noise_multiplier(history=history, sample_rate=0.25, steps=30,
                                       target_epsilon=6.0, delta=DELTA, accountant="rdp")
    total = compute_epsilon([*history, (sigma, 0.25, 30)], delta=DELTA, accountant="rdp")
    assert 0.99 * 6.0 <= total <= 6.0
    # Without the history, the same plan would have needed less noise.
    fresh = calibrate_noise_multiplier(history=[], sample_rate=0.25, steps=30,
                                       target_epsilon=6.0, delta=DELTA, accountant="rdp")
    assert sigma > fresh * 1.05


def test_calibration_refuses_spent_budget() -> None:
    with pytest.raises(PrivacyBudgetError) as info:
        calibrate_noise_multiplier(history=[(0.5, 0.5, 50)], sample_rate=0.5, steps=1,
                                   target_epsilon=1.0, delta=DELTA, accountant="rdp")
    assert info.value.spent > 1.0 and info.value.target == 1.0


def test_calibration_refuses_more_noise_than_the_cap() -> None:
    history = [(0.8, 0.5, 4)]
    spent = compute_epsilon(history, delta=DELTA, accountant="rdp")
    needed = calibrate_noise_multiplier(history=history, sample_rate=0.5, steps=4,
                                        target_epsilon=spent + 0.05, delta=DELTA,
                                        accountant="rdp", max_noise_multiplier=1000.0)
    assert needed > 3.0
    with pytest.raises(PrivacyBudgetError, match="dp-max-noise-multiplier") as info:
        calibrate_noise_multiplier(history=history, sample_rate=0.5, steps=4,
                                   target_epsilon=spent + 0.05, delta=DELTA,
                                   accountant="rdp", max_noise_multiplier=needed / 2)
    assert info.value.spent == pytest.approx(spent)


def test_compress_history_merges_and_validates() -> None:
    merged = compress_history([(1.0, 0.5, 2), (1.0, 0.5, 3), (2.0, 0.5, 0), (1.5, 0.5, 1)])
    assert merged == [(1.0, 0.5, 5), (1.5, 0.5, 1)]
    with pytest.raises(ValueError, match="sigma > 0"):
        compress_history([(1.0, 1.5, 2)])


def test_ledger_persists_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "a" / "privacy-ledger.json"
    led = _ledger(path)
    entry, before = led.reserve(run="r1", round=1, noise_multiplier=1.2, sample_rate=0.25,
                                steps=8)
    assert before == []
    spent = led.complete(entry, steps=8)
    assert spent == pytest.approx(compute_epsilon([(1.2, 0.25, 8)], delta=DELTA,
                                                  accountant="rdp"))
    # A new process / a new run name: everything is still there.
    again = _ledger(path)
    assert again.history() == [(1.2, 0.25, 8)]
    assert again.epsilon_spent() == pytest.approx(spent)
    entry2, before2 = again.reserve(run="r2", round=1, noise_multiplier=1.2,
                                    sample_rate=0.25, steps=4)
    assert before2 == [(1.2, 0.25, 8)]
    again.complete(entry2, steps=4)
    payload = json.loads(path.read_text())
    assert payload["history"] == [[1.2, 0.25, 12]]
    assert [(r["run"], r["round"], r["status"]) for r in payload["rounds"]] == [
        ("r1", 1, "done"), ("r2", 1, "done")]
    assert payload["rounds"][1]["epsilon_after"] == pytest.approx(payload["epsilon_spent"])
    assert payload["rounds"][0]["epsilon_after"] < payload["rounds"][1]["epsilon_after"]
    assert again.rounds_done("r1") == 1 and again.rounds_done("r3") == 0
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "privacy-ledger.json", "privacy-ledger.json.lock"]


def test_reserve_refuses_over_target_and_leaves_file(tmp_path: Path) -> None:
    path = tmp_path / "privacy-ledger.json"
    target = 0.5 * (compute_epsilon([(1.0, 0.5, 4)], delta=DELTA, accountant="rdp")
                    + compute_epsilon([(1.0, 0.5, 24)], delta=DELTA, accountant="rdp"))
    led = _ledger(path, target=target)
    entry, _ = led.reserve(run="r", round=1, noise_multiplier=1.0, sample_rate=0.5, steps=4)
    led.complete(entry, steps=4)
    spent = led.epsilon_spent()
    assert spent < target
    before = path.read_text()
    with pytest.raises(PrivacyBudgetError, match="would reach epsilon") as info:
        led.reserve(run="r", round=2, noise_multiplier=1.0, sample_rate=0.5, steps=20)
    assert info.value.spent == pytest.approx(spent) and info.value.target == target
    assert path.read_text() == before


def test_crashed_round_keeps_its_charge(tmp_path: Path) -> None:
    """A process that dies after reserving never under-reports."""
    path = tmp_path / "privacy-ledger.json"
    _ledger(path)
    code = textwrap.dedent(f"""
        import os
        from endofed.privacy.ledger import PrivacyLedger
        led = PrivacyLedger({str(path)!r}, site="a", epsilon_target=8.0, delta={DELTA},
                            accountant="rdp")
        led.reserve(run="r", round=1, noise_multiplier=1.0, sample_rate=0.5, steps=4)
        os._exit(7)  # killed mid-round
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 7, proc.stderr
    led = _ledger(path)
    assert led.history() == [(1.0, 0.5, 4)]
    assert [r.status for r in led.rounds] == ["interrupted"]
    assert led.epsilon_spent() == pytest.approx(
        compute_epsilon([(1.0, 0.5, 4)], delta=DELTA, accountant="rdp"))


def test_target_change_applies_and_spent_stays(tmp_path: Path) -> None:
    path = tmp_path / "privacy-ledger.json"
    led = _ledger(path, target=8.0)
    entry, _ = led.reserve(run="r", round=1, noise_multiplier=1.0, sample_rate=0.5, steps=4)
    led.complete(entry, steps=4)
    spent = led.epsilon_spent()
    lower = _ledger(path, target=spent / 2)
    assert lower.epsilon_spent() == pytest.approx(spent)
    with pytest.raises(PrivacyBudgetError):
        lower.reserve(run="r", round=2, noise_multiplier=100.0, sample_rate=0.5, steps=1)
    payload = json.loads(path.read_text())
    assert payload["epsilon_target"] == pytest.approx(spent / 2)
    assert payload["events"][-1]["event"] == "epsilon_target-changed"
    assert payload["events"][-1]["from"] == 8.0


def test_ledger_of_another_site_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "privacy-ledger.json"
    _ledger(path)
    with pytest.raises(LedgerError, match="belongs to site 'a'"):
        PrivacyLedger(path, site="b", epsilon_target=8.0, delta=DELTA)
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="unreadable"):
        _ledger(path)


@pytest.mark.slow
def test_concurrent_writers_cannot_overspend(tmp_path: Path) -> None:
    """Two processes each reserve a round that fits alone but not together."""
    path = tmp_path / "privacy-ledger.json"
    one = compute_epsilon([(1.0, 0.5, 5)], delta=DELTA, accountant="rdp")
    two = compute_epsilon([(1.0, 0.5, 10)], delta=DELTA, accountant="rdp")
    target = (one + two) / 2
    _ledger(path, target=target)
    code = textwrap.dedent(f"""
        import sys
        from endofed.privacy.accounting import PrivacyBudgetError
        from endofed.privacy.ledger import PrivacyLedger
        led = PrivacyLedger({str(path)!r}, site="a", epsilon_target={target!r},
                            delta={DELTA}, accountant="rdp")
        try:
            e, _ = led.reserve(run="r", round=1, noise_multiplier=1.0, sample_rate=0.5,
                               steps=5)
        except PrivacyBudgetError:
            sys.exit(3)
        led.complete(e, steps=5)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
             for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    assert codes == [0, 3]
    led = _ledger(path, target=target)
    assert led.history() == [(1.0, 0.5, 5)]


def test_default_state_root(tmp_path: Path) -> None:
    sim = EndoFedConfig.from_flower({"runs-dir": str(tmp_path / "runs")},
                                    {"partition-id": 0, "num-partitions": 2})
    assert default_state_root(sim) == tmp_path / "runs" / "_state"
    explicit = EndoFedConfig.from_flower({}, {"state-dir": str(tmp_path / "st")})
    assert ledger_path(explicit, "St. Mary/ICU") == (
        tmp_path / "st" / "St._Mary_ICU" / "privacy-ledger.json").resolve()
    deployed = EndoFedConfig.from_flower({}, {"data-path": str(tmp_path / "data")})
    root = default_state_root(deployed)
    assert REPO not in root.resolve().parents and root.name == "state"


def test_prv_is_the_default_and_calibrates_with_history() -> None:
    history = [(1.0, 1 / 3, 3)]
    sigma = calibrate_noise_multiplier(history=history, sample_rate=1 / 3, steps=6,
                                       target_epsilon=8.0, delta=DELTA)
    total = compute_epsilon([*history, (sigma, 1 / 3, 6)], delta=DELTA)
    assert 0.99 * 8.0 <= total <= 8.0
    # PRV is tighter than RDP: the same noise costs less epsilon.
    assert total < compute_epsilon([*history, (sigma, 1 / 3, 6)], delta=DELTA,
                                   accountant="rdp")


def test_ledger_summary_and_cli(tmp_path: Path) -> None:
    import json as _json
    import subprocess
    import sys

    from endofed.privacy.ledger_summary import read_ledger_summary

    path = tmp_path / "state" / "a" / "privacy-ledger.json"
    ledger = _ledger(path, target=4.0)
    for run, rounds in (("study-1", 2), ("study-2", 1)):
        for r in range(1, rounds + 1):
            entry, _ = ledger.reserve(run=run, round=r, noise_multiplier=2.0,
                                      sample_rate=0.25, steps=4)
            ledger.complete(entry, steps=3)
    before = path.read_text()
    summary = read_ledger_summary(path)
    assert path.read_text() == before  # read-only
    assert [(r["run"], r["rounds"], r["done"], r["steps"]) for r in summary["runs"]] == [
        ("study-1", 2, 2, 6), ("study-2", 1, 1, 3)]
    expected = compute_epsilon([(2.0, 0.25, 9)], delta=DELTA, accountant="rdp")
    assert summary["epsilon_spent"] == pytest.approx(expected)
    assert summary["epsilon_left"] == pytest.approx(4.0 - expected)
    assert summary["runs"][-1]["epsilon_after"] == pytest.approx(expected)
    res = subprocess.run(
        [sys.executable, "-m", "endofed.cli", "site", "ledger", "--site-name", "a",
         "--state-dir", str(tmp_path / "state"), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert _json.loads(res.stdout)["epsilon_spent"] == pytest.approx(expected)
    missing = subprocess.run(
        [sys.executable, "-m", "endofed.cli", "site", "ledger", "--site-name", "b",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 1 and "no privacy ledger" in missing.stderr
