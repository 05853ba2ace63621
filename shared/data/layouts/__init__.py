"""One scanner per accepted site layout; each returns a validated :class:`SiteIndex`."""

from ._base import (
    BOX_TOLERANCE_PX,
    IMAGE_EXTENSIONS,
    ImageReadError,
    SiteDataError,
    boxes_from_mask,
    read_image,
    read_mask,
)
from .coco import decode_segmentation, scan_coco
from .dicom import scan_dicom
from .kvasir import scan_kvasir
from .manifest import scan_manifest
from .video import scan_video

LAYOUTS = {"kvasir": scan_kvasir, "coco": scan_coco, "manifest": scan_manifest,
           "dicom": scan_dicom, "video": scan_video}

__all__ = [
    "BOX_TOLERANCE_PX",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "ImageReadError",
    "SiteDataError",
    "boxes_from_mask",
    "decode_segmentation",
    "read_image",
    "read_mask",
    "scan_coco",
    "scan_dicom",
    "scan_kvasir",
    "scan_manifest",
    "scan_video",
]
