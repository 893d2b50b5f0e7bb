"""Correctness: error vs the float64 reference per quantity, tritonbn next to torch, tolerance and failures."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data, plots, ui

st.title("Correctness")
st.caption(
    "Each check compares a quantity (output, running statistics, gradients, second-order gradients) with a "
    "float64 reference computed from the formulas. `tritonbn` is ours; `torch` is PyTorch's own batch norm "
    "(cuDNN or its native kernel on a GPU, its CPU kernel otherwise) measured against the same reference. "
    "A note `in float32` marks a quantity kept in float32 for a float16/bfloat16 input (the running statistics, "
    "dweight, dbias: parameters and buffers are float32 under mixed precision), so it is held to float32's "
    "tolerance, not the input's."
)
root, res = ui.load()
corr = res.correctness
if corr.empty:
    st.info(ui.NO_CORRECTNESS.format(root=ui.shown(root)))
    st.stop()

c1, c2 = st.columns([1, 2])
devices = sorted(corr["device"].unique())
device = c1.selectbox("device", devices, help="A GPU name, or cpu-interpreter for Triton's interpreter on the CPU")
run = ui.latest_run_picker(
    c2,
    "run",
    corr[corr["device"] == device],
    "One result file is one run of tritonbn-check, listed oldest first; the latest is selected, as on the "
    "Overview page. The Runs page compares two runs.",
)
d = corr[(corr["source"] == run) & (corr["device"] == device)]
c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
pick = lambda col, name: col.pills(  # noqa: E731 - every value visible, all selected by default
    name, sorted(d[name].unique()), selection_mode="multi", default=sorted(d[name].unique()), key=f"{name}-{run}"
)
dtypes, layouts, modes = pick(c1, "dtype"), pick(c2, "layout"), pick(c3, "mode")
metric = c4.radio(
    "error",
    ["max_rel_err", "max_abs_err"],
    format_func={"max_abs_err": "absolute", "max_rel_err": "relative"}.get,
    horizontal=True,
    help="A check passes when its max relative error is within the tolerance `tol`.",
)
view = d[d["dtype"].isin(dtypes) & d["layout"].isin(layouts) & d["mode"].isin(modes)]
ran = view[view["result"] != "skipped"]
skipped = view[view["result"] == "skipped"]

bad = view[view["result"].isin(["FAILED", "error"])]
ours_bad = bad[bad["provider"] == "tritonbn"]
ours_ran = ran[ran["provider"] == "tritonbn"]
if view.empty:
    st.info("No check matches this selection.")
elif ours_bad.empty:
    st.success(f"tritonbn: all {len(ours_ran)} checks in this selection are within tolerance.")
else:
    n_err = int((ours_bad["result"] == "error").sum())
    what = f"{len(ours_bad) - n_err} over tolerance" + (f", {n_err} raised an error" if n_err else "")
    st.error(f"**tritonbn: {len(ours_bad)} of {len(ours_ran)} checks FAILED** in this selection ({what}).")
others_bad = bad[bad["provider"] != "tritonbn"]
if not others_bad.empty:
    st.warning(
        f"{', '.join(sorted(others_bad['provider'].unique()))}: {len(others_bad)} of "
        f"{len(ran[ran['provider'] != 'tritonbn'])} checks outside the tolerance (PyTorch's own batch norm, "
        "measured against the same float64 reference for comparison)."
    )
if not bad.empty:
    st.dataframe(
        bad[
            [
                c
                for c in ("result", "provider", "case", "dtype", "layout", "mode", "quantity", "max_abs_err")
                + ("max_rel_err", "tol", "note")
                if c in bad
            ]
        ].sort_values(["provider", "dtype", "quantity"], key=lambda c: c.ne("tritonbn") if c.name == "provider" else c),
        hide_index=True,
        column_config={
            "max_abs_err": st.column_config.NumberColumn("max abs err", format="%.3e"),
            "max_rel_err": st.column_config.NumberColumn("max rel err", format="%.3e"),
            "tol": st.column_config.NumberColumn("tol", format="%.1e"),
        },
    )
if not skipped.empty:
    reasons = skipped["note"].replace("", "no reason given").value_counts()
    st.caption(f"{len(skipped)} check(s) skipped: " + "; ".join(f"{why} ({n})" for why, n in reasons.head(4).items()))

st.plotly_chart(plots.error_by_quantity(view, metric=metric, show_tol=metric == "max_rel_err"))

if not ran.empty:
    st.subheader("Worst relative error / tolerance per quantity")
    st.caption(
        "tritonbn · torch, per dtype: the worst max_rel_err / tol of each. Above 1 (or NaN: an error that is NaN) "
        "means the check failed."
    )
    # a NaN error is the worst there is (pivot tables skip NaN): infinite, shown as NaN
    ratio = ran.assign(ratio=(ran["max_rel_err"] / ran["tol"]).fillna(float("inf")))
    worst = ratio.pivot_table(index="quantity", columns=["dtype", "provider"], values="ratio", aggfunc="max")
    worst = worst.reindex(index=[q for q in dict.fromkeys(ran["quantity"]) if q in worst.index])

    def _worst(dt: str, provider: str) -> pd.Series:
        return worst[(dt, provider)] if (dt, provider) in worst.columns else pd.Series(float("nan"), worst.index)

    def _cell(dt: str, provider: str) -> pd.Series:
        return _worst(dt, provider).map(lambda x: "–" if pd.isna(x) else "NaN" if x == float("inf") else f"{x:.3g}")

    dtypes_ran = list(dict.fromkeys(worst.columns.get_level_values(0)))
    table = pd.DataFrame({dt: _cell(dt, "tritonbn") + " · " + _cell(dt, "torch") for dt in dtypes_ran})
    over = pd.DataFrame({dt: _worst(dt, "tritonbn") > 1 for dt in dtypes_ran})
    st.dataframe(table.style.apply(lambda _: over.map(lambda b: "background-color: #f8b4b4" if b else ""), axis=None))

with st.expander("All checks in this selection"):
    st.dataframe(view.drop(columns=["gpu", *data.PROVENANCE_COLUMNS[3:]], errors="ignore"), hide_index=True)
