"""Fixtures for the dashboard tests: result folders written into temporary directories, and AppTest runs."""

from __future__ import annotations

from pathlib import Path

import dashboard_fixtures as fixtures  # also puts the repository root (the `dashboard` package) on sys.path
import pytest
from dashboard_fixtures import APP
from streamlit.testing.v1 import AppTest


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
        "harness_like": fixtures.write_harness_like(base / "harness_like"),
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
