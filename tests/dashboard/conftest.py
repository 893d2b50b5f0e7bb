"""Fixtures for the dashboard tests: result folders written into temporary directories, and AppTest runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the `dashboard` package lives at the repository root, next to `tritonbn`
    sys.path.insert(0, str(REPO))

import dashboard_fixtures as fixtures  # noqa: E402

APP = REPO / "dashboard" / "streamlit_app.py"
PAGES = ["overview", "throughput", "correctness", "gradients", "runs"]
TITLES = {
    "overview": "tritonbn overview",
    "throughput": "Throughput",
    "correctness": "Correctness",
    "gradients": "Batch-norm gradients, explained",
    "runs": "Runs",
}


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("results")
    empty = base / "empty"
    empty.mkdir()
    return {
        "empty": empty,
        "missing": base / "does-not-exist",
        "malformed": fixtures.write_malformed(base / "malformed"),
        "good": fixtures.write_good(base / "good"),
        "correctness_only": fixtures.write_correctness_only(base / "correctness_only"),
    }


@pytest.fixture
def open_page(monkeypatch):
    """``open_page(page, folder)`` → an AppTest that has run ``page`` with the results folder ``folder``."""

    def _open(page: str, folder: Path, timeout: float = 30) -> AppTest:
        monkeypatch.setenv("TRITONBN_RESULTS", str(folder))
        at = AppTest.from_file(str(APP), default_timeout=timeout).run()
        if page != "overview":
            at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return _open


def texts(elements) -> str:
    """All values of a list of AppTest elements, joined (for substring assertions)."""
    return "\n".join(str(e.value) for e in elements)
