"""The dashboard's FastAPI app: pages (Jinja2), JSON API, run files, case viewer.

:func:`create_app` wires a :class:`~endofed.server.dashboard.reader.RunsReader` over
RUNS_DIR (read-only), the case viewer's model cache and, with ``site_dir``, the site
page. Every page has a JSON twin under ``/api``. CSS and JS are the two hand-written
files in ``static/``; charts are inline SVG drawn here: nothing loads from the network.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from endofed.server.dashboard.cases import CaseError, ModelCache, predict_case
from endofed.server.dashboard.charts import line_chart, site_colour
from endofed.server.dashboard.reader import (
    MODEL_FILES,
    RunInfo,
    RunNotFound,
    RunsReader,
)
from endofed.server.dashboard.security import token_middleware
from endofed.server.dashboard.site import site_overview
from endofed.shared.data.layouts._base import MAX_FILE_BYTES
from endofed.shared.metrics.formatting import fmt_value, metric_label

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: Chart titles of the per-round curves.
CHART_TITLES = {"map50": "mAP@0.5", "dice_lesion": "Dice (lesion images)", "auc": "AUC",
                "op_threshold": "Lesion threshold", "train-loss": "Training loss",
                "epsilon-spent": "ε spent per site (dashed: target)"}
#: Report figures shown on the run page, in order.
FIGURES = ("rounds.png", "sites.png", "epsilon.png", "roc.png", "confusion_matrix.png",
           "localization.png")


def run_url(run_id: str, suffix: str = "") -> str:
    """``/runs/<id>[/suffix]`` with the id quoted (it may contain slashes)."""
    return f"/runs/{quote(run_id, safe='/')}" + (f"/{suffix}" if suffix else "")


def _fmt(value: Any, digits: int = 3) -> str:
    return fmt_value(value, digits)


def _when(value: Any) -> str:
    """An ISO 8601 time as ``2026-12-02 10:06:40`` (UTC kept as written; '' for none)."""
    if not value:
        return ""
    text = str(value).replace("T", " ")
    return re.sub(r"(\d{2}:\d{2}:\d{2})(\.\d+)?(\+00:00|Z)?$",
                  lambda m: m[1] + (" UTC" if m[3] else ""), text)


def create_app(
    runs_dir: Path | None,
    *,
    site_dir: Path | None = None,
    token: str | None = None,
    device: torch.device | None = None,
    reader: RunsReader | None = None,
) -> FastAPI:
    """The dashboard app over ``runs_dir`` (and the site page of ``site_dir``).

    ``token``: every request must carry it (see :mod:`.security`); ``None``: no check
    (the command only allows that on loopback).
    """
    reader = reader or RunsReader(runs_dir)
    models = ModelCache(reader, device=device or torch.device("cpu"))
    app = FastAPI(title="EndoFed dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.reader, app.state.models, app.state.site_dir = reader, models, site_dir
    if token:
        app.middleware("http")(token_middleware(token))
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["when"] = _when
    env.globals.update(run_url=run_url, fmt=_fmt, label=metric_label,
                       site_page=site_dir is not None, runs_page=runs_dir is not None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def get_run(run_id: str) -> RunInfo:
        try:
            return reader.run(run_id)
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None

    def page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx)

    # ------------------------------------------------------------------ pieces
    def charts(run: RunInfo) -> list[dict[str, str]]:
        curves = reader.curves(run)
        sites = sorted({s for series in curves.values() for s in series if s != "global"})
        colours = {s: site_colour(i) for i, s in enumerate(sites)}
        targets = reader.targets(run)
        out = []
        for metric, series in curves.items():
            hl = {s: t for s, t in targets.items() if s in series} \
                if metric == "epsilon-spent" else None
            out.append({"metric": metric, "svg": line_chart(
                CHART_TITLES.get(metric, metric_label(metric)), series, metric=metric,
                hlines=hl, colours=colours)})
        return out

    def legend(run: RunInfo) -> list[tuple[str, str]]:
        sites = sorted({s for series in reader.curves(run).values() for s in series
                        if s != "global"})
        return [("global", "#111")] + [(s, site_colour(i)) for i, s in enumerate(sites)]

    def live_context(run: RunInfo) -> dict[str, Any]:
        return {"run": reader.summary(run), "sites": reader.sites(run),
                "events": reader.events(run), "charts": charts(run), "legend": legend(run),
                "figures": [f for f in FIGURES if (run.path / f).is_file()],
                "models": reader.models(run)}

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        runs = [reader.summary(r) for r in reader.runs()]
        return page(request, "index.html", runs=runs,
                    runs_dir=str(reader.runs_dir) if reader.runs_dir else None)

    @app.get("/cases", response_class=HTMLResponse)
    def cases(request: Request, run: str | None = None, model: str | None = None
              ) -> HTMLResponse:
        runs = [r for r in reader.runs() if reader.models(r)]
        chosen = next((r for r in runs if r.id == run), runs[0] if runs else None)
        options = reader.models(chosen) if chosen else []
        return page(request, "cases.html", runs=[r.id for r in runs],
                    run_id=chosen.id if chosen else None, models=options,
                    model=model or (options[0]["key"] if options else None))

    @app.get("/site", response_class=HTMLResponse)
    def site(request: Request) -> HTMLResponse:
        if site_dir is None:
            raise HTTPException(404, "no site state dir: start with --site STATE_DIR")
        return page(request, "site.html", site=site_overview(site_dir))

    @app.get("/runs/{run_id:path}/live", response_class=HTMLResponse)
    def run_live(request: Request, run_id: str) -> HTMLResponse:
        return page(request, "_live.html", **live_context(get_run(run_id)))

    @app.get("/runs/{run_id:path}/report", response_class=HTMLResponse)
    def run_report(request: Request, run_id: str) -> HTMLResponse:
        run = get_run(run_id)
        text = reader.report_markdown(run)
        if text is None:
            raise HTTPException(404, f"run {run_id} has no report.md yet")
        return page(request, "report.html", run=reader.summary(run),
                    html=render_markdown(text, run_url(run.id, "files")))

    @app.get("/runs/{run_id:path}/files/{name}")
    def run_file(run_id: str, name: str) -> FileResponse:
        run = get_run(run_id)
        try:
            path = reader.served_file(run, name)
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        if name in MODEL_FILES:
            dl = f"{run.path.name}-{name}"
            return FileResponse(path, media_type="application/octet-stream", filename=dl)
        media = {".png": "image/png", ".svg": "image/svg+xml",
                 ".md": "text/markdown; charset=utf-8"}[path.suffix]
        return FileResponse(path, media_type=media)

    @app.get("/runs/{run_id:path}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        run = get_run(run_id)
        return page(request, "run.html", **live_context(run))

    # ------------------------------------------------------------------ JSON API
    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "runs_dir": str(reader.runs_dir) if reader.runs_dir else None,
                "site_dir": str(site_dir) if site_dir else None}

    @app.get("/api/runs")
    def api_runs() -> list[dict[str, Any]]:
        return [reader.summary(r) for r in reader.runs()]

    @app.get("/api/runs/{run_id:path}/summary")
    def api_summary(run_id: str) -> dict[str, Any]:
        return reader.summary(get_run(run_id))

    @app.get("/api/runs/{run_id:path}/sites")
    def api_sites(run_id: str) -> list[dict[str, Any]]:
        return reader.sites(get_run(run_id))

    @app.get("/api/runs/{run_id:path}/events")
    def api_events(run_id: str) -> list[dict[str, Any]]:
        return reader.events(get_run(run_id))

    @app.get("/api/runs/{run_id:path}/metrics")
    def api_metrics(run_id: str) -> dict[str, Any]:
        run = get_run(run_id)
        return {"curves": {m: {s: [list(p) for p in pts] for s, pts in series.items()}
                           for m, series in reader.curves(run).items()},
                "epsilon_targets": reader.targets(run)}

    @app.get("/api/runs/{run_id:path}/charts/{metric}.svg")
    def api_chart(run_id: str, metric: str) -> Response:
        run = get_run(run_id)
        chart = next((c for c in charts(run) if c["metric"] == metric), None)
        if chart is None:
            raise HTTPException(404, f"run {run_id} has no metric {metric!r}")
        return Response(chart["svg"], media_type="image/svg+xml")

    @app.get("/api/runs/{run_id:path}/models")
    def api_models(run_id: str) -> list[dict[str, Any]]:
        run = get_run(run_id)
        return [{**m, "download": run_url(run.id, f"files/{m['file']}")
                 if m["file"] in MODEL_FILES else None} for m in reader.models(run)]

    @app.get("/api/runs/{run_id:path}/report")
    def api_report(run_id: str) -> dict[str, Any]:
        run = get_run(run_id)
        text = reader.report_markdown(run)
        return {"markdown": text, "figures": [run_url(run.id, f"files/{f}") for f in FIGURES
                                              if (run.path / f).is_file()]}

    @app.post("/api/predict")
    async def api_predict(request: Request, run: str, model: str) -> JSONResponse:
        info = get_run(run)
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_FILE_BYTES:
            raise HTTPException(413, f"upload of {size} bytes is over the {MAX_FILE_BYTES} "
                                     "byte limit")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_FILE_BYTES:
                raise HTTPException(413, f"upload over the {MAX_FILE_BYTES} byte limit")
        filename = request.headers.get("x-filename", "")
        try:
            result = await run_in_threadpool(predict_case, models, info, model, bytes(data),
                                             filename)
        except CaseError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse(result)

    @app.get("/api/site")
    def api_site() -> dict[str, Any]:
        if site_dir is None:
            raise HTTPException(404, "no site state dir: start with --site STATE_DIR")
        return site_overview(site_dir, limit=None)

    return app


_IMG_SRC = re.compile(r'(<img [^>]*src=")([^":/]+\.(?:png|svg))"')


def render_markdown(text: str, files_url: str) -> str:
    """``report.md`` as HTML (tables on, raw HTML off); figures served from ``files_url``."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return _IMG_SRC.sub(lambda m: f'{m[1]}{files_url}/{quote(m[2])}"', md.render(text))
