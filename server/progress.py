"""One progress line per finished round, for the terminal and ``progress.log``.

The ServerApp logs the line (Flower streams the ServerApp's output to ``flwr run
--stream``); :func:`progress_text` finds it again in that stream, so ``endofed demo`` /
``endofed simulate`` can show it while the run goes on. Standard library only: the
simulation side imports this without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Every progress line starts with this (and nothing else the server logs does).
PROGRESS_MARKER = "EndoFed round "

#: Flags of a site's row in ``metrics.csv`` that say it did not contribute.
DECLINED, REJECTED = "declined", "rejected"
OFFLINE = ("unavailable", "missing")


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _flag(row: Mapping[str, Any], key: str) -> bool:
    return (_num(row.get(key)) or 0.0) > 0


def fmt_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 04 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def round_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Sites of one round's ``metrics.csv`` rows (``global`` excluded) by what they did:
    ``trained`` (an update that was not refused), ``declined`` (the site's privacy budget),
    ``refused`` (the site or the server rejected its reply), ``offline`` (no reply)."""
    counts = {"trained": 0, "declined": 0, "refused": 0, "offline": 0}
    for row in rows:
        if str(row.get("site")) == "global":
            continue
        if _flag(row, DECLINED):
            counts["declined"] += 1
        elif _flag(row, REJECTED):
            counts["refused"] += 1
        elif any(_flag(row, k) for k in OFFLINE):
            counts["offline"] += 1
        elif _num(row.get("num-examples")) is not None or _num(row.get("train-loss")) is not None:
            counts["trained"] += 1
    return counts


def round_progress(history: Sequence[Mapping[str, Any]], server_round: int, total: int) -> str:
    """The progress line of ``server_round`` from the run's history rows, e.g.
    ``EndoFed round 2/6: 3 sites trained, 0 declined, 0 refused, 0 offline | global
    mAP@0.5 0.412, Dice (lesion images) 0.533, AUC 0.871 | ε spent ≤ 1.92 (target 8) |
    round 41 s, total 1 min 23 s``."""
    rows = [r for r in history if int(r.get("round", -1)) == server_round]
    glob = next((r for r in rows if str(r.get("site")) == "global"), {})
    c = round_counts(rows)
    parts = [f"{PROGRESS_MARKER}{server_round}/{total}: {c['trained']} sites trained, "
             f"{c['declined']} declined, {c['refused']} refused, {c['offline']} offline"]
    metrics = []
    for key, label in (("map50", "mAP@0.5"), ("dice_lesion", "Dice (lesion images)"),
                       ("auc", "AUC")):
        value = _num(glob.get(key))
        metrics.append(f"{label} {value:.3f}" if value is not None else f"{label} n/a")
    parts.append("global " + ", ".join(metrics))
    spent = [v for r in rows if (v := _num(r.get("epsilon-spent"))) is not None]
    if spent:
        targets = sorted({v for r in rows if (v := _num(r.get("epsilon-target"))) is not None})
        target = f" (target {', '.join(f'{t:g}' for t in targets)})" if targets else ""
        parts.append(f"ε spent ≤ {max(spent):.2f}{target}")
    seconds = _num(glob.get("round-seconds"))
    elapsed = sum(v for r in history if str(r.get("site")) == "global"
                  and int(r.get("round", -1)) <= server_round
                  and (v := _num(r.get("round-seconds"))) is not None)
    if seconds is not None:
        parts.append(f"round {fmt_duration(seconds)}, total {fmt_duration(elapsed)}")
    return " | ".join(parts)


def progress_text(line: str) -> str | None:
    """The progress line inside a log line (Flower prefixes levels and times), or None."""
    at = line.find(PROGRESS_MARKER)
    if at < 0:
        return None
    return line[at:].rstrip()
