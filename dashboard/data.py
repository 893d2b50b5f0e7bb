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

from tritonbn import schema

# The columns come from tritonbn.schema, which the tools write with (it imports neither torch nor triton).
PROVENANCE_COLUMNS = list(schema.PROVENANCE_COLUMNS)
BENCHMARK_COLUMNS = list(schema.BENCH_REQUIRED)
BENCHMARK_NUMERIC = ["dim", "N", "C", "numel", "bytes", "ms_median", "ms_p20", "ms_p80", "gbps", "peak_gbps"]
BENCHMARK_NUMERIC += ["pct_of_peak", "wall_ms", "own_bytes"]
# Optional benchmark columns, filled in when a file lacks them: failed providers are recorded with empty
# timings and a status (``error: <message>``); ``error`` is a message column the dashboard shows when a file
# has one.
BENCHMARK_OPTIONAL = [*schema.BENCH_APPENDED, "error"]

CORRECTNESS_COLUMNS = list(schema.CORRECTNESS_REQUIRED)
CORRECTNESS_NUMERIC = ["max_abs_err", "max_rel_err", "tol"]
# Optional correctness columns: ``status`` is ok | fail | error | skipped, ``note`` says why.
CORRECTNESS_OPTIONAL = list(schema.CORRECTNESS_APPENDED)

# The records of ``tritonbn-gpu-session`` steps, ``tritonbn-bench --host`` and ``tritonbn-aot``, by the ending
# of their file names (``<date>_<sha>_env.csv``): listed as runs of their own kind, not read as benchmark or
# correctness files.
SESSION_RECORD_KINDS = schema.RECORD_KINDS

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
    #: every row of the ``tritonbn-aot`` reports (:data:`tritonbn.schema.AOT_COLUMNS`, numbers parsed)
    aot: pd.DataFrame = field(default_factory=lambda: empty_record("aot"))
    #: every row of the ``tritonbn-bench --host`` records (:data:`tritonbn.schema.HOST_COLUMNS`)
    host: pd.DataFrame = field(default_factory=lambda: empty_record("host"))

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
    extra = ["source", "ok", "shape", "config", "own_gbps", "own_pct_of_peak"]
    return pd.DataFrame(columns=[*BENCHMARK_COLUMNS, *BENCHMARK_OPTIONAL, *extra])


def empty_correctness() -> pd.DataFrame:
    return pd.DataFrame(columns=[*CORRECTNESS_COLUMNS, *CORRECTNESS_OPTIONAL, "source", "result"])


# The record kinds whose rows the pages read in full (the others are listed with their provenance only):
# their columns and which of them are numbers.
RECORD_COLUMNS = {"aot": schema.AOT_COLUMNS, "host": schema.HOST_COLUMNS}
RECORD_NUMERIC = {"aot": list(schema.AOT_NUMERIC), "host": list(schema.HOST_NUMERIC)}


def empty_record(kind: str) -> pd.DataFrame:
    return pd.DataFrame(columns=[*RECORD_COLUMNS[kind], "source"])


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
    # GB/s at the traffic of the implementation's own passes (where the tool modelled it), and its % of copy
    df["own_gbps"] = df["own_bytes"] / (df["ms_median"] * 1e6)
    df["own_pct_of_peak"] = 100 * df["own_gbps"] / df["peak_gbps"]
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
        if record in RECORD_COLUMNS:
            columns = RECORD_COLUMNS[record]
            for col in columns:  # reports made before a column existed (e.g. program_instructions)
                if col not in df:
                    df[col] = ""
            _to_numeric(df, [c for c in RECORD_NUMERIC[record] if c in df], name, problems)
            if record == "aot":
                _to_bool(df, "hot", name, problems)
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
    full: dict[str, list[pd.DataFrame]] = {kind: [] for kind in RECORD_COLUMNS}
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
            if kind in RECORD_COLUMNS:
                full[kind].append(df)
    bench = pd.concat(frames["benchmark"], ignore_index=True) if frames["benchmark"] else empty_benchmarks()
    corr = pd.concat(frames["correctness"], ignore_index=True) if frames["correctness"] else empty_correctness()
    result = Results(bench, corr, files, problems)
    if records:
        result.records = pd.concat(records, ignore_index=True)
    for kind, dfs in full.items():
        if dfs:
            setattr(result, kind, pd.concat(dfs, ignore_index=True))
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


