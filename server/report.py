"""The run report: settings, final global metrics, per-round curves, per-site table, privacy.

The ServerApp re-renders it after every round (:func:`report_round`), so
``runs/<run-name>/report.md`` always describes the last finished round; every file is
replaced atomically, so a reader (or a browser refreshing it) never sees half of one.
``endofed report RUN_DIR`` renders it again from the run directory alone.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from endofed.server.progress import fmt_duration, round_counts, round_progress
from endofed.server.run_state import LAST, checkpoint_dir, load_checkpoint
from endofed.shared.metrics.formatting import fmt_cell, fmt_count, fmt_value, metric_label
from endofed.shared.metrics.plots import metric_curves_figure, save_png
from endofed.shared.metrics.report import (
    plot_metric_curves,
    plot_site_bars,
    write_evaluation_report,
)
from endofed.shared.model import read_checkpoint
from endofed.shared.util.tables import markdown_table

log = logging.getLogger(__name__)

#: Panels of ``rounds.png`` (those present in ``metrics.csv``; ``dice`` stands in for
#: ``dice_lesion`` in runs recorded before the split).
CURVE_METRICS = ["map50", "map", "dice_lesion", "auc", "op_sensitivity", "op_specificity",
                 "sensitivity", "specificity", "train-loss"]
#: Columns of the per-site table.
SITE_COLUMNS = ["num-examples", "num_images", "map50", "dice_lesion", "auc", "sensitivity",
                "specificity", "train-loss", "epsilon-spent", "epsilon-target"]
#: Columns of the per-round table (global rows).
ROUND_COLUMNS = ["map50", "dice_lesion", "auc", "op_threshold", "op_sensitivity",
                 "op_specificity", "train-loss"]
PROGRESS_LOG = "progress.log"


def _latest_round_metrics(run_dir: Path) -> tuple[int, dict] | None:
    files = sorted((run_dir / "rounds").glob("round_*.json"))
    if not files:
        return None
    path = files[-1]
    return int(path.stem.split("_")[1]), json.loads(path.read_text())


def software_versions() -> str:
    """``endofed X, flwr Y, torch Z`` as installed here (``?`` when unknown)."""
    out = []
    for dist in ("endofed", "flwr", "torch"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} ?")
    return ", ".join(out)


def _stored_state(run_dir: Path) -> dict[str, Any]:
    """Run config and events from ``checkpoints/last.pt`` ({} if missing or unreadable)."""
    path = checkpoint_dir(run_dir) / LAST
    if not path.exists():
        return {}
    try:
        payload = load_checkpoint(path)
    except Exception as exc:  # the report must not fail on one unreadable file
        log.warning("%s unreadable (%s): report without run settings and events", path, exc)
        return {}
    return {"run_config": payload.get("run_config") or {}, "events": payload.get("events") or []}


def _study_id(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "study.json").read_text())["study-id"])
    except (OSError, ValueError, KeyError):
        return "n/a"


def _strategy(cfg: Mapping[str, Any]) -> str:
    name = str(cfg.get("strategy", "?"))
    knobs = {"fedprox": ["proximal-mu"], "fedavgm": ["server-learning-rate", "server-momentum"],
             "fedadam": ["server-learning-rate", "server-beta-1", "server-beta-2", "server-tau"],
             "fedyogi": ["server-learning-rate", "server-beta-1", "server-beta-2", "server-tau"],
             "fedadagrad": ["server-learning-rate", "server-tau"],
             "fedtrimmedavg": ["trimmed-beta"], "krum": ["num-malicious-nodes"]}
    extra = [f"{k}={cfg[k]}" for k in knobs.get(name.lower(), []) if k in cfg]
    central = str(cfg.get("central-dp", "none"))
    text = f"`{name}`" + (f" ({', '.join(extra)})" if extra else "")
    if central not in ("", "none"):
        text += (f"; central DP `{central}` (noise {cfg.get('central-dp-noise')}, clip "
                 f"{cfg.get('central-dp-clip')})")
    if cfg.get("secagg"):
        text += "; secure aggregation (SecAgg+): the server sees only the sum"
    return text


def _dp_per_site(cfg: Mapping[str, Any], last: pd.DataFrame) -> str:
    """Each site's DP-SGD budget as it reported it (a hospital may set its own)."""
    targets: dict[str, float] = {}
    if "epsilon-target" in last.columns:
        for site, value in zip(last["site"], last["epsilon-target"], strict=True):
            if pd.notna(value) and site != "global":
                targets[str(site)] = float(value)
    requested = float(cfg.get("dp-epsilon", 0) or 0)
    base = (f"run config dp-epsilon {requested:g}, δ {cfg.get('dp-delta')}, clip "
            f"{cfg.get('dp-max-grad-norm')}" if requested > 0 else "off in the run config "
            "(dp-epsilon = 0)")
    if not targets:
        return base + ("; no site reported a budget yet" if requested > 0 else "")
    per_site = ", ".join(f"{s} ε {v:g}" for s, v in sorted(targets.items()))
    return f"target per site: {per_site} ({base})"


