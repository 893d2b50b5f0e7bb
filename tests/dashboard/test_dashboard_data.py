"""Unit tests of the dashboard's data layer: reading, classifying and validating result CSVs."""

from __future__ import annotations

import math
import os

import dashboard_fixtures as fixtures
import pandas as pd
import pytest

from dashboard import data, ui


def _one(tmp_path, name, rows_or_text):
    path = tmp_path / name
    if isinstance(rows_or_text, str | bytes):
        path.write_bytes(rows_or_text.encode() if isinstance(rows_or_text, str) else rows_or_text)
    else:
        fixtures.write_csv(path, rows_or_text)
    return data.load_results(tmp_path)


def test_classify_by_columns():
    assert data.classify(data.BENCHMARK_COLUMNS) == "benchmark"
    assert data.classify(data.CORRECTNESS_COLUMNS) == "correctness"
    assert data.classify(["provider", "ms_median", "gbps"]) == "benchmark"
    assert data.classify(["provider", "quantity", "passed"]) == "correctness"
    assert data.classify(["a", "b"]) is None


def test_good_folder_loads_without_problems(folders):
    res = data.load_results(folders["good"])
    assert res.problems == []
    assert {f.kind for f in res.files} == {"benchmark", "correctness", "aot", "host"}
    assert len(res.files) == 7
    assert len(res.aot) == len(fixtures.aot_rows()) and res.aot["registers"].dtype == float
    assert res.aot["hot"].all() and len(res.host) == len(fixtures.host_rows())
    assert set(res.benchmarks["provider"]) == set(data.BENCHMARK_PROVIDERS)
    assert set(res.correctness["device"]) == {"cpu-interpreter", fixtures.GPU}
    # Failed providers are kept (and counted) but flagged: they are results, not file problems.
    failed = res.benchmarks[~res.benchmarks["ok"]]
    assert len(failed) > 0 and set(failed["provider"]) == {"inductor"}
    assert failed["ms_median"].isna().all()
    assert res.benchmarks["source"].str.endswith(".csv").all()


def test_shape_labels():
    assert data.shape_label(2, 32.0, 64.0, "56x56") == "32×64×56×56"
    assert data.shape_label(1, 256.0, 1024.0, "") == "256×1024"
    assert data.shape_label(3, 2, 32, "16x32x32") == "2×32×16×32×32"


def test_missing_required_columns_are_named(tmp_path):
    rows = fixtures.benchmark_rows()[:3]
    for r in rows:
        del r["ms_p80"], r["gpu"]
    res = _one(tmp_path, "bench.csv", rows)
    assert res.benchmarks.empty
    assert res.problems == ["bench.csv: benchmark file is missing required column(s): gpu, ms_p80"]

    rows = fixtures.correctness_rows()[:3]
    for r in rows:
        del r["tol"]
    res = data.load_results(fixtures.write_csv(tmp_path / "c" / "corr.csv", rows).parent)
    assert res.problems == ["corr.csv: correctness file is missing required column(s): tol"]


def test_extra_columns_and_optional_ones_are_fine(tmp_path):
    rows = fixtures.benchmark_rows()[:4]
    for r in rows:
        r["my_note"] = "hello"
        del r["suite"], r["status"], r["error"]
    res = _one(tmp_path, "b.csv", rows)
    assert res.problems == []
    assert len(res.benchmarks) == 4 and res.benchmarks["ok"].all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file (0 bytes)"),
        (b"\x00\xff\xfe\x00garbage", "not a readable CSV"),
        ("a,b,c\n1,2,3\n", "neither a benchmark nor a correctness file"),
        (",".join(data.CORRECTNESS_COLUMNS) + "\n", "correctness file has a header but no rows"),
        ("\n\n", "empty file (no header)"),
    ],
)
def test_unreadable_files_give_a_problem_naming_them(tmp_path, content, message):
    res = _one(tmp_path, "bad.csv", content)
    assert len(res.problems) == 1
    assert res.problems[0].startswith("bad.csv: ") and message in res.problems[0]
    assert res.benchmarks.empty and res.correctness.empty
    assert res.files[0].path == "bad.csv"


