"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Starts ``streamlit run`` on a fixture results folder, opens every page, waits for the script run to finish,
checks the heading, that no exception box is shown and (for chart pages) that a Plotly chart rendered,
and saves a full-page screenshot to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dashboard_fixtures import REPO, TITLES

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
# page -> (url path, has a Plotly chart on the good fixture folder)
PAGES = {
    "overview": ("", True),
    "throughput": ("throughput", True),
    "correctness": ("correctness", True),
    "gradients": ("gradients", False),
    "runs": ("runs", True),
}

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser, folders):
    port = _free_port()
    env = {**os.environ, "TRITONBN_RESULTS": str(folders["good"])}
    cmd = [sys.executable, "-m", "streamlit", "run", "dashboard/streamlit_app.py", "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = (REPO / "test-artifacts").joinpath("streamlit-browser-test.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.parametrize("page", list(PAGES))
def test_page_in_browser(browser, server, page):
    path, has_chart = PAGES[page]
    timeout_ms = 120_000 if page == "gradients" else 45_000
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    tab = ctx.new_page()
    try:
        tab.goto(f"{server}/{path}", wait_until="domcontentloaded", timeout=timeout_ms)
        tab.get_by_role("heading", name=TITLES[page], level=1).wait_for(timeout=timeout_ms)
        tab.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_ms)
        if has_chart:
            tab.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=timeout_ms)
        tab.wait_for_timeout(500)
        # Streamlit scrolls inside its main container, not the document: grow the viewport to the content so
        # the screenshot shows the whole page.
        height = tab.evaluate(
            "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], section')]"
            ".map(e => e.scrollHeight), 900)"
        )
        tab.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 8000)})
        tab.wait_for_timeout(800)  # let charts finish their layout before the screenshot
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / f"{page}.png"), full_page=True)
        exceptions = tab.locator('[data-testid="stException"]')
        assert exceptions.count() == 0, exceptions.first.inner_text()
        if has_chart:
            assert tab.locator('[data-testid="stPlotlyChart"]').count() >= 1
    finally:
        ctx.close()
