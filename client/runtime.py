"""Per-process site state: data, datasets and model are built once and reused each round."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from endofed.client.site import SiteConfigError, SiteData, resolve_site
from endofed.privacy.dp import DPEngine
from endofed.privacy.ledger import PrivacyLedger
from endofed.shared.build import loader_for, model_for, train_val_datasets
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.engine import configure_threads, resolve_device

log = logging.getLogger(__name__)


@dataclass
class SiteRuntime:
    """A site's data and model, kept for the lifetime of the client process."""

    cfg: EndoFedConfig
    site: SiteData
    device: torch.device
    model: torch.nn.Module
    train_set: DetectionDataset
    val_set: DetectionDataset
    dp_engine: DPEngine | None = None  # the site's Opacus objects, built in its first DP round
    ledger: PrivacyLedger | None = None  # the site's privacy ledger, opened on first use

    @property
    def name(self) -> str:
        return self.site.name

    def train_loader(self) -> DataLoader:
        return loader_for(self.train_set, self.cfg, shuffle=True)

    def val_loader(self) -> DataLoader:
        return loader_for(self.val_set, self.cfg, shuffle=False)


_RUNTIMES: dict[str, SiteRuntime] = {}
#: How often this process built a runtime and reused one (the site runner reports them).
RUNTIME_STATS: dict[str, int] = {"builds": 0, "hits": 0}


def _key(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> str:
    blob = json.dumps([dict(run_config), dict(node_config)], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def get_site_runtime(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> SiteRuntime:
    """The cached runtime of this (run, node) pair, built on first use."""
    key = _key(run_config, node_config)
    rt = _RUNTIMES.get(key)
    if rt is None:
        rt = build_site_runtime(run_config, node_config)
        _RUNTIMES[key] = rt
        RUNTIME_STATS["builds"] += 1
    else:
        RUNTIME_STATS["hits"] += 1
    return rt


def release_site_runtimes() -> int:
    """Drop every cached runtime (data index, datasets, model); returns how many.

    The site runner calls it when a new run starts or a run has ended, so one run's
    state at a time stays in memory.
    """
    n = len(_RUNTIMES)
    _RUNTIMES.clear()
    if n:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("released %d cached site runtime(s)", n)
    return n


def build_site_runtime(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> SiteRuntime:
    """Resolve the site's data, split it patient-aware, build datasets and model."""
    cfg = EndoFedConfig.from_flower(run_config, node_config)
    configure_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    site = resolve_site(cfg, node_config, run_config)
    train_set, val_set = train_val_datasets(site.records, cfg)
    if len(train_set) == 0:
        raise SiteConfigError(
            f"site {site.name}: no training images after the split "
            f"({len(site.records)} usable images in total)"
        )
    model = model_for(cfg).to(device)
    log.info("site %s: %d train / %d val images on %s", site.name, len(train_set),
             len(val_set), device)
    return SiteRuntime(cfg=cfg, site=site, device=device, model=model,
                       train_set=train_set, val_set=val_set)