def test_non_numeric_values_are_reported_and_ignored(tmp_path):
    rows = fixtures.benchmark_rows()[:5]
    rows[0]["ms_median"] = "fast"
    rows[1]["gbps"] = "??"
    rows[2]["affine"] = "maybe"
    rows[3]["mode"] = "training"
    res = _one(tmp_path, "b.csv", rows)
    text = "\n".join(res.problems)
    assert "b.csv: column 'ms_median' has 1 non-numeric value(s) ('fast')" in text
    assert "column 'gbps' has 1 non-numeric value(s) ('??')" in text
    assert "column 'affine' has 1 value(s) that are not true/false ('maybe')" in text
    assert "column 'mode' has unexpected value(s) 'training'" in text
    assert len(res.benchmarks) == 5
    assert not res.benchmarks["ok"].iloc[0]  # no timing: not plotted
    assert math.isclose(res.benchmarks["gbps"].iloc[1], rows[1]["bytes"] / (rows[1]["ms_median"] * 1e6))


def test_ragged_lines(tmp_path):
    header = ",".join(data.CORRECTNESS_COLUMNS)
    good = fixtures.correctness_rows()[0]
    line = ",".join(str(good[c]) for c in data.CORRECTNESS_COLUMNS)
    res = _one(tmp_path, "c.csv", f"{header}\n{line}\n{line},1,2,3\ntritonbn,x\n")
    text = "\n".join(res.problems)
    assert "1 line(s) with more fields than the header skipped" in text
    assert "1 line(s) with fewer fields than the header" in text
    assert len(res.correctness) == 2


def test_missing_folder(tmp_path):
    res = data.load_results(tmp_path / "nope")
    assert res.files == [] and res.benchmarks.empty and res.correctness.empty
    assert res.problems == [f"results folder {tmp_path / 'nope'} does not exist"]
    assert data.signature(tmp_path / "nope") == ()