def runs(df: pd.DataFrame) -> list[str]:
    """The runs (result files, ``source``) of ``df`` in the order they were made: by the timestamp their rows
    record (the start of the run), then by file name. Not by file name alone: two runs of one day are named
    by their commits, whose hashes do not sort in time."""
    if df.empty:
        return []
    started = df.groupby("source", sort=False)["timestamp"].min().astype(str)
    return sorted(started.index, key=lambda src: (started[src], src))


def run_started(df: pd.DataFrame, source: str) -> str:
    """When ``source`` started, as ``YYYY-MM-DD HH:MM UTC`` (the raw value when it is not ISO 8601)."""
    ts = df.loc[df["source"] == source, "timestamp"].astype(str)
    if ts.empty:
        return ""
    t = pd.to_datetime(ts.min(), utc=True, errors="coerce")
    return ts.min() if pd.isna(t) else t.strftime("%Y-%m-%d %H:%M UTC")


def latest_correctness_runs(corr: pd.DataFrame) -> pd.DataFrame:
    """The rows of the most recent correctness run (result file, see :func:`runs`) per device."""
    if corr.empty:
        return corr
    newest = {device: runs(g)[-1] for device, g in corr.groupby("device", sort=False)}
    return corr[corr["source"].isin(set(newest.values()))]


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


def provenance_compact(prov: pd.DataFrame) -> pd.DataFrame:
    """:func:`provenance` in four columns that fit a page: ``started`` (UTC, to the minute), ``commit``,
    ``device`` (the GPU, with its compute capability) and ``versions`` (torch, CUDA, cuDNN and Triton, the
    ones present)."""
    cols = ["source", "started", "commit", "device", "versions", "rows"]
    if prov.empty:
        return pd.DataFrame(columns=cols)

    def present(v) -> bool:
        return str(v) not in ("", "nan", "none", "None")

    def versions(r) -> str:
        names = (("torch", "torch"), ("cuda", "CUDA"), ("cudnn", "cuDNN"), ("triton", "triton"))
        return " · ".join(f"{label} {r[c]}" for c, label in names if c in r and present(r[c]))

    def device(r) -> str:
        gpu, cc = r.get("gpu", ""), r.get("compute_capability", "")
        if not present(gpu):  # a report compiled for targets, on no GPU (tritonbn-aot)
            return f"sm {cc}" if present(cc) else ""
        return f"{gpu} (cc {cc})" if present(cc) else str(gpu)

    out = pd.DataFrame(
        {
            "source": prov["source"],
            "started": prov["timestamp"].astype(str).str.replace("T", " ").str.replace(r":\d\dZ$", "", regex=True),
            "commit": prov["git_sha"],
            "device": [device(r) for _, r in prov.iterrows()],
            "versions": [versions(r) for _, r in prov.iterrows()],
            "rows": prov.get("rows", ""),
        }
    )
    return out[cols]


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


# --- ahead-of-time kernel reports and host records ---------------------------------------------------------------


