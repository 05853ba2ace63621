"""Screenshots of the dashboard's pages for docs/img/ (not a test; run by hand).

    python tests/dashboard/make_screenshots.py RUNS_DIR STATE_DIR IMAGE [--out docs/img]

RUNS_DIR: runs to show (the run page shows the first with a final model, or --run);
STATE_DIR: a SuperNode state dir for the site page; IMAGE: uploaded in the case viewer.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _shoot(driver, path: Path, width: int = 1280, max_height: int = 3600) -> None:  # noqa: ANN001
    from PIL import Image

    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 20, max_height))
    png = driver.get_screenshot_as_png()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(path, img.size, path.stat().st_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, metavar="RUNS_DIR", help="runs folder")
    ap.add_argument("state", type=Path, metavar="STATE_DIR", help="site state dir")
    ap.add_argument("image", type=Path, metavar="IMAGE", help="image for the case viewer")
    ap.add_argument("--run", default=None, metavar="ID", help="run of the run page")
    ap.add_argument("--model", default="final_model", metavar="KEY", help="case viewer model")
    ap.add_argument("--out", type=Path, default=Path("docs/img"), metavar="DIR",
                    help="output folder")
    args = ap.parse_args()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from endofed.server.dashboard import create_app
    from endofed.server.dashboard.reader import RunsReader
    from tests.dashboard.conftest import LiveServer, make_driver

    reader = RunsReader(args.runs)
    run = args.run or next(r.id for r in reader.runs() if (r.path / "final_model.pt").exists())
    args.out.mkdir(parents=True, exist_ok=True)
    driver = make_driver()
    try:
        with LiveServer(create_app(args.runs, site_dir=args.state)) as srv:
            driver.get(f"{srv.url}/runs/{run}")
            for _ in range(120):  # the checkpoint's events are read in the background
                time.sleep(1)
                if "being read" not in driver.find_element(By.ID, "live").text:
                    break
            time.sleep(2)
            _shoot(driver, args.out / "dashboard-run.png")
            driver.set_window_size(1280, 1000)
            driver.get(f"{srv.url}/cases?run={run}")
            Select(driver.find_element(By.ID, "case-model")).select_by_value(args.model)
            driver.find_element(By.ID, "case-file").send_keys(str(args.image.resolve()))
            driver.find_element(By.ID, "case-submit").click()
            WebDriverWait(driver, 300).until(
                lambda d: d.find_element(By.ID, "case-verdict").text)
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "return document.getElementById('case-view').naturalWidth > 0"))
            _shoot(driver, args.out / "dashboard-cases.png")
            driver.set_window_size(1280, 1000)
            driver.get(f"{srv.url}/site")
            _shoot(driver, args.out / "dashboard-site.png")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
