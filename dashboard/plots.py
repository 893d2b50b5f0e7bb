"""Plotly figures for the dashboard pages (no Streamlit here: every function returns a figure)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PROVIDER_COLORS = {
    "tritonbn": "#d62728",
    "cudnn": "#1f77b4",
    "native": "#7f7f7f",
    "inductor": "#2ca02c",
    "torch": "#1f77b4",
}
PROVIDER_ORDER = ["tritonbn", "cudnn", "native", "inductor", "torch"]
HEADLINE_COLORS = {"train fwd+bwd": "#d62728", "eval fwd": "#ff9896"}
PASS_LABEL = {"fwd": "fwd", "bwd": "bwd", "fwd_bwd": "fwd+bwd"}
LAYOUT_LABEL = {"contiguous": "contiguous", "channels_last": "channels_last", "channels_last_3d": "channels_last_3d"}
FONT = {"size": 13}

# Hover provenance: every point says which run measured it.
_PROVENANCE_HOVER = ["gpu", "git_sha", "torch", "triton", "cuda", "cudnn", "timestamp", "source"]


def _style(fig: go.Figure, title: str, height: int = 420, legend: str = "top") -> go.Figure:
    """House style: left-aligned title, white template; the legend on top (few entries) or on the right."""
    if legend == "right":
        leg = {"orientation": "v", "yanchor": "top", "y": 1.0, "xanchor": "left", "x": 1.01, "title": None}
    else:
        leg = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1, "title": None}
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 16}},
        template="plotly_white",
        font=FONT,
        height=height,
        margin={"l": 60, "r": 20, "t": 80, "b": 55},
        legend=leg,
        hoverlabel={"font_size": 12},
    )
    return fig


def display_name(provider: str) -> str:
    return {"cudnn": "cuDNN", "native": "native (PyTorch CUDA)", "inductor": "inductor (torch.compile)"}.get(
        provider, provider
    )


def _strip_facet_titles(fig: go.Figure) -> None:
    """``dtype=float16`` facet titles → ``float16``."""
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1], font={"size": 13}))


def empty_figure(message: str, title: str = "") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, title, height=240)


def _speedup_axis(values) -> dict:
    """A log axis with ×-ticks that always shows 1× (the baseline)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
    lo, hi = (min(vals), max(vals)) if vals else (1.0, 1.0)
    lo, hi = min(lo, 1.0) / 1.15, max(hi, 1.0) * 1.15
    ticks = [t for t in (0.1, 0.2, 0.25, 0.5, 0.67, 0.8, 1, 1.25, 1.5, 2, 3, 4, 5, 10, 20) if lo <= t <= hi]
    return {
        "type": "log",
        "range": [math.log10(lo), math.log10(hi)],
        "tickvals": ticks,
        "ticktext": [f"{t:g}×" for t in ticks],
    }


