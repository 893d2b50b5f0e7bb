"""Gradients: the batch-norm gradient explained, checked live by formulas, torch autograd and tritonbn.

This is the only page that uses torch, and it imports torch (and tritonbn) inside its functions only, so
the rest of the dashboard starts without it.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

EPS = 1e-5

st.title("Batch-norm gradients, explained")
st.markdown(
    "Batch norm is easy to get wrong by hand: the batch mean and variance **depend on every input** of the "
    "channel, so in training mode the gradient flows through them. This page writes the gradient out and "
    "checks it live, three ways: the closed formulas below (float64), torch autograd on "
    "`torch.nn.functional.batch_norm`, and tritonbn's Triton kernels."
)

st.header("The formulas")
st.markdown(
    "Per channel, over the $M = N \\cdot \\text{spatial}$ values $x_i$ of that channel "
    "(Ioffe & Szegedy, 2015), with $\\delta_i = \\partial L / \\partial y_i$ the incoming gradient `dy`:"
)
st.latex(
    r"\mu = \frac{1}{M}\sum_i x_i,\qquad \sigma^2 = \frac{1}{M}\sum_i (x_i-\mu)^2 \;\text{(biased)},\qquad"
    r"\hat x_i = \frac{x_i-\mu}{\sqrt{\sigma^2+\epsilon}},\qquad y_i = \gamma\,\hat x_i + \beta"
)
st.markdown("Back through the normalisation, with $\\partial L/\\partial \\hat x_i = \\delta_i\\,\\gamma$:")
st.latex(
    r"\frac{\partial L}{\partial \sigma^2} = \sum_i \delta_i\gamma\,(x_i-\mu)\cdot\left(-\tfrac12\right)"
    r"(\sigma^2+\epsilon)^{-3/2}"
)
st.latex(
    r"\frac{\partial L}{\partial \mu} = -\frac{1}{\sqrt{\sigma^2+\epsilon}}\sum_i \delta_i\gamma"
    r"\;+\;\frac{\partial L}{\partial \sigma^2}\cdot\frac{-2}{M}\sum_i (x_i-\mu)"
    r"\qquad\text{(the second term is 0)}"
)
st.latex(
    r"\frac{\partial L}{\partial x_i} = \frac{\delta_i\gamma}{\sqrt{\sigma^2+\epsilon}}"
    r"+ \frac{\partial L}{\partial \sigma^2}\,\frac{2(x_i-\mu)}{M} + \frac{\partial L}{\partial \mu}\,\frac{1}{M}"
    r"\;=\;\frac{\gamma}{M\sqrt{\sigma^2+\epsilon}}"
    r"\Big(M\delta_i - \sum_j \delta_j - \hat x_i\sum_j \delta_j \hat x_j\Big)"
)
st.latex(
    r"\frac{\partial L}{\partial \gamma} = \sum_i \delta_i\,\hat x_i,\qquad "
    r"\frac{\partial L}{\partial \beta} = \sum_i \delta_i"
)
st.markdown(
    "**Common mistakes.** (1) $\\partial L/\\partial\\gamma = \\sum \\delta_i y_i$: it must be $\\hat x_i$, the "
    "*normalised* input, not the output (they differ by $\\beta\\sum\\delta_i$ and a factor $\\gamma$). "
    "(2) Treating $\\mu$ and $\\sigma^2$ as constants: that drops the last two terms of $\\partial L/\\partial x$ and "
    "is the gradient of a *different* function (see *full vs detached* below). (3) Concluding from "
    "`weight.grad is None` on a frozen $\\gamma$ that its gradient is zero. In **eval mode** the running statistics "
    "are constants and $\\partial L/\\partial x_i = \\delta_i\\,\\gamma/\\sqrt{\\sigma^2_{run}+\\epsilon}$."
)


# --- torch-side helpers: every torch / tritonbn import happens inside a function ------------------------------


def _load_tritonbn():
    """``(module, path description, runs the Triton kernels?)`` or ``(None, error text, False)``."""
    try:
        import torch

        import tritonbn
        from tritonbn import functional
    except Exception as e:  # the core may be missing or broken: say so on the page, no traceback
        return None, f"{type(e).__name__}: {e}", False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.empty(1, device=device)
    if hasattr(functional, "uses_triton"):
        triton = bool(functional.uses_triton(probe))
    else:
        triton = device == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if device == "cuda":
        where = f"Triton kernels on CUDA ({torch.cuda.get_device_name()})"
    elif triton:
        where = "Triton kernels in Triton's interpreter on the CPU (TRITON_INTERPRET=1 was set before import)"
    else:
        where = (
            "PyTorch's CPU batch norm: TRITON_INTERPRET was not set when tritonbn was imported "
            f"(TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}), so tritonbn falls back to torch on the "
            "CPU. Start the dashboard with TRITON_INTERPRET=1 to run the Triton kernels in the interpreter."
        )
    return tritonbn, where, triton


def _closed_form(x, dy, gamma, mean, var, training, detach):
    """dx, dgamma, dbeta from the formulas above (float64 tensors in, float64 out)."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    m = x.numel() // x.shape[1]
    invstd = (var + EPS).rsqrt()
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    dbeta = dy.sum(dims)
    dgamma = (dy * xhat).sum(dims)
    scale = (gamma * invstd).reshape(shape)
    if training and not detach:
        dx = scale / m * (m * dy - dbeta.reshape(shape) - xhat * dgamma.reshape(shape))
    else:
        dx = scale * dy
    return dx, dgamma, dbeta, xhat


