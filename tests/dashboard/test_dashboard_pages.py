"""Every dashboard page under Streamlit's AppTest, on empty, missing, malformed and good result folders."""

from __future__ import annotations

import json

import dashboard_fixtures as fixtures
import pytest
from dashboard_fixtures import PAGES, TITLES, texts

from dashboard import data

NON_GRADIENT_PAGES = [p for p in PAGES if p != "gradients"]


@pytest.mark.parametrize("folder", ["empty", "missing", "malformed", "good", "correctness_only", "harness_like"])
@pytest.mark.parametrize("page", NON_GRADIENT_PAGES)
def test_page_renders_without_exception(open_page, folders, page, folder):
    at = open_page(page, folders[folder])
    assert [t.value for t in at.title] == [TITLES[page]]
    # The sidebar shows the folder being read.
    assert str(folders[folder].name) in texts(at.sidebar.caption)


@pytest.mark.parametrize("page", ["overview", "throughput"])
def test_no_gpu_results_is_said_plainly(open_page, folders, page):
    for folder in ("empty", "correctness_only"):
        at = open_page(page, folders[folder])
        info = texts(at.info)
        assert "No GPU benchmark results yet" in info and "tritonbn-bench" in info and "CUDA machine" in info


def test_empty_folder_messages(open_page, folders):
    at = open_page("overview", folders["empty"])
    assert "No result files" in texts(at.info)
    assert "No correctness results yet" in texts(at.info)
    assert not at.error
    at = open_page("correctness", folders["empty"])
    assert "No correctness results yet" in texts(at.info) and "tritonbn-check" in texts(at.info)


def test_missing_folder_is_an_error(open_page, folders):
    for page in NON_GRADIENT_PAGES:
        at = open_page(page, folders["missing"])
        assert "does not exist" in texts(at.error)


def test_a_file_instead_of_a_folder(open_page, folders):
    at = open_page("overview", folders["good"] / "nvidia-h100" / "2025-01-02_abc1234.csv")
    assert "is a file, not a folder" in texts(at.error)


def test_malformed_files_are_listed(open_page, folders):
    at = open_page("overview", folders["malformed"])
    err = texts(at.error)
    assert "problem(s) reading the result files" in err
    assert "empty.csv: empty file" in err and "garbage.csv: not a readable CSV" in err
    at = open_page("runs", folders["malformed"])
    md = texts(at.markdown)
    assert "missing_columns.csv: benchmark file is missing required column(s): gpu, ms_p80" in md
    assert "non_numeric.csv: column 'ms_median' has 1 non-numeric value(s) ('fast')" in md
    assert "unrelated.csv: neither a benchmark nor a correctness file" in md
    files = at.dataframe[0].value
    assert set(files["file"]) == {p.name for p in folders["malformed"].glob("*.csv")}
    # The readable rows of a partly bad file are still used.
    at = open_page("throughput", folders["malformed"])
    assert at.get("plotly_chart")


def test_overview_headline(open_page, folders):
    at = open_page("overview", folders["good"])
    assert [h.value for h in at.header] == ["Performance vs cuDNN", "Without a GPU", "Correctness", "Provenance"]
    assert fixtures.GPU in [s.value for s in at.subheader]
    labels = [m.label for m in at.metric]
    headline = [m for m in at.metric if m.label.endswith(("train fwd+bwd", "eval fwd"))]
    assert len(headline) == 6  # per dtype: train fwd+bwd and eval fwd
    assert all(m.value.endswith("×") for m in headline)
    assert "tritonbn pass rate · cpu-interpreter" in labels
    assert len(at.get("plotly_chart")) == 1
    # the latest interpreter run only (2 failures; the earlier run had 1)
    assert "tritonbn: 2 of" in texts(at.error) and "correctness checks failed" in texts(at.error)
    assert "inductor 8" in texts(at.warning)  # measurements without a timing are counted
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["launches · train step"] == "2"
    assert metrics["host time · train step"] == "1.25× torch"
    assert metrics["kernel specialisations compiled"] == "24 of 24"
    assert metrics["hot kernels within budget"] == "22 of 24"  # the one-tile float16 reduction, on both archs
    prov = at.dataframe[-1].value
    assert {"abc1234", "def5678"} <= set(prov["commit"])
    assert list(prov.columns) == ["source", "started", "commit", "device", "versions", "rows"]  # fits the page


