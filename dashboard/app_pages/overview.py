"""Overview: headline speed-up vs cuDNN per GPU and dtype, % of peak bandwidth, correctness pass rate."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data, plots, ui

st.title("tritonbn overview")
st.caption(
    "Speed-up = cuDNN time / tritonbn time (above 1×: tritonbn is faster), geometric mean over the measured "
    "shapes and layouts; the latest measurement of each configuration counts. Bandwidth uses the minimum "
    "traffic model (fwd 2, bwd 3, fwd+bwd 5 × numel × element size)."
)
root, res = ui.load()
bench = res.benchmarks

st.header("Performance vs cuDNN")
timed = bench[bench["ok"].astype(bool)] if len(bench) else bench
if timed.empty:
    st.info(ui.NO_BENCHMARKS.format(root=ui.shown(root)))
else:
    head = data.headline(bench)
    if head.empty:
        st.warning(
            "Benchmark results exist, but no train fwd+bwd or eval fwd configuration was measured for both "
            "tritonbn and cuDNN: see the Throughput page for what there is."
        )
    for gpu in sorted(timed["gpu"].unique()):
        st.subheader(gpu)
        h = head[head["gpu"] == gpu]
        if h.empty:
            st.info("No headline configuration measured for both tritonbn and cuDNN on this GPU.")
            continue
        dtypes = sorted(h["dtype"].unique())
        for outer, dt in zip(st.columns(len(dtypes)), dtypes, strict=True):
            outer.markdown(f"**{dt}**")
            for col, (mode, pas) in zip(outer.columns(len(data.HEADLINES)), data.HEADLINES, strict=True):
                r = h[(h["dtype"] == dt) & (h["mode"] == mode) & (h["pass"] == pas)]
                label = f"{mode} {plots.PASS_LABEL[pas]}"
                if r.empty:
                    col.metric(label, "–")
                    continue
                r = r.iloc[0]
                col.metric(
                    label,
                    ui.speedup_text(r["geomean"]),
                    help=f"{dt}: tritonbn vs cuDNN, geomean over {r['shapes']} shapes; best {r['best_x']:.2f}× "
                    f"({r['best']}), worst {r['worst_x']:.2f}× ({r['worst']}); tritonbn reaches a median "
                    f"{r['pct_peak']:.0f}% of the copy bandwidth",
                )
        st.plotly_chart(plots.headline_bars(h), key=f"headline-{gpu}")
        table = h.assign(
            setting=h["mode"] + " " + h["pass"].map(plots.PASS_LABEL),
            geomean=h["geomean"].map(ui.speedup_text),
            best=h["best"] + " (" + h["best_x"].map(ui.speedup_text) + ")",
            worst=h["worst"] + " (" + h["worst_x"].map(ui.speedup_text) + ")",
            pct_peak=h["pct_peak"].map(lambda v: "–" if pd.isna(v) else f"{v:.0f}%"),
        )[["dtype", "setting", "shapes", "geomean", "best", "worst", "pct_peak"]]
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                "geomean": "speed-up (geomean)",
                "best": "best shape",
                "worst": "worst shape",
                "pct_peak": st.column_config.TextColumn("% of peak GB/s", help="tritonbn, median over shapes"),
            },
        )
    failed = int((~bench["ok"].astype(bool)).sum())
    if failed:
        by = bench.loc[~bench["ok"].astype(bool), "provider"].value_counts()
        st.warning(
            f"{failed} measurement(s) have no timing (the provider failed or was skipped) and are left out: "
            + ", ".join(f"{p} {n}" for p, n in by.items())
        )

st.header("Without a GPU")
st.caption(
    "What the CPU measures of speed: launches and host time per call (`tritonbn-bench --host`) and every kernel "
    "specialisation compiled ahead of time (`tritonbn-aot`). See the Launches & host and Kernels pages."
)
cols = st.columns(4)
if res.host.empty:
    cols[0].metric("launches · train step", "–", help="no tritonbn-bench --host record yet")
else:
    table = data.host_table(res.host, data.runs(res.host)[-1])  # its first call
    ours = table.set_index("pass")
    fwd_bwd = ours["tritonbn_launches"].get("train_forward_backward")
    cols[0].metric(
        "launches · train step",
        "–" if fwd_bwd is None or pd.isna(fwd_bwd) else f"{fwd_bwd:.0f}",
        help="one training forward + backward of tritonbn: Triton kernels and any other GPU kernel it would start",
    )
    ratio = ours["ratio"].get("train_forward_backward")
    cols[1].metric(
        "host time · train step",
        "–" if ratio is None or pd.isna(ratio) else f"{ratio:.2f}× torch",
        help="tritonbn's host time per training forward + backward over torch's, kernels stubbed",
    )
if res.aot.empty:
    cols[2].metric("kernel specialisations", "–", help="no tritonbn-aot report yet")
else:
    newest = data.aot_history(res.aot[res.aot["source"] == data.runs(res.aot)[-1]])  # the newest report alone
    cols[2].metric(
        "kernel specialisations compiled",
        f"{int(newest['rows'].sum() - newest['errors'].sum())} of {int(newest['rows'].sum())}",
        help="every arch of the newest tritonbn-aot report",
    )
    cols[3].metric(
        "hot kernels within budget",
        f"{int((newest['hot'] - newest['over_budget']).sum())} of {int(newest['hot'].sum())}",
        help="registers, spills, 64-bit divisions and SASS instructions per element; see the Kernels page",
    )

st.header("Correctness")
corr = res.correctness
if corr.empty:
    st.info(ui.NO_CORRECTNESS.format(root=ui.shown(root)))
else:
    corr = data.latest_correctness_runs(corr)
    st.caption("The most recent correctness run of each device; the Runs page compares runs.")
    rates = data.pass_rates(corr, by=("device", "provider"))
    ours = rates[rates["provider"] == "tritonbn"]
    cols = st.columns(max(1, len(ours)))
    for col, (_, r) in zip(cols, ours.iterrows(), strict=False):
        col.metric(
            f"tritonbn pass rate · {r['device']}",
            f"{100 * r['rate']:.1f}%",
            help=f"{int(r['passed'])} of {int(r['checks'])} checks within tolerance of the float64 reference",
        )
    for provider, r in rates.groupby("provider"):
        n_fail, n = int(r["failed"].sum()), int(r["checks"].sum())
        if provider == "tritonbn":
            if n_fail:
                st.error(f"tritonbn: {n_fail} of {n} correctness checks failed — see the Correctness page.")
            else:
                st.success(f"tritonbn: all {n} correctness checks passed.")
        elif n_fail:
            st.caption(
                f"{provider} (PyTorch's own batch norm, shown for comparison): {n_fail} of {n} checks outside the "
                "tolerance — see the Correctness page."
            )
    by_dtype = data.pass_rates(corr, by=("device", "provider", "dtype"))
    st.dataframe(
        by_dtype.assign(rate=by_dtype["rate"].map(lambda v: f"{100 * v:.1f}%")),
        hide_index=True,
        column_config={"rate": "pass rate"},
    )

st.header("Provenance")
newest = [data.runs(f)[-1] for f in (res.host, res.aot) if not f.empty]  # the records summarised above
newest_records = res.records[res.records["source"].isin(newest)]
frames = [f for f in (bench, corr, newest_records) if not f.empty]
if frames:
    prov = data.provenance(pd.concat([f[["source", *data.PROVENANCE_COLUMNS]] for f in frames], ignore_index=True))
    st.dataframe(data.provenance_compact(prov), hide_index=True, column_config={"source": "result file"})
else:
    st.info("No run recorded yet.")