def _inputs(n, c, spatial, seed, dtype_name):
    import torch

    g = torch.Generator().manual_seed(int(seed))
    shape = (n, c, *spatial)
    f64 = torch.float64
    x = torch.randn(shape, generator=g, dtype=f64) * 2 + 0.5
    dy = torch.randn(shape, generator=g, dtype=f64)
    gamma = torch.rand(c, generator=g, dtype=f64) + 0.5
    beta = torch.randn(c, generator=g, dtype=f64)
    running_mean = torch.randn(c, generator=g, dtype=f64) * 0.1
    running_var = torch.rand(c, generator=g, dtype=f64) + 0.5
    return x, dy, gamma, beta, running_mean, running_var, getattr(torch, dtype_name)


def _grads(fn, x, dy, gamma, beta, rm, rv, dtype, device, training, detach):
    """Run ``fn`` (a batch_norm) in ``dtype`` on ``device`` and return float64 (dx, dgamma, dbeta)."""
    import torch

    xt = x.to(device, dtype, copy=True).requires_grad_()
    w = gamma.to(device, dtype, copy=True).requires_grad_()
    b = beta.to(device, dtype, copy=True).requires_grad_()
    y = fn(xt, rm.to(device, dtype).clone(), rv.to(device, dtype).clone(), w, b, training, detach)
    grads = torch.autograd.grad(y, (xt, w, b), dy.to(device, dtype))
    return [t.detach().double().cpu() for t in grads]


def _torch_bn(x, rm, rv, w, b, training, detach):
    """torch.nn.functional.batch_norm; detached statistics = eval mode fed with the batch statistics."""
    import torch
    import torch.nn.functional as F

    if training and detach:
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.detach(), dim=dims, correction=0)
        return F.batch_norm(x, mean, var, w, b, False, 0.0, EPS)
    return F.batch_norm(x, rm, rv, w, b, training, 0.1, EPS)


def _maxdiff(a, b) -> float:
    return float((a - b).abs().max()) if a is not None and b is not None else float("nan")


