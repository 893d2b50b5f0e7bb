"""Writing the session's own result files (environment, tests, kernels, sync, train) in the
``bench_results/<device>/<date>_<sha>_<kind>.csv`` layout, with the columns of :mod:`tritonbn.schema`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from tritonbn import provenance as _provenance
from tritonbn.schema import (
    ENV_COLUMNS,
    KERNELS_COLUMNS,
    SYNC_COLUMNS,
    TESTS_COLUMNS,
    TRAIN_COLUMNS,
    CsvWriter,
    result_path,
)

__all__ = ["COLUMNS", "device_label", "write_record"]

#: The columns of each kind of session record.
COLUMNS: dict[str, tuple[str, ...]] = {
    "env": ENV_COLUMNS,
    "tests": TESTS_COLUMNS,
    "kernels": KERNELS_COLUMNS,
    "sync": SYNC_COLUMNS,
    "train": TRAIN_COLUMNS,
}


def device_label(prov: Mapping[str, str]) -> str:
    """The folder of a run: the GPU's slug, or ``cpu-interpreter`` / ``cpu-torch`` without one."""
    if prov["gpu"] != "cpu":
        return _provenance.device_slug(prov["gpu"])
    return "cpu-interpreter" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else "cpu-torch"


def write_record(
    rows: Iterable[Mapping[str, object]], kind: str, root: str | os.PathLike, prov: Mapping[str, str]
) -> Path | None:
    """Write ``rows`` (provenance added; missing columns left empty) to a new
    ``<root>/<device>/<date>_<sha>_<kind>.csv`` and return its path (``None`` when there are no rows).

    Raises ``KeyError`` for an unknown kind and for a row with a column that the kind does not have.
    """
    columns = COLUMNS[kind]
    path = result_path(root, device_label(prov), _provenance.utc_date(prov["timestamp"]), prov["git_sha"], kind=kind)
    with CsvWriter(path, columns) as writer:
        for row in rows:
            extra = set(row) - set(columns)
            if extra:
                raise KeyError(f"{kind} rows have no column(s) {sorted(extra)}")
            writer.write({c: row.get(c) for c in columns} | dict(prov))
    return writer.path