def headline_bars(headline: pd.DataFrame, provider: str = "tritonbn", baseline: str = "cudnn") -> go.Figure:
    """Geomean speed-up per dtype for the two headline settings, the whiskers spanning worst to best shape."""
    title = f"{provider} speed-up vs {display_name(baseline)} (geomean over shapes; whiskers: worst … best shape)"
    if headline.empty:
        return empty_figure("no configuration measured for both providers", title)
    h = headline.copy()
    h["setting"] = h["mode"] + " " + h["pass"].map(PASS_LABEL).fillna(h["pass"])
    gpus = list(dict.fromkeys(h["gpu"]))
    fig = go.Figure()
    for setting, g in h.groupby("setting", sort=False):
        fig.add_bar(
            x=list(g["dtype"]) if len(gpus) == 1 else [list(g["gpu"]), list(g["dtype"])],
            y=g["geomean"] - 1,  # bars grow from 1× (the baseline): up when faster, down when slower
            base=1,
            name=setting,
            marker_color=HEADLINE_COLORS.get(setting),
            text=[f"{v:.2f}×" for v in g["geomean"]],
            textposition="inside",
            insidetextanchor="middle",
            textfont={"size": 14},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (g["best_x"] - g["geomean"]).clip(lower=0),
                "arrayminus": (g["geomean"] - g["worst_x"]).clip(lower=0),
                "color": "#444",
                "thickness": 1,
            },
            customdata=g[["shapes", "best", "best_x", "worst", "worst_x", "pct_peak", "gpu"]],
            hovertemplate="<b>%{customdata[6]}</b> %{x}<br>geomean %{text} over %{customdata[0]} shapes"
            "<br>best %{customdata[2]:.2f}× (%{customdata[1]})<br>worst %{customdata[4]:.2f}× (%{customdata[3]})"
            "<br>median %{customdata[5]:.0f}% of peak bandwidth<extra>%{fullData.name}</extra>",
        )
    fig.add_hline(y=1, line_dash="dash", line_color="#555", annotation_text=f"{display_name(baseline)} = 1×")
    all_vals = list(h["geomean"]) + list(h["best_x"]) + list(h["worst_x"])
    fig.update_yaxes(title=f"speed-up vs {display_name(baseline)} (×, log)", **_speedup_axis(all_vals))
    fig.update_xaxes(title="dtype")
    fig.update_layout(barmode="group", bargap=0.3)
    return _style(fig, title, height=400)


def bandwidth_vs_numel(df: pd.DataFrame, title: str = "Achieved bandwidth vs problem size") -> go.Figure:
    """GB/s against numel (log) per provider, one panel per dtype; the copy-bandwidth peak as a dashed line."""
    if df.empty:
        return empty_figure("nothing measured for this selection", title)
    d = df.sort_values("numel").copy()
    d["series"] = d["provider"] + " · " + d["layout"]
    d["ms_range"] = [f"{a:.4g} … {b:.4g}" for a, b in zip(d["ms_p20"], d["ms_p80"], strict=True)]
    hover = {c: True for c in ["shape", "layout", "ms_median", "ms_range", "pct_of_peak", "backend"]}
    hover.update({c: True for c in _PROVENANCE_HOVER if c in d})
    hover.update({"series": False, "numel": ":,.0f", "gbps": ":.0f", "dtype": False})
    order = [p for p in PROVIDER_ORDER if p in set(d["provider"])]
    fig = px.line(
        d,
        x="numel",
        y="gbps",
        color="provider",
        line_dash="layout",
        symbol="layout",
        facet_col="dtype",
        line_group="series",
        markers=True,
        log_x=True,
        hover_data=hover,
        color_discrete_map=PROVIDER_COLORS,
        category_orders={"provider": order, "dtype": sorted(d["dtype"].unique())},
        labels={
            "numel": "elements (N·C·spatial, log)",
            "gbps": "GB/s",
            "ms_median": "median ms",
            "ms_range": "p20 … p80 ms",
            "pct_of_peak": "% of peak",
        },
    )
    peak = d["peak_gbps"].median()
    if pd.notna(peak) and peak > 0:
        fig.add_hline(
            y=peak,
            line_dash="dot",
            line_color="#333",
            annotation_text=f"copy peak {peak:.0f} GB/s",
            annotation_position="top left",
        )
    fig.update_yaxes(rangemode="tozero", title=None)
    fig.update_yaxes(title="achieved bandwidth (GB/s)", col=1)
    fig.for_each_trace(lambda t: t.update(name=t.name.replace(", ", " · ")))
    _strip_facet_titles(fig)
    return _style(fig, title, height=460, legend="right")


