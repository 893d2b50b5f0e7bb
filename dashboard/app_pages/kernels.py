"""Kernels: every specialisation of the Triton kernels compiled ahead of time (``tritonbn-aot``), against the
budget a kernel that touches every element is held to: registers, spills, SASS instructions per element."""

from __future__ import annotations

import streamlit as st

from dashboard import data, plots, ui
from tritonbn.schema import AOT_BUDGET

st.title("Kernels")
st.caption(
    "`tritonbn-aot` runs the launcher over a representative set of calls on meta tensors, compiles every "
    "kernel specialisation it produces for sm_90 and sm_80 with the ptxas in Triton's wheel, and reads "
    "registers, spills and SASS with cuobjdump: no GPU needed, so these are real compiler outputs, not timings. "
    f"The budget of a hot kernel (one that touches every element): at most {AOT_BUDGET['max_registers']:.0f} "
    f"registers, no spills, no 64-bit division, and at most {AOT_BUDGET['max_instructions_per_element']:g} SASS "
    "instructions per element whenever a thread holds at least "
    f"{AOT_BUDGET['min_elements_per_thread']:.0f} elements (an H200 issues about 7 instructions per byte of "
    "DRAM bandwidth). Instructions per element: those of the tile loop (or, without a loop, of a program's common "
    "path) over the elements each thread handles per iteration."
)
root, res = ui.load()
aot = res.aot
ui.stop_without(
    aot,
    "kernel report",
    "`tritonbn-aot` (any machine, a few minutes; `--quick` for the main shapes)",
    "bench_results/aot/<triton-version>_<sha>_aot.csv",
    root,
)

c1, c2, c3 = st.columns([3, 1, 2])
report = ui.latest_run_picker(
    c1, "report", aot, "One file per run of tritonbn-aot, oldest first; the newest is selected.", "triton", "triton {}"
)
rows = data.aot_rows(aot, report)
archs = sorted(rows["arch"].dropna().unique(), reverse=True)
arch = c2.selectbox("arch", archs)
rows = rows[rows["arch"] == arch]
all_dtypes = sorted(rows["dtype"].unique())
dtypes = c3.pills("dtype", all_dtypes, selection_mode="multi", default=all_dtypes, key=f"dtype-{report}-{arch}")
if not dtypes:
    st.info("Select at least one dtype.")
    st.stop()
rows = rows[rows["dtype"].isin(dtypes)]
hot = rows[rows["hot"].fillna(False).astype(bool)]
budgeted = hot[hot["budgeted"]]

m = st.columns(5)
m[0].metric("specialisations", f"{len(rows)}", help=f"{len(hot)} of hot kernels")
m[1].metric("compile errors", f"{(rows['over'] == 'does not compile').sum()}")
m[2].metric("hot rows with spills", f"{int((hot['spill_bytes'] > 0).sum())}")
m[3].metric("most registers (hot)", f"{hot['registers'].max():.0f}" if len(hot) else "–", help="budget: at most 128")
n_over = int((hot["over"] != "").sum())
m[4].metric(
    "hot rows over budget",
    f"{n_over} of {len(hot)}",
    help="registers, spills, 64-bit divisions, or instructions per element where the budget applies",
)
if n_over:
    st.warning(
        f"{n_over} of {len(hot)} hot specialisations ({arch}) exceed the budget. `tritonbn-aot --check` holds each "
        "kernel class to a ceiling that only goes down (a ratchet), so none of them may get worse."
    )
else:
    st.success(f"All {len(hot)} hot specialisations ({arch}) are within the budget.")

small = len(hot) - len(budgeted)
st.plotly_chart(
    plots.aot_scatter(
        budgeted,
        "instructions_per_element",
        AOT_BUDGET["max_instructions_per_element"],
        f"SASS instructions per element · {arch}",
        "SASS instructions / element",
        note=f"one point per specialisation of a hot kernel; {small} with fewer than "
        f"{AOT_BUDGET['min_elements_per_thread']:.0f} elements per thread (tiny tensors, launch-bound) not shown",
    ),
    key="aot-ipe",
)
st.plotly_chart(
    plots.aot_scatter(
        hot, "registers", AOT_BUDGET["max_registers"], f"Registers per thread · {arch}", "registers per thread"
    ),
    key="aot-regs",
)

st.subheader("Over the budget")
worst = hot[hot["over"] != ""].sort_values("instructions_per_element", ascending=False)
if worst.empty:
    st.caption("Nothing in this selection.")
else:
    shown = ["kernel", "path", "dtype", "layout", "shape", "pass", "tile", "num_warps", "registers"]
    st.dataframe(
        worst[[*shown, "instructions_per_element"]].assign(kernel=worst["kernel"].map(plots.kernel_label)),
        hide_index=True,
        column_config={
            "instructions_per_element": st.column_config.NumberColumn("instr / elem", format="%.1f"),
            "num_warps": st.column_config.NumberColumn("warps"),
        },
    )
    st.caption("Spills and the flags of each specialisation (its constexpr switches) are in the table at the bottom.")

st.subheader("Reports over time")
hist = data.aot_history(aot)
hist = hist[hist["arch"] == arch]
st.dataframe(
    hist.drop(columns=["arch", "git_sha"]),
    hide_index=True,
    column_config={
        "source": "report",
        "started": "started (UTC)",
        "hot": st.column_config.NumberColumn("hot", help="specialisations of hot kernels"),
        "over_budget": st.column_config.NumberColumn("over", help="hot specialisations over the budget"),
        "max_registers": st.column_config.NumberColumn("max regs", format="%.0f", help="most registers, hot"),
        "max_instructions_per_element": st.column_config.NumberColumn(
            "worst i/e", format="%.1f", help="most SASS instructions per element where the budget applies"
        ),
        "median_instructions_per_element": st.column_config.NumberColumn(
            "median i/e", format="%.1f", help="median SASS instructions per element where the budget applies"
        ),
    },
)
with st.expander("Every specialisation in this selection"):
    st.dataframe(rows.drop(columns=[*data.PROVENANCE_COLUMNS, "source"], errors="ignore"), hide_index=True)
