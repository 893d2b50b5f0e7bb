"""Loading and validating the result CSVs under a results folder (pandas only, no Streamlit, no torch).

Every ``*.csv`` under the folder (recursively) is read, classified as a *benchmark* or a *correctness* file
by its columns (``bench_results/README.md``), validated, and concatenated into one long table per kind. The
records of ``tritonbn-gpu-session`` steps are recognised by their file names. Nothing here raises on bad
input: every problem becomes a human-readable string naming the file, returned next to the data, so the
pages can show it with ``st.error`` instead of a traceback.

Caching lives in :mod:`dashboard.ui` (``st.cache_data`` keyed on the folder's file list and mtimes), so
this module stays importable and testable without Streamlit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

PROVENANCE_COLUMNS = ["timestamp", "git_sha", "gpu", "compute_capability", "torch", "cuda", "cudnn", "triton"]

BENCHMARK_COLUMNS = [
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
]
BENCHMARK_NUMERIC = ["dim", "N", "C", "numel", "bytes", "ms_median", "ms_p20", "ms_p80", "gbps", "peak_gbps"]
BENCHMARK_NUMERIC += ["pct_of_peak", "wall_ms"]
# Optional benchmark columns: failed providers are recorded with empty timings and a status / error.
BENCHMARK_OPTIONAL = ["suite", "status", "error", "timer", "wall_ms"]

CORRECTNESS_COLUMNS = [
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
    *PROVENANCE_COLUMNS,
]
CORRECTNESS_NUMERIC = ["max_abs_err", "max_rel_err", "tol"]
# Optional correctness columns: ``status`` is ok | fail | error | skipped, ``note`` says why.
CORRECTNESS_OPTIONAL = ["backend", "status", "note"]

# The records of ``tritonbn-gpu-session`` steps, ``tritonbn-bench --host`` and ``tritonbn-aot``, by the ending
# of their file names (``<date>_<sha>_env.csv``): listed as runs of their own kind, not read as benchmark or
# correctness files.
SESSION_RECORD_KINDS = ("env", "tests", "kernels", "sync", "train", "host", "aot")

# Columns that only one kind of file has: used to tell the kinds apart when some columns are missing.
_BENCHMARK_MARKERS = {"pass", "ms_median", "ms_p20", "ms_p80", "gbps", "peak_gbps", "pct_of_peak", "numel", "bytes"}
_CORRECTNESS_MARKERS = {"quantity", "max_abs_err", "max_rel_err", "reference", "tol", "passed", "case"}

BENCHMARK_PROVIDERS = ["tritonbn", "cudnn", "native", "inductor"]
BASELINE = "cudnn"
MODES = {"train", "eval"}
PASSES = {"fwd", "bwd", "fwd_bwd"}
BENCHMARK_LAYOUTS = {"contiguous", "channels_last", "channels_last_3d"}

# A benchmark configuration: rows that agree on these measure the same thing (one per provider).
CONFIG_KEYS = ["gpu", "mode", "pass", "dim", "N", "C", "spatial", "dtype", "layout", "affine"]

_TRUE = {"true", "1", "yes", "y", "t", "pass", "passed", "ok"}
_FALSE = {"false", "0", "no", "n", "f", "fail", "failed"}
_OK_STATUS = {"", "ok", "passed", "success"}


@dataclass
class FileInfo:
    """One CSV under the results folder, as the Runs page lists it."""

    path: str  # relative to the results folder
    kind: str  # "benchmark", "correctness", a session record kind (SESSION_RECORD_KINDS) or "invalid"
    rows: int = 0
    mtime: float = 0.0
    problems: list[str] = field(default_factory=list)


@dataclass
class Results:
    benchmarks: pd.DataFrame
    correctness: pd.DataFrame
    files: list[FileInfo]
    problems: list[str]
    #: provenance and ``source`` of the session records (the rows of every ``*_<kind>.csv`` of a GPU session)
    records: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*PROVENANCE_COLUMNS, "source"]))

    @property
    def files_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"file": f.path, "kind": f.kind, "rows": f.rows, "problems": len(f.problems), "mtime": f.mtime}
                for f in self.files
            ],
            columns=["file", "kind", "rows", "problems", "mtime"],
        )


def empty_benchmarks() -> pd.DataFrame:
    return pd.DataFrame(columns=[*BENCHMARK_COLUMNS, *BENCHMARK_OPTIONAL, "source", "ok", "shape", "config"])


def empty_correctness() -> pd.DataFrame:
    return pd.DataFrame(columns=[*CORRECTNESS_COLUMNS, *CORRECTNESS_OPTIONAL, "source", "result"])


def csv_files(root: str | Path) -> list[Path]:
    """All ``*.csv`` files under ``root``, sorted; empty when the folder does not exist."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.csv") if p.is_file())