def speedup_by_shape(sp: pd.DataFrame, baseline: str = "cudnn", title: str | None = None) -> go.Figure:
    """Speed-up vs the baseline for every shape (bars per provider), one panel per dtype and layout."""
    name = display_name(baseline)
    title = title or f"Speed-up vs {name} by shape (above 1×: faster than {name})"
    if sp.empty:
        return empty_figure(f"no shape measured for both a provider and {name}", title)
    d = sp.sort_values(["numel", "shape"]).copy()
    d["x"] = d["shape"]
    hover = {"speedup": ":.2f", "ms_median": ":.4g", "baseline_ms": ":.4g", "gbps": ":.0f", "x": False}
    hover.update({c: True for c in _PROVENANCE_HOVER if c in d})
    layouts = sorted(d["layout"].unique())
    fig = px.bar(
        d,
        x="x",
        y="speedup",
        color="provider",
        barmode="group",
        facet_col="dtype",
        facet_row="layout" if len(layouts) > 1 else None,
        hover_data=hover,
        color_discrete_map=PROVIDER_COLORS,
        category_orders={
            "provider": [p for p in PROVIDER_ORDER if p in set(d["provider"])],
            "x": list(dict.fromkeys(d["x"])),
            "dtype": sorted(d["dtype"].unique()),
            "layout": layouts,
        },
        labels={"speedup": "speed-up (×)", "x": "shape N×C×spatial", "ms_median": "ms", "baseline_ms": "baseline ms"},
        log_y=True,
    )
    fig.add_hline(y=1, line_dash="dash", line_color="#555")
    fig.update_yaxes(**_speedup_axis(d["speedup"]))
    fig.update_yaxes(title=None)
    fig.update_yaxes(title=f"× vs {name}", col=1)
    fig.update_xaxes(tickangle=-30, title=None)
    _strip_facet_titles(fig)
    return _style(fig, title, height=300 + 180 * len(layouts), legend="right")


def speedup_heatmap(sp: pd.DataFrame, provider: str = "tritonbn", baseline: str = "cudnn") -> go.Figure:
    """Per dtype: (shape, layout) × (mode, pass) coloured by log speed-up (red: faster than the baseline)."""
    title = f"{provider} speed-up vs {display_name(baseline)}: every shape, layout and setting"
    d = sp[sp["provider"] == provider].copy() if not sp.empty else sp
    if d.empty:
        return empty_figure(f"no {provider} measurement with a {display_name(baseline)} counterpart", title)
    d["setting"] = d["mode"] + " " + d["pass"].map(PASS_LABEL).fillna(d["pass"])
    d["row"] = d["shape"] + " · " + d["layout"].map(LAYOUT_LABEL).fillna(d["layout"])
    d = d.sort_values(["numel", "shape", "layout"])
    rows = list(dict.fromkeys(d["row"]))
    order = ["train fwd", "train bwd", "train fwd+bwd", "eval fwd", "eval bwd", "eval fwd+bwd"]
    cols = [c for c in order if c in set(d["setting"])] + sorted(set(d["setting"]) - set(order))
    dtypes = sorted(d["dtype"].unique())
    logs = d["speedup"].where(d["speedup"] > 0).map(math.log2)
    zmax = max(0.5, float(logs.abs().max()) if logs.notna().any() else 0.5)
    ticks = [v for v in (0.25, 0.5, 0.67, 0.8, 1, 1.25, 1.5, 2, 4) if abs(math.log2(v)) <= zmax]
    fig = make_subplots(rows=1, cols=len(dtypes), shared_yaxes=True, subplot_titles=dtypes, horizontal_spacing=0.02)
    for i, dt in enumerate(dtypes, start=1):
        piv = d[d["dtype"] == dt].pivot_table(index="row", columns="setting", values="speedup", aggfunc="median")
        piv = piv.reindex(index=rows, columns=cols)
        fig.add_trace(
            go.Heatmap(
                z=piv.map(lambda v: math.log2(v) if pd.notna(v) and v > 0 else None).values,
                x=cols,
                y=rows,
                text=piv.map(lambda v: f"{v:.2f}×" if pd.notna(v) else "").values,
                texttemplate="%{text}",
                textfont={"size": 11},
                coloraxis="coloraxis",
                hovertemplate=f"{dt}<br>%{{y}}<br>%{{x}}<br>speed-up %{{text}}<extra></extra>",
                xgap=1,
                ygap=1,
            ),
            row=1,
            col=i,
        )
    fig.update_layout(
        coloraxis={
            "colorscale": "RdBu_r",
            "cmid": 0,
            "cmin": -zmax,
            "cmax": zmax,
            "colorbar": {
                "title": {"text": "speed-up"},
                "tickvals": [math.log2(v) for v in ticks],
                "ticktext": [f"{v:g}×" for v in ticks],
            },
        }
    )
    fig.update_xaxes(tickangle=-30, title=None)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_yaxes(title="shape N×C×spatial · layout", col=1)
    return _style(fig, title, height=200 + 30 * len(rows))