def settings_table(run_dir: Path, df: pd.DataFrame, run_config: Mapping[str, Any]) -> str:
    """The run's settings as a two-column Markdown table."""
    cfg = dict(run_config)
    rounds_done = int(df["round"].max()) if not df.empty else 0
    last = df[df["round"] == rounds_done] if not df.empty else df
    sites = sorted({str(s) for s in df.get("site", []) if str(s) != "global"})
    total = cfg.get("num-server-rounds", "?")

    def get(key: str) -> str:
        return str(cfg.get(key, "?"))

    rows = [
        ("Run / study id", f"`{run_dir.name}` / `{_study_id(run_dir)}`"),
        ("Strategy", _strategy(cfg) if cfg else "n/a (no run checkpoint)"),
        ("Model", f"preset `{get('preset')}`, {get('image-size')} px, fine-tuning "
                  f"`{get('finetune')}`, weights `{get('weights-path')}`"),
        ("Sites", f"{len(sites)}: {', '.join(sites)}" if sites else "none yet"),
        ("Rounds × local epochs", f"{rounds_done} of {total} rounds × {get('local-epochs')} "
                                  f"local epoch(s); batch {get('batch-size')}, learning rate "
                                  f"{get('learning-rate')}, fraction-train "
                                  f"{get('fraction-train')}, min-train-nodes "
                                  f"{get('min-train-nodes')}"),
        ("Differential privacy (per site)", _dp_per_site(cfg, last) if cfg else "n/a"),
        ("Lesion threshold rule", f"`{get('threshold-rule')}` on the merged validation "
                                  "histograms of each round"),
        ("Software", software_versions()),
    ]
    return markdown_table(["Setting", "Value"], rows)


def _site_table(df: pd.DataFrame, last_round: int) -> str:
    last = df[df["round"] == last_round]
    cols = [c for c in SITE_COLUMNS if c in last.columns]
    order = sorted(last["site"].astype(str), key=lambda s: (s != "global", s))
    rows = []
    for site in order:
        row = last[last["site"].astype(str) == site].iloc[0].to_dict()
        if site == "global" and "num-examples" in last.columns and pd.isna(row["num-examples"]):
            row["num-examples"] = last.loc[last["site"] != "global", "num-examples"].sum()
        status = _site_status(row)
        rows.append([f"**{site}**" if site == "global" else site, status,
                     *(fmt_cell(c, row.get(c)) for c in cols)])
    return markdown_table(["Site", "This round", *(metric_label(c) for c in cols)], rows)


def _site_status(row: Mapping[str, Any]) -> str:
    if str(row.get("site")) == "global":
        return f"merged ({fmt_count(row.get('sites-aggregated'))} aggregated)"
    counts = round_counts([row])
    return next((k for k, v in counts.items() if v), "evaluated")


def _round_table(df: pd.DataFrame) -> str:
    glob = df[df["site"] == "global"].sort_values("round")
    cols = [c for c in ROUND_COLUMNS if c in glob.columns]
    rows = []
    for _, g in glob.iterrows():
        part = df[df["round"] == g["round"]].to_dict("records")
        c = round_counts(part)
        sites = f"{c['trained']} / {c['declined']} / {c['refused']} / {c['offline']}"
        seconds = g.get("round-seconds")
        rows.append([fmt_count(g["round"]), sites, *(fmt_cell(k, g.get(k)) for k in cols),
                     fmt_duration(float(seconds)) if pd.notna(seconds) else "n/a"])
    headers = ["Round", "Sites trained / declined / refused / offline",
               *(metric_label(c) for c in cols), "Time"]
    return markdown_table(headers, rows)


def _events_table(events: Sequence[Mapping[str, Any]]) -> str:
    rows = [[fmt_count(e.get("round")), e.get("site", ""), e.get("event", ""),
             e.get("reason", "")] for e in events]
    return markdown_table(["Round", "Site", "Event", "Reason"], rows)