def signature(root: str | Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, mtime_ns, size) of every CSV under ``root``: the cache key of :func:`load_results`."""
    root = Path(root)
    out = []
    for p in csv_files(root):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(out)


def classify(columns) -> str | None:
    """``"benchmark"``, ``"correctness"`` or ``None`` from a file's column names."""
    cols = {str(c).strip() for c in columns}
    b, c = len(cols & _BENCHMARK_MARKERS), len(cols & _CORRECTNESS_MARKERS)
    if b == 0 and c == 0:
        return None
    return "benchmark" if b >= c else "correctness"


def _to_numeric(df: pd.DataFrame, columns: list[str], name: str, problems: list[str]) -> None:
    """Convert columns in place; blank cells become NaN silently, anything else unparsable is reported."""
    for col in columns:
        raw = df[col].astype(str).str.strip()
        num = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
        bad = num.isna() & (raw != "") & (~raw.str.lower().isin({"nan", "none", "null", "na", "n/a"}))
        if bad.any():
            examples = ", ".join(repr(v) for v in raw[bad].unique()[:3])
            problems.append(f"{name}: column '{col}' has {int(bad.sum())} non-numeric value(s) ({examples}); ignored")
        df[col] = num.astype(float)


def _to_bool(df: pd.DataFrame, col: str, name: str, problems: list[str]) -> None:
    raw = df[col].astype(str).str.strip().str.lower()
    out = pd.Series(pd.NA, index=df.index, dtype="boolean")
    out[raw.isin(_TRUE)] = True
    out[raw.isin(_FALSE)] = False
    bad = out.isna() & (raw != "")
    if bad.any():
        examples = ", ".join(repr(v) for v in df[col][bad].unique()[:3])
        problems.append(f"{name}: column '{col}' has {int(bad.sum())} value(s) that are not true/false ({examples})")
    df[col] = out


def _check_values(df: pd.DataFrame, col: str, allowed: set[str], name: str, problems: list[str]) -> None:
    values = set(df[col].unique()) - allowed - {""}
    if values:
        shown = ", ".join(repr(v) for v in sorted(values)[:5])
        problems.append(f"{name}: column '{col}' has unexpected value(s) {shown} (expected one of {sorted(allowed)})")


_DTYPE_NAMES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
_DTYPE_NAMES |= {"fp64": "float64", "double": "float64"}


def _clean_dtype(s: pd.Series) -> pd.Series:
    """``torch.float16`` / ``fp16`` / ``half`` → ``float16``: one name per dtype across tools."""
    s = s.str.replace("torch.", "", regex=False)
    return s.map(lambda v: _DTYPE_NAMES.get(v.lower(), v))


def shape_label(dim, n, c, spatial) -> str:
    """``N×C×H×W`` from the benchmark columns (``N×C`` for a 1-d batch without a length)."""
    parts = []
    for v in (n, c):
        parts.append(str(int(v)) if isinstance(v, float) and math.isfinite(v) else str(v))
    sp = str(spatial).strip() if spatial is not None else ""
    if sp and sp.lower() != "nan":
        parts.append(sp.replace("x", "×").replace("X", "×"))
    return "×".join(parts)


def _read_csv(path: Path, name: str) -> tuple[pd.DataFrame | None, str | None]:
    try:
        if path.stat().st_size == 0:
            return None, f"{name}: empty file (0 bytes)"
        bad_lines: list[list[str]] = []
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            engine="python",
            on_bad_lines=lambda line: bad_lines.append(line),  # returns None: the line is skipped
        )
    except pd.errors.EmptyDataError:
        return None, f"{name}: empty file (no header)"
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"{name}: not a readable CSV ({first})"
    except OSError as e:
        return None, f"{name}: cannot be read ({e.strerror or e})"
    df.columns = [str(c).strip() for c in df.columns]
    notes = []
    if bad_lines:
        notes.append(f"{len(bad_lines)} line(s) with more fields than the header skipped")
    short = int(df.iloc[:, -1].isna().sum()) if len(df.columns) else 0
    if short:
        notes.append(f"{short} line(s) with fewer fields than the header (missing values left blank)")
    df = df.fillna("")
    return df, (f"{name}: " + "; ".join(notes)) if notes else None


