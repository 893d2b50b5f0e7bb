"""Column definitions of the result files in ``bench_results/`` and the append-only CSV writer.

Both tools write long-format CSV (one measurement per row) whose columns are defined here and nowhere
else; ``bench_results/README.md`` documents every column. Every row carries the provenance columns, so a
row taken out of its file still says where and with what it was measured.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "BENCH_COLUMNS",
    "CORRECTNESS_COLUMNS",
    "PROVENANCE_COLUMNS",
    "CsvWriter",
    "result_path",
    "unique_path",
]

#: Where and with what a run happened (see :mod:`tritonbn.provenance`); first columns of both files.
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "git_sha",
    "gpu",
    "compute_capability",
    "torch",
    "cuda",
    "cudnn",
    "triton",
)

#: ``tritonbn-bench``: DESIGN §5 list, then ``suite``, ``status`` and ``timer`` appended.
BENCH_COLUMNS: tuple[str, ...] = (
    *PROVENANCE_COLUMNS,
    "provider",
    "backend",
    "mode",
    "pass",
    "dim",
    "N",
    "C",
    "spatial",
    "dtype",
    "layout",
    "affine",
    "numel",
    "bytes",
    "ms_median",
    "ms_p20",
    "ms_p80",
    "gbps",
    "peak_gbps",
    "pct_of_peak",
    "suite",
    "status",
    "timer",
)

#: ``tritonbn-check``: DESIGN §5 list plus provenance, then ``backend``, ``status`` and ``note`` appended.
CORRECTNESS_COLUMNS: tuple[str, ...] = (
    *PROVENANCE_COLUMNS,
    "provider",
    "case",
    "dtype",
    "layout",
    "mode",
    "quantity",
    "max_abs_err",
    "max_rel_err",
    "reference",
    "tol",
    "passed",
    "device",
    "backend",
    "status",
    "note",
)


def unique_path(path: Path) -> Path:
    """``path`` if no file is there, else the first free ``<stem>_<k><suffix>`` (k = 2, 3, ...).

    A ``_check`` ending of the stem is kept last (``2025-01-31_abc1234_2_check.csv``), so correctness files
    are still recognised by their ``_check.csv`` ending.
    """
    path = Path(path)
    if not path.exists():
        return path
    stem, tail = path.stem, ""
    if stem.endswith("_check"):
        stem, tail = stem[: -len("_check")], "_check"
    k = 2
    while True:
        candidate = path.with_name(f"{stem}_{k}{tail}{path.suffix}")
        if not candidate.exists():
            return candidate
        k += 1


def result_path(root: str | os.PathLike, device_slug: str, date: str, sha: str, *, kind: str = "bench") -> Path:
    """The file a run writes: ``<root>/<device_slug>/<date>_<sha>.csv`` (``..._check.csv`` for correctness).

    The name returned is free at the time of the call (see :func:`unique_path`); :class:`CsvWriter` opens it
    exclusively, so an existing file is never overwritten.
    """
    if kind not in ("bench", "check"):
        raise ValueError(f"kind must be 'bench' or 'check', got {kind!r}")
    name = f"{date}_{sha}{'_check' if kind == 'check' else ''}.csv"
    return unique_path(Path(root) / device_slug / name)


class CsvWriter:
    """Append rows with a fixed column list to a new CSV file, flushing each row.

    The file is created exclusively (never overwritten; a taken name gets a suffix as in :func:`unique_path`)
    when the first row is written, so an interrupted run leaves the rows measured so far and a run that
    measured nothing leaves no file. Values are written with ``repr``-exact floats; ``None`` is empty.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]):
        self.requested_path = Path(path)
        self.path: Path | None = None
        self.columns = tuple(columns)
        self.rows_written = 0
        self._file = None
        self._writer = None

    def _open(self) -> None:
        self.requested_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            path = unique_path(self.requested_path)
            try:
                self._file = open(path, "x", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except FileExistsError:  # another run took the name in between: take the next one
                continue
            self.path = path
            break
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
        self._writer.writeheader()

    def write(self, row: Mapping[str, object]) -> None:
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise KeyError(f"row lacks columns {missing}")
        if self._writer is None:
            self._open()
        self._writer.writerow({c: _format(row[c]) for c in self.columns})
        self._file.flush()
        self.rows_written += 1

    def write_all(self, rows: Iterable[Mapping[str, object]]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CsvWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _format(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value