#: The bottom of an error panel: this far below its smallest tolerance (relative errors) ...
ERROR_FLOOR_BELOW_TOL = 1e4
#: ... or this far below its largest error (absolute errors), unless every error is above it.
ERROR_SPAN = 1e8


def error_floor(errors: pd.Series, tol: pd.Series | None = None) -> float:
    """Where a log-scale error panel ends: one decade below the smallest positive error, but no lower than
    ``min(tol) / ERROR_FLOOR_BELOW_TOL`` (or ``max(errors) / ERROR_SPAN`` without a tolerance). Errors of
    exactly 0 -- and tiny ones, e.g. 1e-20 next to errors of 1e-8 -- would otherwise stretch the axis over
    decades that say nothing and squeeze the errors that matter into its top."""
    pos = errors[errors > 0]
    if pos.empty:
        return 1e-16
    lowest = float(pos.min()) / 10
    t = tol[tol > 0] if tol is not None else pd.Series(dtype=float)
    bottom = float(t.min()) / ERROR_FLOOR_BELOW_TOL if len(t) else float(pos.max()) / ERROR_SPAN
    return max(lowest, bottom)


def error_by_quantity(df: pd.DataFrame, metric: str = "max_rel_err", show_tol: bool = True) -> go.Figure:
    """Error vs the float64 reference per quantity, tritonbn next to torch, one panel per dtype (two a row).

    Grey dashes mark the tolerance (``show_tol``; the base one when some cases had it raised, which the
    hover shows); failed checks are large crosses. Checks without an error value (skipped, or the provider
    raised) are not plotted.
    """
    label = {"max_abs_err": "max |error|", "max_rel_err": "max relative error"}.get(metric, metric)
    title = f"{label} vs the float64 reference, per quantity (log scale; ✕: failed"
    title += ", grey dash: tolerance" if show_tol else ""
    if show_tol:
        sub = (
            f"errors below {1 / ERROR_FLOOR_BELOW_TOL:g}× the tolerance, exact 0 included, sit on the bottom line of "
            "their panel (the hover has the value); the dash is the base tolerance, ill-conditioned cases get a "
            "raised one"
        )
    else:
        sub = f"errors below {1 / ERROR_SPAN:g}× the panel's largest, exact 0 included, sit on its bottom line"
    title += f"; NaN: ✕ on top)<br><sup>{sub}</sup>"
    d = df.copy()
    if "result" not in d:
        d["result"] = d["passed"].map({True: "passed", False: "FAILED"}).fillna("skipped")
    # a check that failed with a NaN error (not one whose provider raised: no value at all) is drawn too
    d = d[d[metric].notna() | (d["result"] == "FAILED")] if not d.empty else d
    if d.empty:
        return empty_figure("no correctness result with an error value for this selection", title)
    d["plotted"] = d[metric]
    for _, g in d.groupby("dtype", sort=False):
        floor = error_floor(g[metric].dropna(), g["tol"] if show_tol and "tol" in g else None)
        top = max([float(v) for v in (*g[metric].dropna(), *(g["tol"].dropna() if "tol" in g else ())) if v > 0] or [1])
        d.loc[g.index, "plotted"] = g[metric].clip(lower=floor).fillna(top * 10)
    for col in ("case", "layout", "mode", "note", "git_sha", "source", "backend"):
        if col not in d:
            d[col] = ""
    dtype_order = ["float16", "bfloat16", "float32", "float64"]
    dtypes = [t for t in dtype_order if t in set(d["dtype"])] + sorted(set(d["dtype"]) - set(dtype_order))
    quantities = list(dict.fromkeys(d["quantity"]))
    qpos = {q: i for i, q in enumerate(quantities)}
    providers = [p for p in PROVIDER_ORDER if p in set(d["provider"])]
    providers += sorted(set(d["provider"]) - set(providers))
    width = 0.7 / max(1, len(providers))
    offsets = {p: (i - (len(providers) - 1) / 2) * width for i, p in enumerate(providers)}
    # A deterministic jitter inside each provider's slot, so overlapping checks stay visible.
    jitter = pd.Series(range(len(d)), index=d.index).map(lambda i: ((i * 0.618034) % 1 - 0.5) * width * 0.7)
    d["x"] = d["quantity"].map(qpos) + d["provider"].map(offsets) + jitter

    ncols = 1 if len(dtypes) == 1 else 2
    nrows = math.ceil(len(dtypes) / ncols)
    fig = make_subplots(
        rows=nrows,
        cols=ncols,
        subplot_titles=dtypes,
        shared_yaxes=False,
        horizontal_spacing=0.07,
        vertical_spacing=0.16 if nrows > 1 else 0.1,
    )
    custom = ["provider", "case", "layout", "mode", "tol", "result", "note", "backend", "git_sha", "source"]
    hover = (
        "<b>%{customdata[0]}</b> · %{customdata[5]}<br>"
        + label
        + " %{customdata[10]:.3g} (tol %{customdata[4]:.3g})<br>case %{customdata[1]} · %{customdata[2]} · "
        "%{customdata[3]}<br>backend %{customdata[7]}<br>%{customdata[6]}<br>%{customdata[8]} · %{customdata[9]}"
        "<extra></extra>"
    )
    for i, dt in enumerate(dtypes):
        row, col = i // ncols + 1, i % ncols + 1
        sub = d[d["dtype"] == dt]
        for p in providers:
            g = sub[sub["provider"] == p]
            if g.empty:
                continue
            fig.add_scatter(
                x=g["x"],
                y=g["plotted"],
                mode="markers",
                name=p,
                legendgroup=p,
                showlegend=i == 0,
                marker={"size": 7, "opacity": 0.75, "color": PROVIDER_COLORS.get(p, "#9467bd")},
                customdata=g[[*custom, metric]].astype(object).values,
                hovertemplate=hover,
                row=row,
                col=col,
            )
        tol = sub.groupby("quantity", sort=False)["tol"].min().dropna()
        if show_tol and not tol.empty:
            xs, ys = [], []
            for q, t in tol.items():
                xs += [qpos[q] - 0.42, qpos[q] + 0.42, None]
                ys += [t, t, None]
            fig.add_scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": "#555", "width": 2.5},
                name="tolerance",
                legendgroup="tolerance",
                showlegend=i == 0,
                hovertemplate="tolerance %{y:.3g}<extra></extra>",
                row=row,
                col=col,
            )
        bad = sub[sub["result"] == "FAILED"]
        if not bad.empty:
            fig.add_scatter(
                x=bad["x"],
                y=bad["plotted"],
                mode="markers",
                name="failed",
                legendgroup="failed",
                showlegend=not any(tr.name == "failed" for tr in fig.data),
                marker={"symbol": "x", "size": 13, "color": "#d62728", "line": {"width": 1.5, "color": "black"}},
                customdata=bad[[*custom, metric]].astype(object).values,
                hovertemplate=hover,
                row=row,
                col=col,
            )
        fig.update_xaxes(
            tickvals=list(range(len(quantities))),
            ticktext=quantities,
            range=[-0.6, len(quantities) - 0.4],
            tickangle=-35,
            row=row,
            col=col,
        )
        fig.update_yaxes(type="log", exponentformat="power", row=row, col=col)
        if col == 1:
            fig.update_yaxes(title=f"{label} (log)", row=row, col=col)
    # The legend goes on the right: on top it would cover the subtitle.
    return _style(fig, title, height=190 + 330 * nrows, legend="right")


