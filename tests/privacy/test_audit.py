"""The membership-inference audit detects a model that memorised its training images."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from endofed.privacy.audit import membership_inference_audit, write_audit_markdown
from endofed.shared.build import dataset_for, loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.site import scan_site
from endofed.shared.data.synthetic import write_site
from endofed.shared.engine import Trainer
from endofed.shared.model import build_model, save_checkpoint


def test_overfitted_model_leaks_membership_and_fresh_model_does_not(tmp_path):
    write_site(tmp_path / "s", n_images=16, seed=11, size=(96, 96))
    cfg = EndoFedConfig.from_mapping(
        {"preset": "tiny", "image-size": 64, "batch-size": 4, "augment": False,
         "learning-rate": 0.01, "local-epochs": 40, "threads": 1}
    )
    records = harmonize_labels(scan_site(tmp_path / "s"), cfg.data.class_names).records
    members, non_members = records[:8], records[8:]
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=64)
    fresh = membership_inference_audit(model, members, non_members, cfg, site="fresh")
    trainer = Trainer(model, cfg.train, device=torch.device("cpu"), progress=False)
    trainer.fit(loader_for(dataset_for(members, cfg, train=False), cfg, shuffle=True))
    trained = membership_inference_audit(model, members, non_members, cfg, site="s")
    assert trained.members == 8 and trained.non_members == 8
    assert trained.member_loss_mean < trained.non_member_loss_mean
    assert trained.attack_auc >= 0.65
    assert trained.attack_auc > fresh.attack_auc
    assert trained.tpr_at_fpr == {0.01: None, 0.001: None}
    md = write_audit_markdown([fresh, trained], tmp_path / "audit.md").read_text()
    assert "| s | loss | 8 | 8 | " in md and "n/e" in md  # 8 non-members: no TPR@1%


def _audit(run_dir, *args):
    """``endofed privacy-audit RUN_DIR ARGS`` in a subprocess (the real CLI)."""
    return subprocess.run(
        [sys.executable, "-m", "endofed.cli", "privacy-audit", str(run_dir), *map(str, args),
         "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _digest(folder):
    """Name -> sha256 of every file under ``folder`` (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_audit_command_skips_a_site_it_cannot_audit(tmp_path, capsys):
    """One site without held-out images is reported and skipped; the others are audited."""
    from endofed.cli import main

    run_dir = tmp_path / "run"
    run_config = {"preset": "tiny", "image-size": 64, "val-fraction": 0.25, "threads": 1,
                  "weights-path": "none"}
    torch.manual_seed(0)
    save_checkpoint(run_dir / "model.pt", build_model(preset="tiny", num_classes=1,
                                                       image_size=64))
    (run_dir / "config.json").write_text(json.dumps(run_config))
    write_site(tmp_path / "good", n_images=12, seed=3, size=(96, 96))
    write_site(tmp_path / "tiny", n_images=1, seed=4, size=(96, 96))

    def audit(*sites):
        return main(["privacy-audit", str(run_dir), "--data",
                     ",".join(str(tmp_path / s) for s in sites), "--reference-models", "0",
                     "--device", "cpu", "--no-progress"])

    assert audit("good", "tiny") == 0
    res = capsys.readouterr()
    assert "tiny: skipped" in res.err and "held-out" in res.err
    assert "good: loss attack AUC" in res.out
    report = json.loads((run_dir / "audit.json").read_text())
    assert [r["site"] for r in report["results"]] == ["good"]
    assert report["skipped"] == ["tiny"] and report["references"] is None
    with pytest.raises(SystemExit) as nothing:
        audit("tiny")
    assert nothing.value.code != 0
    assert "no site could be audited (tiny)" in str(nothing.value) + capsys.readouterr().err


def test_audit_of_a_federated_run_reports_both_attacks_and_epsilon(tmp_path):
    """A simulate arm's run folder (run state + final_model.pt + metrics.csv): per-site
    split as each client made it, epsilon from metrics.csv, references trained for
    rounds x local-epochs with the DP run's fine-tuning mode; the run is not touched."""
    from endofed.server.run_state import RunState, save_run_state
    from endofed.shared.build import train_val_datasets

    run_dir = tmp_path / "runs" / "fedavg_8_0"
    run_config = {"preset": "tiny", "image-size": 64, "val-fraction": 0.25, "threads": 1,
                  "batch-size": 4, "weights-path": "none", "num-server-rounds": 2,
                  "local-epochs": 1, "dp-epsilon": 8.0, "seed": 3}
    history = [{"round": r, "site": s, **({"epsilon-spent": e * r} if s != "global" else {})}
               for r in (1, 2) for s, e in (("global", 0), ("site_1", 2.0), ("site_2", 3.5))]
    save_run_state(run_dir, RunState(round=2, arrays={}, history=history,
                                     run_config=run_config))
    torch.manual_seed(0)
    save_checkpoint(run_dir / "final_model.pt",
                    build_model(preset="tiny", num_classes=1, image_size=64))
    for k in (1, 2):
        write_site(tmp_path / "sites" / f"site_{k}", n_images=12, seed=k, size=(96, 96))
    before = _digest(run_dir)
    out = tmp_path / "audit"
    res = _audit(run_dir, "--data", tmp_path / "sites" / "site_1",
                 "--data", tmp_path / "sites" / "site_2", "--reference-models", "2",
                 "--out", out)
    assert res.returncode == 0, res.stderr
    assert _digest(run_dir) == before  # --out: the run folder is only read
    report = json.loads((out / "audit.json").read_text())
    assert report["run_kind"] == "federated"
    assert report["epsilon"] == {"target": 8.0, "spent": {"site_1": 4.0, "site_2": 7.0},
                                 "source": "metrics.csv"}
    refs = report["references"]
    assert refs["count"] == 2 and refs["epochs"] == 2 and refs["finetune"] == "local"
    assert refs["seed"] == 3 and refs["dp"] is False
    cfg = EndoFedConfig.from_mapping(run_config)
    rows = {(r["site"], r["attack"]): r for r in report["results"]}
    assert set(rows) == {(s, a) for s in ("site_1", "site_2", "pooled")
                         for a in ("loss", "calibrated")}
    for k, eps in ((1, 4.0), (2, 7.0)):  # what the ClientApp trained on (client/runtime.py)
        recs = harmonize_labels(scan_site(tmp_path / "sites" / f"site_{k}"),
                                cfg.data.class_names).records
        train, val = train_val_datasets(recs, cfg)
        row = rows[(f"site_{k}", "calibrated")]
        assert (row["members"], row["non_members"]) == (len(train), len(val))
        assert row["epsilon_spent"] == eps
        assert row["tpr_at_fpr_0.01"] is None and row["tpr_at_fpr_0.001"] is None
    assert rows[("pooled", "loss")]["epsilon_spent"] == 7.0
    md = (out / "audit.md").read_text()
    assert "| site_1 | calibrated |" in md and "TPR@0.1%FPR" in md and "n/e" in md
    assert "not estimable" in res.stderr


def test_audit_of_a_train_folder_uses_its_pooled_split(tmp_path):
    """A train --out folder holds the trainer's checkpoints/last.pt (not a run state)
    and split its pooled folders once: the audit reads config.json and the same split."""
    from endofed.shared.build import train_val_datasets
    from endofed.shared.engine import Trainer

    run_dir = tmp_path / "central"
    run_config = {"preset": "tiny", "image-size": 64, "val-fraction": 0.3, "threads": 1,
                  "weights-path": "none", "local-epochs": 1}
    cfg = EndoFedConfig.from_mapping(run_config)
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=64)
    save_checkpoint(run_dir / "model.pt", model)
    Trainer(model, cfg.train, device=torch.device("cpu"), progress=False).save_checkpoint(
        run_dir / "checkpoints" / "last.pt", epoch=1)
    (run_dir / "config.json").write_text(json.dumps(run_config))
    for name, seed in (("a", 5), ("b", 6)):
        write_site(tmp_path / name, n_images=10, seed=seed, size=(96, 96))
    from endofed.cli import main

    assert main(["privacy-audit", str(run_dir), "--data", f"{tmp_path / 'a'},{tmp_path / 'b'}",
                 "--reference-models", "0", "--no-progress"]) == 0
    report = json.loads((run_dir / "audit.json").read_text())
    assert report["run_kind"] == "central"
    pooled = [r for p in ("a", "b")
              for r in harmonize_labels(scan_site(tmp_path / p), cfg.data.class_names).records]
    train, val = train_val_datasets(pooled, cfg)  # what simulations/central.py trained on
    row = next(r for r in report["results"] if r["site"] == "pooled")
    assert (row["members"], row["non_members"]) == (len(train), len(val))
    a_train = sum(1 for r in train.records if Path(r.image_path).is_relative_to(tmp_path / "a"))
    row_a = next(r for r in report["results"] if r["site"] == "a")
    assert row_a["members"] == a_train
    assert "| a | loss |" in (run_dir / "audit.md").read_text()
