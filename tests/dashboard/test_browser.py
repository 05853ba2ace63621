"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver).

Fast tests run on run dirs written with the server's own writers (one advances while
the page is open); the slow one opens the dashboard during a real Flower simulation in
which one DP site declines because its budget is spent.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from endofed.server.dashboard import create_app
from tests.dashboard.conftest import LiveServer, png_bytes
from tests.dashboard.fake_run import FakeRun

RUN = "study-a/fake"


def _text(driver, css: str) -> str:  # noqa: ANN001 - a selenium WebDriver
    return driver.find_element(By.CSS_SELECTOR, css).text


def _wait_text(driver, css: str, pred, timeout: float = 60) -> str:  # noqa: ANN001
    def ok(d):  # noqa: ANN001, ANN202
        try:
            text = _text(d, css)
        except Exception:  # noqa: BLE001 - element replaced while polling
            return False
        return text if pred(text) else False

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(ok)


def _image_loaded(driver, css: str) -> bool:  # noqa: ANN001
    return bool(driver.execute_script(
        "const i = document.querySelector(arguments[0]); return i && i.complete && "
        "i.naturalWidth > 0;", css))


def test_round_counter_advances_while_the_run_goes_on(browser, tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "live", total=4, sites=3, declined=("site_2",))
    run.add_round()
    with LiveServer(create_app(tmp_path)) as srv:
        browser.get(f"{srv.url}/runs/live")
        assert _text(browser, "#round-counter") == "1"
        assert _text(browser, "#run-status") == "running"

        def rounds() -> None:
            for _ in range(2):
                time.sleep(2.5)  # longer than the page's 2 s poll, so it sees each round
                run.add_round()

        writer = threading.Thread(target=rounds)
        writer.start()
        _wait_text(browser, "#round-counter", lambda t: t == "2", timeout=30)
        _wait_text(browser, "#round-counter", lambda t: t == "3", timeout=30)
        writer.join()
        # the live part (charts, site table, events) was re-rendered for round 3
        _wait_text(browser, "#site-table h2", lambda t: "round 3" in t)
        WebDriverWait(browser, 30).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr")) == 3)
        assert _text(browser, "#status-reason").startswith("round 3 of 4")
        run.add_round()
        run.finish(report=False)
        _wait_text(browser, "#run-status", lambda t: t == "finished", timeout=30)
        assert _text(browser, "#round-counter") == "4"
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "download-final"))


def test_a_request_that_never_answers_does_not_stop_the_live_page(browser, tmp_path) -> None:
    """The page polls with one request at a time; before, a summary request that never
    answered (a stalled proxy, a dashboard restarted mid-request) froze it for good."""
    run = FakeRun(tmp_path / "live", total=3, sites=2)
    run.add_round()
    app = create_app(tmp_path)
    stall, release = threading.Event(), threading.Event()

    @app.middleware("http")
    async def hang_once(request, call_next):  # noqa: ANN001, ANN202
        if stall.is_set() and request.url.path.endswith("/summary"):
            stall.clear()
            while not release.is_set():  # held until the test ends
                await asyncio.sleep(0.1)
        return await call_next(request)

    with LiveServer(app) as srv:
        try:
            browser.get(f"{srv.url}/runs/live")
            assert _text(browser, "#round-counter") == "1"
            stall.set()
            WebDriverWait(browser, 10, poll_frequency=0.1).until(lambda _: not stall.is_set())
            run.add_round()  # the page's request is hanging now
            _wait_text(browser, "#round-counter", lambda t: t == "2", timeout=40)
        finally:
            release.set()


def test_finished_run_shows_the_declined_site_and_plots(browser, runs_dir: Path) -> None:
    with LiveServer(create_app(runs_dir)) as srv:
        browser.get(srv.url + "/")
        row = browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{RUN}"]')
        assert "finished" in row.text and "3 / 3" in row.text
        row.find_element(By.TAG_NAME, "a").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "sites"))
        declined = browser.find_element(By.CSS_SELECTOR, 'tr[data-site="site_3"]')
        cells = [c.text for c in declined.find_elements(By.TAG_NAME, "td")]
        assert cells[:6] == ["site_3", "declined", "0", "3", "0", "0"]
        site1 = [c.text for c in browser.find_elements(By.CSS_SELECTOR,
                                                      'tr[data-site="site_1"] td')]
        assert site1[1] == "replied" and site1[-1].startswith("6.00 / 8.00")
        charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
        assert {c.get_attribute("data-metric") for c in charts} >= {"map50", "epsilon-spent"}
        assert browser.find_elements(By.CSS_SELECTOR, 'svg.chart polyline[data-series="global"]')
        assert _image_loaded(browser, '.figures img[alt="rounds.png"]')
        assert browser.find_element(By.ID, "download-final").get_attribute("href").endswith(
            f"/runs/{RUN}/files/final_model.pt")