@st.cache_data(show_spinner="Computing the gradients …", max_entries=32)
def live_example(n: int, c: int, spatial: tuple, seed: int, mode: str, detach: bool, dtype_name: str) -> dict:
    """Gradients of one batch by the formulas, torch autograd and tritonbn, and their max differences."""
    import torch

    tbn, where, triton = _load_tritonbn()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    training = mode == "train"
    detach = detach and training
    x, dy, gamma, beta, rm, rv, dtype = _inputs(n, c, spatial, seed, dtype_name)
    dims = [0, *range(2, x.dim())]
    if training:
        var, mean = torch.var_mean(x, dim=dims, correction=0)
    else:
        mean, var = rm, rv
    ref = _closed_form(x, dy, gamma, mean, var, training, detach)
    methods = {"closed formulas (float64)": ref[:3]}
    notes = []
    try:
        methods[f"torch autograd ({dtype_name})"] = _grads(
            _torch_bn, x, dy, gamma, beta, rm, rv, dtype, device, training, detach
        )
    except Exception as e:
        notes.append(f"torch autograd failed: {type(e).__name__}: {e}")
    if tbn is not None:

        def _ours(xt, rmt, rvt, w, b, tr, det):
            return tbn.batch_norm(xt, rmt, rvt, w, b, training=tr, momentum=0.1, eps=EPS, detach_stats=det)

        try:
            methods[f"tritonbn autograd ({dtype_name})"] = _grads(
                _ours, x, dy, gamma, beta, rm, rv, dtype, device, training, detach
            )
        except Exception as e:
            notes.append(f"tritonbn.batch_norm failed: {type(e).__name__}: {e}")
        if triton:
            try:
                acc = torch.float64 if dtype == torch.float64 else torch.float32
                out = tbn.batch_norm_backward(
                    dy.to(device, dtype),
                    x.to(device, dtype),
                    gamma.to(device, dtype),
                    mean.to(device, acc),
                    (var + EPS).rsqrt().to(device, acc),
                    training=training and not detach,
                )
                methods["tritonbn.batch_norm_backward"] = [t.double().cpu() for t in out]
            except Exception as e:
                notes.append(f"tritonbn.batch_norm_backward failed: {type(e).__name__}: {e}")
        else:
            notes.append(
                "tritonbn.batch_norm_backward runs the Triton kernels only (CUDA or TRITON_INTERPRET=1), skipped."
            )
    rows = []
    for name, (dx, dg, db) in methods.items():
        rows.append(
            {
                "method": name,
                "max |Δ dx|": _maxdiff(dx, ref[0]),
                "max |Δ dγ|": _maxdiff(dg, ref[1]),
                "max |Δ dβ|": _maxdiff(db, ref[2]),
                "dγ (first channels)": ", ".join(f"{v:+.5f}" for v in dg[:4].tolist()),
                "dβ (first channels)": ", ".join(f"{v:+.5f}" for v in db[:4].tolist()),
            }
        )
    # Full vs detached statistics on the same batch (training mode).
    if training:
        var_b, mean_b = torch.var_mean(x, dim=dims, correction=0)
        full = _closed_form(x, dy, gamma, mean_b, var_b, True, False)
        det = _closed_form(x, dy, gamma, mean_b, var_b, True, True)
        xhat = full[3]
        fvd = [
            {
                "statistics": name,
                "max |dx|": float(g[0].abs().max()),
                "max |Σ dx| per channel": float(g[0].sum(dims).abs().max()),
                "max |Σ dx·x̂| per channel": float((g[0] * xhat).sum(dims).abs().max()),  # 0 up to ε
            }
            for name, g in (("full (gradient flows through μ, σ²)", full), ("detached (detach_stats=True)", det))
        ]
        fvd_diff = float((full[0] - det[0]).abs().max())
    else:
        fvd, fvd_diff = [], float("nan")
    return {
        "where": where,
        "triton": triton,
        "tritonbn": tbn is not None,
        "table": rows,
        "notes": notes,
        "fvd": fvd,
        "fvd_diff": fvd_diff,
        "count": x.numel() // c,
    }