def run_comparison(cmp: pd.DataFrame, label_a: str, label_b: str) -> go.Figure:
    """Time in run B over run A for every common measurement (below 1: B is faster)."""
    title = "Run B time / run A time per measurement (below 1×: B is faster)"
    if cmp.empty:
        return empty_figure("the two runs have no measurement in common", title)
    d = cmp.sort_values(["numel", "shape"]) if "numel" in cmp else cmp.sort_values("shape")
    d = d.assign(setting=d["dtype"] + " " + d["layout"] + " " + d["mode"] + " " + d["pass"].map(PASS_LABEL))
    fig = px.strip(
        d,
        x="shape",
        y="ratio",
        color="provider",
        hover_data={"setting": True, "ms_median_a": ":.4g", "ms_median_b": ":.4g", "ratio": ":.3f"},
        color_discrete_map=PROVIDER_COLORS,
        category_orders={"provider": [p for p in PROVIDER_ORDER if p in set(d["provider"])]},
        labels={
            "ratio": "time B / time A (×)",
            "shape": "shape N×C×spatial",
            "ms_median_a": "ms A",
            "ms_median_b": "ms B",
        },
        log_y=True,
    )
    fig.add_hline(y=1, line_dash="dash", line_color="#555")
    fig.update_yaxes(**_speedup_axis(d["ratio"]))
    fig.update_xaxes(tickangle=-30)
    return _style(fig, title + f"<br><sup>A: {label_a}<br>B: {label_b}</sup>", height=460)


