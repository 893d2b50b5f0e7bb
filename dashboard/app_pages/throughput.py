"""Throughput: GB/s and speed-up vs cuDNN by shape, dtype, layout, mode and pass."""

from __future__ import annotations

import streamlit as st

from dashboard import data, plots, ui

LATEST = "latest measurement of each configuration"

st.title("Throughput")
st.caption(
    "Achieved bandwidth = minimum traffic (fwd 2, bwd 3, fwd+bwd 5 × numel × element size) / median time. "
    "Speed-up = cuDNN time / provider time. Hover a point for its shape, timings and the run that measured it."
)
root, res = ui.load()
bench = res.benchmarks
timed = bench[bench["ok"].astype(bool)] if len(bench) else bench
if timed.empty:
    st.info(ui.NO_BENCHMARKS.format(root=ui.shown(root)))
    st.stop()

c1, c2 = st.columns([1, 2])
gpu = c1.selectbox("GPU", sorted(timed["gpu"].unique()))
runs = data.runs(timed[timed["gpu"] == gpu])[::-1]  # newest first
run = c2.selectbox(
    "Run",
    [LATEST, *runs],
    format_func=lambda r: r if r == LATEST else ui.run_label(r, timed),
    help="One result file is one run of tritonbn-bench.",
)
sel = timed[timed["gpu"] == gpu]
sel = data.latest(sel) if run == LATEST else data.latest(sel[sel["source"] == run])

c1, c2, c3, c4 = st.columns(4)
dtypes = c1.multiselect("dtype", sorted(sel["dtype"].unique()), default=sorted(sel["dtype"].unique()))
layouts = c2.multiselect("layout", sorted(sel["layout"].unique()), default=sorted(sel["layout"].unique()))
modes = [m for m in ("train", "eval") if m in set(sel["mode"])]
mode = c3.selectbox("mode", modes)
passes = [p for p in ("fwd_bwd", "fwd", "bwd") if p in set(sel.loc[sel["mode"] == mode, "pass"])]
pas = c4.selectbox("pass", passes, format_func=lambda p: plots.PASS_LABEL.get(p, p))
present = [p for p in plots.PROVIDER_ORDER if p in set(sel["provider"])]
present += sorted(set(sel["provider"]) - set(present))
providers = st.pills("Providers", present, selection_mode="multi", default=present) or []

view = sel[sel["dtype"].isin(dtypes) & sel["layout"].isin(layouts)]
cur = view[(view["mode"] == mode) & (view["pass"] == pas)]
shown = cur[cur["provider"].isin(providers)]
setting = f"{mode} {plots.PASS_LABEL.get(pas, pas)}"

TRAFFIC = {
    "minimum": "the minimum traffic (any implementation)",
    "own": "each implementation's own passes",
}
traffic = st.radio(
    "bandwidth at",
    list(TRAFFIC),
    format_func=TRAFFIC.get,
    horizontal=True,
    help="Minimum: x read and y written once (fwd 2, bwd 3, fwd+bwd 5 × numel × element size), the same for every "
    "provider: the one scale to compare them on. Own passes: what the implementation's kernels really read and "
    "write (tritonbn: 2 or 3 passes forward, 3 or 5 backward, by its launch plan; PyTorch's native kernels: 3 and "
    "5): how close those kernels run to the copy bandwidth. cuDNN and inductor are not modelled.",
)
if traffic == "own":
    own = shown[shown["own_gbps"].notna()].assign(
        gbps=lambda f: f["own_gbps"], pct_of_peak=lambda f: f["own_pct_of_peak"]
    )
    if own.empty and not shown.empty:
        st.info("No measurement in this selection has a modelled own traffic (`own_bytes`: tritonbn and native only).")
    bw_title = f"Bandwidth at the implementation's own passes vs problem size · {gpu} · {setting}"
    st.plotly_chart(plots.bandwidth_vs_numel(own, title=bw_title))
else:
    st.plotly_chart(plots.bandwidth_vs_numel(shown, title=f"Achieved bandwidth vs problem size · {gpu} · {setting}"))

sp = data.speedups(cur)
sp_shown = sp[sp["provider"].isin(providers)] if not sp.empty else sp
if data.BASELINE not in set(cur["provider"]):
    st.info("cuDNN was not measured for this selection, so there is no speed-up to show.")
else:
    st.plotly_chart(
        plots.speedup_by_shape(sp_shown, title=f"Speed-up vs cuDNN by shape · {setting} (above 1×: faster)")
    )

st.subheader("GPU time and eager wall time")
st.caption(
    "GPU time is the kernels' time per call (CUDA events, or CUDA-graph replays for small passes); eager wall "
    "time (`wall_ms`) is a synchronised loop of back-to-back calls divided by their number, so Python, autograd "
    "and launch overheads count, as in a training step. Where the wall time is far above the GPU time the call "
    "is bound by its host side (see the Launches & host page)."
)
st.plotly_chart(plots.gpu_and_wall(shown, title=f"GPU time and eager wall time per call · {gpu} · {setting}"))

st.subheader("Speed-up heat map")
all_sp = data.speedups(view)
heat_providers = [p for p in present if p != data.BASELINE and p in set(all_sp.get("provider", []))]
if not heat_providers:
    st.info("No provider was measured next to cuDNN for this selection.")
else:
    hp = st.segmented_control("Heat map provider", heat_providers, default=heat_providers[0]) or heat_providers[0]
    st.plotly_chart(plots.speedup_heatmap(all_sp, provider=hp))

failed = bench[(bench["gpu"] == gpu) & ~bench["ok"].astype(bool)]
if not failed.empty:
    st.warning(f"{len(failed)} measurement(s) on this GPU have no timing (failed or skipped) and are not plotted.")
    with st.expander("Measurements without a timing"):
        st.dataframe(
            failed[["source", "provider", "shape", "dtype", "layout", "mode", "pass", "status", "error"]],
            hide_index=True,
        )

with st.expander("Data for this selection"):
    cols = ["provider", "backend", "shape", "dtype", "layout", "mode", "pass", "ms_median", "ms_p20", "ms_p80"]
    cols += ["wall_ms", "gbps", "pct_of_peak", "own_pct_of_peak", "git_sha", "timestamp", "source"]
    st.dataframe(
        shown[cols].sort_values(["provider", "shape"]),
        hide_index=True,
        column_config={
            "ms_median": st.column_config.NumberColumn("median (ms)", format="%.4f"),
            "ms_p20": st.column_config.NumberColumn("p20 (ms)", format="%.4f"),
            "ms_p80": st.column_config.NumberColumn("p80 (ms)", format="%.4f"),
            "wall_ms": st.column_config.NumberColumn("wall (ms)", format="%.4f"),
            "gbps": st.column_config.NumberColumn("GB/s", format="%.0f"),
            "pct_of_peak": st.column_config.NumberColumn("% of peak", format="%.0f%%"),
            "own_pct_of_peak": st.column_config.NumberColumn("% of peak, own passes", format="%.0f%%"),
        },
    )
