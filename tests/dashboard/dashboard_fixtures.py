"""Small synthetic result CSVs for the dashboard tests, written into temporary folders only.

The numbers are made up (deterministic) and only exercise the dashboard; real results come from real runs.
"""

from __future__ import annotations

import csv
import math
import sys
import zlib
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboard" / "streamlit_app.py"
if str(REPO) not in sys.path:  # the `dashboard` package lives at the repository root, next to `tritonbn`
    sys.path.insert(0, str(REPO))

from dashboard import data  # noqa: E402
from dashboard.screenshot import PAGES as _SCREENSHOT_PAGES  # noqa: E402

PAGES = list(_SCREENSHOT_PAGES)
TITLES = {page: title for page, (_, title) in _SCREENSHOT_PAGES.items()}
GPU = "NVIDIA H100 80GB HBM3"
PROV = {
    "timestamp": "2025-01-02T03:04:05Z",
    "git_sha": "abc1234",
    "gpu": GPU,
    "compute_capability": "9.0",
    "torch": "2.13.0",
    "cuda": "12.8",
    "cudnn": "91000",
    "triton": "3.9.0",
}
SHAPES = [(2, 32, 64, "56x56"), (2, 64, 256, "28x28"), (2, 8, 512, "7x7"), (1, 256, 1024, ""), (3, 2, 32, "16x32x32")]
PROVIDER_GBPS = {"tritonbn": 2400.0, "cudnn": 1900.0, "native": 1500.0, "inductor": 2100.0}
ELT = {"float16": 2, "bfloat16": 2, "float32": 4}
PASS_BYTES = {"fwd": 2, "bwd": 3, "fwd_bwd": 5}


def _jitter(*key) -> float:
    """A deterministic factor in [0.8, 1.2) from the key."""
    return 0.8 + 0.4 * (zlib.crc32(repr(key).encode()) % 1000) / 1000


def benchmark_rows(prov: dict | None = None, scale: float = 1.0, fail_inductor: bool = True) -> list[dict]:
    prov = {**PROV, **(prov or {})}
    rows = []
    for dim, n, c, spatial in SHAPES:
        numel = n * c * math.prod(int(s) for s in spatial.split("x")) if spatial else n * c
        for dtype, elt in ELT.items():
            for layout in ("contiguous", "channels_last") if dim >= 2 else ("contiguous",):
                for mode, pas in (("train", "fwd"), ("train", "bwd"), ("train", "fwd_bwd"), ("eval", "fwd")):
                    nbytes = PASS_BYTES[pas] * numel * elt
                    for provider, gbps in PROVIDER_GBPS.items():
                        row = {
                            **prov,
                            "provider": provider,
                            "backend": {"cudnn": "cudnn", "native": "native", "inductor": "triton"}.get(
                                provider, "tritonbn"
                            ),
                            "mode": mode,
                            "pass": pas,
                            "dim": dim,
                            "N": n,
                            "C": c,
                            "spatial": spatial,
                            "dtype": dtype,
                            "layout": layout,
                            "affine": True,
                            "numel": numel,
                            "bytes": nbytes,
                            "peak_gbps": 3000.0,
                            "suite": "quick",
                            "status": "ok",
                            "error": "",
                        }
                        g = gbps * _jitter(provider, dim, n, dtype, layout, mode, pas) * scale
                        g *= min(1.0, numel / 2e6) ** 0.3  # small shapes are latency bound
                        if fail_inductor and provider == "inductor" and dim == 3 and dtype == "bfloat16":
                            row.update(status="error", error="inductor: compilation failed")
                            row.update(ms_median="", ms_p20="", ms_p80="", gbps="", pct_of_peak="")
                        else:
                            ms = nbytes / (g * 1e6)
                            row.update(ms_median=ms, ms_p20=ms * 0.98, ms_p80=ms * 1.03, gbps=g)
                            row.update(pct_of_peak=100 * g / 3000.0, wall_ms=ms * 1.2 + 0.015)
                        if provider in ("tritonbn", "native"):
                            row["own_bytes"] = nbytes // PASS_BYTES[pas] * {"fwd": 3, "bwd": 5, "fwd_bwd": 8}[pas]
                        rows.append(row)
    return rows


QUANTITIES = ["y", "running_mean", "running_var", "dx", "dweight", "dbias", "ddx"]
#: the checks that fail, in order: ``failures=k`` fails the first k
FAILING = [
    ("tritonbn", "float32", "ddx", "channels_last", "train"),
    ("tritonbn", "float64", "dweight", "contiguous", "eval"),
]
TOL = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-5, "float64": 1e-12}


