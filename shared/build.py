"""From configuration to model, datasets and loaders (one place for every entry point)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import DataLoader

from endofed.shared.config import EndoFedConfig
from endofed.shared.data.dataset import DetectionDataset, make_loader
from endofed.shared.data.sample import Sample, SampleRecord
from endofed.shared.data.site import load_sample
from endofed.shared.data.split import split_records
from endofed.shared.model import (
    WEIGHTS_AUTO,
    WEIGHTS_NONE,
    WEIGHTS_PRETRAINED,
    ImprovedSSD,
    build_model,
)
from endofed.shared.overlay_detector import overlay_detector_for
from endofed.shared.preprocessing import (
    OverlayDetector,
    PreprocessConfig,
    SiteCache,
    cached_loader,
)


def preprocess_config_for(cfg: EndoFedConfig) -> PreprocessConfig:
    """The site's :class:`~endofed.shared.preprocessing.PreprocessConfig` from the config."""
    return PreprocessConfig.from_section(cfg.preprocess)


def checkpoint_preprocess(cfg: EndoFedConfig) -> dict:
    """The preprocessing a model is trained with, for its checkpoint's ``extra``:
    ``{"enabled": False}`` or ``{"enabled": True, "config": PreprocessConfig.to_dict()}``.
    ``endofed predict`` applies it to every input (:mod:`endofed.shared.inference`)."""
    if not cfg.preprocess.preprocess:
        return {"enabled": False}
    return {"enabled": True, "config": preprocess_config_for(cfg).to_dict()}


def preprocess_cache_dir(cfg: EndoFedConfig) -> Path:
    """Where preprocessed samples are cached (never inside the site's data folder)."""
    if cfg.preprocess.preprocess_cache_dir is not None:
        return Path(cfg.preprocess.preprocess_cache_dir)
    if cfg.privacy.state_dir is not None:
        return Path(cfg.privacy.state_dir) / "preprocess_cache"
    return Path(cfg.federation.runs_dir).expanduser().resolve() / "_cache" / "preprocess"


def sample_loader_for(
    cfg: EndoFedConfig, *, detector: OverlayDetector | None = None
) -> Callable[[SampleRecord], Sample]:
    """``record -> Sample``: through the content-addressed preprocessing cache when the
    site enables preprocessing, so a round never redoes it.

    ``detector`` is the overlay detector (default: the one ``preprocess-detector``
    names, built by :func:`~endofed.shared.overlay_detector.overlay_detector_for`).
    """
    if not cfg.preprocess.preprocess:
        return load_sample
    config = preprocess_config_for(cfg)
    if detector is None and config.detect_overlays:
        detector = overlay_detector_for(config)
    return cached_loader(SiteCache(preprocess_cache_dir(cfg), config, detector=detector))


def dataset_for(
    records: Sequence[SampleRecord], cfg: EndoFedConfig, *, train: bool
) -> DetectionDataset:
    """A fixed-shape dataset with the run's image size, box cap and morphology names."""
    return DetectionDataset(
        list(records),
        image_size=cfg.data.image_size,
        train=train and cfg.data.augment,
        max_boxes=cfg.data.max_boxes,
        morphology_names=list(cfg.data.morphology_names),
        loader=sample_loader_for(cfg),
        cache_items=len(records),
    )


def train_val_datasets(
    records: Sequence[SampleRecord], cfg: EndoFedConfig
) -> tuple[DetectionDataset, DetectionDataset]:
    """Patient-aware split by ``val-fraction`` into augmented train and plain val sets."""
    val = cfg.data.val_fraction
    if val <= 0:
        return dataset_for(records, cfg, train=True), dataset_for([], cfg, train=False)
    splits = split_records(list(records), fractions=(1.0 - val, val), seed=cfg.data.split_seed)
    return dataset_for(splits["train"], cfg, train=True), dataset_for(
        splits["val"], cfg, train=False
    )


def loader_for(dataset: DetectionDataset, cfg: EndoFedConfig, *, shuffle: bool) -> DataLoader:
    """A DataLoader of :class:`~shared.data.collate.Batch` with the run's batch size."""
    return make_loader(
        dataset,
        cfg.data.batch_size,
        shuffle=shuffle,
        num_workers=cfg.data.workers,
        seed=cfg.train.seed,
    )


def _weights_source(value: str) -> str:
    """``weights-path`` as :func:`build_model` takes it ("" is "auto"; ``~`` expanded)."""
    if value in ("", WEIGHTS_AUTO, WEIGHTS_PRETRAINED, WEIGHTS_NONE):
        return value or WEIGHTS_AUTO
    return str(Path(value).expanduser())


def model_for(cfg: EndoFedConfig) -> ImprovedSSD:
    """The improved SSD the run's config describes (preset, classes, size, weights, mode)."""
    return build_model(
        preset=cfg.model.preset,
        num_classes=len(cfg.data.class_names),
        image_size=cfg.data.image_size,
        weights_path=_weights_source(cfg.model.weights_path),
        finetune=cfg.finetune_mode,
    )
