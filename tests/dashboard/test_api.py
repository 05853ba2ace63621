"""Every JSON endpoint and file route of the dashboard, through FastAPI's test client,
on run dirs written by the server's own writers (expected values from what was written)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from endofed.server.dashboard import create_app
from endofed.server.dashboard.reader import RunsReader
from endofed.shared.inference import Predictor
from tests.dashboard.conftest import dicom_bytes, png_bytes
from tests.dashboard.fake_run import FakeRun

RUN = "study-a/fake"


@pytest.fixture(scope="module")
def client(runs_dir: Path, state_dir: Path) -> TestClient:
    return TestClient(create_app(runs_dir, site_dir=state_dir))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*")}


def test_runs_list_and_summary(client: TestClient) -> None:
    runs = client.get("/api/runs").json()
    assert [r["id"] for r in runs] == [RUN]  # _state, logs... are not runs
    s = client.get(f"/api/runs/{RUN}/summary").json()
    assert (s["status"], s["round"], s["total_rounds"]) == ("finished", 3, 3)
    assert s["study_id"] == "study-fake" and s["has_final_model"] and s["has_report"]
    assert s["progress_line"].startswith("EndoFed round 3/3: 2 sites trained, 1 declined")


def test_sites_table_counts_declines_and_epsilon(client: TestClient, runs_dir: Path) -> None:
    sites = {s["site"]: s for s in client.get(f"/api/runs/{RUN}/sites").json()}
    assert list(sites) == ["site_1", "site_2", "site_3"]
    assert sites["site_3"]["status"] == "declined"
    assert sites["site_3"]["counts"] == {"replied": 0, "declined": 3, "refused": 0, "failed": 0}
    assert sites["site_1"]["counts"]["replied"] == 3
    df = pd.read_csv(runs_dir / RUN / "metrics.csv")
    last = df[(df.site == "site_2") & (df["round"] == 3)].iloc[0]
    assert sites["site_2"]["num_examples"] == int(last["num-examples"]) == 24
    assert sites["site_2"]["metrics"]["map50"] == pytest.approx(last["map50"])
    assert sites["site_2"]["epsilon_spent"] == pytest.approx(8.0 * 3 / 4)
    assert sites["site_2"]["epsilon_target"] == 8.0
    assert sites["site_3"]["epsilon_spent"] is None


def test_events_metrics_and_charts(client: TestClient, runs_dir: Path) -> None:
    events = client.get(f"/api/runs/{RUN}/events").json()
    assert [(e["round"], e["site"], e["event"]) for e in events] == [
        (r, "site_3", "declined") for r in (1, 2, 3)]
    curves = client.get(f"/api/runs/{RUN}/metrics").json()
    df = pd.read_csv(runs_dir / RUN / "metrics.csv")
    glob = df[df.site == "global"].sort_values("round")
    assert [v for _, v in curves["curves"]["map50"]["global"]] == pytest.approx(
        glob["map50"].tolist())
    assert set(curves["curves"]["map50"]) == {"global", "site_1", "site_2"}
    assert curves["epsilon_targets"] == {"site_1": 8.0, "site_2": 8.0, "site_3": 8.0}
    svg = client.get(f"/api/runs/{RUN}/charts/map50.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.count("<polyline") == 3
    eps = client.get(f"/api/runs/{RUN}/charts/epsilon-spent.svg").text
    assert eps.count('class="target"') == 2  # the target of each site that spent, dashed
    assert client.get(f"/api/runs/{RUN}/charts/nope.svg").status_code == 404


def test_models_report_files_and_download(client: TestClient, runs_dir: Path) -> None:
    models = client.get(f"/api/runs/{RUN}/models").json()
    assert [m["key"] for m in models] == ["final_model", "round-1", "round-2", "round-3"]
    final = client.get(models[0]["download"])
    assert final.status_code == 200
    assert final.content == (runs_dir / RUN / "final_model.pt").read_bytes()
    assert "attachment" in final.headers["content-disposition"]
    report = client.get(f"/api/runs/{RUN}/report").json()
    assert report["markdown"].startswith("# EndoFed run fake")
    assert f"/runs/{RUN}/files/rounds.png" in report["figures"]
    png = client.get(f"/runs/{RUN}/files/rounds.png")
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    html = client.get(f"/runs/{RUN}/report").text
    assert f'src="/runs/{RUN}/files/rounds.png"' in html and "<table>" in html
    for bad in ("metrics.csv", "..%2F..%2Fetc%2Fpasswd", "checkpoints", "study.json"):
        assert client.get(f"/runs/{RUN}/files/{bad}").status_code == 404, bad
    assert client.get("/api/runs/nope/summary").status_code == 404
    assert client.get("/runs/..%2F..%2F/summary").status_code == 404


def test_pages_render(client: TestClient) -> None:
    for url in ("/", f"/runs/{RUN}", f"/runs/{RUN}/live", "/cases", "/site", "/api/health"):
        r = client.get(url)
        assert r.status_code == 200, url
    page = client.get(f"/runs/{RUN}").text
    assert 'id="round-counter">3<' in page and 'data-site="site_3" data-status="declined"' in page
    assert "https://" not in page and "http://" not in page  # offline: nothing external


def test_predict_png_matches_the_predictor(client: TestClient, runs_dir: Path) -> None:
    data = png_bytes(seed=3)
    r = client.post(f"/api/predict?run={RUN}&model=final_model", content=data,
                    headers={"X-Filename": "case.png"})
    assert r.status_code == 200, r.text
    got = r.json()
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    ref = Predictor.from_checkpoint(runs_dir / RUN / "final_model.pt",
                                    device=torch.device("cpu")).predict(rgb)
    assert got["lesion_probability"] == pytest.approx(ref.lesion_probability, abs=1e-4)
    assert got["lesion"] == (ref.lesion_probability > 0.5) and got["threshold"] == 0.5
    assert got["verdict"].startswith("Lesion found" if got["lesion"] else "No lesion found")
    assert (got["width"], got["height"]) == (128, 96)
    assert got["view"].startswith("data:image/png;base64,")


def test_predict_dicom_round_model_and_errors(client: TestClient) -> None:
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(png_bytes(seed=4), np.uint8),
                                    cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    png = client.post(f"/api/predict?run={RUN}&model=round-2", content=png_bytes(seed=4)).json()
    dcm = client.post(f"/api/predict?run={RUN}&model=round-2", content=dicom_bytes(rgb),
                      headers={"X-Filename": "case.dcm"})
    assert dcm.status_code == 200, dcm.text
    # the same pixels as DICOM and as PNG give the same prediction
    assert dcm.json()["lesion_probability"] == pytest.approx(png["lesion_probability"])
    assert dcm.json()["provenance"]["model"]["round"] == 2
    bad = client.post(f"/api/predict?run={RUN}&model=final_model", content=b"not an image")
    assert bad.status_code == 400 and "not a decodable image" in bad.json()["detail"]
    ct = dicom_bytes(rgb).replace(b"1.2.840.10008.5.1.4.1.1.77.1.1",
                                  b"1.2.840.10008.5.1.4.1.1.2\0\0\0\0\0")
    refused = client.post(f"/api/predict?run={RUN}&model=final_model", content=ct,
                          headers={"X-Filename": "ct.dcm"})
    assert refused.status_code == 400 and "not supported" in refused.json()["detail"]
    assert client.post(f"/api/predict?run={RUN}&model=round-9",
                       content=png_bytes()).status_code == 400
    assert client.post("/api/predict?run=nope&model=final_model",
                       content=png_bytes()).status_code == 404


def test_site_api(client: TestClient) -> None:
    site = client.get("/api/site").json()
    (ledger,) = site["ledgers"]["items"]
    assert ledger["site"] == "hosp-1" and ledger["epsilon_target"] == 8.0
    (study,) = ledger["runs"]
    assert (study["study"], study["rounds"], study["done"], study["steps"]) == (
        "sid-study-a", 2, 2, 40)
    assert 0 < ledger["epsilon_spent"] < 8.0
    assert site["approvals"]["available"]
    assert site["approvals"]["items"][0]["ident"] == "ab" * 32
    audit = site["audit"]
    assert audit["available"] and audit["total"] == 3 and audit["verification"]["ok"]
    assert [e["round"] for e in audit["entries"]] == [3, 2, 1]  # newest first


def test_site_page_without_the_files(tmp_path: Path) -> None:
    c = TestClient(create_app(None, site_dir=tmp_path))
    page = c.get("/site").text
    assert page.count("Not available") == 3
    assert TestClient(create_app(tmp_path)).get("/api/site").status_code == 404


def test_dashboard_never_writes_the_run_dir(client: TestClient, runs_dir: Path) -> None:
    before = _snapshot(runs_dir)
    for url in ("/", f"/runs/{RUN}", f"/runs/{RUN}/report", f"/api/runs/{RUN}/sites",
                f"/api/runs/{RUN}/events", f"/runs/{RUN}/files/final_model.pt"):
        client.get(url)
    client.post(f"/api/predict?run={RUN}&model=round-1", content=png_bytes())
    assert _snapshot(runs_dir) == before


def test_status_running_then_failed_from_mtimes(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "r", total=4, sites=2, epsilon=None)
    run.add_round()
    now = [max(p.stat().st_mtime for p in (tmp_path / "r").rglob("*"))]
    reader = RunsReader(tmp_path, clock=lambda: now[0])
    info = reader.run("r")
    assert reader.summary(info)["status"] == "running"
    now[0] += 3600  # nothing changed for an hour, no final model
    assert reader.summary(info)["status"] == "failed"
    run.add_round()
    run.finish(report=False)
    now[0] = max(p.stat().st_mtime for p in (tmp_path / "r").rglob("*"))
    s = reader.summary(info)
    assert (s["status"], s["round"]) == ("running", 2)  # final model but 2 of 4 rounds
    os.utime(tmp_path / "r" / "final_model.pt")


def test_resume_events_from_the_server_log(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "r", total=3, sites=2, epsilon=None)
    run.add_round()
    (tmp_path / "r" / "logs").mkdir()
    (tmp_path / "r" / "logs" / "run-2.stdout.log").write_text(
        "INFO endofed.server.loop: resuming run r from its checkpoint after round 1\n")
    reader = RunsReader(tmp_path)
    events = reader.events(reader.run("r"))
    assert events == [{"round": 2, "site": "global", "event": "resumed",
                       "reason": "run r resumed from its checkpoint after round 1 "
                                 "(run-2.stdout.log)"}]


def test_model_cache_is_bounded_and_reuses_models(client: TestClient) -> None:
    cache = client.app.state.models
    run = client.app.state.reader.run(RUN)
    first = cache.predictor(run, "final_model")
    assert cache.predictor(run, "final_model") is first  # loaded once
    for key in ("round-1", "round-2", "round-3"):
        cache.predictor(run, key)
    assert len(cache) == cache.max_models == 3
    assert cache.predictor(run, "final_model") is not first  # the oldest was dropped
