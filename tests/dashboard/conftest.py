"""Fixtures of the dashboard tests: run dirs written with the server's writers, a site
state dir written with the privacy package's own classes, a real uvicorn server on
loopback and a real headless Chromium (Debian's chromium + chromium-driver)."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import uvicorn

from tests.dashboard.fake_run import finished_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with one finished run (study-a/fake: site_3 declines for budget)."""
    root = tmp_path_factory.mktemp("runs")
    finished_run(root / "study-a" / "fake", rounds=3, sites=3, declined=("site_3",))
    return root


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SuperNode state dir: one ledger with a study's rounds, approvals, audit trail."""
    from endofed.privacy.ledger import LEDGER_NAME, PrivacyLedger

    root = tmp_path_factory.mktemp("state")
    ledger = PrivacyLedger(root / "hosp-1" / LEDGER_NAME, site="hosp-1", epsilon_target=8.0,
                           delta=1e-5)
    for r in (1, 2):
        entry, _ = ledger.reserve(run="study-a", round=r, noise_multiplier=1.1,
                                  sample_rate=0.1, steps=20, study="sid-study-a")
        ledger.complete(entry, steps=20)
    try:
        from endofed.privacy.approvals import ApprovalStore
    except ImportError:
        pass
    else:
        ApprovalStore(root).approve_hash("ab" * 32, note="EndoFed 0.1.0 study app",
                                         source="endofed-0.1.0.fab")
    try:
        from endofed.privacy.audit_trail import AuditTrail
    except ImportError:
        pass
    else:
        trail = AuditTrail(root / "audit-trail.jsonl")
        for r, outcome in ((1, "replied"), (2, "replied"), (3, "declined")):
            trail.append({"app_hash": "ab" * 32, "run_id": 7, "study_id": "sid-study-a",
                          "round": r, "message_type": "train", "node_id": 1,
                          "sent_bytes": 1000 * r, "epsilon_spent": 0.5 * r,
                          "outcome": outcome, "reason": "" if outcome == "replied"
                          else "privacy budget exhausted"})
    return root


def png_bytes(seed: int = 0, size: tuple[int, int] = (96, 128)) -> bytes:
    """A synthetic endoscopy-like frame with a red blob, PNG-encoded."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.clip(rng.normal(110, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 5, (40, 40, 200), -1)  # BGR: red
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def dicom_bytes(rgb: np.ndarray) -> bytes:
    """An uncompressed RGB VL Endoscopic DICOM file of ``rgb``, in memory."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from endofed.shared.data.dicom import SOP_CLASSES

    sop = next(iter(SOP_CLASSES))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "ES"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.PixelData = np.ascontiguousarray(rgb, np.uint8).tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The app served by a real uvicorn on loopback, in a thread."""

    def __init__(self, app) -> None:  # noqa: ANN001 - a FastAPI app
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_driver():  # -> selenium WebDriver
    """Headless Chromium through chromedriver (Debian's packages)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Chromium (``make test`` installs chromium + chromium-driver when missing)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: run `make browser` (apt-get "
                    "install chromium chromium-driver)")
    driver = make_driver()
    try:
        yield driver
    finally:
        driver.quit()


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