def _validate_benchmark(df: pd.DataFrame, name: str, problems: list[str]) -> pd.DataFrame:
    for col in BENCHMARK_OPTIONAL:
        if col not in df:
            df[col] = ""
    _to_numeric(df, BENCHMARK_NUMERIC, name, problems)
    _to_bool(df, "affine", name, problems)
    for col in ("provider", "mode", "pass", "layout", "dtype", "spatial", "status", "gpu"):
        df[col] = df[col].astype(str).str.strip()
    df["dtype"] = _clean_dtype(df["dtype"])
    _check_values(df, "mode", MODES, name, problems)
    _check_values(df, "pass", PASSES, name, problems)
    _check_values(df, "layout", BENCHMARK_LAYOUTS, name, problems)
    status_ok = df["status"].str.lower().isin(_OK_STATUS)
    # Failed or skipped providers are results, not file problems: the pages count them.
    df["ok"] = df["ms_median"].notna() & (df["ms_median"] > 0) & status_ok
    # Derived columns the pages use.
    df["gbps"] = df["gbps"].where(df["gbps"].notna(), df["bytes"] / (df["ms_median"] * 1e6))
    df["shape"] = [shape_label(*t) for t in zip(df["dim"], df["N"], df["C"], df["spatial"], strict=True)]
    df["config"] = (
        df["shape"] + " " + df["dtype"] + " " + df["layout"] + " " + df["mode"] + " " + df["pass"].astype(str)
    )
    return df


def _validate_correctness(df: pd.DataFrame, name: str, problems: list[str]) -> pd.DataFrame:
    for col in CORRECTNESS_OPTIONAL:
        if col not in df:
            df[col] = ""
    _to_numeric(df, CORRECTNESS_NUMERIC, name, problems)
    _to_bool(df, "passed", name, problems)
    status = df["status"].astype(str).str.strip().str.lower()
    derived = df["passed"].map({True: "ok", False: "fail"}).astype(object).fillna("skipped")
    df["status"] = status.where(status != "", derived)
    # What a check came to: passed, FAILED (over tolerance), error (raised) or skipped (not run).
    df["result"] = "skipped"
    df.loc[df["passed"] == True, "result"] = "passed"  # noqa: E712
    df.loc[df["passed"] == False, "result"] = "FAILED"  # noqa: E712
    df.loc[(df["passed"] == False) & (df["status"] == "error"), "result"] = "error"  # noqa: E712
    for col in ("provider", "case", "dtype", "layout", "mode", "quantity", "device", "gpu"):
        df[col] = df[col].astype(str).str.strip()
    df["dtype"] = _clean_dtype(df["dtype"])
    _check_values(df, "mode", MODES, name, problems)
    return df


def load_file(path: Path, root: Path) -> tuple[str, pd.DataFrame | None, list[str]]:
    """Read and validate one CSV: ``(kind, frame or None, problems)``."""
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    df, err = _read_csv(path, name)
    if df is None:
        return "invalid", None, [err]
    problems: list[str] = [err] if err else []
    record = next((k for k in SESSION_RECORD_KINDS if path.stem.endswith(f"_{k}")), None)
    if record is not None:
        missing = [c for c in PROVENANCE_COLUMNS if c not in df.columns]
        if missing:
            return record, None, [*problems, f"{name}: {record} record is missing column(s): {', '.join(missing)}"]
        df["source"] = name
        return record, df, problems
    kind = classify(df.columns)
    if kind is None:
        cols = ", ".join(list(df.columns)[:6])
        return "invalid", None, [f"{name}: neither a benchmark nor a correctness file (columns: {cols})"]
    required = BENCHMARK_COLUMNS if kind == "benchmark" else CORRECTNESS_COLUMNS
    missing = [c for c in required if c not in df.columns]
    if missing:
        return kind, None, [f"{name}: {kind} file is missing required column(s): {', '.join(missing)}"]
    if df.empty:
        return kind, None, [*problems, f"{name}: {kind} file has a header but no rows"]
    df = _validate_benchmark(df, name, problems) if kind == "benchmark" else _validate_correctness(df, name, problems)
    df["source"] = name
    return kind, df, problems