def test_throughput_filters_and_toggles(open_page, folders):
    at = open_page("throughput", folders["good"])
    assert len(at.get("plotly_chart")) == 4  # bandwidth, speed-up by shape, GPU and wall time, heat map
    wall = at.get("plotly_chart")[2].proto.spec
    assert "eager wall time" in wall and "GPU time" in wall
    traffic = next(r for r in at.radio if r.label == "bandwidth at")
    traffic.set_value("own").run()
    assert not at.exception and "own passes" in at.get("plotly_chart")[0].proto.spec
    run = next(s for s in at.selectbox if s.label == "Run")
    assert [o.split(" · ")[0] for o in run.options[1:]] == ["2025-01-09 03:04 UTC", "2025-01-02 03:04 UTC"]
    pas = next(s for s in at.selectbox if s.label == "pass")
    assert pas.value == "fwd_bwd"
    pas.set_value("bwd").run()
    assert not at.exception
    mode = next(s for s in at.selectbox if s.label == "mode")
    mode.set_value("eval").run()
    assert not at.exception and next(s for s in at.selectbox if s.label == "pass").value == "fwd"
    run = next(s for s in at.selectbox if s.label == "Run")
    run.set_value(run.options[1]).run()
    assert not at.exception and len(at.get("plotly_chart")) == 4
    dtype = next(m for m in at.multiselect if m.label == "dtype")
    dtype.set_value(["float16"]).run()
    assert not at.exception
    layout = next(m for m in at.multiselect if m.label == "layout")
    layout.set_value([]).run()
    assert not at.exception  # empty selection: empty figures, no traceback


def test_correctness_failures_stand_out(open_page, folders):
    at = open_page("correctness", folders["good"])
    device = next(s for s in at.selectbox if s.label == "device")
    device.set_value("cpu-interpreter").run()
    assert not at.exception
    # one run at a time, the latest by default: the counts are the Overview's, nothing is counted twice
    run = next(s for s in at.selectbox if s.label == "run")
    assert run.value == fixtures.LATER_CHECK
    n_checks = len(fixtures.correctness_rows()) // 2
    assert f"tritonbn: 2 of {n_checks} checks FAILED" in texts(at.error)
    failed = at.dataframe[0].value
    assert sorted(failed["quantity"]) == ["ddx", "dweight"] and set(failed["provider"]) == {"tritonbn"}
    assert len(at.get("plotly_chart")) == 1
    run.set_value(run.options[0]).run()  # the earlier run
    assert f"tritonbn: 1 of {n_checks} checks FAILED" in texts(at.error)
    assert list(at.dataframe[0].value["quantity"]) == ["ddx"]
    assert "`in float32`" in texts(at.caption)  # the note is explained
    at.radio[0].set_value("max_abs_err").run()
    assert not at.exception
    layout = next(m for m in at.pills if m.label == "layout")
    layout.set_value(["contiguous"]).run()
    assert not at.exception and "all" in texts(at.success)
    device = next(s for s in at.selectbox if s.label == "device")
    device.set_value(fixtures.GPU).run()
    assert not at.exception and not at.error


def test_runs_compare(open_page, folders):
    at = open_page("runs", folders["good"])
    files = at.dataframe[0].value
    assert len(files) == 7
    assert list(files["started"]) == sorted(files["started"])  # oldest first
    assert len(at.get("plotly_chart")) == 1
    assert any(m.label.startswith("tritonbn: time B / time A") and m.value == "0.91×" for m in at.metric)
    at.radio[0].set_value("correctness").run()
    assert not at.exception
    # A is the earlier run, B the later one, by the time they record (not by file name)
    a, b = (next(s for s in at.selectbox if s.label.startswith(f"Run {k}")) for k in ("A", "B"))
    assert b.value == fixtures.LATER_CHECK and a.value != fixtures.LATER_CHECK
    assert b.format_func(b.value).startswith("2025-01-09 10:00 UTC · ")
    assert "changed result" in texts(at.error)


def test_gpu_session_records_on_the_runs_page(open_page, tmp_path):
    """A folder holding a GPU session's records: every page opens; Runs lists them with their provenance."""
    fixtures.write_good(tmp_path)
    prov = {c: fixtures.benchmark_rows()[0][c] for c in data.PROVENANCE_COLUMNS}
    fixtures.write_csv(
        tmp_path / "nvidia-h100" / "2025-01-09_def5678_env.csv", [{**prov, "quantity": "sm_count", "value": "132"}]
    )
    for page in NON_GRADIENT_PAGES:
        at = open_page(page, tmp_path)
        assert "problem(s) reading the result files" not in texts(at.error)
    files = at.dataframe[0].value.set_index("file")
    assert files.loc["nvidia-h100/2025-01-09_def5678_env.csv", "kind"] == "env"
    assert files.loc["nvidia-h100/2025-01-09_def5678_env.csv", "device"].startswith(prov["gpu"])


