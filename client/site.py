"""Which images a ClientApp trains on, resolved from its node config.

* Deployment: node config ``data-path`` is the hospital's own folder.
* Simulation (node config has ``partition-id``/``num-partitions``):
  - with a run-config ``data-path`` (one or more folders, comma separated), the
    union of those folders is split into ``num-partitions`` virtual hospitals by the
    run-config ``partition`` rule (``iid``, ``dirichlet:A``, ``source``);
  - without one, the node is a synthetic hospital generated (once, cached on disk)
    from the run seed and its partition id, with its own device colour profile.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.partition import partition
from endofed.shared.data.sample import SampleRecord, SiteIndex
from endofed.shared.data.site import SiteDataError, scan_site
from endofed.shared.data.synthetic import write_site

log = logging.getLogger(__name__)


class SiteConfigError(SiteDataError):
    """The node's data configuration cannot work; the message says how to fix it.

    A :class:`SiteDataError`, so a refusal reaches the server as "site data unusable".
    """


@dataclass
class SiteData:
    """The records a site trains and evaluates on."""

    name: str
    records: list[SampleRecord]
    index: SiteIndex | None = None


def _split_paths(value: Path | str) -> list[Path]:
    return [Path(p.strip()).expanduser() for p in str(value).split(",") if p.strip()]


def _scan(path: Path, cfg: EndoFedConfig) -> SiteIndex:
    if not path.exists():
        raise SiteConfigError(
            f"data-path {path} does not exist; set node config data-path to the site's "
            "image folder (Kvasir-SEG style, COCO JSON or manifest.csv)"
        )
    try:
        index = scan_site(path)
    except SiteDataError as exc:
        raise SiteConfigError(f"data-path {path} is not usable: {exc}") from exc
    if index.report.problems:
        log.warning("%s: %d files skipped (see `endofed site check %s`)",
                    path, len(index.report.problems), path)
    return harmonize_labels(index, cfg.data.class_names)


def synthetic_site_dir(cfg: EndoFedConfig, partition_id: int) -> Path:
    """Where the synthetic hospital of ``partition_id`` is (or will be) written."""
    base = cfg.site.synthetic_dir or (Path(cfg.federation.runs_dir) / "_synthetic")
    n = cfg.site.synthetic_images_per_site
    return Path(base).expanduser().resolve() / (
        f"seed{cfg.train.seed}_n{n}_s{cfg.data.image_size}" / Path(f"site_{partition_id + 1}")
    )


def ensure_synthetic_site(cfg: EndoFedConfig, partition_id: int) -> Path:
    """Generate the synthetic hospital once (atomic rename), then reuse it."""
    out = synthetic_site_dir(cfg, partition_id)
    if (out / "manifest.csv").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        write_site(
            tmp,
            n_images=cfg.site.synthetic_images_per_site,
            seed=cfg.train.seed * 1000 + partition_id,
            site_index=partition_id,
            size=(max(cfg.data.image_size, 128),) * 2,
        )
        try:
            tmp.rename(out)
        except OSError:  # another process won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def site_display_name(cfg: EndoFedConfig, node_config: Mapping[str, Any]) -> str:
    """The name the site reports: node config ``site-name``, else ``site_<n>`` for a
    simulated partition, else its folder's name."""
    if cfg.site.site_name:
        return cfg.site.site_name
    if "partition-id" in node_config:
        return f"site_{int(node_config['partition-id']) + 1}"
    return Path(str(node_config.get("data-path", ""))).expanduser().name


def resolve_site(
    cfg: EndoFedConfig, node_config: Mapping[str, Any], run_config: Mapping[str, Any]
) -> SiteData:
    """The site's records from its node config (see module docstring)."""
    simulated = "partition-id" in node_config
    if not simulated:
        if "data-path" not in node_config or not str(node_config["data-path"]).strip():
            raise SiteConfigError(
                "node config has no data-path; start the SuperNode with "
                "--node-config 'data-path=\"/path/to/site\" site-name=\"my-hospital\"'"
            )
        path = Path(str(node_config["data-path"])).expanduser()
        index = _scan(path, cfg)
        return SiteData(name=site_display_name(cfg, node_config), records=index.records,
                        index=index)

    pid = int(node_config["partition-id"])
    num = int(node_config.get("num-partitions", 1))
    name = site_display_name(cfg, node_config)
    if "data-path" in node_config:  # a simulated node with its own folder
        index = _scan(Path(str(node_config["data-path"])), cfg)
        return SiteData(name=name, records=index.records, index=index)
    if str(run_config.get("data-path", "")).strip():
        records: list[SampleRecord] = []
        for p in _split_paths(run_config["data-path"]):
            records.extend(_scan(p, cfg).records)
        spec = str(run_config.get("partition", "iid"))
        parts = partition(records, spec, num, seed=cfg.train.seed)
        return SiteData(name=name, records=parts[pid])
    path = ensure_synthetic_site(cfg, pid)
    index = _scan(path, cfg)
    return SiteData(name=name, records=index.records, index=index)