def load_results(root: str | Path) -> Results:
    """Load every CSV under ``root``. Never raises for bad files: see ``Results.problems``."""
    root = Path(root)
    problems: list[str] = []
    files: list[FileInfo] = []
    frames: dict[str, list[pd.DataFrame]] = {"benchmark": [], "correctness": []}
    records: list[pd.DataFrame] = []
    if not root.exists():
        problems.append(f"results folder {root} does not exist")
    elif not root.is_dir():
        problems.append(f"{root} is not a folder")
    for path in csv_files(root):
        kind, df, file_problems = load_file(path, root)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        files.append(FileInfo(path.relative_to(root).as_posix(), kind, 0 if df is None else len(df), mtime))
        files[-1].problems = file_problems
        problems.extend(file_problems)
        if df is not None and kind in frames:
            frames[kind].append(df)
        elif df is not None:
            records.append(df[[*PROVENANCE_COLUMNS, "source"]])
    bench = pd.concat(frames["benchmark"], ignore_index=True) if frames["benchmark"] else empty_benchmarks()
    corr = pd.concat(frames["correctness"], ignore_index=True) if frames["correctness"] else empty_correctness()
    result = Results(bench, corr, files, problems)
    if records:
        result.records = pd.concat(records, ignore_index=True)
    return result