DTYPE_COLORS = {"float16": "#ff7f0e", "bfloat16": "#9467bd", "float32": "#1f77b4", "float64": "#2ca02c"}


def kernel_label(name: str) -> str:
    """``bn_forward_stats_kernel`` → ``forward_stats``."""
    name = name.removesuffix("_kernel")
    return name.removeprefix("bn_")


def aot_scatter(rows: pd.DataFrame, value: str, budget: float, title: str, y_label: str, note: str = "") -> go.Figure:
    """One point per compiled specialisation of a hot kernel: ``value`` by kernel, coloured by dtype, one panel
    per path (tile loop, one tile), the budget as a dashed line."""
    title = title + (f"<br><sup>{note}</sup>" if note else "")
    if rows.empty:
        return empty_figure("no specialisation in this selection", title)
    d = rows.copy()
    d["kernel_short"] = d["kernel"].map(kernel_label)
    d["path_label"] = d["path"].map({"loop": "tile loop (large tensors)", "one-tile": "one tile per program"})
    hover = {
        c: True
        for c in ("case", "pass", "tile", "num_warps", "registers", "instructions_per_element", "elements_per_thread")
    }
    hover.update({"flags": True, "over": True, "kernel_short": False, "path_label": False, "dtype": True})
    dtypes = [t for t in DTYPE_COLORS if t in set(d["dtype"])] + sorted(set(d["dtype"]) - set(DTYPE_COLORS))
    fig = px.strip(
        d,
        x="kernel_short",
        y=value,
        color="dtype",
        facet_col="path_label",
        hover_data=hover,
        color_discrete_map=DTYPE_COLORS,
        category_orders={
            "dtype": dtypes,
            "path_label": ["tile loop (large tensors)", "one tile per program"],
            "kernel_short": sorted(d["kernel_short"].unique()),
        },
        labels={
            value: y_label,
            "kernel_short": "kernel",
            "instructions_per_element": "instructions / element",
            "elements_per_thread": "elements / thread",
            "num_warps": "warps",
            "over": "over budget",
        },
    )
    fig.update_traces(marker={"size": 6, "opacity": 0.7}, jitter=0.6)
    fig.add_hline(y=budget, line_dash="dash", line_color="#d62728")
    fig.add_annotation(  # once, above the plots' top right corner: on the line it would sit under the points
        text=f"red dash: budget {budget:g}",
        xref="paper",
        yref="paper",
        x=1,
        y=1.07,
        xanchor="right",
        showarrow=False,
        font={"color": "#d62728"},
    )
    fig.update_yaxes(rangemode="tozero", title=None)
    fig.update_yaxes(title=y_label, col=1)
    fig.update_xaxes(title=None, tickangle=-20)
    _strip_facet_titles(fig)
    return _style(fig, title, height=460, legend="right")


