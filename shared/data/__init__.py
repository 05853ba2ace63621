"""Site data: layouts, validation, splits, joint augmentation, datasets and batches."""

from .collate import Batch, DetectionItem, collate_detection, empty_batch
from .dataset import DetectionDataset, make_loader
from .layouts import ImageReadError, SiteDataError, scan_coco, scan_kvasir, scan_manifest
from .sample import (
    NORMAL_CLASS_NAME,
    DataProblem,
    DataReport,
    Sample,
    SampleMeta,
    SampleRecord,
    SiteIndex,
    image_label,
)
from .site import detect_layout, load_sample, scan_site, summarize
from .split import split_records
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, denormalize, to_tv_sample

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMAL_CLASS_NAME",
    "Batch",
    "DataProblem",
    "DataReport",
    "DetectionDataset",
    "DetectionItem",
    "ImageReadError",
    "Sample",
    "SampleMeta",
    "SampleRecord",
    "SiteDataError",
    "SiteIndex",
    "build_transforms",
    "collate_detection",
    "denormalize",
    "detect_layout",
    "empty_batch",
    "image_label",
    "load_sample",
    "make_loader",
    "scan_coco",
    "scan_kvasir",
    "scan_manifest",
    "scan_site",
    "split_records",
    "summarize",
    "to_tv_sample",
]
