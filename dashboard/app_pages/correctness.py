"""Correctness: error vs the float64 reference per quantity, tritonbn next to torch, tolerance and failures."""

from __future__ import annotations

import streamlit as st

from dashboard import plots, ui

st.title("Correctness")
st.caption(
    "Each check compares a quantity (output, running statistics, gradients, second-order gradients) with a "
    "float64 reference computed from the formulas. `tritonbn` is ours; `torch` is PyTorch's own batch norm "
    "(cuDNN or its native kernel on a GPU, its CPU kernel otherwise) measured against the same reference."
)
root, res = ui.load()
corr = res.correctness
if corr.empty:
    st.info(ui.NO_CORRECTNESS.format(root=ui.shown(root)))
    st.stop()

c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 2, 2])
devices = sorted(corr["device"].unique())
device = c1.selectbox("device", devices, help="A GPU name, or cpu-interpreter for Triton's interpreter on the CPU")
d = corr[corr["device"] == device]
dtypes = c2.multiselect("dtype", sorted(d["dtype"].unique()), default=sorted(d["dtype"].unique()))
layouts = c3.multiselect("layout", sorted(d["layout"].unique()), default=sorted(d["layout"].unique()))
modes = c4.multiselect("mode", sorted(d["mode"].unique()), default=sorted(d["mode"].unique()))
metric = c5.radio(
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
    st.caption("Above 1 means the check failed. tritonbn and torch side by side, per dtype.")
    ratio = ran.assign(ratio=ran["max_rel_err"] / ran["tol"])
    piv = ratio.pivot_table(index="quantity", columns=["dtype", "provider"], values="ratio", aggfunc="max")
    piv = piv.reindex(index=[q for q in dict.fromkeys(ran["quantity"]) if q in piv.index])
    piv.columns = [f"{dt} · {p}" for dt, p in piv.columns]
    st.dataframe(
        piv.style.format("{:.3g}", na_rep="–").highlight_between(left=1.0, right=float("inf"), color="#f8b4b4")
    )

with st.expander("All checks in this selection"):
    st.dataframe(view.drop(columns=["gpu"]), hide_index=True)
