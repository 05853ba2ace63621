"""From configuration to datasets and loaders (one place for central and federated runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.utils.data import DataLoader

from shared.config import EndoFedConfig
from shared.data.dataset import DetectionDataset, make_loader
from shared.data.sample import Sample, SampleRecord
from shared.data.site import load_sample
from shared.data.split import split_records


def sample_loader_for(cfg: EndoFedConfig) -> Callable[[SampleRecord], Sample]:
    """``record -> Sample``: through the preprocessing cache when the site enables it."""
    if not cfg.preprocess.preprocess:
        return load_sample
    from shared.preprocessing import site_sample_loader

    return site_sample_loader(cfg)


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
