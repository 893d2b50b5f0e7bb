"""Serve the dashboard and capture its pages in headless Chromium (Playwright): the browser tests and the
README figure use this one path.

``python -m dashboard.screenshot [--results DIR] [--page PAGE ...] [--out DIR]`` writes ``<page>.png`` for
each page (all of them by default) and exits non-zero if a page shows an exception; ``make docs-figure``
regenerates ``docs/dashboard.png`` from the Overview page on the committed ``bench_results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Debian's Chromium; Playwright's own browser download is not needed.
CHROMIUM = os.environ.get("TRITONBN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: page -> (url path, its h1 title)
PAGES = {
    "overview": ("", "tritonbn overview"),
    "throughput": ("throughput", "Throughput"),
    "host": ("host", "Launches and host time"),
    "kernels": ("kernels", "Kernels"),
    "correctness": ("correctness", "Correctness"),
    "gradients": ("gradients", "Batch-norm gradients, explained"),
    "runs": ("runs", "Runs"),
}
WIDTH = 1400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(results: Path, log: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Iterator[str]:
    """``streamlit run`` the dashboard on ``results`` on a free local port; yields its URL. Raises
    RuntimeError (with the end of the server's log) when it does not come up within ``timeout`` seconds."""
    port = _free_port()
    env = {**os.environ, **(env or {}), "TRITONBN_RESULTS": str(results)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "streamlit_app.py")]
    cmd += ["--server.headless", "true", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    cmd += ["--server.fileWatcherType", "none"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Playwright's ``Browser``). Raises FileNotFoundError without Debian's chromium and
    ImportError without the playwright package."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} not found (install Debian's chromium: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def opened(browser, url: str, page: str, timeout_ms: int = 60_000) -> Iterator[object]:
    """A tab (Playwright ``Page``) on ``page`` of the app at ``url``, its script run finished, at the capture
    width; closed on exit."""
    url_path, title = PAGES[page]
    ctx = browser.new_context(viewport={"width": WIDTH, "height": 900}, device_scale_factor=1)
    tab = ctx.new_page()
    try:
        tab.goto(f"{url}/{url_path}", wait_until="domcontentloaded", timeout=timeout_ms)
        tab.get_by_role("heading", name=title, level=1).wait_for(timeout=timeout_ms)
        tab.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_ms)
        yield tab
    finally:
        ctx.close()


def capture(browser, url: str, page: str, path: Path | None, timeout_ms: int = 60_000, height: int | None = None):
    """Open ``page``, wait until its script run has finished and its charts are drawn, and save a screenshot
    (the whole page, or its top ``height`` pixels). Returns ``(exception texts shown, number of charts,
    page text)``."""
    with opened(browser, url, page, timeout_ms) as tab:
        charts = tab.locator('[data-testid="stPlotlyChart"]')
        for i in range(charts.count()):
            charts.nth(i).locator(".main-svg").first.wait_for(timeout=timeout_ms)
        tab.wait_for_timeout(500)
        # Streamlit scrolls inside its main container, not the document: grow the viewport to the content.
        full = tab.evaluate(
            "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], section')]"
            ".map(e => e.scrollHeight), 900)"
        )
        tab.set_viewport_size({"width": WIDTH, "height": min(int(height or full + 40), 8000)})
        tab.wait_for_timeout(800)  # let charts finish their layout before the screenshot
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(path), full_page=height is None)
        exceptions = tab.locator('[data-testid="stException"]')
        shown = [exceptions.nth(i).inner_text() for i in range(exceptions.count())]
        return shown, charts.count(), tab.locator('[data-testid="stMain"]').inner_text()


def wide_tables(browser, url: str, page: str, timeout_ms: int = 60_000) -> list[int]:
    """How many pixels each visible table of ``page`` is wider than its box at the capture width (0: it
    fits; tables inside closed expanders are not counted)."""
    with opened(browser, url, page, timeout_ms) as tab:
        tab.wait_for_timeout(1000)  # the grids lay out their columns after the script run
        return tab.evaluate(
            """() => [...document.querySelectorAll('[data-testid="stDataFrame"] .dvn-scroller')]
                .filter(s => s.clientWidth > 0).map(s => s.scrollWidth - s.clientWidth)"""
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench_results", help="results folder to show")
    parser.add_argument("--page", nargs="+", choices=list(PAGES), default=list(PAGES), help="pages to capture")
    parser.add_argument("--out", type=Path, default=REPO / "test-artifacts" / "screenshots", help="output folder")
    parser.add_argument("--height", type=int, help="capture only the top HEIGHT pixels (default: the whole page)")
    args = parser.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, serve(args.results, Path(tmp) / "streamlit.log") as url, chromium() as b:
        for page in args.page:
            path = args.out / f"{page}.png"
            shown, charts, _ = capture(b, url, page, path, timeout_ms=180_000, height=args.height)
            status = "EXCEPTION: " + shown[0][:200] if shown else f"ok, {charts} chart(s)"
            print(f"{page:12s} {path}  {status}", flush=True)
            failed += bool(shown)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
