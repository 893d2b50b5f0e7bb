"""Compute every quantity of a case with a provider and with the float64 reference, and compare them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tritonbn import reference
from tritonbn.correctness.cases import Case, Inputs, make_inputs
from tritonbn.correctness.tolerances import TOL, condition_number, errors, tolerance

__all__ = ["PROVIDERS", "Provider", "compute_quantities", "device_label", "reference_quantities", "run_case"]

BatchNormFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Provider:
    name: str
    fn: BatchNormFn
    supports_detach: bool


def _tritonbn_fn(x, rm, rv, w, b, training, momentum, eps, detach_stats):
    import tritonbn

    return tritonbn.batch_norm(x, rm, rv, w, b, training, momentum, eps, detach_stats=detach_stats)


def _torch_fn(x, rm, rv, w, b, training, momentum, eps, detach_stats):
    if detach_stats:
        raise ValueError("torch has no detached-statistics batch norm")
    return torch.nn.functional.batch_norm(x, rm, rv, w, b, training, momentum, eps)


PROVIDERS: dict[str, Provider] = {
    "tritonbn": Provider("tritonbn", _tritonbn_fn, supports_detach=True),
    "torch": Provider("torch", _torch_fn, supports_detach=False),
}


def device_label(device: torch.device) -> str:
    """The CSV's ``device``: the GPU name, ``cpu-interpreter`` (tritonbn's kernels in Triton's interpreter)
    or ``cpu-torch`` (no interpreter: tritonbn computes with torch ops, the plain CPU path)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from tritonbn.functional import uses_triton

    return "cpu-interpreter" if uses_triton(torch.empty(0, device=device)) else "cpu-torch"


def backend_label(provider: str, case: Case, inputs: Inputs) -> str:
    """What actually computes the provider's batch norm for these inputs."""
    x = inputs.x
    if provider == "tritonbn":
        from tritonbn.functional import uses_triton

        if not uses_triton(x):
            return "torch-ops"
        return "triton" if x.is_cuda else "triton-interpreter"
    if not x.is_cuda:
        return "torch-cpu"
    select = getattr(torch._C, "_select_batch_norm_backend", None)
    if select is None:
        return "torch-cuda"
    try:
        backend = select(
            x, inputs.weight, inputs.bias, inputs.running_mean, inputs.running_var, case.training, case.eps
        )
    except (RuntimeError, TypeError):
        return "torch-cuda"
    return str(backend).rsplit(".", 1)[-1].lower()


