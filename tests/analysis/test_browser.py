"""The report and the live optuna-dashboard as a person sees them: headless Chromium, driven by
Selenium through the system chromedriver (no browser is downloaded).

Skipped, saying why, where Chromium or chromedriver is not installed (`bash scripts/setup.sh --tests`
as root installs Debian's `chromium` and `chromium-driver`, so CI runs it). Screenshots are written
under $KDSWEEP_TEST_ARTIFACTS if set, else the test's tmp folder, and their paths printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdsweep.analysis.report import analyze
from tests.analysis.conftest import SPACE
from kdsweep.sweeps.space import load_space
from kdsweep.sweeps.study import study_name

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the `dev` extra has it)")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.ray,  # the session sweep is built with Ray
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="no chromium / chromedriver binary: run once, as root, `apt-get install chromium "
                              "chromium-driver` (bash scripts/setup.sh --tests does it when run as root)"),
]
# A closed network and a container: no sandbox, GPU, QUIC, first-run or background traffic.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")
NO_IMAGE = "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"


@pytest.fixture
def browser(tmp_path):
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    root = Path(os.environ.get("KDSWEEP_TEST_ARTIFACTS") or tmp_path) / "screenshots"
    root.mkdir(parents=True, exist_ok=True)
    return root


def screenshot(driver, path: Path, width: int = 1400) -> Path:
    """The whole page at `width` px: the window grows to the document's height first (at most 20,000 px)."""
    driver.set_window_size(width, 1000)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(width, min(max(int(height) + 100, 1000), 20_000))
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, path
    print(f"screenshot: {path}")
    return path


def test_report_reads_in_a_browser(sweep, browser, shots, tmp_path):
    result = analyze(sweep, tmp_path / "analysis")
    browser.get(result["html"].as_uri())
    text = browser.find_element(By.TAG_NAME, "body").text
    assert f"Sweep {sweep.name}" in text
    # every table is there, with its title, and shows numbers, not only "missing"
    titles = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    for name in ("Scale x enhancement (chosen on val, reported on test)", "Warnings", "Configs to train",
                 "Pareto view: val ppl vs val ECE of completed search trials (val split)", "Plots"):
        assert name in titles, (name, titles)
    assert any(t.startswith("Tuned arm vs tuned baseline: paired difference") for t in titles)
    assert any(t.startswith("Enhancement on vs off at the same config: paired effect") for t in titles)
    tables = browser.find_elements(By.TAG_NAME, "table")
    assert len(tables) == 1 + len(result["tables"])  # configs + every written table
    assert all(t.is_displayed() and t.find_elements(By.TAG_NAME, "td") for t in tables)
    verdicts = browser.find_element(By.XPATH, "//h2[starts-with(., 'Tuned arm vs tuned baseline')]/following::table[1]")
    assert "inconclusive" in verdicts.text or "better" in verdicts.text or "worse" in verdicts.text
    assert result["split"] in text and "chosen on val" in text.lower()
    # no broken images: each plot loaded and has pixels, and a caption that says what it shows
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == len(result["plots"]) and browser.execute_script(NO_IMAGE) == []
    assert all(img.get_property("naturalWidth") > 300 for img in images)
    captions = [c.text for c in browser.find_elements(By.TAG_NAME, "figcaption")]
    assert len(captions) == len(images) and all(len(c) > 80 for c in captions)
    # it leads with the answer: the first section after the warnings holds every scale's ablation figure
    # (each arm's test ppl_ratio and its verdict), before any table
    first_h2 = [t for t in titles if t != "Warnings"][0]
    assert first_h2.startswith("Answer:"), titles
    figures = [f.get_attribute("id") for f in browser.find_elements(By.TAG_NAME, "figure")]
    assert figures[:len(SPACE["scales"])] == [f"ablation_{s}" for s in SPACE["scales"]], figures
    first_table = browser.find_element(By.TAG_NAME, "table")
    first_figure = browser.find_element(By.TAG_NAME, "figure")
    assert browser.execute_script("return arguments[0].compareDocumentPosition(arguments[1]) & 4",
                                  first_figure, first_table)  # the figure comes first
    # the split note is given once (the Data line), not under every table
    assert text.count(result["split"]) == 1
    # the warning names this sweep and its storage, not a placeholder
    assert f"kdsweep sweep replicate {sweep.name} --seeds 3 --storage {sweep.root.parent}" in text
    # the answer as a reader sees it (the README's picture, docs/img/report.png): its first figure, 1200 x 740
    browser.set_window_size(1200, 740)
    answer = browser.find_element(By.XPATH, "//h2[starts-with(., 'Answer:')]")
    browser.execute_script("arguments[0].scrollIntoView(true)", answer)
    browser.save_screenshot(str(shots / "report.png"))
    assert (shots / "report.png").stat().st_size > 10_000
    print(f"screenshot: {shots / 'report.png'}")
    for width in (1400, 800):  # no horizontal scroll of the page: wide tables scroll in their own box
        path = screenshot(browser, shots / f"report_index_{width}.png", width)
        scroll = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll[0] <= scroll[1], (width, scroll, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_shows_the_studies_and_the_objective(sweep_copy, browser, shots):
    sd = sweep_copy()
    names = [study_name(sd.name, s.name) for s in load_space(sd.space).studies]  # '<sweep>:<scale>/<arm>'
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "dashboard", sd.name, "--storage", str(sd.root.parent),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        studies = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        browser.get(f"http://127.0.0.1:{port}/dashboard")
        body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        WebDriverWait(browser, 90).until(lambda d: all(n in body(d) for n in names))
        screenshot(browser, shots / "dashboard_studies.png")
        # one study's page: its name and its objective, named val_ppl by the searcher
        first = next(s for s in studies if s["study_name"] == names[0])
        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/{first['study_id']}")
        # an element whose whole text is the objective's name (the history plot's axis, its y-axis picker):
        # without `set_metric_names` the page says "Objective 0" there
        WebDriverWait(browser, 90).until(
            lambda d: names[0] in body(d) and d.find_elements(By.XPATH, "//*[normalize-space(text())='val_ppl']"))
        assert browser.execute_script(NO_IMAGE) == []
        screenshot(browser, shots / "dashboard_study.png")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
