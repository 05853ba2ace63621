"""The learned overlay detector: the project's improved SSD trained on overlay composites.

It trains and runs the model with the engine, so it sits above them (its own layer in
the import contract, below ``build``). The preprocessing pipeline never imports it:
composition roots build the detector a config names with :func:`overlay_detector_for`
and pass it in (``detector=``).

* :mod:`.composites` -- training data: synthetic overlays on overlay-free frames;
* :mod:`.training` -- :func:`train_overlay_detector`;
* :mod:`.detector` -- :class:`LearnedDetector` (a checkpoint run on a frame);
* :mod:`.evaluation` -- :func:`overlay_recall`;
* :mod:`.selection` -- :func:`overlay_detector_for`.
"""

from endofed.shared.overlay_detector.composites import (
    COMPOSITE_STYLE,
    BackgroundFrames,
    composite_dataset,
    list_backgrounds,
    make_composites,
)
from endofed.shared.overlay_detector.detector import (
    CHECKPOINT_KIND,
    CLASS_NAMES,
    LEARNED,
    LearnedDetector,
)
from endofed.shared.overlay_detector.evaluation import overlay_recall
from endofed.shared.overlay_detector.selection import DETECTOR_NAMES, overlay_detector_for
from endofed.shared.overlay_detector.training import train_overlay_detector

__all__ = [
    "CHECKPOINT_KIND",
    "CLASS_NAMES",
    "COMPOSITE_STYLE",
    "DETECTOR_NAMES",
    "LEARNED",
    "BackgroundFrames",
    "LearnedDetector",
    "composite_dataset",
    "list_backgrounds",
    "make_composites",
    "overlay_detector_for",
    "overlay_recall",
    "train_overlay_detector",
]
