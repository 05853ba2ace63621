"""Privacy audit: a loss-threshold membership-inference attack on a trained model.

The attacker scores each image by the model's loss on it (lower loss = more likely a
training member, Yeom et al. 2018). The attack AUC over a site's training images
(members) and its held-out images (non-members) measures how much the model reveals
about who was in the training set: 0.5 is no leakage. It runs where the images are
(at the site), and only the AUC leaves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from endofed.shared.build import dataset_for, loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.sample import SampleRecord
from endofed.shared.model import ImprovedSSD

log = logging.getLogger(__name__)


@dataclass
class MembershipAudit:
    """Result of the attack on one site."""

    site: str
    members: int
    non_members: int
    attack_auc: float
    attack_advantage: float  # max(TPR - FPR) over thresholds
    member_loss_mean: float
    non_member_loss_mean: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def per_image_losses(
    model: ImprovedSSD, records: Sequence[SampleRecord], cfg: EndoFedConfig,
    device: torch.device,
) -> np.ndarray:
    """The model's training loss on each image (no augmentation, eval mode)."""
    model = model.to(device).eval()
    loader = loader_for(dataset_for(records, cfg, train=False), cfg, shuffle=False)
    out: list[np.ndarray] = []
    for batch in loader:
        if len(batch) == 0:
            continue
        batch = batch.to(device)
        outputs = model(batch.images)
        losses = model.compute_loss(outputs, batch, alpha_seg=cfg.train.alpha_seg)
        out.append(losses.total.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def membership_inference_audit(
    model: ImprovedSSD,
    members: Sequence[SampleRecord],
    non_members: Sequence[SampleRecord],
    cfg: EndoFedConfig,
    *,
    site: str = "",
    device: torch.device | None = None,
) -> MembershipAudit:
    """Attack AUC of the loss-threshold attack (members vs non-members)."""
    if not members or not non_members:
        raise ValueError(
            f"site {site!r}: the audit needs both training (member) and held-out "
            f"(non-member) images; got {len(members)} and {len(non_members)}"
        )
    device = device or torch.device("cpu")
    lm = per_image_losses(model, members, cfg, device)
    ln = per_image_losses(model, non_members, cfg, device)
    labels = np.r_[np.ones(len(lm)), np.zeros(len(ln))]
    scores = -np.r_[lm, ln]  # low loss -> "member"
    auc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    return MembershipAudit(
        site=site, members=len(lm), non_members=len(ln), attack_auc=auc,
        attack_advantage=float(np.max(tpr - fpr)),
        member_loss_mean=float(lm.mean()), non_member_loss_mean=float(ln.mean()),
    )


def write_audit_markdown(results: Sequence[MembershipAudit], out: Path) -> Path:
    """``audit.md`` (picked up by the run report)."""
    lines = [
        "Loss-threshold membership-inference attack on the global model "
        "(members: the site's training images; non-members: its held-out images). "
        "AUC 0.5 = the attack cannot tell them apart.",
        "",
        "| Site | Members | Non-members | Attack AUC | Advantage | Loss (members) "
        "| Loss (non-members) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.site} | {r.members} | {r.non_members} | {r.attack_auc:.3f} | "
            f"{r.attack_advantage:.3f} | {r.member_loss_mean:.3f} | "
            f"{r.non_member_loss_mean:.3f} |"
        )
    out.write_text("\n".join(lines) + "\n")
    return out