def _leaf(t: torch.Tensor | None, *, grad: bool, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.detach().clone() if dtype is None else t.detach().to(dtype)
    return t.requires_grad_(grad)


def _quantities(case: Case, inputs: Inputs, forward: Callable, *, float64: bool) -> dict[str, object]:
    """y, running stats, first- and second-order gradients. Values are tensors, ``None`` (identically zero)
    or an exception (the step failed; later steps are then not attempted)."""
    dt = torch.float64 if float64 else None
    x = _leaf(inputs.x, grad=True, dtype=dt)
    dy = _leaf(inputs.dy, grad=True, dtype=dt)
    w = _leaf(inputs.weight, grad=True, dtype=dt)
    b = _leaf(inputs.bias, grad=True, dtype=dt)
    rm = _leaf(inputs.running_mean, grad=False, dtype=dt)
    rv = _leaf(inputs.running_var, grad=False, dtype=dt)
    out: dict[str, object] = {}
    try:
        y = forward(x, rm, rv, w, b)
    except Exception as e:  # noqa: BLE001 - recorded per quantity
        return {"y": e}
    out["y"] = y.detach()
    if case.training and case.running_stats:
        out["running_mean"], out["running_var"] = rm, rv
    wrt = [x, w, b] if case.affine else [x]
    try:
        grads = torch.autograd.grad(y, wrt, dy, create_graph=True, allow_unused=True)
    except Exception as e:  # noqa: BLE001
        out["dx"] = e
        return out
    out["dx"] = grads[0].detach() if grads[0] is not None else None
    if case.affine:
        out["dweight"] = None if grads[1] is None else grads[1].detach()
        out["dbias"] = None if grads[2] is None else grads[2].detach()
    gx = grads[0]
    wrt2 = [x, w, dy] if case.affine else [x, dy]
    try:
        s = (gx.double() * inputs.v.double()).sum()
        dd = torch.autograd.grad(s, wrt2, allow_unused=True)
    except Exception as e:  # noqa: BLE001
        out["ddx"] = e
        return out
    out["ddx"] = dd[0]
    if case.affine:
        out["ddweight"], out["ddy"] = dd[1], dd[2]
    else:
        out["ddy"] = dd[1]
    return out


def reference_quantities(case: Case, inputs: Inputs) -> dict[str, object]:
    """Every quantity from :mod:`tritonbn.reference` in float64 (autograd through it for the gradients)."""

    def forward(x, rm, rv, w, b):
        return reference.batch_norm(x, rm, rv, w, b, case.training, case.eps, detach_stats=case.detach_stats)

    out = _quantities(case, inputs, forward, float64=True)
    if case.training and case.running_stats:
        mean, var, count = reference.batch_norm_stats(inputs.x)
        out["running_mean"], out["running_var"] = reference.running_stats_update(
            inputs.running_mean, inputs.running_var, mean, var, count, case.momentum
        )
    return out


def compute_quantities(provider: Provider, case: Case, inputs: Inputs) -> dict[str, object]:
    def forward(x, rm, rv, w, b):
        return provider.fn(x, rm, rv, w, b, case.training, case.momentum, case.eps, case.detach_stats)

    return _quantities(case, inputs, forward, float64=False)


def _param_quantity(q: str) -> bool:
    return q in ("running_mean", "running_var", "dweight", "dbias", "ddweight")


def run_case(
    case: Case, providers: list[Provider], device: torch.device, skip: dict[str, str] | None = None
) -> list[dict[str, object]]:
    """Rows (without provenance) for every provider × quantity of a case.

    ``skip`` maps a provider name to the reason it is not run on this case (one ``skipped`` row).
    """
    skip = skip or {}
    inputs = make_inputs(case, device)
    ref = reference_quantities(case, inputs)
    if case.training:
        mean, var, _ = reference.batch_norm_stats(inputs.x)
    else:
        mean, var = inputs.running_mean, inputs.running_var
    cond = condition_number(mean, var, case.eps)
    reduction = math.prod(case.shape) // case.shape[1]
    rows = []
    for provider in providers:
        base = {
            "provider": provider.name,
            "case": case.name,
            "dtype": case.dtype,
            "layout": case.layout,
            "mode": case.mode,
            "reference": "float64",
            "backend": backend_label(provider.name, case, inputs),
        }
        reason = skip.get(provider.name)
        if reason is None and case.detach_stats and not provider.supports_detach:
            reason = f"{provider.name} has no detached-statistics batch norm"
        if reason is not None:
            rows.append(
                {
                    **base,
                    "quantity": "",
                    "max_abs_err": None,
                    "max_rel_err": None,
                    "tol": None,
                    "passed": None,
                    "status": "skipped",
                    "note": reason,
                }
            )
            continue
        got = compute_quantities(provider, case, inputs)
        failure: Exception | None = None
        for q, r in ref.items():
            tol = tolerance(case.dtype, q, cond, reduction)
            row = {**base, "quantity": q, "tol": tol}
            raised = ""
            if tol > tolerance(case.dtype, q, 0.0, reduction):
                raised = f"tol raised to 4·u_acc·κ, κ={cond:.3g}"
            elif tol > TOL[(case.dtype, q)]:
                raised = f"tol scaled by sqrt(M/1024), M={reduction}"
            a = got.get(q, failure)
            if isinstance(a, Exception) or (q not in got and failure is not None):
                failure = a if isinstance(a, Exception) else failure
                msg = f"{type(failure).__name__}: {failure}".replace("\n", " ")[:300]
                rows.append(
                    {**row, "max_abs_err": None, "max_rel_err": None, "passed": False, "status": "error", "note": msg}
                )
                continue
            try:
                abs_err, rel_err = errors(a, r)
            except ValueError as e:
                rows.append(
                    {
                        **row,
                        "max_abs_err": None,
                        "max_rel_err": None,
                        "passed": False,
                        "status": "error",
                        "note": str(e),
                    }
                )
                continue
            passed = bool(rel_err <= tol)
            notes = [raised] if raised else []
            if _param_quantity(q) and a is not None and a.dtype != case.torch_dtype:
                notes.append(f"in {str(a.dtype).removeprefix('torch.')}")
            note = "; ".join(notes)
            rows.append(
                {
                    **row,
                    "max_abs_err": abs_err,
                    "max_rel_err": rel_err,
                    "passed": passed,
                    "status": "ok" if passed else "fail",
                    "note": note,
                }
            )
    return rows