@st.cache_data(show_spinner=False, max_entries=4)
def frozen_gamma(use_tritonbn: bool) -> dict:
    """A 2-sample, 1-channel batch with a frozen γ: its .grad stays None, yet Σ dy·x̂ is not zero."""
    import torch
    import torch.nn.functional as F

    tbn = _load_tritonbn()[0] if use_tritonbn else None
    x = torch.tensor([[1.0], [3.0]], dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor([2.0], dtype=torch.float64)  # frozen: requires_grad=False
    beta = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    dy = torch.tensor([[1.0], [3.0]], dtype=torch.float64)  # the loss is L = 1·y₀ + 3·y₁
    rm, rv = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    if tbn is not None:
        y = tbn.batch_norm(x, rm, rv, gamma, beta, training=True, eps=EPS)
    else:
        y = F.batch_norm(x, rm, rv, gamma, beta, True, 0.1, EPS)
    y.backward(dy)
    mean, var = x.detach().mean(0), x.detach().var(0, unbiased=False)
    xhat = (x.detach() - mean) / (var + EPS).sqrt()
    return {
        "by": "tritonbn" if tbn is not None else "torch",
        "x": x.detach().flatten().tolist(),
        "xhat": xhat.flatten().tolist(),
        "y": y.detach().flatten().tolist(),
        "gamma_grad": gamma.grad,
        "beta_grad": float(beta.grad),
        "sum_dy_xhat": float((dy * xhat).sum()),
        "sum_dy_y": float((dy * y.detach()).sum()),
    }


def double_backward_code(mode: str, detach: bool) -> str:
    """The code the double-backward table runs, for the selected mode and statistics."""
    args = f"training={mode == 'train'}" + (", detach_stats=True" if detach and mode == "train" else "")
    return (
        f"y = tritonbn.batch_norm(x, running_mean, running_var, weight, bias, {args})\n"
        "(g,) = torch.autograd.grad((y * r).sum(), x, create_graph=True)\n"
        "penalty = g.pow(2).sum()\n"
        "# materialize_grads: a gradient that does not depend on x is 0, not an error\n"
        "ddx, dweight = torch.autograd.grad(penalty, (x, weight), materialize_grads=True)"
    )


@st.cache_data(show_spinner="Differentiating twice …", max_entries=16)
def double_backward(
    n: int, c: int, spatial: tuple, seed: int, mode: str, dtype_name: str, detach: bool = False
) -> dict:
    """penalty = ‖∂L/∂x‖² with L = Σ r·y (create_graph=True), then ∂penalty/∂x and ∂penalty/∂γ.

    With constant statistics (eval mode, or detached ones) ∂L/∂x = r·γ/√(σ²+ε) does not depend on x, so
    ∂penalty/∂x is exactly 0 (``materialize_grads=True`` returns it as zeros instead of raising).
    """
    import torch

    tbn, _, _ = _load_tritonbn()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    training = mode == "train"
    detach = detach and training
    x, r, gamma, beta, rm, rv, dtype = _inputs(n, c, spatial, seed, dtype_name)

    def second_order(fn, dt, dev):
        xt = x.to(dev, dt, copy=True).requires_grad_()
        w = gamma.to(dev, dt, copy=True).requires_grad_()
        b = beta.to(dev, dt, copy=True).requires_grad_()
        y = fn(xt, rm.to(dev, dt).clone(), rv.to(dev, dt).clone(), w, b, training, detach)
        (gx,) = torch.autograd.grad((y * r.to(dev, dt)).sum(), xt, create_graph=True)
        penalty = gx.pow(2).sum()
        ddx, ddw = torch.autograd.grad(penalty, (xt, w), materialize_grads=True)
        return float(penalty.detach()), ddx.double().cpu(), ddw.double().cpu()

    methods = {}
    errors = []
    try:
        from tritonbn import reference

        methods["float64 reference (autograd through the formulas)"] = second_order(
            lambda xt, a, b_, w, b, tr, det: reference.batch_norm(
                xt, a, b_, w, b, training=tr, eps=EPS, detach_stats=det
            ),
            torch.float64,
            "cpu",
        )
    except Exception as e:
        errors.append(f"reference: {type(e).__name__}: {e}")
    try:
        methods[f"torch autograd ({dtype_name})"] = second_order(_torch_bn, dtype, device)
    except Exception as e:
        errors.append(f"torch: {type(e).__name__}: {e}")
    if tbn is not None:
        try:
            methods[f"tritonbn ({dtype_name})"] = second_order(
                lambda xt, a, b_, w, b, tr, det: tbn.batch_norm(
                    xt, a, b_, w, b, training=tr, eps=EPS, detach_stats=det
                ),
                dtype,
                device,
            )
        except Exception as e:
            errors.append(f"tritonbn: {type(e).__name__}: {e}")
    if not methods:
        return {"rows": [], "errors": errors}
    base = next(iter(methods.values()))
    rows = [
        {
            "method": name,
            "penalty ‖∂L/∂x‖²": pen,
            "max |Δ ∂penalty/∂x|": _maxdiff(ddx, base[1]),
            "max |Δ ∂penalty/∂γ|": _maxdiff(ddw, base[2]),
            "max |∂penalty/∂x|": float(ddx.abs().max()),
        }
        for name, (pen, ddx, ddw) in methods.items()
    ]
    return {"rows": rows, "errors": errors}


# --- the page -------------------------------------------------------------------------------------------------

st.header("Live example")
tbn, where, triton = _load_tritonbn()
if tbn is None:
    st.warning(
        f"tritonbn could not be imported ({where}); the examples below show the formulas and torch only. "
        "Install the package (`pip install -e .`) to compare its kernels."
    )
else:
    (st.success if triton else st.info)(f"tritonbn runs here on: **{where}**")

c1, c2, c3, c4 = st.columns(4)
n = c1.number_input("N (batch)", min_value=2, max_value=16, value=4, step=1)
c = c2.number_input("C (channels)", min_value=1, max_value=8, value=3, step=1)
spatial_choice = c3.selectbox("spatial", ["5", "3x4", "none (1-d: N×C)", "2x3x2"], index=0)
seed = c4.number_input("seed", min_value=0, max_value=10_000, value=0, step=1)
c1, c2, c3 = st.columns(3)
mode = c1.radio("mode", ["train", "eval"], horizontal=True)
if mode == "eval" or "detach" not in st.session_state:
    st.session_state["detach"] = False  # eval mode has constant statistics: nothing to detach
detach = c2.checkbox(
    "detach statistics (detach_stats=True)",
    key="detach",
    disabled=mode == "eval",
    help="Train mode only: treat the batch mean and variance as constants (in eval mode they are constants).",
)
dtype_name = c3.radio("dtype", ["float64", "float32"], horizontal=True)
spatial = () if spatial_choice.startswith("none") else tuple(int(s) for s in spatial_choice.split("x"))

try:
    ex = live_example(int(n), int(c), spatial, int(seed), mode, bool(detach), dtype_name)
except Exception as e:  # never a traceback on the page
    st.error(f"The live example failed: {type(e).__name__}: {e}")
    ex = None
if ex is not None:
    shape = "×".join(str(v) for v in (int(n), int(c), *spatial))
    st.markdown(
        f"Input {shape} ({dtype_name}), random `dy`, γ and β; "
        f"{'batch statistics' if mode == 'train' else 'running statistics'}"
        f"{', detached' if detach and mode == 'train' else ''}. "
        "Differences are against the closed formulas; at float64 they should be ~1e-15, at float32 ~1e-6."
    )
    table = pd.DataFrame(ex["table"])
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            k: st.column_config.NumberColumn(k, format="%.2e") for k in ("max |Δ dx|", "max |Δ dγ|", "max |Δ dβ|")
        },
    )
    for note in ex["notes"]:
        st.caption(note)

    st.header("Full vs detached statistics")
    st.markdown(
        "With the **full** gradient, shifting all values of a channel or scaling them around their mean does not "
        "change $\\hat x$, so $\\partial L/\\partial x$ has no component along those directions: "
        "$\\sum_i \\partial L/\\partial x_i = 0$ per channel, and "
        "$\\sum_i \\hat x_i\\,\\partial L/\\partial x_i = 0$ up to the effect of $\\epsilon$ (it is "
        "$\\gamma\\,\\epsilon/(\\sigma^2+\\epsilon)^{3/2}\\sum_i \\delta_i \\hat x_i$: exactly 0 only for "
        "$\\epsilon = 0$, hence the small value in the table). "
        "With `detach_stats=True` the statistics are treated as constants and"
    )
    st.latex(r"\frac{\partial L}{\partial x_i} = \delta_i\,\gamma\,\frac{1}{\sqrt{\sigma^2+\epsilon}}")
    st.markdown(
        "which is the gradient of a different function (eval mode with this batch's statistics plugged in). Use it "
        "on purpose, e.g. when each sample's derivative should not couple to the rest of the batch (physics-informed "
        "nets differentiating w.r.t. their inputs); for training it is not the gradient of the loss."
    )
    if ex["fvd"]:
        st.dataframe(
            pd.DataFrame(ex["fvd"]),
            hide_index=True,
            column_config={
                k: st.column_config.NumberColumn(k, format="%.3e")
                for k in ("max |dx|", "max |Σ dx| per channel", "max |Σ dx·x̂| per channel")
            },
        )
        st.markdown(f"On this batch the two differ by up to **{ex['fvd_diff']:.3g}** in `dx`.")
    else:
        st.info("Switch the mode to *train* to compare: in eval mode the statistics are constants anyway.")