def correctness_rows(
    device: str = "cpu-interpreter", prov: dict | None = None, failures: int = 1, harness_extras: bool = False
) -> list[dict]:
    """Checks of tritonbn and torch; with ``harness_extras`` also the optional backend/status/note columns,
    short dtype names (``fp32``), a skipped provider and a provider that raised, as tritonbn-check writes."""
    prov = {**PROV, "gpu": "" if device == "cpu-interpreter" else GPU, **(prov or {})}
    rows = []
    for provider in ("tritonbn", "torch"):
        for dtype in ("float32", "float64"):
            for layout in ("contiguous", "channels_last"):
                for mode in ("train", "eval"):
                    for q in QUANTITIES:
                        tol = TOL[dtype]
                        err = tol * 0.05 * _jitter(provider, dtype, layout, mode, q)
                        if q == "running_var" and mode == "eval":
                            err = 0.0
                        passed = True
                        if (provider, dtype, q, layout, mode) in FAILING[:failures]:
                            err, passed = tol * 3, False
                        rows.append(
                            {
                                "provider": provider,
                                "case": "N3C5L7" if layout == "contiguous" else "N2C3H5W7",
                                "dtype": dtype,
                                "layout": layout,
                                "mode": mode,
                                "quantity": q,
                                "max_abs_err": err,
                                "max_rel_err": err * 10,
                                "reference": "float64",
                                "tol": tol,
                                "passed": passed,
                                "device": device,
                                **prov,
                            }
                        )
    if harness_extras:
        short = {"float32": "fp32", "float64": "fp64"}
        for r in rows:
            r["dtype"] = short[r["dtype"]]
            r["backend"] = "triton-interpreter" if r["provider"] == "tritonbn" else "cpu"
            r["status"] = "ok" if r["passed"] else "fail"
            r["note"] = ""
        base = {**rows[0], "case": "N4C3L7-detach", "max_abs_err": "", "max_rel_err": "", "tol": ""}
        rows.append({**base, "provider": "torch", "quantity": "", "passed": "", "status": "skipped"})
        rows[-1]["note"] = "torch has no detached-statistics batch norm"
        rows.append({**base, "provider": "tritonbn", "quantity": "dx", "passed": False, "status": "error"})
        rows[-1]["note"] = "RuntimeError: boom"
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


#: the later of the two interpreter correctness runs of ``write_good``: its file name sorts first
LATER_CHECK = "correctness/cpu-interpreter_0ff1ce5.csv"
LATER_CHECK_PROV = {"timestamp": "2025-01-09T10:00:00Z", "git_sha": "0ff1ce5"}


def write_good(root: Path) -> Path:
    """Two benchmark runs on one GPU, two correctness runs from the interpreter (the later one named so that
    it sorts first) and one from the GPU, a kernel report and a host record."""
    write_csv(root / "nvidia-h100" / "2025-01-02_abc1234.csv", benchmark_rows())
    later = {"timestamp": "2025-01-09T03:04:05Z", "git_sha": "def5678"}
    write_csv(root / "nvidia-h100" / "2025-01-09_def5678.csv", benchmark_rows(later, scale=1.1, fail_inductor=False))
    write_csv(root / "correctness" / "cpu-interpreter_abc1234.csv", correctness_rows())
    write_csv(root / LATER_CHECK, correctness_rows(prov=LATER_CHECK_PROV, failures=2))
    write_csv(root / "correctness" / "nvidia-h100_abc1234.csv", correctness_rows(GPU, failures=0))
    write_csv(root / "aot" / "3.9.0_abc1234_aot.csv", aot_rows())
    write_csv(root / "cpu" / "2025-01-02_abc1234_host.csv", host_rows())
    return root


AOT_KERNELS = ["bn_forward_stats_kernel", "bn_forward_apply_kernel", "bn_backward_reduce_kernel"]