def aot_rows(aot: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows of one ``tritonbn-aot`` report with the columns the Kernels page adds: ``path`` (``loop``: the
    program loops over tiles, the streaming path of large tensors; ``one-tile``), ``tile`` (``N×S×C``),
    ``budgeted`` (a hot kernel whose threads hold enough elements for the instruction budget to apply) and
    ``over`` (what of the budget of :data:`tritonbn.schema.AOT_BUDGET` the row exceeds, empty if nothing),
    judged by :func:`tritonbn.schema.aot_excess` as ``tritonbn-aot --check`` judges it."""
    d = aot[aot["source"] == source].copy()
    if d.empty:
        return d.assign(path=[], tile=[], budgeted=[], over=[])
    records = d.to_dict("records")
    d["path"] = [schema.aot_path(r) for r in records]
    d["tile"] = [
        "×".join(str(int(v)) if pd.notna(v) else "?" for v in t)
        for t in zip(d["block_n"], d["block_s"], d["block_c"], strict=True)
    ]
    ok = d["status"].astype(str).str.strip().str.lower() == "ok"
    hot = d["hot"].fillna(False).astype(bool) & ok
    d["budgeted"] = hot & pd.Series([schema.aot_budget_applies(r) for r in records], index=d.index)
    labels = {
        "registers": "{:.0f} registers",
        "spill_bytes": "spills {:.0f} B",
        "div64_per_thread": "64-bit division",
        "instructions_per_element": "{:g} instructions/element",
    }
    over = []
    for r, is_ok, is_hot in zip(records, ok, hot, strict=True):
        if not is_ok:
            over.append("does not compile")
        else:
            excess = schema.aot_excess(r) if is_hot else {}
            over.append(", ".join(labels[col].format(v) for col, v in excess.items()))
    d["over"] = over
    return d


def aot_history(aot: pd.DataFrame) -> pd.DataFrame:
    """One row per ``tritonbn-aot`` report (oldest first) and arch: specialisations, compile errors, the hot
    rows over the budget, and the worst registers and instructions per element of a hot kernel."""
    cols = ["source", "started", "git_sha", "triton", "arch", "rows", "errors", "hot", "over_budget"]
    cols += ["max_registers", "max_instructions_per_element", "median_instructions_per_element"]
    out = []
    for source in runs(aot):
        d = aot_rows(aot, source)
        for arch, g in d.groupby("arch", sort=True):
            hot = g[g["hot"].fillna(False).astype(bool)]
            b = g[g["budgeted"]]
            out.append(
                {
                    "source": source,
                    "started": run_started(aot, source),
                    "git_sha": g["git_sha"].iloc[0],
                    "triton": g["triton"].iloc[0],
                    "arch": arch,
                    "rows": len(g),
                    "errors": int((g["over"] == "does not compile").sum()),
                    "hot": len(hot),
                    "over_budget": int((hot["over"] != "").sum()),
                    "max_registers": hot["registers"].max(),
                    "max_instructions_per_element": b["instructions_per_element"].max(),
                    "median_instructions_per_element": b["instructions_per_element"].median(),
                }
            )
    return pd.DataFrame(out, columns=cols)


HOST_PASS_ORDER = list(schema.HOST_PASSES)


def _host_call(d: pd.DataFrame) -> pd.Series:
    """The call each host row measured: ``shape dtype layout``."""
    return d["shape"].astype(str) + " " + d["dtype"].astype(str) + " " + d["layout"].astype(str)


def host_calls(host: pd.DataFrame, source: str) -> list[str]:
    """The calls (``shape dtype layout``) a ``tritonbn-bench --host`` record measured, in its order."""
    return list(dict.fromkeys(_host_call(host[host["source"] == source])))


def host_table(host: pd.DataFrame, source: str, call: str | None = None) -> pd.DataFrame:
    """One row per pass of a ``tritonbn-bench --host`` record (of one call, ``shape dtype layout`` of
    :func:`host_calls`, the first by default): launches and host µs per call of tritonbn and of torch, and
    their ratio (tritonbn / torch; NaN where one of them was not measured)."""
    cols = ["pass", "shape", "dtype", "layout", "tritonbn_launches", "torch_launches", "tritonbn_us", "torch_us"]
    cols += ["ratio", "tritonbn_kernels", "torch_kernels"]
    d = host[host["source"] == source]
    calls = host_calls(host, source)
    if d.empty or (call is not None and call not in calls):
        return pd.DataFrame(columns=cols)
    call = call or calls[0]
    d = d[_host_call(d) == call]
    rows = []
    for (pas, shape, dtype, layout), g in d.groupby(["pass", "shape", "dtype", "layout"], sort=False):
        ours, theirs = g[g["impl"] == "tritonbn"], g[g["impl"] == "torch"]
        first = lambda f, c: f[c].iloc[0] if len(f) else float("nan")  # noqa: E731
        recorded = first(ours, "host_ratio")
        rows.append(
            {
                "pass": pas,
                "shape": shape,
                "dtype": dtype,
                "layout": layout,
                "tritonbn_launches": first(ours, "launches"),
                "torch_launches": first(theirs, "launches"),
                "tritonbn_us": first(ours, "host_us"),
                "torch_us": first(theirs, "host_us"),
                # as the tool recorded it; computed from the two times for a record without it
                "ratio": recorded if pd.notna(recorded) else first(ours, "host_us") / first(theirs, "host_us"),
                "tritonbn_kernels": first(ours, "kernels") if len(ours) else "",
                "torch_kernels": first(theirs, "kernels") if len(theirs) else "",
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    order = {p: i for i, p in enumerate(HOST_PASS_ORDER)}
    return out.sort_values("pass", key=lambda s: s.map(lambda p: order.get(p, len(order))), kind="stable")