st.header("Frozen γ")
st.markdown(
    "Freezing γ (`weight.requires_grad_(False)`) means autograd does not compute its gradient, so `weight.grad` "
    "stays `None`. It does **not** mean the gradient is zero: it is still $\\sum \\delta_i \\hat x_i$. "
    "With two samples in one channel, $x = (1, 3)$, $\\hat x \\approx (-1, 1)$, γ = 2, β = 0.5 and the loss "
    "$L = 1\\cdot y_0 + 3\\cdot y_1$:"
)
try:
    fz = frozen_gamma(tbn is not None)
    cols = st.columns(4)
    cols[0].metric("weight.grad (frozen γ)", "None" if fz["gamma_grad"] is None else str(fz["gamma_grad"]))
    cols[1].metric("Σ dy·x̂ — what dγ would be", f"{fz['sum_dy_xhat']:.4f}")
    cols[2].metric("Σ dy·y — the wrong formula", f"{fz['sum_dy_y']:.4f}")
    cols[3].metric("bias.grad = Σ dy", f"{fz['beta_grad']:.4f}")
    st.caption(f"Computed with {fz['by']}; x̂ = {', '.join(f'{v:+.5f}' for v in fz['xhat'])}.")
except Exception as e:
    st.error(f"The frozen-γ example failed: {type(e).__name__}: {e}")

