"""Saving matplotlib figures without pyplot's global state (safe in worker threads)."""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(*, figsize: tuple[float, float] = (6.0, 4.0)) -> Figure:
    """A figure bound to the Agg canvas (no display, no pyplot registry)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path | str, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` (folders created), tight bounding box.

    Figures made with ``pyplot`` are closed afterwards so long runs do not leak them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt = sys.modules.get("matplotlib.pyplot")  # release a pyplot-managed figure
    if plt is not None and plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)
    return path
