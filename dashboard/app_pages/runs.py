"""Runs: every result file with its provenance, and a side-by-side comparison of two runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data, plots, ui

st.title("Runs")
st.caption(
    "One result file is one run of `tritonbn-bench` or `tritonbn-check`, one step of `tritonbn-gpu-session` "
    "(kinds env, tests, kernels, sync, train), one `tritonbn-bench --host` (host) or one `tritonbn-aot` (aot) "
    "report, with the provenance it recorded."
)
root, res = ui.load()
if not res.files:
    st.stop()

frames = [
    f[["source", *data.PROVENANCE_COLUMNS]] for f in (res.benchmarks, res.correctness, res.records) if not f.empty
]
prov = data.provenance(pd.concat(frames, ignore_index=True)) if frames else data.provenance(pd.DataFrame())
files = res.files_frame.drop(columns=["mtime"]).merge(
    data.provenance_compact(prov).drop(columns=["rows"]), left_on="file", right_on="source", how="left"
)
files = files.drop(columns=["source"]).sort_values(["started", "file"], na_position="first", kind="stable")
st.dataframe(
    files[["started", "file", "kind", "rows", "problems", "device", "versions"]],  # (the commit is in the name)
    hide_index=True,
    column_config={
        "started": st.column_config.TextColumn("started (UTC)", help="as the run recorded it; oldest first"),
        "rows": st.column_config.NumberColumn("rows", width="small"),
        "problems": st.column_config.NumberColumn(
            "read problems", width="small", help="problems reading the file (not failed checks): see the list below"
        ),
        "device": st.column_config.TextColumn("device", width="small", help="GPU (compute capability)"),
    },
)
bad = [f for f in res.files if f.problems]
if bad:
    with st.expander(f"Problems in {len(bad)} file(s)", expanded=True):
        for f in bad:
            st.markdown(f"**{f.path}**\n" + "\n".join(f"- {p}" for p in f.problems))

st.header("Compare two runs")
st.caption(
    "Two runs of tritonbn-bench or of tritonbn-check; the Kernels and Launches & host pages show their "
    "records over time."
)
kinds = [k for k, f in (("benchmark", res.benchmarks), ("correctness", res.correctness)) if not f.empty]
if not kinds:
    st.info("No readable run to compare yet.")
    st.stop()
kind = st.radio("Kind", kinds, horizontal=True)
frame = res.benchmarks if kind == "benchmark" else res.correctness
sources = data.runs(frame)  # oldest first
if len(sources) < 2:
    st.info(f"Only one {kind} run so far: a comparison needs two.")
    st.stop()
c1, c2 = st.columns(2)
label = lambda s: ui.run_label(s, frame)  # noqa: E731
run_a = c1.selectbox("Run A (before)", sources, index=len(sources) - 2, format_func=label, help="oldest first")
run_b = c2.selectbox("Run B (after)", sources, index=len(sources) - 1, format_func=label, help="oldest first")
if run_a == run_b:
    st.info("Pick two different runs.")
    st.stop()

if kind == "benchmark":
    cmp = data.compare_benchmark_runs(frame, run_a, run_b)
    if cmp.empty:
        st.info("The two runs have no measurement in common.")
        st.stop()
    providers = [p for p in plots.PROVIDER_ORDER if p in set(cmp["provider"])]
    providers += sorted(set(cmp["provider"]) - set(providers))
    cols = st.columns(max(1, len(providers)))
    for col, provider in zip(cols, providers, strict=False):
        g = cmp[cmp["provider"] == provider]
        col.metric(
            f"{provider}: time B / time A",
            ui.speedup_text(data.geomean(g["ratio"])),
            help=f"geomean over {len(g)} common measurements; below 1×: B is faster",
        )
    st.plotly_chart(plots.run_comparison(cmp, label(run_a), label(run_b)))
    st.dataframe(
        cmp[["provider", "shape", "dtype", "layout", "mode", "pass", "ms_median_a", "ms_median_b", "ratio"]],
        hide_index=True,
        column_config={
            "ms_median_a": st.column_config.NumberColumn("A (ms)", format="%.4f"),
            "ms_median_b": st.column_config.NumberColumn("B (ms)", format="%.4f"),
            "ratio": st.column_config.NumberColumn("B / A", format="%.3f×"),
        },
    )
else:
    cmp = data.compare_correctness_runs(frame, run_a, run_b)
    if cmp.empty:
        st.info("The two runs have no check in common.")
        st.stop()
    ran = cmp[~(cmp["passed_a"].isna() & cmp["passed_b"].isna())]  # (a check skipped in both is no check)
    changed = cmp[cmp["changed"]]
    errors = {
        c: st.column_config.NumberColumn(c.replace("max_abs_err", "max abs err").replace("_", " "), format="%.3e")
        for c in ("max_abs_err_a", "max_abs_err_b")
    }
    if changed.empty:
        st.success(f"All {len(ran)} checks run in both have the same pass/fail result.")
    else:
        st.error(f"{len(changed)} of {len(ran)} checks run in both changed result between A and B:")
        st.dataframe(changed, hide_index=True, column_config=errors)
    with st.expander("All common checks"):
        st.dataframe(cmp, hide_index=True, column_config=errors)
