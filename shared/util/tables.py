"""Markdown tables (GitHub-flavoured) for reports and summaries."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def format_cell(value: Any, float_fmt: str = "{:.4f}") -> str:
    """A cell's text: floats through ``float_fmt`` (NaN as ``n/a``), ``|`` escaped.

    "Float" is any real, non-integral number type (``float``, ``numpy.float32`` ...);
    ints, bools and strings are written with ``str``.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        text = "n/a" if math.isnan(value) else float_fmt.format(float(value))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], *,
                   float_fmt: str = "{:.4f}") -> str:
    """A Markdown table from a header row and data rows (no trailing newline)."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(format_cell(c, float_fmt) for c in cells) + " |"

    out = [line([str(h) for h in headers]), "|" + "|".join(["---"] * len(headers)) + "|"]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def dataframe_table(df: Any, *, float_fmt: str = "{:.4f}") -> str:
    """:func:`markdown_table` of a pandas DataFrame's columns and rows (index dropped)."""
    return markdown_table(list(df.columns), [list(r) for r in df.itertuples(index=False)],
                          float_fmt=float_fmt)