st.header("Double backward")
st.markdown(
    "Gradient penalties (WGAN-GP) and physics-informed nets differentiate a loss of the *input gradient*: "
    "compute $g = \\partial L/\\partial x$ with `create_graph=True`, then backpropagate through $g$. "
    "Here $L = \\sum_i r_i y_i$ for a random $r$, the penalty is $\\lVert g\\rVert^2$, and its gradients "
    "w.r.t. $x$ and γ are compared with the float64 reference, using the inputs and the mode of the live "
    "example."
)
if mode == "eval" or detach:
    st.markdown(
        "With constant statistics (" + ("eval mode" if mode == "eval" else "`detach_stats=True`") + ") "
        "$g_i = r_i\\,\\gamma/\\sqrt{\\sigma^2+\\epsilon}$ does not depend on $x$: $\\partial\\,"
        '\\text{penalty}/\\partial x$ is exactly 0 (autograd raises "One of the differentiated Tensors appears to '
        'not have been used in the graph" unless asked to `materialize_grads`), while '
        "$\\partial\\,\\text{penalty}/\\partial\\gamma = "
        "2\\gamma\\sum_i r_i^2/(\\sigma^2+\\epsilon)$ is not."
    )
st.code(double_backward_code(mode, bool(detach)), language="python")
try:
    db = double_backward(int(n), int(c), spatial, int(seed), mode, dtype_name, bool(detach))
    if db["rows"]:
        st.dataframe(
            pd.DataFrame(db["rows"]),
            hide_index=True,
            column_config={
                k: st.column_config.NumberColumn(k, format="%.3e")
                for k in ("penalty ‖∂L/∂x‖²", "max |Δ ∂penalty/∂x|", "max |Δ ∂penalty/∂γ|", "max |∂penalty/∂x|")
            },
        )
    for err in db["errors"]:
        st.warning(f"Double backward failed for {err}")
except Exception as e:
    st.error(f"The double-backward example failed: {type(e).__name__}: {e}")
