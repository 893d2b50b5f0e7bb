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

__all__ = ["COLUMNS", "RecordWriter", "device_label", "write_record"]

#: The columns of each kind of session record.
COLUMNS: dict[str, tuple[str, ...]] = {
    "env": ENV_COLUMNS,
    "tests": TESTS_COLUMNS,
    "kernels": KERNELS_COLUMNS,
    "sync": SYNC_COLUMNS,
    "train": TRAIN_COLUMNS,
}


def device_label(prov: Mapping[str, str]) -> str:
    """The folder of a run: the GPU's slug, or without one what ``tritonbn-check`` calls the CPU
    (``cpu-interpreter`` / ``cpu-torch``, :func:`tritonbn.correctness.runner.device_label`)."""
    if prov["gpu"] != "cpu":
        return _provenance.device_slug(prov["gpu"])
    import torch

    from tritonbn.correctness.runner import device_label as cpu_label

    return cpu_label(torch.device("cpu"))


class RecordWriter(CsvWriter):
    """Rows of one kind, written as they come (each flushed) to a new
    ``<root>/<device>/<date>_<sha>_<kind>.csv``; the provenance is added and missing columns are left empty.

    Raises ``KeyError`` for an unknown kind and for a row with a column that the kind does not have.
    """

    def __init__(self, kind: str, root: str | os.PathLike, prov: Mapping[str, str]) -> None:
        self.kind, self.prov = kind, dict(prov)
        date = _provenance.utc_date(prov["timestamp"])
        super().__init__(result_path(root, device_label(prov), date, prov["git_sha"], kind=kind), COLUMNS[kind])

    def write(self, row: Mapping[str, object]) -> None:
        extra = set(row) - set(self.columns)
        if extra:
            raise KeyError(f"{self.kind} rows have no column(s) {sorted(extra)}")
        super().write({c: row.get(c) for c in self.columns} | self.prov)


def write_record(
    rows: Iterable[Mapping[str, object]], kind: str, root: str | os.PathLike, prov: Mapping[str, str]
) -> Path | None:
    """Write ``rows`` with a :class:`RecordWriter` and return the file's path (``None`` when there are no
    rows: no file is created)."""
    with RecordWriter(kind, root, prov) as writer:
        writer.write_all(rows)
    return writer.path
