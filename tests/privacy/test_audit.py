"""The membership-inference audit detects a model that memorised its training images."""

from __future__ import annotations

import torch

from privacy.audit import membership_inference_audit, write_audit_markdown
from shared.config import EndoFedConfig
from shared.data.build import dataset_for, loader_for
from shared.data.labels import harmonize_labels
from shared.data.site import scan_site
from shared.data.synthetic import write_site
from shared.engine import Trainer
from shared.model import build_model


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