def load_benchmarks(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All benchmark rows under ``root`` (failed measurements included, ``ok`` False) and the problems."""
    res = load_results(root)
    return res.benchmarks, res.problems


def load_correctness(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All correctness rows under ``root`` and the problems."""
    res = load_results(root)
    return res.correctness, res.problems


# --- analysis helpers (pure pandas) -------------------------------------------------------------------------


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """Successful benchmark rows, the most recent one per (configuration, provider)."""
    ok = df[df["ok"].astype(bool)] if len(df) else df
    if ok.empty:
        return ok
    ok = ok.sort_values(["timestamp", "source"])
    return ok.drop_duplicates([*CONFIG_KEYS, "provider"], keep="last")


def speedups(df: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (configuration, provider ≠ baseline) with ``speedup = ms(baseline) / ms(provider)``.

    ``df`` should have one row per configuration and provider (see :func:`latest`). A speed-up above 1 means
    the provider is faster than the baseline.
    """
    cols = [*CONFIG_KEYS, "provider", "shape", "numel", "ms_median", "gbps", "pct_of_peak", "speedup", "baseline_ms"]
    if df.empty or baseline not in set(df["provider"]):
        return pd.DataFrame(columns=cols)
    keys = CONFIG_KEYS
    base = df[df["provider"] == baseline][[*keys, "ms_median"]].rename(columns={"ms_median": "baseline_ms"})
    other = df[df["provider"] != baseline]
    merged = other.merge(base, on=keys, how="inner")
    merged["speedup"] = merged["baseline_ms"] / merged["ms_median"]
    return merged[[c for c in cols if c in merged.columns] + [c for c in merged.columns if c not in cols]]


def geomean(values) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
    if not vals:
        return float("nan")
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


HEADLINES = [("train", "fwd_bwd"), ("eval", "fwd")]


def headline(df: pd.DataFrame, provider: str = "tritonbn") -> pd.DataFrame:
    """Per GPU, dtype and headline (mode, pass): geomean speed-up of ``provider`` vs cuDNN, best and worst
    shape, median % of peak bandwidth."""
    cols = ["gpu", "dtype", "mode", "pass", "shapes", "geomean", "best", "best_x", "worst", "worst_x", "pct_peak"]
    sp = speedups(latest(df))
    if sp.empty:
        return pd.DataFrame(columns=cols)
    sp = sp[sp["provider"] == provider]
    rows = []
    for (gpu, dtype, mode, pas), g in sp.groupby(["gpu", "dtype", "mode", "pass"], sort=True):
        if (mode, pas) not in HEADLINES:
            continue
        g = g.dropna(subset=["speedup"])
        if g.empty:
            continue
        best, worst = g.loc[g["speedup"].idxmax()], g.loc[g["speedup"].idxmin()]
        rows.append(
            {
                "gpu": gpu,
                "dtype": dtype,
                "mode": mode,
                "pass": pas,
                "shapes": len(g),
                "geomean": geomean(g["speedup"]),
                "best": f"{best['shape']} {best['layout']}",
                "best_x": best["speedup"],
                "worst": f"{worst['shape']} {worst['layout']}",
                "worst_x": worst["speedup"],
                "pct_peak": g["pct_of_peak"].median(),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def latest_correctness_runs(corr: pd.DataFrame) -> pd.DataFrame:
    """The rows of the most recent correctness run (result file) per device."""
    if corr.empty:
        return corr
    newest = corr.sort_values(["timestamp", "source"]).groupby("device", sort=False)["source"].last()
    return corr[corr["source"].isin(set(newest))]


def pass_rates(corr: pd.DataFrame, by: tuple[str, ...] = ("device", "provider", "dtype")) -> pd.DataFrame:
    """Correctness pass rate per group: checks run (skipped ones excluded), passed, failed, rate (0..1)."""
    cols = [*by, "checks", "passed", "failed", "rate"]
    run = corr[corr["passed"].notna()] if not corr.empty else corr
    if run.empty:
        return pd.DataFrame(columns=cols)
    g = run.assign(_p=(run["passed"] == True).astype(int))  # noqa: E712
    out = g.groupby(list(by), sort=True).agg(checks=("_p", "size"), passed=("_p", "sum")).reset_index()
    out["failed"] = out["checks"] - out["passed"]
    out["rate"] = out["passed"] / out["checks"]
    return out[cols]


def provenance(df: pd.DataFrame) -> pd.DataFrame:
    """One row per result file with its provenance (first row's values; several are joined with ' / ')."""
    cols = ["source", *PROVENANCE_COLUMNS]
    if df.empty:
        return pd.DataFrame(columns=[*cols, "rows"])
    present = [c for c in cols if c in df.columns]
    rows = []
    for source, g in df.groupby("source", sort=True):
        row = {"source": source, "rows": len(g)}
        for c in present[1:]:
            vals = [str(v) for v in pd.unique(g[c].astype(str)) if str(v) not in ("", "nan")]
            if c == "timestamp" and vals:
                vals = [min(vals)] if len(vals) == 1 else [f"{min(vals)} … {max(vals)}"]
            row[c] = " / ".join(vals[:3]) + (" …" if len(vals) > 3 else "")
        rows.append(row)
    return pd.DataFrame(rows, columns=[*cols, "rows"])


def compare_benchmark_runs(df: pd.DataFrame, run_a: str, run_b: str) -> pd.DataFrame:
    """Rows measured in both runs (files): ms in each and ``ratio = ms_b / ms_a`` (below 1: B is faster)."""
    keys = [k for k in CONFIG_KEYS if k != "gpu"] + ["provider"]
    ok = df[df["ok"].astype(bool)] if len(df) else df
    a = ok[ok["source"] == run_a].drop_duplicates(keys, keep="last")
    b = ok[ok["source"] == run_b].drop_duplicates(keys, keep="last")
    m = a[[*keys, "shape", "numel", "ms_median", "gbps"]].merge(
        b[[*keys, "ms_median", "gbps"]], on=keys, suffixes=("_a", "_b")
    )
    m["ratio"] = m["ms_median_b"] / m["ms_median_a"]
    return m


def compare_correctness_runs(df: pd.DataFrame, run_a: str, run_b: str) -> pd.DataFrame:
    """Checks present in both runs: errors and pass/fail in each, with a ``changed`` flag."""
    keys = ["provider", "case", "dtype", "layout", "mode", "quantity"]
    a = df[df["source"] == run_a].drop_duplicates(keys, keep="last")
    b = df[df["source"] == run_b].drop_duplicates(keys, keep="last")
    m = a[[*keys, "max_abs_err", "passed"]].merge(b[[*keys, "max_abs_err", "passed"]], on=keys, suffixes=("_a", "_b"))
    both_skipped = m["passed_a"].isna() & m["passed_b"].isna()
    m["changed"] = ~both_skipped & (m["passed_a"].astype(str) != m["passed_b"].astype(str))
    return m
