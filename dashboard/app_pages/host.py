"""Host: launches and host time per call (``tritonbn-bench --host``), tritonbn against torch's batch norm."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data, plots, ui
from tritonbn.schema import HOST_BUDGET

st.title("Launches and host time")
st.caption(
    "`tritonbn-bench --host` runs tritonbn's GPU path on CPU tensors with every Triton launch replaced by a "
    "counting stub, so it measures the host side of a call exactly: validation, the cached launch plan, "
    "allocations, autograd and the launches. Launches count the Triton kernels and every ATen operator that "
    "would start a GPU kernel. torch's own batch norm runs on the same CPU, computing for real (its launches are "
    "its operators). On a GPU this host time is paid for every batch-norm layer of every step; GPU time is on "
    "the Throughput page."
)
root, res = ui.load()
host = res.host
ui.stop_without(
    host,
    "host record",
    "`tritonbn-bench --host` (any machine, about a minute)",
    "bench_results/cpu/<date>_<sha>_host.csv",
    root,
)

record = ui.latest_run_picker(
    st, "record", host, "One file per run of tritonbn-bench --host, oldest first; the newest is selected.", "cpu"
)
calls = data.host_calls(host, record)
call = st.selectbox("call", calls, help="shape, dtype and layout of the measured call") if len(calls) > 1 else calls[0]
table = data.host_table(host, record, call)
fb = table[table["pass"] == "train_forward_backward"]
cols = st.columns(4)
for col, pas in zip(cols, ("train_forward", "train_backward", "eval_forward"), strict=False):
    r = table[table["pass"] == pas]
    if r.empty:
        col.metric(f"launches · {pas.replace('_', ' ')}", "–")
        continue
    r = r.iloc[0]
    col.metric(
        f"launches · {pas.replace('_', ' ')}",
        f"{r['tritonbn_launches']:.0f}",
        help=f"tritonbn: {r['tritonbn_kernels']}; torch: {r['torch_launches']:.0f} ({r['torch_kernels']})",
    )
if not fb.empty and pd.notna(fb["ratio"].iloc[0]):
    ratio = float(fb["ratio"].iloc[0])
    cols[3].metric(
        "host time, train fwd+bwd",
        f"{ratio:.2f}× torch",
        help=f"target: at most {HOST_BUDGET:g}× torch's, measured in one run on one machine",
    )
    (st.success if ratio <= HOST_BUDGET else st.warning)(
        f"Train forward+backward: tritonbn's host time is {ratio:.2f}× torch's on this CPU "
        f"({'within' if ratio <= HOST_BUDGET else 'over'} the {HOST_BUDGET:g}× target)."
    )
st.plotly_chart(plots.host_bars(table, HOST_BUDGET, f"Host time per call · {call}"))
st.dataframe(
    table.drop(columns=["shape", "dtype", "layout", "tritonbn_kernels", "torch_kernels"]),
    hide_index=True,
    column_config={
        "tritonbn_launches": st.column_config.NumberColumn("tritonbn launches", format="%d"),
        "torch_launches": st.column_config.NumberColumn("torch launches", format="%d"),
        "tritonbn_us": st.column_config.NumberColumn("tritonbn µs", format="%.1f"),
        "torch_us": st.column_config.NumberColumn("torch µs", format="%.1f"),
        "ratio": st.column_config.NumberColumn("tritonbn / torch", format="%.2f×"),
    },
)
with st.expander("What each call launches"):
    st.dataframe(
        table[["pass", "tritonbn_kernels", "torch_kernels"]],
        hide_index=True,
        column_config={"tritonbn_kernels": "tritonbn kernels", "torch_kernels": "torch operators"},
    )
if host["source"].nunique() > 1:
    st.subheader("Records over time")
    hist = host[host["impl"] == "tritonbn"].assign(started=host["source"].map(lambda s: data.run_started(host, s)))
    piv = hist.pivot_table(index=["started", "git_sha"], columns="pass", values="host_ratio", aggfunc="first")
    piv = piv[[p for p in data.HOST_PASS_ORDER if p in piv.columns]]
    st.caption("tritonbn's host time over torch's, per pass, oldest record first.")
    st.dataframe(piv.style.format("{:.2f}×", na_rep="–"))
