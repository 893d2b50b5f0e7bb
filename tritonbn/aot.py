"""``tritonbn-aot``: every kernel specialisation the launcher produces, compiled ahead of time, no GPU needed.

The launcher is run over a representative set of calls (train and eval forward, backward, fused
ReLU/add+ReLU, detached statistics, double backward, the explicit backward, SyncBatchNorm's passes;
float16/bfloat16/float32/float64; NCHW with spatial sizes that are and are not multiples of 16,
channels_last with small and large C, 2-d, 3-d, more than 2^31 elements) on ``meta`` tensors, with the
launches recorded instead of run. Each distinct specialisation (kernel, argument types, divisibility and
constexprs, warps -- exactly as Triton's JIT would key it) is compiled for sm_90 and sm_80 with the
ptxas shipped in triton's wheel, and the wheel's ``cuobjdump`` reports registers, spills and SASS.

Output: ``--out DIR`` (default ``bench_results/aot``) ``<triton-version>_<sha>_aot.csv`` (columns:
:data:`tritonbn.schema.AOT_COLUMNS`, provenance first), one row per (specialisation, arch).
``instructions_per_element`` is the steady state of a program: the SASS
instructions of its element loop divided by the elements each thread handles per iteration (for a
kernel without a loop -- one tile per program -- the instructions of a program's common path divided by
the elements per thread; the common path ends at the ticket that elects the one program per channel block
that merges the partials, see :func:`sass_stats`). ``div64_per_thread`` counts 64-bit integer divisions
and remainders in the PTX.

Budgets checked by ``--check`` (and by the test suite on ``--quick``): every specialisation compiles;
hot kernels (those that touch every element) use at most 128 registers, spill nothing and spend at most
8 SASS instructions per element whenever a thread holds at least 8 elements (smaller tiles belong to
tensors of a few thousand elements, bound by launch latency, not by instruction issue).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tritonbn.schema import AOT_BUDGET, aot_budget_applies, aot_excess, aot_path

ARCHS = (90, 80)
#: The budget of a kernel that touches every element (:data:`tritonbn.schema.AOT_BUDGET`).
MAX_REGISTERS = int(AOT_BUDGET["max_registers"])
MAX_INSTRUCTIONS_PER_ELEMENT = float(AOT_BUDGET["max_instructions_per_element"])
#: Classes of specialisations (kernel, path) not yet within the budget, with the most SASS instructions
#: per element and registers they may have: a ratchet, measured with ``tritonbn-aot`` (full set) on
#: triton 3.9 and rounded up by ~10%. Lower an entry when its class improves; delete it when the class
#: meets the budget. ``--check`` fails on anything above its ceiling, and on any other row over budget.
CEILINGS: dict[tuple[str, str], tuple[float, int]] = {
    # (kernel, path): (instructions per element, registers); worst measured on the full case set (sm_90 or
    # sm_80; bench_results/aot/3.9.0_e7ac6b3_aot.csv). The one-tile maxima are float64's (tiles of
    # float32's bytes: 8 elements per thread); the loops' are channels_last with C = 3 float16 (no vector
    # along C) for the elementwise passes and, for the reductions, NCHW 7 x 7 bfloat16 with add + ReLU in
    # programs of fewer than 8 tiles (read one element at a time; longer loops read along the flat channel x
    # position axis, as the elementwise passes do).
    ("bn_forward_stats_kernel", "loop"): (12.0, 128),  # 10.8
    ("bn_forward_stats_kernel", "one-tile"): (71.0, 128),  # 65.6 (float64; 34.5 otherwise)
    ("bn_forward_apply_kernel", "loop"): (20.0, 128),  # 17.4
    ("bn_forward_apply_kernel", "one-tile"): (66.0, 128),  # 60.0 (float64; 18.7 otherwise)
    ("bn_backward_reduce_kernel", "loop"): (22.0, 128),  # 19.4
    ("bn_backward_reduce_kernel", "one-tile"): (59.0, 128),  # 53.4 (float64; 36.2 otherwise)
    ("bn_backward_dx_kernel", "loop"): (30.0, 128),  # 26.9
    ("bn_backward_dx_kernel", "one-tile"): (32.0, 128),  # 28.6 (float64; 26.3 otherwise)
    # The double backward's primitives loop over chunks of tiles (median 5.4 and 4.9); their one-tile rows
    # are programs of a one-tile chunk (tensors of a few hundred thousand elements), up to 3 instructions
    # per element above the one-tile-per-program kernels they replaced (the chunk's bookkeeping).
    ("channel_sums_kernel", "loop"): (17.0, 128),  # 15.4
    ("channel_sums_kernel", "one-tile"): (26.0, 128),  # 23.1
    ("channel_affine_kernel", "loop"): (22.0, 128),  # 19.2
    ("channel_affine_kernel", "one-tile"): (21.0, 128),  # 18.6
}
HOT_KERNELS = frozenset(
    {
        "bn_forward_stats_kernel",
        "bn_forward_apply_kernel",
        "bn_backward_reduce_kernel",
        "bn_backward_dx_kernel",
        "channel_sums_kernel",
        "channel_affine_kernel",
    }
)


# ------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One call of the public API on meta tensors: shape (N, C, *spatial), dtype, layout and pass."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str  # "contiguous" | "channels_last"
    passes: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{'x'.join(map(str, self.shape))} {str(self.dtype).replace('torch.', '')} {self.layout}"


TRAIN = ("train_forward", "train_backward")
ALL_PASSES = (
    "train_forward",
    "train_backward",
    "eval_forward",
    "eval_backward",
    "relu_add",
    "detached",
    "double_backward",
    "explicit_backward",
    "sync",
)


def cases(quick: bool) -> list[Case]:
    """The representative calls (``quick``: the ResNet-50 and BatchNorm1d shapes, fast dtypes, main passes)."""
    half = (torch.float16, torch.bfloat16)
    main = ("train_forward", "train_backward", "eval_forward", "relu_add")
    out = [
        # NCHW, spatial a multiple of 16 / not (ResNet stages at batch 32), both sides of the one-tile path
        Case((32, 64, 56, 56), torch.float32, "contiguous", main),
        Case((32, 64, 56, 56), torch.float16, "contiguous", main),
        Case((32, 256, 14, 14), torch.float32, "contiguous", main),
        Case((32, 2048, 7, 7), torch.float32, "contiguous", main),
        Case((256, 512, 7, 7), torch.bfloat16, "contiguous", main),
        # channels_last: large and small C
        Case((32, 64, 56, 56), torch.float16, "channels_last", main),
        Case((32, 2048, 7, 7), torch.bfloat16, "channels_last", main),
        Case((32, 3, 224, 224), torch.float32, "channels_last", ("train_forward", "train_backward")),
        # BatchNorm1d: one tile and many
        Case((64, 1000), torch.float32, "contiguous", main),
        Case((4096, 256), torch.float16, "contiguous", main),
        # a channel of more than 2^31 rows: 64-bit offsets and tile indices
        Case((1, 1, 2**31 + 4096), torch.float16, "contiguous", TRAIN + ("eval_forward",)),
    ]
    if quick:
        return out
    for dtype in (*half, torch.float32, torch.float64):
        out += [
            Case((8, 96, 28, 28), dtype, "contiguous", ALL_PASSES),
            Case((8, 96, 28, 28), dtype, "channels_last", ALL_PASSES),
            Case((16, 40, 15, 15), dtype, "contiguous", ALL_PASSES),
            Case((16, 40, 15, 15), dtype, "channels_last", ALL_PASSES),
            Case((4, 32, 8, 16, 16), dtype, "contiguous", ALL_PASSES),
            Case((512, 64), dtype, "contiguous", ALL_PASSES),
        ]
    out += [
        Case((32, 128, 28, 28), torch.float32, "channels_last", ALL_PASSES),
        Case((256, 64, 7, 7), torch.float16, "contiguous", ALL_PASSES),
        # long chunks of 7 x 7 channels: the reductions read the (channel, position) plane
        Case((256, 2048, 7, 7), torch.bfloat16, "contiguous", ("train_forward", "train_backward", "relu_add", "sync")),
        Case((256, 3, 32, 32), torch.float16, "channels_last", ALL_PASSES),
        # the elementwise passes' widest channel blocks (512 float32, 256 float64 channels)
        Case((32, 2048, 7, 7), torch.float32, "channels_last", main),
        Case((32, 1024, 7, 7), torch.float64, "channels_last", main),
        # more than 2^31 elements
        Case((9, 4, 8192, 8192), torch.float16, "contiguous", TRAIN + ("eval_forward",)),
        Case((9, 4, 8192, 8192), torch.float16, "channels_last", TRAIN),
    ]
    return out


# --------------------------------------------------------------------------------------- recording


@dataclass
class Launch:
    kernel: object
    args: tuple
    meta: dict
    case: Case
    pass_: str


def _meta_tensor(case: Case, requires_grad: bool = False) -> torch.Tensor:
    t = torch.empty(case.shape, dtype=case.dtype, device="meta")
    if case.layout == "channels_last":
        t = t.to(memory_format=torch.channels_last if len(case.shape) == 4 else torch.channels_last_3d)
    return t.requires_grad_(requires_grad)


def _run_case(case: Case, pass_: str) -> None:
    """Call the public API for ``pass_`` on meta tensors (launches are recorded, not run)."""
    import tritonbn
    from tritonbn import launch

    C = case.shape[1]
    pdtype = torch.float64 if case.dtype == torch.float64 else torch.float32

    def params():
        w = torch.empty(C, dtype=pdtype, device="meta", requires_grad=True)
        b = torch.empty(C, dtype=pdtype, device="meta", requires_grad=True)
        rm = torch.empty(C, dtype=pdtype, device="meta")
        rv = torch.empty(C, dtype=pdtype, device="meta")
        return w, b, rm, rv

    w, b, rm, rv = params()
    x = _meta_tensor(case, requires_grad=True)
    if pass_ == "train_forward":
        with torch.no_grad():
            tritonbn.batch_norm(x, rm, rv, w, b, training=True)
    elif pass_ == "eval_forward":
        with torch.no_grad():
            tritonbn.batch_norm(x, rm, rv, w, b, training=False)
    elif pass_ in ("train_backward", "eval_backward", "detached"):
        y = tritonbn.batch_norm(x, rm, rv, w, b, training=pass_ != "eval_backward", detach_stats=pass_ == "detached")
        torch.autograd.grad(y, (x, w, b), torch.empty_like(y))
    elif pass_ == "relu_add":
        res = _meta_tensor(case, requires_grad=True)
        y = tritonbn.batch_norm_relu(x, rm, rv, w, b, training=True, residual=res)
        torch.autograd.grad(y, (x, w, b, res), torch.empty_like(y))
        y = tritonbn.batch_norm_relu(x, rm, rv, w, b, training=True)
        torch.autograd.grad(y, (x, w, b), torch.empty_like(y))
    elif pass_ == "double_backward":
        y = tritonbn.batch_norm(x, rm, rv, w, b, training=True)
        (dx,) = torch.autograd.grad(y, x, torch.empty_like(y), create_graph=True)
        torch.autograd.grad(dx, (x, w), torch.empty_like(dx))
    elif pass_ == "explicit_backward":
        acc = launch.acc_dtype(case.dtype)
        mean = torch.empty(C, dtype=acc, device="meta")
        tritonbn.batch_norm_backward(torch.empty_like(x), x.detach(), w.detach(), mean, mean)
    elif pass_ == "sync":
        # SyncBatchNorm's passes on one rank: local statistics, the rank merge, normalise, the sums of the
        # backward and its dx (the collectives themselves launch no Triton kernel)
        xd = x.detach()
        acc = launch.acc_dtype(case.dtype)
        mean, var, _ = launch.batch_stats(xd, 1e-5)
        launch.merge_stats(
            torch.empty((2, C), dtype=acc, device="meta"),
            torch.empty((2, C), dtype=acc, device="meta"),
            torch.empty(2, dtype=torch.float64, device="meta"),
            2,
            1e-5,
        )
        stats = torch.empty((4, C), dtype=acc, device="meta")
        launch.bn_apply(xd, stats, b.detach())
        _, _, _, _, coef = launch.bn_backward(
            torch.empty_like(xd), xd, w.detach(), stats, stats_grad=True, coef_only=True
        )
        launch.bn_backward_dx(torch.empty_like(xd), xd, stats, coef)
        # the fused layers (SyncBatchNormAddReLU): + residual and ReLU in the pass, the mask in the backward
        y = launch.bn_apply(xd, stats, b.detach(), residual=torch.empty_like(xd), relu=True)
        _, _, _, _, coef = launch.bn_backward(
            torch.empty_like(xd), xd, w.detach(), stats, stats_grad=True, relu_output=y, coef_only=True
        )
        launch.bn_backward_dx(torch.empty_like(xd), xd, stats, coef, relu_output=y, need_residual=True)
    else:
        raise ValueError(f"unknown pass {pass_!r}")


def record(case_list: list[Case]) -> list[Launch]:
    """Every launch the public API makes for ``case_list``, kernels not run."""
    from tritonbn import launch

    launches: list[Launch] = []
    current: dict = {}
    real_launch, real_uses = launch._launch, launch.uses_triton

    def recorder(kernel, grid, args, meta):
        launches.append(Launch(kernel, tuple(args), dict(meta), current["case"], current["pass"]))

    launch._launch = recorder
    launch.uses_triton = lambda t: True
    try:
        for case in case_list:
            for pass_ in case.passes:
                current.update({"case": case, "pass": pass_})
                _run_case(case, pass_)
    finally:
        launch._launch, launch.uses_triton = real_launch, real_uses
    return launches


# ------------------------------------------------------------------------------------ specialising


@dataclass
class Spec:
    kernel_name: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    launch: Launch
    uses: int = 1


def specialise(launches: list[Launch], arch: int = 90) -> list[Spec]:
    """Distinct specialisations, keyed as Triton's JIT keys them (types, divisibility, constexprs, options)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binders: dict = {}
    specs: dict = {}
    for ln in launches:
        kernel = ln.kernel
        binder = binders.get(kernel.fn.__name__)
        if binder is None:
            binder = binders[kernel.fn.__name__] = create_function_from_signature(
                kernel.signature, kernel.params, backend
            )
        kwargs = dict(ln.meta)
        bound_args, specialization, options = binder(*ln.args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
        key = (
            kernel.fn.__name__,
            str(signature),
            str(sorted(constexprs.items(), key=str)),
            str(attrs),
            options.num_warps,
        )
        if key in specs:
            specs[key].uses += 1
            continue
        opts = {"num_warps": options.num_warps, "num_stages": options.num_stages}
        specs[key] = Spec(kernel.fn.__name__, signature, constexprs, attrs, opts, ln)
    return list(specs.values())


# --------------------------------------------------------------------------------------- compiling


def _tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in triton's wheel or on PATH")
    return found


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_stats(sass: str) -> tuple[int, int, int]:
    """(instructions, instructions of the element loop, instructions of a program's common path) of one
    kernel's SASS.

    The common path is everything up to and including the first global atomic -- the ticket that elects
    the program merging a channel block's partials; what follows runs in one program per channel block,
    not per element (the whole kernel when there is no ticket). The element loop is the first loop in
    program order (a backward branch) on the common path that reads or writes global memory: the kernels
    put their tile loop before the ticket. Trailing padding (the final self-branch and NOPs) is not
    counted.
    """
    instrs = []
    for m in _INSTR.finditer(sass):
        instrs.append((int(m.group(1), 16), m.group(3), m.group(4)))
    # drop the padding after the last EXIT's self-branch
    while instrs and instrs[-1][1] in ("NOP", "BRA"):
        instrs.pop()
    common = next(
        (i + 1 for i, (_, op, _) in enumerate(instrs) if op.startswith(("ATOMG", "ATOM.", "REDG", "RED."))), len(instrs)
    )
    addr_index = {a: i for i, (a, _, _) in enumerate(instrs)}
    loops = []
    for i, (addr, op, rest) in enumerate(instrs[:common]):
        if op.startswith("BRA"):
            m = re.search(r"0x([0-9a-f]+)", rest)
            if m:
                target = int(m.group(1), 16)
                if target < addr and target in addr_index:
                    loops.append((addr_index[target], i))
    loops.sort()
    for start, end in loops:
        body = instrs[start : end + 1]
        if any(op.startswith(("LDG", "STG")) for _, op, _ in body):
            return len(instrs), len(body), common
    return len(instrs), 0, common


def _resources(cubin_path: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [_tool("cuobjdump"), "--dump-resource-usage", cubin_path], capture_output=True, text=True, check=True
    ).stdout
    regs = int(re.search(r"REG:(\d+)", out).group(1))
    local = int(re.search(r"LOCAL:(\d+)", out).group(1))
    shared = int(re.search(r"SHARED:(\d+)", out).group(1))
    return regs, local, shared


def compile_one(job: tuple) -> dict:
    """Compile one specialisation for one arch (in a worker process): resources and SASS statistics."""
    kernel_name, signature, constexprs, attrs, options, arch = job
    # FP contraction on, as the JIT compiles by default (set explicitly: newer triton warns when unset)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tritonbn.kernels import batch_norm as kernels

    kernel = getattr(kernels, kernel_name)
    row = {"arch": f"sm_{arch}"}
    try:
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", arch, 32),
            options=options,
        )
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "k.cubin")
            with open(cubin, "wb") as f:
                f.write(compiled.asm["cubin"])
            regs, local, shared = _resources(cubin)
            sass = subprocess.run(
                [_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True
            ).stdout
        total, loop, common = sass_stats(sass)
        ptx = compiled.asm["ptx"]
        div64 = len(re.findall(r"\b(?:div|rem)\.[su]64\b", ptx))
        row.update(
            status="ok",
            registers=regs,
            spill_bytes=local,
            shared_bytes=max(shared, compiled.metadata.shared),
            sass_instructions=total,
            loop_instructions=loop,
            program_instructions=common,
            div64_per_thread=div64,
            error="",
        )
    except Exception as exc:  # reported per row; the run goes on
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    return row


def _flags(meta: dict) -> str:
    """The launch's constexpr switches that are on, and VEC: most of what tells apart the specialisations of
    one kernel, case, pass and tile (e.g. ``GATE HAS_W SAME_STRIDES WRITE_DRES WRITE_DX VEC=16``; the rest
    is Triton's own specialisation of integer arguments equal to 1 or divisible by 16)."""
    on = sorted(k for k, v in meta.items() if v is True)
    vec = meta.get("VEC")
    return " ".join(on + ([f"VEC={vec}"] if vec is not None else []))


def _row(spec: Spec, result: dict, prov: dict) -> dict:
    ln = spec.launch
    c = spec.constexprs

    def const(name, default=1):
        for k, v in c.items():
            idx = k[0] if isinstance(k, tuple) else k
            if isinstance(idx, int) and ln.kernel.arg_names[idx] == name:
                return v
        return ln.meta.get(name, default)

    bn, bs, bc = const("BLOCK_N"), const("BLOCK_S"), const("BLOCK_C")
    warps = spec.options["num_warps"]
    ept = bn * bs * bc / (32 * warps)
    row = {
        "kernel": spec.kernel_name,
        "hot": spec.kernel_name in HOT_KERNELS,
        "case": ln.case.label,
        "pass": ln.pass_,
        "dtype": str(ln.case.dtype).replace("torch.", ""),
        "layout": ln.case.layout,
        "shape": "x".join(map(str, ln.case.shape)),
        "block_n": bn,
        "block_s": bs,
        "block_c": bc,
        "num_warps": warps,
        "flags": _flags(ln.meta),
        "elements_per_thread": round(ept, 3),
        "uses": spec.uses,
        **prov,
        "compute_capability": f"{result['arch'][3]}.{result['arch'][4:]}",
    }
    row.update(result)
    if result.get("status") == "ok":
        body = result["loop_instructions"] or result.get("program_instructions") or result["sass_instructions"]
        row["instructions_per_element"] = round(body / ept, 2) if ept else ""
    return row


path_of = aot_path


def over_budget(row: dict) -> list[str]:
    """How a compiled hot row exceeds the register and instruction budget (empty: within it; spills and
    64-bit divisions are reported by :func:`violations`)."""
    excess = aot_excess(row)
    out = []
    if "registers" in excess:
        out.append(f"{row['registers']} registers > {MAX_REGISTERS}")
    if "instructions_per_element" in excess:
        out.append(
            f"{excess['instructions_per_element']:g} SASS instructions per element > {MAX_INSTRUCTIONS_PER_ELEMENT:g}"
        )
    return out


def violations(rows: list[dict]) -> list[str]:
    """What fails ``--check``: a compile error anywhere; in a hot kernel a spill, a 64-bit division, or a
    row over the budget beyond its class's ceiling in :data:`CEILINGS` (over the budget itself when the
    class has none)."""
    out = []
    for r in rows:
        where = (
            f"{r['kernel']} [{r['case']}, {r['pass']}, {r['arch']}, "
            f"blocks {r['block_n']}x{r['block_s']}x{r['block_c']}, {path_of(r)}]"
        )
        if r["status"] != "ok":
            out.append(f"{where}: does not compile: {r.get('error', '')}")
            continue
        if str(r["hot"]) not in ("True", "true", "1"):
            continue
        if int(r["spill_bytes"]) > 0:
            out.append(f"{where}: spills {r['spill_bytes']} bytes")
        if int(r["div64_per_thread"]) > 0:
            out.append(f"{where}: {r['div64_per_thread']} 64-bit divisions")
        ceiling = CEILINGS.get((r["kernel"], path_of(r)))
        if ceiling is None:
            out.extend(f"{where}: {what}" for what in over_budget(r))
            continue
        max_ipe, max_regs = ceiling
        ipe = float(r["instructions_per_element"] or 0)
        if aot_budget_applies(r) and ipe > max_ipe:
            out.append(f"{where}: {ipe:g} SASS instructions per element > its ceiling {max_ipe:g}")
        if int(r["registers"]) > max_regs:
            out.append(f"{where}: {r['registers']} registers > its ceiling {max_regs}")
    return out


def run(quick: bool, jobs: int, archs=ARCHS, progress: bool = True) -> list[dict]:
    """Record, specialise and compile; returns one row per (specialisation, arch)."""
    from tritonbn import provenance

    # FP contraction on, as the JIT compiles by default (newer triton warns when it is left unset)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    prov = provenance.collect("cpu")
    prov.update(gpu="", compute_capability="")
    launches = record(cases(quick))
    specs = specialise(launches)
    work = [(s, arch) for s in specs for arch in archs]
    rows = []
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(work), desc="compiling", unit="kernel", file=sys.stderr)
        except ImportError:
            bar = None
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(compile_one, (s.kernel_name, s.signature, s.constexprs, s.attrs, s.options, arch)): s
            for s, arch in work
        }
        for fut in concurrent.futures.as_completed(futures):
            rows.append(_row(futures[fut], fut.result(), prov))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    rows.sort(key=lambda r: (r["kernel"], r["case"], r["pass"], r["arch"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tritonbn-aot",
        description="Compile every kernel specialisation the launcher produces for sm_90 and sm_80 (no GPU "
        "needed) and report registers, spills and SASS instructions per element.",
    )
    parser.add_argument("--out", default="bench_results/aot", help="output folder (default: bench_results/aot)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the ResNet-50, BatchNorm1d and > 2^31-row shapes, main passes only (file name ..._quick_aot.csv)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 90 and 80)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 on a compile error, a spill or a 64-bit division in a hot kernel, or a row over the budget "
        "beyond its class's recorded ceiling (CEILINGS)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    import triton

    from tritonbn.provenance import git_sha
    from tritonbn.schema import AOT_COLUMNS, unique_path

    t0 = time.perf_counter()
    rows = run(args.quick, max(1, args.jobs), tuple(args.arch or ARCHS), progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sha = rows[0]["git_sha"] if rows else git_sha()
    path = unique_path(out / f"{triton.__version__}_{sha}{'_quick' if args.quick else ''}_aot.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=AOT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    bad = violations(rows)
    hot = [r for r in rows if r["hot"] and r["status"] == "ok"]
    worst = max(hot, key=lambda r: float(r["instructions_per_element"] or 0), default=None)
    print(
        f"{len(rows)} rows ({len({r['kernel'] + r['case'] + r['pass'] for r in rows})} launches) "
        f"in {time.perf_counter() - t0:.0f} s -> {path}"
    )
    if hot:
        print(
            f"hot kernels: max {max(int(r['registers']) for r in hot)} registers, "
            f"{sum(int(r['spill_bytes']) > 0 for r in hot)} spilling, worst "
            f"{worst['instructions_per_element']} instructions/element ({worst['kernel']}, {worst['case']}, "
            f"{worst['pass']}, {path_of(worst)})"
        )
    over = [r for r in hot if over_budget(r)]
    print(
        f"{len(over)} of {len(hot)} hot rows over the budget ({MAX_REGISTERS} registers, "
        f"{MAX_INSTRUCTIONS_PER_ELEMENT:g} instructions per element)"
    )
    for line in bad:
        print("BEYOND CEILING:", line)
    if not bad:
        print("every row compiles, nothing spills, and nothing is beyond its class's ceiling")
    return 1 if (bad and args.check) else 0


if __name__ == "__main__":
    raise SystemExit(main())