def _epsilon_section(df: pd.DataFrame, run_dir: Path) -> str | None:
    sites = df[df["site"] != "global"]
    if "epsilon-spent" not in sites.columns or sites["epsilon-spent"].dropna().empty:
        return None
    eps = sites.pivot_table(index="round", columns="site", values="epsilon-spent")
    top = float(sites["epsilon-spent"].max())
    if "epsilon-target" in sites.columns and sites["epsilon-target"].notna().any():
        top = max(top, float(sites["epsilon-target"].max()))
    fig = metric_curves_figure(sites, ["epsilon-spent"],
                               limits={"epsilon-spent": (0.0, 1.08 * top if top > 0 else 1.0)})
    ax = fig.axes[0]
    ax.set_title("ε spent per site (dashed: the site's target)")
    colours = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
    if "epsilon-target" in sites.columns:
        for site, target in sites.groupby("site")["epsilon-target"].max().dropna().items():
            ax.axhline(float(target), ls="--", lw=1.0, color=colours.get(str(site), "grey"))
    save_png(fig, run_dir / "epsilon.png")
    rows = [[fmt_count(r), *(fmt_value(eps.loc[r, s], 3) for s in eps.columns)]
            for r in eps.index]
    return (markdown_table(["Round", *map(str, eps.columns)], rows)
            + "\n\nε spent is each site's own DP ledger after the round (its target in the "
              "per-site table)." + "\n\n![epsilon spent per site](epsilon.png)")


