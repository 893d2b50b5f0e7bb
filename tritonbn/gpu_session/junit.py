"""pytest's JUnit XML report as rows of the ``tests`` record (:data:`tritonbn.schema.TESTS_COLUMNS`)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

__all__ = ["count_outcomes", "junit_rows", "nodeid"]


def nodeid(classname: str, name: str, root: str | Path | None = None) -> str:
    """pytest's node id from a JUnit ``classname`` and ``name``: ``tests.test_gpu`` + ``test_x[a]`` →
    ``tests/test_gpu.py::test_x[a]``; a trailing class stays a ``::Class`` part. With ``root`` the longest
    dotted prefix naming a file under it is taken as the module; without, every dotted part is a folder."""
    parts = classname.split(".") if classname else []
    split = len(parts)
    if root is not None:
        for i in range(len(parts), 0, -1):
            if (Path(root) / Path(*parts[:i])).with_suffix(".py").exists():
                split = i
                break
    module = "/".join(parts[:split]) + ".py" if split else ""
    return "::".join(p for p in (module, *parts[split:], name) if p)


def junit_rows(xml_path: str | Path, run: str, root: str | Path | None = None) -> list[dict]:
    """One row per ``<testcase>``: ``run``, ``nodeid``, ``outcome`` (``passed``, ``failed``, ``error``,
    ``skipped``), ``seconds`` and ``message`` (the first line of the failure, error or skip reason).
    Raises ``OSError`` / ``xml.etree.ElementTree.ParseError`` for a missing or unreadable report."""
    tree = ET.parse(xml_path)
    rows = []
    for case in tree.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                text = child.get("message") or (child.text or "")
                message = text.strip().splitlines()[0][:300] if text.strip() else ""
                break
        try:
            seconds = float(case.get("time", "nan"))
        except ValueError:
            seconds = None
        rows.append(
            {
                "run": run,
                "nodeid": nodeid(case.get("classname", ""), case.get("name", ""), root),
                "outcome": outcome,
                "seconds": seconds,
                "message": message,
            }
        )
    return rows


def count_outcomes(rows: list[dict]) -> Counter:
    """``Counter`` of the ``outcome`` column."""
    return Counter(r["outcome"] for r in rows)