def test_results_folder_from_the_sidebar(open_page, folders):
    at = open_page("overview", folders["empty"])
    at.sidebar.text_input[0].set_value(str(folders["good"])).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1


def test_gradients_page(open_page, folders):
    at = open_page("gradients", folders["empty"], timeout=120)
    assert [h.value for h in at.header] == [
        "The formulas",
        "Live example",
        "Full vs detached statistics",
        "Frozen γ",
        "Double backward",
    ]
    assert len(at.latex) >= 5
    where = texts(at.success) + texts(at.info)
    assert "tritonbn runs here on" in where
    live = at.dataframe[0].value
    assert live["method"].iloc[0] == "closed formulas (float64)"
    assert any(m.startswith("torch autograd") for m in live["method"])
    assert any(m.startswith("tritonbn") for m in live["method"])
    assert (live[["max |Δ dx|", "max |Δ dγ|", "max |Δ dβ|"]] < 1e-10).all().all()  # float64 by default
    fvd = at.dataframe[1].value
    assert fvd["max |Σ dx| per channel"].iloc[0] < 1e-10 < fvd["max |Σ dx| per channel"].iloc[1]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["weight.grad (frozen γ)"] == "None"
    assert metrics["Σ dy·x̂ — what dγ would be"] == "2.0000"
    assert metrics["Σ dy·y — the wrong formula"] == "6.0000"
    dbl = at.dataframe[2].value
    assert len(dbl) == 3 and (dbl["max |Δ ∂penalty/∂x|"] < 1e-10).all()

    at.checkbox[0].check().run(timeout=120)  # detached statistics
    assert not at.exception
    detached = at.dataframe[0].value
    assert (detached[["max |Δ dx|", "max |Δ dγ|", "max |Δ dβ|"]] < 1e-10).all().all()
    assert "detach_stats=True" in at.code[0].value and "training=True" in at.code[0].value
    assert "does not depend on $x$" in texts(at.markdown)
    dbl = at.dataframe[2].value
    assert len(dbl) == 3 and (dbl["max |∂penalty/∂x|"] == 0).all()  # constant statistics: exactly 0
    at.radio[0].set_value("eval").run(timeout=120)
    assert not at.exception
    assert "Switch the mode to *train*" in texts(at.info)
    # eval: every section gives a result, the detach box is cleared, and the snippet says what runs
    assert not at.warning and not at.error
    assert at.checkbox[0].value is False and at.checkbox[0].disabled
    assert "training=False" in at.code[0].value and "detach_stats" not in at.code[0].value.split("\n")[0]
    dbl = at.dataframe[-1].value  # (no full-vs-detached table in eval mode)
    assert len(dbl) == 3 and (dbl["max |Δ ∂penalty/∂γ|"] < 1e-10).all() and (dbl["max |∂penalty/∂x|"] == 0).all()
    at.radio[0].set_value("train").run(timeout=120)
    assert at.checkbox[0].value is False and "training=True" in at.code[0].value
    at.radio[1].set_value("float32").run(timeout=120)
    assert not at.exception
    assert (at.dataframe[0].value["max |Δ dx|"] < 1e-4).all()


def test_correctness_page_on_harness_output(open_page, folders):
    at = open_page("correctness", folders["harness_like"])
    err = texts(at.error)
    assert "tritonbn: 2 of 57 checks FAILED" in err and "1 raised an error" in err
    failed = at.dataframe[0].value
    assert set(failed["result"]) == {"FAILED", "error"} and "RuntimeError: boom" in set(failed["note"])
    assert "1 check(s) skipped: torch has no detached-statistics batch norm (1)" in texts(at.caption)
    assert len(at.get("plotly_chart")) == 1