def render_run_report(
    run_dir: Path,
    *,
    run_config: Mapping[str, Any] | None = None,
    events: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """(Re-)write ``report.md`` and its PNGs from what the run directory holds.

    ``run_config`` and ``events`` are the running server's; without them they are read
    from ``checkpoints/last.pt`` (for ``endofed report``). Waits for a background
    rendering of the same run (:func:`report_round`) first, and supersedes a queued one.
    """
    run_dir = Path(run_dir).resolve()
    _WORKER.wait(run_dir, drop_pending=True)
    return _render(run_dir, run_config=run_config, events=events)


def _render(
    run_dir: Path,
    *,
    run_config: Mapping[str, Any] | None,
    events: Sequence[Mapping[str, Any]] | None,
) -> Path:
    with _RENDER_LOCK:  # one rendering at a time in this process
        return _render_unlocked(run_dir, run_config=run_config, events=events)


def _render_unlocked(
    run_dir: Path,
    *,
    run_config: Mapping[str, Any] | None,
    events: Sequence[Mapping[str, Any]] | None,
) -> Path:
    csv = run_dir / "metrics.csv"
    if not csv.exists():
        raise FileNotFoundError(
            f"{csv} not found: is {run_dir} an EndoFed run directory (runs/<run-name>)?"
        )
    df = pd.read_csv(csv)
    if run_config is None or events is None:
        stored = _stored_state(run_dir)
        run_config = stored.get("run_config", {}) if run_config is None else run_config
        events = stored.get("events", []) if events is None else events
    latest = _latest_round_metrics(run_dir)
    metrics = latest[1] if latest else {}
    last_round = int(df["round"].max()) if not df.empty else 0
    total = run_config.get("num-server-rounds")

    preamble = ["## Run settings", settings_table(run_dir, df, run_config)]
    state = ("finished" if total is not None and last_round >= int(total)
             else "in progress: re-rendered after every round")
    preamble.insert(0, f"Round {last_round} of {total if total is not None else '?'} "
                       f"({state}). The headline metrics below are the global model's "
                       "after that round, merged over the sites' validation splits.")

    sections: dict[str, str] = {}
    if "dice_lesion" not in df.columns and "dice" in df.columns:
        df = df.assign(dice_lesion=df["dice"])  # runs recorded before the split
    curves = [m for m in CURVE_METRICS if m in df.columns]
    if curves and not df.empty:
        plot_metric_curves(df, curves, run_dir / "rounds.png")
        sections["Per-round metrics"] = (
            _round_table(df) + "\n\n![per-round metrics](rounds.png)\n\nBlack: the global "
            "model on all sites' validation images (exact, from the summed counts); colours: "
            "each site's own validation split.")

    if not df.empty and (df["site"] != "global").any():
        body = _site_table(df, last_round)
        if "map50" in df.columns:
            plot_site_bars(df[df["round"] == last_round], "map50", run_dir / "sites.png")
            body += "\n\n![per-site](sites.png)"
        sections[f"Per-site metrics (round {last_round})"] = body

    eps = _epsilon_section(df, run_dir)
    if eps:
        sections["Privacy: ε spent per site"] = eps

    models = _models_section(run_dir)
    if models:
        sections["Saved models"] = models

    audit = run_dir / "audit.md"
    if audit.exists():
        sections["Privacy audit (membership inference)"] = audit.read_text()
    if events:
        sections["Events (declined, refused or missing updates)"] = _events_table(events)

    title = f"EndoFed run {run_dir.name}: round {last_round}"
    out = write_evaluation_report(metrics, run_dir, title=title, extra_sections=sections,
                                  preamble_sections=preamble)
    log.debug("report written to %s", out)
    return out


class _ReportWorker:
    """Renders reports in a background thread, one run directory at a time.

    A round hands over its state and goes on; if the previous rendering is still busy
    the newest request replaces any queued one (the report shows the latest round).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[Path, dict[str, Any]] = {}
        self._busy: set[Path] = set()

    def submit(self, run_dir: Path, **kwargs: Any) -> None:
        with self._cond:
            self._pending[run_dir] = kwargs
            if run_dir in self._busy:
                return
            self._busy.add(run_dir)
        threading.Thread(target=self._work, args=(run_dir,), name="endofed-report",
                         daemon=True).start()

    def _work(self, run_dir: Path) -> None:
        while True:
            with self._cond:
                kwargs = self._pending.pop(run_dir, None)
                if kwargs is None:
                    self._busy.discard(run_dir)
                    self._cond.notify_all()
                    return
            try:
                _render(run_dir, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a report is never worth a failed study
                log.warning("report of %s not re-rendered (%s: %s)", run_dir,
                            type(exc).__name__, exc)

    def wait(self, run_dir: Path, *, drop_pending: bool = False,
             timeout: float | None = None) -> bool:
        """Until no rendering of ``run_dir`` is running (False on timeout)."""
        with self._cond:
            if drop_pending:
                self._pending.pop(run_dir, None)
            return self._cond.wait_for(lambda: run_dir not in self._busy, timeout=timeout)


_WORKER = _ReportWorker()
_RENDER_LOCK = threading.Lock()


def wait_for_report(run_dir: Path, timeout: float | None = None) -> bool:
    """Until the background rendering of ``run_dir`` (if any) has finished."""
    return _WORKER.wait(Path(run_dir).resolve(), timeout=timeout)


def report_round(
    run_dir: Path,
    history: Sequence[Mapping[str, Any]],
    *,
    server_round: int,
    total: int,
    run_config: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
) -> str:
    """After a round: log its progress line (the terminal shows it), append it to
    ``progress.log`` and have the report re-rendered in the background (the next round
    does not wait for the plots). Failures are logged, never raised: the study goes
    on. Returns the progress line."""
    line = round_progress(history, server_round, total)
    log.info("%s", line)
    run_dir = Path(run_dir).resolve()
    try:
        with (run_dir / PROGRESS_LOG).open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        log.warning("round %d: %s not written (%s)", server_round, run_dir / PROGRESS_LOG, exc)
    _WORKER.submit(run_dir, run_config=dict(run_config),
                   events=[dict(e) for e in events])
    return line


def _models_section(run_dir: Path) -> str:
    """Which round each saved global model is, and the threshold it carries."""
    lines = []
    for name, what in (("final_model.pt", "the global model after round {round}"),
                       ("model_best.pt", "round {round}, the best federated validation "
                                         "mAP@0.5 ({val_map50})")):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            extra = read_checkpoint(path).get("extra", {})
        except Exception as exc:  # a report must not fail on one unreadable file
            log.warning("%s unreadable: %s", path, exc)
            continue
        fields = {"round": extra.get("round", extra.get("rounds", "?")),
                  "val_map50": fmt_value(extra.get("val_map50"))}
        op = extra.get("operating_point") or {}
        verdict = (f"lesion when lesion probability > {fmt_value(op.get('threshold'))} "
                   f"(rule `{op.get('rule')}`, sensitivity {fmt_value(op.get('sensitivity'))}, "
                   f"specificity {fmt_value(op.get('specificity'))})"
                   if op.get("threshold") is not None else "no stored threshold (0.5 is used)")
        lines.append(f"* `{name}`: {what.format(**fields)}; {verdict}.")
    return "\n".join(lines)
