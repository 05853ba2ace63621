"""Read-only view of run directories: status, rounds, sites, events, files.

The dashboard never writes to a run directory: every file is opened read-only and
parsed results are cached by ``(mtime_ns, size)``, so a page of a running study costs
a ``stat`` per file unless the server has just replaced one (:mod:`~endofed.server.
run_state` and :mod:`~endofed.server.report` replace files atomically, so a reader never
sees half of one).

What a run directory holds (``runs/<run-name>/``): ``metrics.csv`` (one row per round
and site, ``global`` = merged), ``progress.log`` (one line per finished round,
``EndoFed round N/T: ...``), ``checkpoints/last.pt`` (run config and events),
``rounds/round_NNN.json``, ``report.md`` and its PNGs, ``final_model.pt`` (written
after the last round), ``model_best.pt``, ``events.md``, ``study.json`` and ``logs/``.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from endofed.server.progress import PROGRESS_MARKER, round_counts
from endofed.server.run_state import BEST_MODEL, FINAL_MODEL, LAST, load_checkpoint

log = logging.getLogger(__name__)

#: Files whose presence makes a folder a run directory.
RUN_MARKERS = ("metrics.csv", "study.json", "progress.log")
#: Folder names never listed as runs (simulation state, synthetic data, logs).
SKIP_DIRS = {"logs", "rounds", "checkpoints", "__pycache__"}
#: How deep below RUNS_DIR run directories are looked for.
MAX_DEPTH = 4
#: Files of a run served to the browser (the report and its figures, the models).
SERVED_SUFFIXES = (".png", ".md", ".svg")
MODEL_FILES = (FINAL_MODEL, BEST_MODEL)
#: A run that is not finished counts as running while a file changed within this many
#: seconds, or three times its longest round so far, whichever is longer.
STALE_SECONDS = 900.0
#: Metrics of the per-site table, in order.
SITE_METRICS = ("map50", "dice_lesion", "auc", "sensitivity", "specificity", "train-loss")
#: Per-round curves (global line and one per site).
CURVE_METRICS = ("map50", "dice_lesion", "auc", "op_threshold", "train-loss", "epsilon-spent")
#: ``round_counts`` categories under the names the dashboard uses.
STATUS_NAMES = {"trained": "replied", "declined": "declined", "refused": "refused",
                "offline": "failed"}

#: metrics.csv flags of a site that did not contribute (server/progress.py).
_FLAG_COLUMNS = ("declined", "rejected", "unavailable", "missing")
_PROGRESS_RE = re.compile(re.escape(PROGRESS_MARKER) + r"(\d+)/(\d+)")
_RESUME_RE = re.compile(r"resuming run (\S+) from its checkpoint after round (\d+)")


class RunNotFound(LookupError):
    """No run directory of that id below RUNS_DIR."""


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """A file's bytes, opened read-only (``O_RDONLY``, non-blocking: a FIFO never hangs)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        return fh.read() if limit is None else fh.read(limit)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class FileCache:
    """Parsed files keyed by path and ``(mtime_ns, size)``; bounded, thread-safe."""

    def __init__(self, max_entries: int = 256) -> None:
        self._data: OrderedDict[tuple[str, str], tuple[tuple[int, int], Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Thread] = {}
        self.max_entries = max_entries

    def get(self, path: Path, kind: str, parse: Callable[[Path], Any], default: Any = None,
            *, background: bool = False) -> Any:
        """``parse(path)`` unless the file is unchanged since it was last parsed.

        ``background``: a changed or new file is parsed in a thread and the previous
        value (or ``default``) returned meanwhile, so a slow parse never holds up a page.
        """
        stamp = _stamp(path)
        if stamp is None:
            return default
        key = (str(path), kind)
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and hit[0] == stamp:
                self._data.move_to_end(key)
                return hit[1]
            if background:
                if key not in self._loading:
                    worker = threading.Thread(
                        target=self._load, args=(path, key, stamp, parse, default),
                        name="dashboard-parse", daemon=True)
                    self._loading[key] = worker
                    worker.start()
                return hit[1] if hit is not None else default
        return self._load(path, key, stamp, parse, default)

    def wait(self, timeout: float = 30.0) -> None:
        """Until the background parses running now have finished (for tests)."""
        with self._lock:
            workers = list(self._loading.values())
        for w in workers:
            w.join(timeout)

    def _load(self, path: Path, key: tuple[str, str], stamp: tuple[int, int],
              parse: Callable[[Path], Any], default: Any) -> Any:
        try:
            value = parse(path)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not break a page
            log.warning("%s unreadable (%s: %s)", path, type(exc).__name__, exc)
            value = default
        with self._lock:
            self._data[key] = (stamp, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
            self._loading.pop(key, None)
        return value


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(read_bytes(path)))


def _read_text(path: Path) -> str:
    return read_bytes(path).decode("utf-8", errors="replace")


def _state_of(path: Path) -> dict[str, Any]:
    payload = load_checkpoint(path)  # weights_only: no code from the file runs
    return {"run_config": dict(payload.get("run_config") or {}),
            "events": list(payload.get("events") or []),
            "round": int(payload.get("round", 0))}


_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _read_state(path: Path) -> dict[str, Any]:
    """:func:`_state_of` in a helper process: unpickling a long run's checkpoint holds
    the GIL for a few hundred ms, which would stall every page served meanwhile."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(max_workers=1,
                                        mp_context=multiprocessing.get_context("spawn"))
    try:
        return _POOL.submit(_state_of, path).result(timeout=300)
    except BrokenProcessPool:
        with _POOL_LOCK:
            _POOL = None
        raise


def _read_json(path: Path) -> Any:
    import json

    return json.loads(read_bytes(path))


def _resumes(path: Path) -> list[dict[str, Any]]:
    """``resuming run X from its checkpoint after round N`` lines of a server log."""
    text = read_bytes(path, limit=64 << 20).decode("utf-8", errors="replace")
    return [{"round": int(m[2]) + 1, "site": "global", "event": "resumed",
             "reason": f"run {m[1]} resumed from its checkpoint after round {m[2]} "
                       f"({path.name})"}
            for m in _RESUME_RE.finditer(text)]


@dataclass(frozen=True)
class RunInfo:
    """One run directory below RUNS_DIR; ``id`` is its path relative to RUNS_DIR."""

    id: str
    path: Path


class RunsReader:
    """Everything the dashboard shows about the runs below ``runs_dir`` (read-only)."""

    def __init__(self, runs_dir: Path | None, *, cache: FileCache | None = None,
                 clock: Callable[[], float] = time.time, background: bool = True) -> None:
        self.runs_dir = Path(runs_dir).resolve() if runs_dir is not None else None
        self.cache = cache or FileCache()
        self.background = background
        self.clock = clock
        self._listing: tuple[float, list[RunInfo]] = (0.0, [])
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ discovery
    def runs(self, *, max_age: float = 2.0) -> list[RunInfo]:
        """Run directories below RUNS_DIR (re-scanned at most every ``max_age`` s)."""
        if self.runs_dir is None:
            return []
        with self._lock:
            at, listing = self._listing
            if self.clock() - at < max_age and listing:
                return listing
        found: list[RunInfo] = []
        self._scan(self.runs_dir, 0, found)
        found.sort(key=lambda r: r.id)
        with self._lock:
            self._listing = (self.clock(), found)
        return found

    def _scan(self, folder: Path, depth: int, out: list[RunInfo]) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        names = {e.name for e in entries}
        if depth > 0 and any(m in names for m in RUN_MARKERS):
            out.append(RunInfo(folder.relative_to(self.runs_dir).as_posix(), folder))
            return
        if depth == 0 and any(m in names for m in RUN_MARKERS):  # RUNS_DIR is one run
            out.append(RunInfo(".", folder))
            return
        if depth >= MAX_DEPTH:
            return
        for e in sorted(entries, key=lambda e: e.name):
            if (e.is_dir(follow_symlinks=False) and e.name not in SKIP_DIRS
                    and not e.name.startswith((".", "_"))):
                self._scan(Path(e.path), depth + 1, out)

    def run(self, run_id: str) -> RunInfo:
        """The run of that id; :class:`RunNotFound` for anything not listed (no traversal)."""
        for info in self.runs(max_age=0.5):
            if info.id == run_id:
                return info
        for info in self.runs(max_age=0.0):
            if info.id == run_id:
                return info
        raise RunNotFound(f"no run {run_id!r} below {self.runs_dir}")

    # ------------------------------------------------------------------ raw pieces
    def metrics(self, run: RunInfo) -> pd.DataFrame:
        """``metrics.csv`` (an empty frame before the first round)."""
        df = self.cache.get(run.path / "metrics.csv", "csv", _read_csv)
        if df is None:
            return pd.DataFrame(columns=["round", "site"])
        if "dice_lesion" not in df.columns and "dice" in df.columns:
            df = df.assign(dice_lesion=df["dice"])  # runs recorded before the split
        return df

    def stored_state(self, run: RunInfo) -> dict[str, Any]:
        """Run config and events from ``checkpoints/last.pt`` ({} if missing/unreadable).

        Parsed in the background (a long run's checkpoint carries its whole history and
        takes a few hundred ms to unpickle safely): until then the previous round's
        state, or {} (events then come from the flags in ``metrics.csv``)."""
        return self.cache.get(run.path / "checkpoints" / LAST, "state", _read_state, {},
                              background=self.background) or {}

    def progress_lines(self, run: RunInfo) -> list[str]:
        text = self.cache.get(run.path / "progress.log", "text", _read_text, "") or ""
        return [ln for ln in text.splitlines() if PROGRESS_MARKER in ln]

    def study(self, run: RunInfo) -> dict[str, Any]:
        data = self.cache.get(run.path / "study.json", "json", _read_json, {})
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------ views
    def summary(self, run: RunInfo) -> dict[str, Any]:
        """Status, rounds done / total and the newest progress line of one run."""
        df = self.metrics(run)
        lines = self.progress_lines(run)
        rounds_done = int(df["round"].max()) if not df.empty else 0
        total: int | None = None
        if lines and (m := _PROGRESS_RE.search(lines[-1])):
            rounds_done = max(rounds_done, int(m[1]))
            total = int(m[2])
        if total is None:
            cfg = self.stored_state(run).get("run_config", {})
            total = int(cfg["num-server-rounds"]) if "num-server-rounds" in cfg else None
        status, why = self._status(run, df, rounds_done, total)
        glob = df[df["site"].astype(str) == "global"] if not df.empty else df
        last = glob[glob["round"] == rounds_done].to_dict("records") if not glob.empty else []
        headline = {k: _num(last[0].get(k)) for k in ("map50", "dice_lesion", "auc")} \
            if last else {}
        return {
            "id": run.id,
            "name": run.path.name,
            "study_id": self.study(run).get("study-id"),
            "status": status,
            "status_reason": why,
            "round": rounds_done,
            "total_rounds": total,
            "progress_line": lines[-1][lines[-1].find(PROGRESS_MARKER):] if lines else "",
            "updated": self._newest(run),
            "has_final_model": (run.path / FINAL_MODEL).is_file(),
            "has_report": (run.path / "report.md").is_file(),
            "headline": headline,
            # changes whenever the live part of the run page should be re-rendered
            "version": f"{rounds_done}|{status}|{len(self.events(run))}|"
                       f"{self.stored_state(run).get('round', '-')}",
        }

    def _newest(self, run: RunInfo) -> float:
        newest = 0.0
        candidates = [run.path / n for n in (*RUN_MARKERS, FINAL_MODEL, "report.md")]
        candidates.append(run.path / "checkpoints" / LAST)
        logs = run.path / "logs"
        if logs.is_dir():
            candidates += list(logs.glob("*.log"))
        for p in candidates:
            stamp = _stamp(p)
            if stamp is not None:
                newest = max(newest, stamp[0] / 1e9)
        return newest

    def _status(self, run: RunInfo, df: pd.DataFrame, done: int, total: int | None
                ) -> tuple[str, str]:
        final = _stamp(run.path / FINAL_MODEL)
        csv = _stamp(run.path / "metrics.csv")
        if final is not None and (csv is None or final[0] >= csv[0]) and (
                total is None or done >= total):
            return "finished", f"final model written after round {done}"
        newest = self._newest(run)
        longest = 0.0
        if "round-seconds" in df.columns:
            longest = float(pd.to_numeric(df["round-seconds"], errors="coerce").max() or 0.0)
        if not math.isfinite(longest):
            longest = 0.0
        window = max(STALE_SECONDS, 3.0 * longest)
        age = self.clock() - newest
        if age <= window:
            return "running", f"round {done} of {total if total else '?'}; last change " \
                              f"{age:.0f} s ago"
        return "failed", (f"stopped after round {done} of {total if total else '?'}: no file "
                          f"changed for {age / 60:.0f} min and no final model")

    def _derived(self, run: RunInfo, kind: str, build: Callable[[RunInfo], Any]) -> Any:
        """``build(run)``, recomputed only when ``metrics.csv`` changed."""
        csv = run.path / "metrics.csv"
        if not csv.exists():
            return build(run)
        return self.cache.get(csv, kind, lambda _p: build(run), None)

    def sites(self, run: RunInfo) -> list[dict[str, Any]]:
        """One row per site: this round's status, counts over all rounds, metrics, epsilon."""
        return self._derived(run, "sites", self._sites) or []

    def _sites(self, run: RunInfo) -> list[dict[str, Any]]:
        df = self.metrics(run)
        if df.empty:
            return []
        last_round = int(df["round"].max())
        keep = ["round", "site", *[c for c in (*_FLAG_COLUMNS, "num-examples", "train-loss",
                                               "epsilon-spent", "epsilon-target",
                                               *SITE_METRICS) if c in df.columns]]
        by_site: dict[str, list[dict[str, Any]]] = {}
        for rec in df[list(dict.fromkeys(keep))].to_dict("records"):
            if str(rec["site"]) != "global":
                by_site.setdefault(str(rec["site"]), []).append(rec)
        rows = []
        for site in sorted(by_site):
            records = sorted(by_site[site], key=lambda r: int(r["round"]))
            counts = {name: 0 for name in STATUS_NAMES.values()}
            for rec in records:
                for key, n in round_counts([rec]).items():
                    counts[STATUS_NAMES[key]] += n
            latest = records[-1]
            status = "not in this round" if int(latest["round"]) != last_round else next(
                (STATUS_NAMES[k] for k, v in round_counts([latest]).items() if v), "evaluated")
            examples = next((v for rec in reversed(records)
                             if (v := _num(rec.get("num-examples"))) is not None), None)
            eps = [v for rec in records if (v := _num(rec.get("epsilon-spent"))) is not None]
            targets = [v for rec in records if (v := _num(rec.get("epsilon-target"))) is not None]
            rows.append({
                "site": site,
                "status": status,
                "round": int(latest["round"]),
                "counts": counts,
                "num_examples": int(examples) if examples is not None else None,
                "metrics": {k: _num(latest.get(k)) for k in SITE_METRICS},
                "epsilon_spent": max(eps) if eps else None,
                "epsilon_target": targets[-1] if targets else None,
            })
        return rows

    def events(self, run: RunInfo) -> list[dict[str, Any]]:
        """Drops, declines, refusals (from the run checkpoint; rounds it does not cover
        yet from the flags in ``metrics.csv``) and resumes (the server's logs), by round."""
        state = self.stored_state(run)
        upto = int(state.get("round", 0)) if state else 0  # rounds the checkpoint covers
        events = [{"round": e.get("round"), "site": str(e.get("site", "")),
                   "event": str(e.get("event", "")), "reason": str(e.get("reason", ""))}
                  for e in state.get("events", [])]
        df = self.metrics(run)
        later = df[df["round"] > upto] if not df.empty else df
        for flag in _FLAG_COLUMNS:  # rounds newer than the parsed checkpoint
            if flag in later.columns:
                hit = later[pd.to_numeric(later[flag], errors="coerce") > 0]
                for rnd, site in zip(hit["round"], hit["site"].astype(str)):
                    events.append({"round": int(rnd), "site": site, "event": flag,
                                   "reason": "(reason being read from the checkpoint)"})
        logs = run.path / "logs"
        if logs.is_dir():
            for path in sorted(logs.glob("*.log")):
                if "superlink" in path.name:
                    continue
                events += self.cache.get(path, "resumes", _resumes, []) or []
        events.sort(key=lambda e: (int(e.get("round") or 0), e["event"] != "resumed"))
        return events

    def curves(self, run: RunInfo) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """``{metric: {site or 'global': [(round, value), ...]}}`` for the curve metrics."""
        return self._derived(run, "curves", self._curves) or {}

    def _curves(self, run: RunInfo) -> dict[str, dict[str, list[tuple[int, float]]]]:
        df = self.metrics(run)
        out: dict[str, dict[str, list[tuple[int, float]]]] = {}
        if df.empty:
            return out
        for metric in CURVE_METRICS:
            if metric not in df.columns:
                continue
            values = pd.to_numeric(df[metric], errors="coerce")
            series: dict[str, list[tuple[int, float]]] = {}
            for site, rnd, v in zip(df["site"].astype(str), df["round"], values):
                if metric == "epsilon-spent" and site == "global":
                    continue  # the aggregate of the sites' epsilons is no site's budget
                if pd.notna(v) and math.isfinite(float(v)):
                    series.setdefault(site, []).append((int(rnd), float(v)))
            if series:
                out[metric] = {k: sorted(v) for k, v in sorted(series.items(),
                                                             key=lambda kv: kv[0] != "global")}
        return out

    def targets(self, run: RunInfo) -> dict[str, float]:
        """Each site's epsilon target (for the dashed lines of the epsilon chart)."""
        df = self.metrics(run)
        if "epsilon-target" not in df.columns:
            return {}
        out = {}
        for site, v in zip(df["site"].astype(str), pd.to_numeric(df["epsilon-target"],
                                                                  errors="coerce")):
            if pd.notna(v):
                out[site] = float(v)
        return out

    def models(self, run: RunInfo) -> list[dict[str, Any]]:
        """Models of a run the case viewer can load: final, best, then each round."""
        out = []
        for name, label in ((FINAL_MODEL, "final model"), (BEST_MODEL, "best round")):
            if (run.path / name).is_file():
                out.append({"key": name.removesuffix(".pt"), "label": label, "file": name})
        ck = run.path / "checkpoints"
        if ck.is_dir():
            for path in sorted(ck.glob("round_*.pt")):
                digits = path.stem.split("_")[-1]
                if digits.isdigit():
                    out.append({"key": f"round-{int(digits)}",
                                "label": f"round {int(digits)}", "file": f"checkpoints/"
                                                                         f"{path.name}"})
        return out

    def report_markdown(self, run: RunInfo) -> str | None:
        return self.cache.get(run.path / "report.md", "text", _read_text, None)

    def served_file(self, run: RunInfo, name: str) -> Path:
        """A report figure, report or model of the run; :class:`RunNotFound` otherwise."""
        if "/" in name or "\\" in name or name.startswith("."):
            raise RunNotFound(f"{name!r} is not a file of run {run.id}")
        path = run.path / name
        if not (name.endswith(SERVED_SUFFIXES) or name in MODEL_FILES) or not path.is_file():
            raise RunNotFound(f"{name!r} is not a file of run {run.id}")
        return path

    def round_operating_point(self, run: RunInfo, server_round: int) -> Mapping[str, Any] | None:
        """The operating point stored with round ``server_round``'s merged metrics."""
        data = self.cache.get(run.path / "rounds" / f"round_{server_round:03d}.json", "json",
                              _read_json, None)
        op = data.get("operating_point") if isinstance(data, dict) else None
        return op if isinstance(op, Mapping) else None
