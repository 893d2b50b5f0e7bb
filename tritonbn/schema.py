"""Column definitions of the result files in ``bench_results/`` and the append-only CSV writer.

The tools write long-format CSV (one measurement per row) whose columns are defined here and nowhere
else: the tools, the dashboard and the tests all read them from this module, which imports neither torch
nor triton (``import tritonbn.schema`` is cheap; the package loads its torch parts on first use).
``bench_results/README.md`` documents every column. Every row carries the provenance columns, so a row
taken out of its file still says where and with what it was measured.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "AOT_BUDGET",
    "BENCH_APPENDED",
    "BENCH_COLUMNS",
    "BENCH_REQUIRED",
    "CORRECTNESS_APPENDED",
    "CORRECTNESS_COLUMNS",
    "CORRECTNESS_REQUIRED",
    "RECORD_KINDS",
    "HOST_BUDGET",
    "HOST_NUMERIC",
    "HOST_PASSES",
    "AOT_NUMERIC",
    "aot_budget_applies",
    "aot_excess",
    "aot_path",
    "AOT_COLUMNS",
    "ENV_COLUMNS",
    "HOST_COLUMNS",
    "KERNELS_COLUMNS",
    "PROVENANCE_COLUMNS",
    "RESULT_KINDS",
    "SYNC_COLUMNS",
    "TESTS_COLUMNS",
    "TRAIN_COLUMNS",
    "CsvWriter",
    "result_kind",
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

#: ``tritonbn-bench``: the columns every benchmark file has (a reader refuses a file without one of them) ...
BENCH_REQUIRED: tuple[str, ...] = (
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
)
#: ... then the columns appended later: ``suite``, ``status`` (ok | error | skipped), ``timer``, ``wall_ms``
#: (eager wall time per call, host included) and ``own_bytes`` (the traffic of the implementation's own
#: passes, where modelled); a reader fills them in when an older file lacks them.
BENCH_APPENDED: tuple[str, ...] = ("suite", "status", "timer", "wall_ms", "own_bytes")
BENCH_COLUMNS: tuple[str, ...] = (*BENCH_REQUIRED, *BENCH_APPENDED)

#: ``tritonbn-check``: the columns every correctness file has (provenance first) ...
CORRECTNESS_REQUIRED: tuple[str, ...] = (
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
)
#: ... then ``backend``, ``status`` (ok | fail | error | skipped) and ``note`` (why), appended later.
CORRECTNESS_APPENDED: tuple[str, ...] = ("backend", "status", "note")
CORRECTNESS_COLUMNS: tuple[str, ...] = (*CORRECTNESS_REQUIRED, *CORRECTNESS_APPENDED)


#: ``tritonbn-gpu-session`` records, one file per step (see ``bench_results/README.md``).
#: ``env``: the machine, one quantity per row.
ENV_COLUMNS: tuple[str, ...] = (*PROVENANCE_COLUMNS, "quantity", "value", "unit")

#: ``tests``: one row per test of a pytest run on the GPU (``run`` = ``gpu-tests`` or ``tests``).
TESTS_COLUMNS: tuple[str, ...] = (*PROVENANCE_COLUMNS, "run", "nodeid", "outcome", "seconds", "message")

#: ``kernels``: one row per compiled Triton kernel specialisation, with the resources the driver reports.
KERNELS_COLUMNS: tuple[str, ...] = (
    *PROVENANCE_COLUMNS,
    "kernel",
    "hash",
    "arch",
    "num_warps",
    "num_stages",
    "shared_bytes",
    "registers",
    "spills",
    "source",
    "signature",
    "tiles",
)

#: ``sync``: SyncBatchNorm over a process group against one process on the concatenated batch.
SYNC_COLUMNS: tuple[str, ...] = (
    *PROVENANCE_COLUMNS,
    "check",
    "backend",
    "world_size",
    "batches",
    "dtype",
    "layout",
    "quantity",
    "max_abs_err",
    "max_rel_err",
    "tol",
    "passed",
    "status",
    "note",
)

#: ``train``: a model's training step with torch's batch norm and with tritonbn's.
TRAIN_COLUMNS: tuple[str, ...] = (
    *PROVENANCE_COLUMNS,
    "model",
    "batch",
    "image",
    "dtype",
    "layout",
    "batch_norm",
    "bn_layers",
    "fused_relu",
    "steps_timed",
    "ms_median",
    "ms_p20",
    "ms_p80",
    "loss_start",
    "loss_after",
    "train_steps",
    "status",
    "note",
)

#: ``tritonbn-bench --host``: launches and host time per call (kernels stubbed), tritonbn against torch.
HOST_COLUMNS: tuple[str, ...] = (
    *PROVENANCE_COLUMNS,
    "impl",
    "pass",
    "shape",
    "dtype",
    "layout",
    "triton_launches",
    "aten_launches",
    "launches",
    "kernels",
    "host_us",
    "host_ratio",
    "cpu",
)

#: ``tritonbn-bench --host``: the passes measured, in the order they are reported.
HOST_PASSES: tuple[str, ...] = (
    "train_forward",
    "train_backward",
    "train_forward_backward",
    "eval_forward",
    "relu_add_forward",
    "relu_add_backward",
)
HOST_NUMERIC: tuple[str, ...] = ("triton_launches", "aten_launches", "launches", "host_us", "host_ratio")

#: ``tritonbn-aot``: one row per (kernel specialisation, arch), compiled ahead of time (``gpu`` is empty).
AOT_COLUMNS: tuple[str, ...] = (
    *PROVENANCE_COLUMNS,
    "kernel",
    "hot",
    "case",
    "pass",
    "dtype",
    "layout",
    "shape",
    "block_n",
    "block_s",
    "block_c",
    "num_warps",
    "flags",
    "arch",
    "status",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "sass_instructions",
    "loop_instructions",
    "program_instructions",
    "elements_per_thread",
    "instructions_per_element",
    "div64_per_thread",
    "uses",
    "error",
)

#: The columns of :data:`AOT_COLUMNS` that hold numbers.
AOT_NUMERIC: tuple[str, ...] = tuple(
    c for c in AOT_COLUMNS[AOT_COLUMNS.index("block_n") :] if c not in ("flags", "arch", "status", "error")
)

#: Result kinds and the ending of their file names: ``<date>_<sha><ending>.csv`` (``aot``:
#: ``<triton-version>_<sha>_aot.csv`` in ``bench_results/aot/``).
RESULT_KINDS: dict[str, str] = {
    "bench": "",
    "check": "_check",
    "env": "_env",
    "tests": "_tests",
    "kernels": "_kernels",
    "sync": "_sync",
    "train": "_train",
    "host": "_host",
    "aot": "_aot",
}

#: The kinds that are records of their own (a ``tritonbn-gpu-session`` step, ``tritonbn-bench --host``,
#: ``tritonbn-aot``), told apart by the ending of their file names, not by their columns.
RECORD_KINDS: tuple[str, ...] = tuple(k for k in RESULT_KINDS if k not in ("bench", "check"))

#: The budget ``tritonbn-aot --check`` holds a hot kernel (one that touches every element) to: at most this
#: many registers, no spills, and at most this many SASS instructions per element whenever a thread holds at
#: least ``min_elements_per_thread`` elements (smaller tiles belong to tensors of a few thousand elements,
#: bound by launch latency, not by instruction issue). An H200 issues about 7 instructions per byte of DRAM
#: bandwidth; at 8 per element a float16 pass is still memory-bound.
#: ``tritonbn-bench --host``: tritonbn's host time per train forward + backward, at most this many times
#: torch's (in one run on one machine).
HOST_BUDGET = 1.5

AOT_BUDGET: dict[str, float] = {
    "max_registers": 128,
    "max_instructions_per_element": 8.0,
    "min_elements_per_thread": 8,
}


def _number(value: object) -> float:
    """A report cell as a number: CSV text or a parsed value; empty (or NaN) is 0."""
    v = float(value or 0)
    return 0.0 if v != v else v


def aot_path(row: Mapping[str, object]) -> str:
    """The path of a ``tritonbn-aot`` row: ``loop`` (a program loops over tiles: the streaming path of large
    tensors) or ``one-tile``."""
    return "loop" if _number(row.get("loop_instructions")) > 0 else "one-tile"


def aot_budget_applies(row: Mapping[str, object]) -> bool:
    """Whether a row's threads hold enough elements for the instruction budget to apply (smaller tiles belong
    to tensors of a few thousand elements, bound by launch latency)."""
    return _number(row.get("elements_per_thread")) >= AOT_BUDGET["min_elements_per_thread"]


def aot_excess(row: Mapping[str, object]) -> dict[str, float]:
    """What of :data:`AOT_BUDGET` a compiled ``tritonbn-aot`` row exceeds, as ``{column: value}``: any of
    ``registers``, ``spill_bytes``, ``div64_per_thread`` and ``instructions_per_element`` (the latter only
    where :func:`aot_budget_applies`). Empty: within the budget. Cells may be CSV text or numbers; the caller
    decides whether the row is of a hot kernel."""
    out = {}
    if _number(row.get("registers")) > AOT_BUDGET["max_registers"]:
        out["registers"] = _number(row.get("registers"))
    for col in ("spill_bytes", "div64_per_thread"):
        if _number(row.get(col)) > 0:
            out[col] = _number(row.get(col))
    ipe = _number(row.get("instructions_per_element"))
    if aot_budget_applies(row) and ipe > AOT_BUDGET["max_instructions_per_element"]:
        out["instructions_per_element"] = ipe
    return out


def _split_kind(stem: str) -> tuple[str, str]:
    """``(stem without its kind's ending, kind)`` of a result file's stem (kind ``bench``: no ending)."""
    for kind, ending in RESULT_KINDS.items():
        if ending and stem.endswith(ending):
            return stem[: -len(ending)], kind
    return stem, "bench"


def result_kind(path: str | os.PathLike) -> str:
    """The kind of a result file (a key of :data:`RESULT_KINDS`) from the ending of its name."""
    return _split_kind(Path(path).stem)[1]


def unique_path(path: Path, also_in: Path | None = None) -> Path:
    """``path`` if no file is there, else the first free ``<stem>_<k><suffix>`` (k = 2, 3, ...).

    A kind's ending of the stem (``_check``, ``_env``, ... of :data:`RESULT_KINDS`) is kept last
    (``2025-01-31_abc1234_2_check.csv``), so files are still recognised by their ending. With ``also_in``,
    a name is free only if that folder has no file of the same name either (results made elsewhere, to be
    copied into ``also_in``, never replace one there).
    """
    path = Path(path)

    def taken(p: Path) -> bool:
        return p.exists() or (also_in is not None and (Path(also_in) / p.name).exists())

    if not taken(path):
        return path
    stem, kind = _split_kind(path.stem)
    tail = RESULT_KINDS[kind]
    k = 2
    while True:
        candidate = path.with_name(f"{stem}_{k}{tail}{path.suffix}")
        if not taken(candidate):
            return candidate
        k += 1


def result_path(root: str | os.PathLike, device_slug: str, date: str, sha: str, *, kind: str = "bench") -> Path:
    """The file a run writes: ``<root>/<device_slug>/<date>_<sha>.csv`` for benchmarks, and
    ``<date>_<sha>_<kind>.csv`` for the other kinds of :data:`RESULT_KINDS` (``..._check.csv``, ...).

    The name returned is free at the time of the call (see :func:`unique_path`); :class:`CsvWriter` opens it
    exclusively, so an existing file is never overwritten. Raises ``ValueError`` for an unknown kind.
    """
    if kind not in RESULT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, RESULT_KINDS))}, got {kind!r}")
    name = f"{date}_{sha}{RESULT_KINDS[kind]}.csv"
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