def test_case_viewer_uploads_an_image_and_shows_the_verdict(browser, runs_dir: Path,
                                                           tmp_path: Path) -> None:
    data = png_bytes(seed=7, size=(120, 160))
    image = tmp_path / "case.png"  # the browser reads it; the server gets bytes only
    image.write_bytes(data)
    app = create_app(runs_dir)
    expected = TestClient(app).post(f"/api/predict?run={RUN}&model=round-2",
                                    content=data).json()
    with LiveServer(app) as srv:
        browser.get(f"{srv.url}/cases?run={RUN}")
        Select(browser.find_element(By.ID, "case-model")).select_by_value("round-2")
        browser.find_element(By.ID, "case-file").send_keys(str(image))
        browser.find_element(By.ID, "case-submit").click()
        verdict = _wait_text(browser, "#case-verdict", bool, timeout=120)
        assert verdict == expected["verdict"]
        assert verdict.startswith(("Lesion found", "No lesion found"))
        css = browser.find_element(By.ID, "case-verdict").get_attribute("class")
        assert css == ("verdict lesion" if expected["lesion"] else "verdict clear")
        WebDriverWait(browser, 20).until(lambda d: _image_loaded(d, "#case-view"))
        details = _text(browser, "#case-details")
        assert "case.png (160 × 120 px)" in details and "round-2" in details
    assert not list(runs_dir.rglob("case.png"))


def test_site_page(browser, state_dir: Path) -> None:
    with LiveServer(create_app(None, site_dir=state_dir)) as srv:
        browser.get(srv.url + "/site")
        assert "Site hosp-1" in _text(browser, "#ledger h3")
        rows = browser.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == ["2"]
        assert "chain verified" in _text(browser, "#audit")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")) == 3
        assert "active" in _text(browser, "#approvals")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_simulation_live_then_declined_dp_site(browser, tmp_path: Path) -> None:
    """A real Flower simulation (2 sites under DP, site_2's budget spent beforehand)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    # The simulation's log goes to a file: a pipe nobody reads fills up (64 KiB) and
    # blocks the simulation mid-run.
    log_path = tmp_path / "dp_run.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dp_run.py")),
                             str(runs), "3"], stdout=log, stderr=subprocess.STDOUT, text=True)

    def log_tail() -> str:
        return "simulation log (tail):\n" + log_path.read_text(errors="replace")[-6000:]

    try:
        with LiveServer(create_app(runs)) as srv:
            deadline = time.monotonic() + 600
            while not (runs / "dp-declined" / "study.json").exists():
                assert proc.poll() is None, log_tail()
                assert time.monotonic() < deadline
                time.sleep(1)
            browser.get(f"{srv.url}/runs/dp-declined")
            first = int(_wait_text(browser, "#round-counter", lambda t: t in ("0", "1"), 600))
            # Tiny rounds can finish between two 2 s polls, so the page may show 1 then 3:
            # what matters is that it advanced while we watched, not that it showed "2".
            later = int(_wait_text(browser, "#round-counter",
                                   lambda t: t.isdigit() and int(t) > first, 900))
            assert first < later <= 3
            assert proc.wait(timeout=900) == 0, log_tail()
            _wait_text(browser, "#run-status", lambda t: t == "finished", 60)
            browser.refresh()  # the finished page, not a live fragment being swapped in
            declined = [c.text for c in WebDriverWait(browser, 30).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-site="site_2"] td'))]
            assert declined[1] == "declined" and declined[3] == "3"
            trained = [c.text for c in browser.find_elements(
                By.CSS_SELECTOR, 'tr[data-site="site_1"] td')]
            assert trained[1] == "replied" and trained[-1].endswith("/ 8.00")
            assert browser.find_elements(By.CSS_SELECTOR, "#events tr.ev-declined")
            assert browser.find_elements(By.CSS_SELECTOR, 'svg.chart[data-metric="map50"]')
            WebDriverWait(browser, 30).until(
                lambda d: _image_loaded(d, '.figures img[alt="rounds.png"]'))
    except BaseException:
        print(log_tail())
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