def host_bars(table: pd.DataFrame, budget: float, title: str) -> go.Figure:
    """Host µs per call, tritonbn next to torch, for every pass; the bars are labelled with their launches."""
    if table.empty:
        return empty_figure("no host measurement in this record", title)
    fig = go.Figure()
    passes = [p.replace("_", " ") for p in table["pass"]]
    for impl, color in (("tritonbn", PROVIDER_COLORS["tritonbn"]), ("torch", PROVIDER_COLORS["torch"])):
        launches = table[f"{impl}_launches"]
        fig.add_bar(
            x=passes,
            y=table[f"{impl}_us"],
            name=impl if impl == "tritonbn" else "torch (its CPU batch norm, computing)",
            marker_color=color,
            text=[f"{v:.0f} launch{'es' if v != 1 else ''}" if pd.notna(v) else "" for v in launches],
            textposition="outside",
            customdata=table[[f"{impl}_kernels", "ratio"]].astype(object).values,
            hovertemplate="%{x}<br>%{y:.1f} µs per call<br>%{text}: %{customdata[0]}<extra>" + impl + "</extra>",
        )
    fig.update_yaxes(title="host µs per call", rangemode="tozero")
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_xaxes(title=None)
    sub = f"tritonbn's kernels stubbed (host side only); target: at most {budget:g}× torch's train forward+backward"
    return _style(fig, f"{title}<br><sup>{sub}</sup>", height=430)


def gpu_and_wall(df: pd.DataFrame, title: str) -> go.Figure:
    """Per shape and provider, the GPU time per call (CUDA events / graph replays: ``ms_median``) next to the
    eager wall time per call (``wall_ms``: host, autograd and launches included), one panel per dtype."""
    d = df[df["wall_ms"].notna() & df["ms_median"].notna()] if not df.empty else df
    if d.empty:
        return empty_figure("no measurement with both a GPU time and a wall time in this selection", title)
    long = pd.concat(
        [
            d.assign(time="GPU time", ms=d["ms_median"]),
            d.assign(time="eager wall time", ms=d["wall_ms"]),
        ],
        ignore_index=True,
    ).sort_values(["numel", "shape"])
    if long["layout"].nunique() > 1:  # one group of bars per shape and layout
        short = {"contiguous": "contig.", "channels_last": "ch-last", "channels_last_3d": "ch-last-3d"}
        long["shape"] = long["shape"] + " " + long["layout"].map(short).fillna(long["layout"])
    fig = px.bar(
        long,
        x="shape",
        y="ms",
        color="provider",
        pattern_shape="time",
        barmode="group",
        facet_col="dtype",
        log_y=True,
        hover_data={"layout": True, "ms": ":.4g", "time": True, "shape": False},
        color_discrete_map=PROVIDER_COLORS,
        category_orders={
            "provider": [p for p in PROVIDER_ORDER if p in set(long["provider"])],
            "time": ["GPU time", "eager wall time"],
            "shape": list(dict.fromkeys(long["shape"])),
            "dtype": sorted(long["dtype"].unique()),
        },
        labels={"ms": "ms per call (log)", "shape": "shape N×C×spatial"},
    )
    fig.update_xaxes(tickangle=-30, title=None)
    fig.update_yaxes(title=None, dtick=1, exponentformat="power")  # a tick per decade
    fig.update_yaxes(title="ms per call (log)", col=1)
    _strip_facet_titles(fig)
    return _style(fig, title, height=480, legend="right")