def aot_rows() -> list[dict]:
    """A tritonbn-aot report: every kernel x dtype x arch, a loop and a one-tile specialisation; one of them
    over the instruction budget, one with too few elements per thread for the budget to apply."""
    rows = []
    prov = {**PROV, "gpu": ""}
    for arch in ("sm_90", "sm_80"):
        for kernel in AOT_KERNELS:
            for dtype in ("float16", "float32"):
                for loop in (True, False):
                    ept = 16.0 if loop else 4.0 if kernel == "bn_forward_apply_kernel" else 8.0
                    body = 96 if loop else 60
                    if kernel == "bn_backward_reduce_kernel" and not loop and dtype == "float16":
                        body = 240  # 30 per element: over the budget
                    rows.append(
                        {
                            **prov,
                            "compute_capability": arch[3] + "." + arch[4],
                            "kernel": kernel,
                            "hot": True,
                            "case": f"8x64x14x14 {dtype} contiguous",
                            "pass": "train_forward",
                            "dtype": dtype,
                            "layout": "contiguous",
                            "shape": "8x64x14x14",
                            "block_n": 1 if loop else 8,
                            "block_s": 256,
                            "block_c": 1,
                            "num_warps": 4,
                            "flags": "HAS_W VEC=4",
                            "arch": arch,
                            "status": "ok",
                            "registers": 64 if loop else 96,
                            "spill_bytes": 0,
                            "shared_bytes": 0,
                            "sass_instructions": body + 200,
                            "loop_instructions": body if loop else 0,
                            "program_instructions": body + 100 if loop else body,
                            "elements_per_thread": ept,
                            "instructions_per_element": round(body / ept, 2),
                            "div64_per_thread": 0,
                            "uses": 1,
                            "error": "",
                        }
                    )
    return rows


def host_rows() -> list[dict]:
    """A tritonbn-bench --host record: per pass tritonbn (kernels stubbed) and torch."""
    rows = []
    prov = {**PROV, "gpu": "cpu", "compute_capability": "", "cuda": "none", "cudnn": "none"}
    passes = {
        "train_forward": (1, 30.0, 1, 12.0),
        "train_backward": (1, 60.0, 1, 50.0),
        "train_forward_backward": (2, 100.0, 2, 80.0),
        "eval_forward": (1, 15.0, 1, 9.0),
    }
    for pas, (ours, ours_us, theirs, theirs_us) in passes.items():
        for impl, n, us in (("tritonbn", ours, ours_us), ("torch", theirs, theirs_us)):
            kernel = "bn_forward_stats_kernel" if impl == "tritonbn" else "native_batch_norm"
            rows.append(
                {
                    **prov,
                    "impl": impl,
                    "pass": pas,
                    "shape": "4x16x4x4",
                    "dtype": "float32",
                    "layout": "contiguous",
                    "triton_launches": n if impl == "tritonbn" else 0,
                    "aten_launches": 0 if impl == "tritonbn" else n,
                    "launches": n,
                    "kernels": f"{kernel}x{n}",
                    "host_us": us,
                    "host_ratio": us / theirs_us,
                    "cpu": "x86_64",
                }
            )
    return rows


def write_harness_like(root: Path) -> Path:
    """A correctness file with everything tritonbn-check may write: extra columns, skipped and errored checks."""
    write_csv(root / "cpu-interpreter" / "2025-01-02_abc1234_check.csv", correctness_rows(harness_extras=True))
    return root


def write_correctness_only(root: Path) -> Path:
    write_csv(root / "correctness" / "cpu-interpreter_abc1234.csv", correctness_rows())
    return root


def write_malformed(root: Path) -> Path:
    """Garbage, an empty file, a header-only file, missing columns and non-numeric values."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "garbage.csv").write_bytes(b"\x00\xff\xfe garbage \x00\n\x01\x02")
    (root / "empty.csv").write_text("")
    (root / "header_only.csv").write_text(",".join(data.BENCHMARK_COLUMNS) + "\n")
    (root / "unrelated.csv").write_text("a,b,c\n1,2,3\n")
    rows = benchmark_rows()[:8]
    for r in rows:
        del r["ms_p80"], r["gpu"]
    write_csv(root / "missing_columns.csv", rows)
    rows = benchmark_rows()[:16]
    rows[0]["ms_median"] = "fast"
    rows[1]["gbps"] = "n/a?"
    rows[2]["affine"] = "maybe"
    write_csv(root / "non_numeric.csv", rows)
    with (root / "ragged.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(data.CORRECTNESS_COLUMNS)
        w.writerow(["tritonbn", "x", "float32"])
        w.writerow(
            ["tritonbn", "x", "float32", "contiguous", "train", "y", "1e-7", "1e-6", "float64", "1e-5"] + ["1"] * 20
        )
    return root


def texts(elements) -> str:
    """All values of a list of AppTest elements, joined (for substring assertions)."""
    return "\n".join(str(e.value) for e in elements)
