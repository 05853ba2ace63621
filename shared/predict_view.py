"""The picture a clinician reads: ``endofed predict``'s PNG for one image.

Left: the image as it came, with the detected boxes (class and score) and the outline
of the predicted lesion mask; nothing tints the frame. Right: the model's attention map
as its own panel, drawn only inside the field of view (the lit, non-black part of the
frame) with a colour bar. Above: the verdict in words with the lesion probability and
the threshold it was compared with. Below: a legend.

The layout is computed in pixels (:func:`predict_view_layout`) so the panels sit at
known places in the returned array. Drawn with matplotlib's Agg canvas (no pyplot
state, no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np


class Prediction(Protocol):
    """What the view reads of :class:`endofed.shared.inference.Prediction` (this module
    sits below ``inference`` in the import layers, so it names only the fields)."""

    boxes: np.ndarray
    labels: list[str]
    scores: np.ndarray
    mask_prob: np.ndarray
    attention: np.ndarray
    lesion_probability: float
    lesion: bool | None
    threshold: float | None
    threshold_rule: str

#: ``max(R, G, B)`` at or below this is the black border around the field of view.
FOV_DARK_THRESHOLD = 30
#: Colour of the attention panel outside the field of view (RGB, 0-255).
OUTSIDE_FOV_RGB = (217, 217, 217)
#: Lesion mask outline colour and the verdict colours.
CONTOUR_RGB = (0, 230, 64)
LESION_RGB = (200, 30, 30)
NO_LESION_RGB = (20, 110, 40)
_PALETTE = ((255, 221, 0), (0, 200, 255), (255, 120, 0), (255, 0, 200), (160, 255, 60))
_DPI = 100
_PANEL_W = 520  # pixels of the longer image side in each panel


def field_of_view_mask(
    image: np.ndarray, *, dark_threshold: int = FOV_DARK_THRESHOLD
) -> np.ndarray:
    """The field of view: convex hull of the largest connected non-black region (bool HxW).

    Endoscope optics light a convex area (circle, octagon). Burnt-in text in the black
    border is a separate component and is left out; a dark lumen inside the field of
    view, even one reaching its edge, is kept (the hull); a black panel cut into the
    field of view's corner is inside the hull. An image with no black border (already
    cropped) is its own field of view.
    """
    rgb = np.asarray(image)
    bright = (rgb.max(axis=2) if rgb.ndim == 3 else rgb) > dark_threshold
    h, w = bright.shape
    if not bright.any():
        return np.ones((h, w), bool)
    k = max(3, (min(h, w) // 100) | 1)
    opened = cv2.morphologyEx(bright.astype(np.uint8), cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        return np.ones((h, w), bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(np.concatenate(contours))
    filled = np.zeros_like(comp)
    cv2.fillConvexPoly(filled, hull, 1)
    return filled.astype(bool)


def attention_in_fov(image: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """The attention map (float, clipped to 0-1) with NaN outside the field of view."""
    att = np.clip(np.asarray(attention, np.float32), 0.0, 1.0).copy()
    att[~field_of_view_mask(image)] = np.nan
    return att


def _fmt_pair(p: float, t: float) -> tuple[str, str]:
    """``p`` and ``t`` with as few decimals (2..6) as keep them apart."""
    for d in range(2, 7):
        a, b = f"{p:.{d}f}", f"{t:.{d}f}"
        if a != b:
            return a, b
    return f"{p:.6f}", f"{t:.6f}"


def verdict_text(pred: Prediction) -> str:
    """The verdict in words: ``Lesion found (p=0.87 >= 0.43, rule youden)`` or
    ``No lesion found (p=0.12 < 0.43, rule youden)``; p is the lesion probability
    (1 - p(normal)), the threshold the checkpoint's operating point. A lesion is
    ``p > threshold``; numbers get more decimals (up to 6) until they differ, and a
    probability equal to the threshold reads ``<=``."""
    p = float(pred.lesion_probability)
    if pred.lesion is None or pred.threshold is None or not np.isfinite(p):
        return "No verdict (no image-level probability)"
    ps, ts = _fmt_pair(p, float(pred.threshold))
    rule = f", rule {pred.threshold_rule}" if pred.threshold_rule else ""
    if pred.lesion:  # the rule is p > t, so ">=" always holds
        return f"Lesion found (p={ps} >= {ts}{rule})"
    return f"No lesion found (p={ps} {'<=' if ps == ts else '<'} {ts}{rule})"


@dataclass(frozen=True)
class ViewLayout:
    """Pixel rectangles ``(x0, y0, x1, y1)`` (top-left origin) of the rendered view."""

    width: int
    height: int
    image: tuple[int, int, int, int]
    attention: tuple[int, int, int, int]
    colorbar: tuple[int, int, int, int]
    legend_top: int


def predict_view_layout(image_shape: tuple[int, ...]) -> ViewLayout:
    """Where :func:`render_predict_view` puts each panel for an image of this shape."""
    h, w = int(image_shape[0]), int(image_shape[1])
    scale = _PANEL_W / max(h, w)
    pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
    left, gap, cb_w, right, top, bottom = 24, 36, 22, 90, 96, 118
    x_img = left
    x_att = x_img + pw + gap
    x_cb = x_att + pw + 14
    width = x_cb + cb_w + right
    height = top + ph + bottom
    return ViewLayout(
        width=width, height=height,
        image=(x_img, top, x_img + pw, top + ph),
        attention=(x_att, top, x_att + pw, top + ph),
        colorbar=(x_cb, top, x_cb + cb_w, top + ph),
        legend_top=top + ph + 30,
    )


def _class_color(label: str, names: list[str], class_colors: Mapping[str, object] | None):
    if class_colors and label in class_colors:
        c = class_colors[label]
        if isinstance(c, str):
            return c
        arr = np.asarray(c, dtype=float)
        return tuple(arr / 255.0) if arr.max() > 1 else tuple(arr)
    rgb = _PALETTE[names.index(label) % len(_PALETTE)]
    return tuple(v / 255.0 for v in rgb)


def render_predict_view(
    image: np.ndarray,
    pred: Prediction,
    *,
    class_colors: Mapping[str, object] | None = None,
    subtitle: str | None = None,
) -> np.ndarray:
    """Render the predict view of ``pred`` on ``image`` (RGB ``uint8``); see the module.

    ``class_colors``: box colour per class name (a matplotlib colour name, or RGB in
    0-1 or 0-255); default a fixed palette. ``subtitle``: a second title line (the
    source file and model, say).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    rgb = np.ascontiguousarray(image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1))
    h, w = rgb.shape[:2]
    lay = predict_view_layout(rgb.shape)
    fig = Figure(figsize=(lay.width / _DPI, lay.height / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)

    def axes_at(box: tuple[int, int, int, int]):
        x0, y0, x1, y1 = box
        return fig.add_axes((x0 / lay.width, 1 - y1 / lay.height,
                             (x1 - x0) / lay.width, (y1 - y0) / lay.height))

    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    lw = 2.0
    # -- left: image, mask outline, boxes ------------------------------------------
    ax = axes_at(lay.image)
    ax.imshow(rgb, extent=extent, aspect="auto", interpolation="antialiased")
    mask = np.asarray(pred.mask_prob, np.float32)
    has_contour = bool((mask > 0.5).any())
    if has_contour:
        ax.contour(np.arange(w), np.arange(h), mask, levels=[0.5],
                   colors=[tuple(v / 255 for v in CONTOUR_RGB)], linewidths=lw)
    names: list[str] = []
    for label in pred.labels:
        if label not in names:
            names.append(label)
    font = max(8.0, min(11.0, 11.0 * _PANEL_W / 520))
    for box, label, score in zip(pred.boxes, pred.labels, pred.scores):
        x0, y0, x1, y1 = (float(v) for v in box)
        color = _class_color(label, names, class_colors)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                               linewidth=lw))
        ax.text(x0, max(y0, 0), f"{label} {float(score):.2f}", color="black", fontsize=font,
                va="bottom", ha="left", clip_on=True,
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1.5, "alpha": 0.9})
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("Image: detections and lesion outline", fontsize=11, loc="left")
    # -- right: attention inside the field of view -----------------------------------
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"].with_extremes(bad=tuple(v / 255 for v in OUTSIDE_FOV_RGB))
    att = np.ma.masked_invalid(attention_in_fov(rgb, pred.attention))
    axa = axes_at(lay.attention)
    im = axa.imshow(att, extent=extent, aspect="auto", cmap=cmap, norm=Normalize(0.0, 1.0),
                    interpolation="nearest")
    axa.set_xticks([])
    axa.set_yticks([])
    axa.set_title("Model attention (inside the field of view)", fontsize=11, loc="left")
    cax = axes_at(lay.colorbar)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("attention (0 = none, 1 = most)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    # -- title: the verdict ----------------------------------------------------------
    verdict = verdict_text(pred)
    color = LESION_RGB if pred.lesion else NO_LESION_RGB
    fig.text(lay.image[0] / lay.width, 1 - 16 / lay.height, verdict, fontsize=17,
             fontweight="bold", color=tuple(v / 255 for v in color), va="top", ha="left")
    if subtitle:
        fig.text(lay.image[0] / lay.width, 1 - 50 / lay.height, subtitle, fontsize=9.5,
                 color="0.25", va="top", ha="left")
    # -- legend ----------------------------------------------------------------------
    handles = [Line2D([], [], color=tuple(v / 255 for v in CONTOUR_RGB), lw=lw,
                      label="predicted lesion outline (mask p > 0.5)"
                      if has_contour else "lesion outline: none (no mask pixel p > 0.5)")]
    thresh = getattr(pred, "score_thresh", None)
    above = f" >= {thresh:.2f}" if thresh is not None else ""
    if names:
        handles += [Patch(facecolor="none", edgecolor=_class_color(n, names, class_colors),
                          lw=lw, label=f"box: {n} (detection score{above})") for n in names]
    else:
        handles.append(Patch(facecolor="none", edgecolor="0.6", lw=lw, linestyle="--",
                             label=f"boxes: none (no detection score{above})"))
    handles.append(Patch(facecolor=tuple(v / 255 for v in OUTSIDE_FOV_RGB), edgecolor="0.6",
                         label="outside the field of view (attention not shown)"))
    fig.legend(handles=handles, loc="upper left", ncol=2, fontsize=9, frameon=False,
               bbox_to_anchor=(lay.image[0] / lay.width, 1 - lay.legend_top / lay.height))
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    return np.ascontiguousarray(buf)
