"""The membership-inference audit detects a model that memorised its training images."""

from __future__ import annotations

import torch

from endofed.privacy.audit import membership_inference_audit, write_audit_markdown
from endofed.shared.build import dataset_for, loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.site import scan_site
from endofed.shared.data.synthetic import write_site
from endofed.shared.engine import Trainer
from endofed.shared.model import build_model


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
    md = write_audit_markdown([fresh, trained], tmp_path / "audit.md").read_text()
    assert "| s | 8 | 8 |" in md


def test_audit_command_skips_a_site_it_cannot_audit(tmp_path):
    """One site without held-out images is reported and skipped; the others are audited."""
    import json
    import subprocess
    import sys

    from endofed.shared.model import save_checkpoint

    run_dir = tmp_path / "run"
    run_config = {"preset": "tiny", "image-size": 64, "val-fraction": 0.25, "threads": 1}
    torch.manual_seed(0)
    save_checkpoint(run_dir / "model.pt", build_model(preset="tiny", num_classes=1,
                                                       image_size=64))
    (run_dir / "config.json").write_text(json.dumps(run_config))
    write_site(tmp_path / "good", n_images=12, seed=3, size=(96, 96))
    write_site(tmp_path / "tiny", n_images=1, seed=4, size=(96, 96))

    def audit(*sites):
        args = [a for s in sites for a in ("--data", str(tmp_path / s))]
        return subprocess.run(
            [sys.executable, "-m", "endofed.cli", "audit", str(run_dir), *args,
             "--device", "cpu"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    res = audit("good", "tiny")
    assert res.returncode == 0, res.stderr
    assert "tiny: skipped" in res.stderr and "held-out" in res.stderr
    assert "good: attack AUC" in res.stdout
    report = json.loads((run_dir / "audit.json").read_text())
    assert [r["site"] for r in report] == ["good"]
    nothing = audit("tiny")
    assert nothing.returncode == 1 and "no site could be audited" in nothing.stderr
