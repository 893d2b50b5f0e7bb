"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Starts ``streamlit run`` on a fixture results folder and on the committed ``bench_results/``, opens every
page (:data:`dashboard.screenshot.PAGES`), waits for the script run to finish and every Plotly chart to draw,
checks that no exception box is shown, and saves a full-page screenshot to ``test-artifacts/screenshots/``
(the same code as ``python -m dashboard.screenshot``, which makes the README figure).
"""

from __future__ import annotations

import pytest
from dashboard_fixtures import PAGES, REPO

from dashboard import screenshot

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
#: pages that draw at least one chart on the fixture folder (Gradients has tables, Runs a chart of two runs)
CHARTS = {"overview": 1, "throughput": 4, "host": 1, "kernels": 2, "correctness": 1, "gradients": 0, "runs": 1}

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    try:
        with screenshot.chromium() as b:
            yield b
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def server(browser, folders):
    with screenshot.serve(folders["good"], REPO / "test-artifacts" / "streamlit-browser-test.log") as url:
        yield url


@pytest.fixture(scope="module")
def committed_server(browser):
    with screenshot.serve(REPO / "bench_results", REPO / "test-artifacts" / "streamlit-committed.log") as url:
        yield url


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(browser, server, page):
    timeout_ms = 120_000 if page == "gradients" else 45_000
    shown, charts, _ = screenshot.capture(browser, server, page, SCREENSHOTS / f"{page}.png", timeout_ms=timeout_ms)
    assert shown == []
    assert charts >= CHARTS[page]


@pytest.mark.parametrize("page", [p for p in PAGES if p != "gradients"])
def test_page_on_committed_results_in_browser(browser, committed_server, page):
    """What a new user sees after `make dashboard` on a fresh clone: no exception, and where there are no GPU
    results yet, a message saying so."""
    path = SCREENSHOTS / f"committed-{page}.png"
    shown, charts, text = screenshot.capture(browser, committed_server, page, path, timeout_ms=60_000)
    assert shown == []
    if page in ("overview", "throughput"):
        assert "No GPU benchmark results yet" in text
    if page in ("host", "kernels", "correctness"):
        assert charts >= 1
    # every table fits the page at 1400 px: none is cut at the right edge
    assert all(px <= 2 for px in screenshot.wide_tables(browser, committed_server, page)), page