def test_kernels_page(open_page, folders):
    at = open_page("kernels", folders["good"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["specialisations"] == "12" and metrics["compile errors"] == "0"  # sm_90 by default
    assert metrics["hot rows over budget"] == "1 of 12" and metrics["most registers (hot)"] == "96"
    assert "1 of 12 hot specialisations (sm_90) exceed the budget" in texts(at.warning)
    assert len(at.get("plotly_chart")) == 2
    worst = at.dataframe[0].value
    assert list(worst["kernel"]) == ["backward_reduce"] and worst["instructions_per_element"].iloc[0] == 30
    # a point with fewer than 8 elements per thread is not held to the budget: not plotted, and said so
    assert "2 with fewer than 8 elements per thread" in at.get("plotly_chart")[0].proto.spec
    arch = next(s for s in at.selectbox if s.label == "arch")
    arch.set_value("sm_80").run()
    assert not at.exception and {m.label: m.value for m in at.metric}["hot rows over budget"] == "1 of 12"
    dtype = next(m for m in at.pills if m.label == "dtype")
    dtype.set_value(["float32"]).run()
    assert not at.exception and "All 6 hot specialisations (sm_80) are within the budget." in texts(at.success)
    next(m for m in at.pills if m.label == "dtype").set_value([]).run()
    assert not at.exception and not at.success and "Select at least one dtype." in texts(at.info)


def test_host_page(open_page, folders):
    at = open_page("host", folders["good"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["launches · train forward"] == "1" and metrics["launches · eval forward"] == "1"
    assert metrics["host time, train fwd+bwd"] == "1.25× torch"
    assert "within the 1.5× target" in texts(at.success)
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[0].value
    assert list(table["pass"]) == ["train_forward", "train_backward", "train_forward_backward", "eval_forward"]
    assert table["ratio"].tolist() == pytest.approx([2.5, 1.2, 1.25, 15 / 9])


@pytest.mark.parametrize("page", ["kernels", "host"])
def test_new_pages_without_records(open_page, folders, page):
    at = open_page(page, folders["correctness_only"])
    info = texts(at.info)
    assert ("No kernel report yet" if page == "kernels" else "No host record yet") in info
    assert ("tritonbn-aot" if page == "kernels" else "tritonbn-bench --host") in info


@pytest.mark.parametrize("page", ["kernels", "host", "correctness", "runs"])
def test_pages_on_the_committed_results(open_page, page):
    """The pages show the real committed results (the CPU's: kernel reports, host records, the interpreter's
    correctness runs)."""
    at = open_page(page, fixtures.REPO / "bench_results", timeout=60)
    assert not at.error and not texts(at.info).startswith("No ")
    assert at.get("plotly_chart") or page == "runs"


def test_host_record_with_two_calls_and_one_impl(open_page, tmp_path):
    """A host record of two calls, one of them measured for tritonbn only: one call at a time, '–' where there
    is no ratio, no traceback."""
    rows = fixtures.host_rows()
    other = [{**r, "shape": "8x64x7x7", "host_ratio": None} for r in rows if r["impl"] == "tritonbn"]
    fixtures.write_csv(tmp_path / "cpu" / "2025-01-02_abc1234_host.csv", rows + other)
    at = open_page("overview", tmp_path)
    assert {m.label: m.value for m in at.metric}["host time · train step"] == "1.25× torch"  # the first call
    at = open_page("host", tmp_path)
    call = next(s for s in at.selectbox if s.label == "call")
    assert call.options == ["4x16x4x4 float32 contiguous", "8x64x7x7 float32 contiguous"]
    call.set_value("8x64x7x7 float32 contiguous").run()
    assert not at.exception and not at.success and not at.warning  # no torch time: no verdict
    assert at.dataframe[0].value["torch_us"].isna().all()


def test_a_nan_error_is_a_failure_everywhere(open_page, tmp_path):
    """A check that failed with a NaN error is drawn (✕ on the panel's top line) and is the worst in the
    error / tolerance table, not skipped as pandas skips NaN."""
    rows = fixtures.correctness_rows(failures=0)
    nan = next(r for r in rows if (r["provider"], r["dtype"], r["quantity"]) == ("tritonbn", "float32", "dx"))
    nan.update(max_abs_err="nan", max_rel_err="nan", passed=False)
    fixtures.write_csv(tmp_path / "cpu-interpreter" / "2025-01-02_abc1234_check.csv", rows)
    at = open_page("correctness", tmp_path)
    assert "tritonbn: 1 of" in texts(at.error)
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "NaN: ✕ on top" in chart["layout"]["title"]["text"]
    failed = [tr for tr in chart["data"] if tr.get("name") == "failed"]
    assert len(failed) == 1 and len(failed[0]["customdata"]) == 1
    worst = next(d.value for d in at.dataframe if list(d.value.columns) == ["float32", "float64"])
    assert worst.loc["dx", "float32"].startswith("NaN · ")