def test_signature_follows_files(tmp_path):
    fixtures.write_csv(tmp_path / "a" / "x.csv", fixtures.correctness_rows()[:2])
    sig = data.signature(tmp_path)
    assert [s[0] for s in sig] == ["a/x.csv"]
    st = (tmp_path / "a" / "x.csv").stat()
    os.utime(tmp_path / "a" / "x.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert data.signature(tmp_path) != sig


def _frame(rows):
    df = pd.DataFrame(rows)
    for c in data.BENCHMARK_COLUMNS:
        if c not in df:
            df[c] = ""
    df["source"] = "r.csv"
    df["ok"] = True
    df["shape"] = df["N"].astype(str)
    return df


def test_speedups_and_headline_geomean():
    base = {"gpu": "G", "dim": 2, "C": 8, "spatial": "4x4", "dtype": "float16", "layout": "contiguous"}
    base |= {"affine": True, "timestamp": "t", "pct_of_peak": 50.0, "numel": 1}
    rows = []
    for n, (ours, cudnn) in zip((1, 2, 3), ((1.0, 2.0), (1.0, 0.5), (1.0, 8.0)), strict=True):
        for mode, pas in (("train", "fwd_bwd"), ("eval", "fwd")):
            rows.append({**base, "N": n, "mode": mode, "pass": pas, "provider": "tritonbn", "ms_median": ours})
            rows.append({**base, "N": n, "mode": mode, "pass": pas, "provider": "cudnn", "ms_median": cudnn})
    df = _frame(rows)
    sp = data.speedups(df)
    assert sorted(sp.loc[sp["mode"] == "train", "speedup"]) == [0.5, 2.0, 8.0]
    head = data.headline(df)
    assert list(head["mode"]) == ["eval", "train"]
    assert head["geomean"].tolist() == pytest.approx([2.0, 2.0])  # (2 · 0.5 · 8)^(1/3)
    assert head["best_x"].tolist() == [8.0, 8.0] and head["worst_x"].tolist() == [0.5, 0.5]
    assert head["best"].iloc[0].startswith("3") and head["worst"].iloc[0].startswith("2")


def test_latest_keeps_the_newest_measurement():
    base = {"gpu": "G", "dim": 2, "N": 1, "C": 8, "spatial": "4x4", "dtype": "float16", "layout": "contiguous"}
    base |= {"affine": True, "mode": "eval", "pass": "fwd", "provider": "tritonbn"}
    df = _frame(
        [{**base, "timestamp": "2025-01-02", "ms_median": 2.0}, {**base, "timestamp": "2025-01-09", "ms_median": 1.0}]
    )
    assert data.latest(df)["ms_median"].tolist() == [1.0]


def test_pass_rates_and_run_comparisons(folders):
    res = data.load_results(folders["good"])
    rates = data.pass_rates(res.correctness, by=("device", "provider"))
    ours = rates[(rates["device"] == "cpu-interpreter") & (rates["provider"] == "tritonbn")].iloc[0]
    assert ours["failed"] == 3  # both interpreter runs pooled: 1 + 2
    latest = data.pass_rates(data.latest_correctness_runs(res.correctness), by=("device", "provider"))
    ours = latest[(latest["device"] == "cpu-interpreter") & (latest["provider"] == "tritonbn")].iloc[0]
    assert ours["failed"] == 2 and ours["rate"] == pytest.approx(1 - 2 / ours["checks"])
    a, b = data.runs(res.benchmarks)
    cmp = data.compare_benchmark_runs(res.benchmarks, a, b)
    assert len(cmp) > 0 and cmp["ratio"].between(0.85, 0.95).all()  # run B is 1.1× faster everywhere
    interp = res.correctness[res.correctness["device"] == "cpu-interpreter"]
    a, b = data.runs(interp)
    assert b == fixtures.LATER_CHECK  # by time, although its name sorts first
    cmpc = data.compare_correctness_runs(res.correctness, a, b)
    assert cmpc["changed"].sum() == 1
    skipped = res.correctness.assign(passed=None)  # a check skipped in both runs has not changed
    assert not data.compare_correctness_runs(skipped, a, b)["changed"].any()
    newest = data.latest_correctness_runs(res.correctness)
    assert newest.groupby("device")["source"].nunique().eq(1).all()
    assert fixtures.LATER_CHECK in set(newest["source"])
    prov = data.provenance(res.benchmarks)
    assert list(prov["git_sha"]) == ["abc1234", "def5678"]


def test_default_results_dir_precedence(tmp_path):
    env = {"TRITONBN_RESULTS": "from-env"}
    assert ui.default_results_dir(["--results", "from-cli"], env) == "from-cli"
    assert ui.default_results_dir(["--server.port", "1", "--results=cli2"], env) == "cli2"
    assert ui.default_results_dir([], env) == "from-env"
    assert ui.default_results_dir(["-q", "tests"], {}) == str(ui.DEFAULT_RESULTS)
    assert ui.DEFAULT_RESULTS == ui.REPO_ROOT / "bench_results"
    assert ui.resolve(str(tmp_path)) == tmp_path


def test_correctness_results_as_the_harness_writes_them(folders):
    res = data.load_results(folders["harness_like"])
    assert res.problems == []
    c = res.correctness
    assert set(c["dtype"]) == {"float32", "float64"}  # fp32 / fp64 normalised
    assert c["result"].value_counts().to_dict() == {"passed": 111, "FAILED": 1, "skipped": 1, "error": 1}
    rates = data.pass_rates(c, by=("provider",)).set_index("provider")
    assert rates.loc["tritonbn", "checks"] == 57 and rates.loc["tritonbn", "failed"] == 2  # error counts
    assert rates.loc["torch", "checks"] == 56  # the skipped row is not a check


def test_a_file_the_tools_write_is_read_without_problems(tmp_path):
    """The dashboard reads the columns the tools write (both from tritonbn.schema), appended ones included."""
    from tritonbn import schema

    bench = fixtures.benchmark_rows()[0] | {"suite": "quick", "status": "ok", "timer": "do_bench", "wall_ms": 0.5}
    with schema.CsvWriter(tmp_path / "gpu" / "2025-01-01_abc1234.csv", schema.BENCH_COLUMNS) as w:
        w.write({c: bench.get(c) for c in schema.BENCH_COLUMNS})
    check = fixtures.correctness_rows()[0] | {"backend": "triton", "status": "ok", "note": ""}
    with schema.CsvWriter(tmp_path / "gpu" / "2025-01-01_abc1234_check.csv", schema.CORRECTNESS_COLUMNS) as w:
        w.write({c: check.get(c) for c in schema.CORRECTNESS_COLUMNS})
    res = data.load_results(tmp_path)
    assert res.problems == []
    assert [f.kind for f in res.files] == ["benchmark", "correctness"]
    assert res.benchmarks["wall_ms"].tolist() == [0.5]


def test_gpu_session_records_are_runs_not_problems(tmp_path):
    """The env/tests/kernels/sync/train records of a GPU session are listed as their own kinds, with their
    provenance, and never mistaken for malformed benchmark or correctness files."""
    fixtures.write_good(tmp_path)
    prov = fixtures.benchmark_rows()[0]
    prov = {c: prov[c] for c in data.PROVENANCE_COLUMNS}
    records = {
        "env": [{**prov, "quantity": "copy_gbps", "value": "4300.0", "unit": "GB/s"}],
        "tests": [{**prov, "run": "tests", "nodeid": "tests/t.py::a", "outcome": "passed", "seconds": "1.0"}],
        "kernels": [{**prov, "kernel": "k", "registers": "40", "spills": "0"}],
        "sync": [{**prov, "check": "gloo-2", "quantity": "y", "max_rel_err": "1e-7", "tol": "1e-5", "passed": "true"}],
        "train": [{**prov, "model": "resnet50", "batch_norm": "torch", "ms_median": "90.0", "status": "ok"}],
    }
    for kind, rows in records.items():
        fixtures.write_csv(tmp_path / "nvidia-h100" / f"2025-01-09_def5678_{kind}.csv", rows)
    res = data.load_results(tmp_path)
    assert res.problems == []
    kinds = {f.path.rsplit("_", 1)[-1][:-4]: f.kind for f in res.files if f.kind in records}
    assert kinds == {k: k for k in records}
    assert all(f.rows == 1 for f in res.files if f.kind in records)
    session = res.records[res.records["source"].str.startswith("nvidia-h100/")]
    assert len(session) == 5 and set(session["gpu"]) == {prov["gpu"]}
    assert len(res.benchmarks) == len(data.load_results(fixtures.write_good(tmp_path / "plain")).benchmarks)


def test_a_session_record_without_provenance_is_a_problem(tmp_path):
    res = _one(tmp_path, "2025-01-09_def5678_env.csv", "quantity,value\ncopy_gbps,1\n")
    assert res.problems == ["2025-01-09_def5678_env.csv: env record is missing column(s): " + ", ".join(
        data.PROVENANCE_COLUMNS)]  # fmt: skip


def test_wall_time_column_is_numeric_and_optional(tmp_path):
    rows = fixtures.benchmark_rows()[:4]
    for i, r in enumerate(rows):
        r["wall_ms"] = "" if i == 0 else str(0.5 + i)
    res = _one(tmp_path, "bench.csv", rows)
    assert res.problems == []
    assert res.benchmarks["wall_ms"].isna().sum() == 1 and res.benchmarks["wall_ms"].max() == 3.5
    before = [{k: v for k, v in r.items() if k not in ("wall_ms", "own_bytes")} for r in fixtures.benchmark_rows()[:4]]
    old = _one(tmp_path / "old", "bench.csv", before)  # files from before the column
    assert old.problems == [] and old.benchmarks["wall_ms"].isna().all()


def test_runs_are_ordered_by_the_time_they_record():
    """Two runs of one day are named by their commits, which do not sort in time: the timestamp decides."""
    df = pd.DataFrame(
        {
            "source": ["x/2025-01-09_fff0000.csv", "x/2025-01-09_0000fff.csv", "x/2025-01-09_0000fff.csv"],
            "timestamp": ["2025-01-09T01:00:00Z", "2025-01-09T23:00:00Z", "2025-01-09T23:00:00Z"],
        }
    )
    assert data.runs(df) == ["x/2025-01-09_fff0000.csv", "x/2025-01-09_0000fff.csv"]
    assert data.run_started(df, "x/2025-01-09_0000fff.csv") == "2025-01-09 23:00 UTC"
    assert data.run_started(df.assign(timestamp="yesterday"), "x/2025-01-09_0000fff.csv") == "yesterday"
    assert data.runs(df.iloc[:0]) == []


def test_error_floor_keeps_the_axis_on_the_errors_that_matter():
    from dashboard import plots

    errors = pd.Series([0.0, 1e-21, 3e-8, 2e-7, 5e-6])
    tol = pd.Series([1e-5] * 5)
    floor = plots.error_floor(errors, tol)
    assert floor == pytest.approx(1e-5 / plots.ERROR_FLOOR_BELOW_TOL)  # not 1e-22: zeros and 1e-21 sit on it
    assert plots.error_floor(pd.Series([1e-3, 2e-3]), tol) == pytest.approx(1e-4)  # a decade below the least
    assert plots.error_floor(errors) == pytest.approx(5e-6 / plots.ERROR_SPAN)
    assert plots.error_floor(pd.Series([0.0, 0.0])) == 1e-16
    fig = plots.error_by_quantity(
        pd.DataFrame(
            {
                "provider": "tritonbn",
                "dtype": "float32",
                "quantity": ["y", "dx", "dweight"],
                "max_rel_err": [0.0, 1e-21, 3e-6],
                "tol": 1e-5,
                "passed": True,
            }
        )
    )
    ys = [y for tr in fig.data if tr.mode == "markers" for y in tr.y]
    assert min(ys) == pytest.approx(1e-9) and max(ys) == pytest.approx(3e-6)
    assert fig.layout.legend.orientation == "v"  # on the right: on top it covered the subtitle


def test_aot_rows_budget_and_history():
    aot = pd.DataFrame(fixtures.aot_rows()).assign(source="aot/3.9.0_abc1234_aot.csv")
    rows = data.aot_rows(aot, "aot/3.9.0_abc1234_aot.csv")
    assert set(rows["path"]) == {"loop", "one-tile"} and rows["tile"].iloc[0] == "1×256×1"
    over = rows[rows["over"] != ""]
    assert len(over) == 2 and set(over["over"]) == {"30 instructions/element"}  # one per arch
    small = rows[~rows["budgeted"]]
    assert (small["elements_per_thread"] < 8).all() and (small["over"] == "").all()  # too few elements to count
    bad = aot.assign(registers=200.0, spill_bytes=16.0, status=["ok"] * (len(aot) - 1) + ["error"])
    why = data.aot_rows(bad, "aot/3.9.0_abc1234_aot.csv")["over"]
    assert why.iloc[0].startswith("200 registers, spills 16 B") and why.iloc[-1] == "does not compile"
    hist = data.aot_history(aot)
    assert list(hist["arch"]) == ["sm_80", "sm_90"] and hist["over_budget"].tolist() == [1, 1]
    assert hist["max_instructions_per_element"].tolist() == [30.0, 30.0]


def test_provenance_compact_fits_a_page():
    prov = data.provenance(pd.DataFrame(fixtures.correctness_rows(fixtures.GPU)[:1]).assign(source="f.csv"))
    out = data.provenance_compact(prov)
    assert out.iloc[0].to_dict() == {
        "source": "f.csv",
        "started": "2025-01-02 03:04",
        "commit": "abc1234",
        "device": f"{fixtures.GPU} (cc 9.0)",
        "versions": "torch 2.13.0 · CUDA 12.8 · cuDNN 91000 · triton 3.9.0",
        "rows": 1,
    }
