"""The machine a GPU session ran on: device, driver, software versions and the measured copy bandwidth.

``python -m tritonbn.gpu_session.env --out DIR`` writes ``<out>/<device>/<date>_<sha>_env.csv`` (columns
:data:`tritonbn.schema.ENV_COLUMNS`, one quantity per row) and, with ``--json FILE``, the same as a JSON
object for the session summary. On a machine without CUDA it records the CPU and software and no
bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["build_parser", "collect_environment", "main"]


def _nvidia_smi(fields: list[str]) -> dict[str, str]:
    """``nvidia-smi --query-gpu`` of GPU 0 in one call (10 s at most); empty without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.splitlines()[0].split(",")] if out else []
    return dict(zip(fields, values, strict=False))


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return "not installed"


def _nccl_version() -> str:
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - a build without NCCL
        return "none"
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def collect_environment(measure_bandwidth: bool = True) -> list[dict]:
    """Rows ``{quantity, value, unit}``: the device (name, compute capability, SMs, memory, L2, driver,
    clocks), the software (python, torch, triton, CUDA, cuDNN, numpy, torchvision, pytest-xdist,
    pytest-timeout) and, on CUDA, ``copy_gbps``: a device-to-device copy of 1 GiB timed with
    ``triton.testing.do_bench`` (:func:`tritonbn.bench.timing.copy_bandwidth_gbps`, bytes read + written)."""
    import triton

    rows: list[tuple[str, object, str]] = [
        ("python", platform.python_version(), ""),
        ("torch", torch.__version__, ""),
        ("triton", triton.__version__, ""),
        ("numpy", _version("numpy"), ""),
        ("torchvision", _version("torchvision"), ""),
        ("pytest", _version("pytest"), ""),
        ("pytest_xdist", _version("pytest-xdist"), ""),
        ("pytest_timeout", _version("pytest-timeout"), ""),
        ("cpu_count", os.cpu_count(), ""),
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows += [
            ("gpu", props.name, ""),
            ("compute_capability", f"{props.major}.{props.minor}", ""),
            ("sm_count", props.multi_processor_count, ""),
            ("memory_gib", round(props.total_memory / 2**30, 2), "GiB"),
        ]
        l2 = getattr(props, "L2_cache_size", None)
        if l2:
            rows.append(("l2_mib", round(l2 / 2**20, 2), "MiB"))
        rows += [
            ("cuda", torch.version.cuda or "none", ""),
            ("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none", ""),
            ("nccl", _nccl_version(), ""),
        ]
        smi_fields = (
            ("driver", "driver_version", ""),
            ("clock_sm_max_mhz", "clocks.max.sm", "MHz"),
            ("clock_mem_max_mhz", "clocks.max.memory", "MHz"),
            ("power_limit_w", "power.limit", "W"),
        )
        smi = _nvidia_smi([field for _, field, _ in smi_fields])
        for quantity, field, unit in smi_fields:
            if smi.get(field) not in (None, "", "[N/A]"):
                rows.append((quantity, smi[field], unit))
        if measure_bandwidth:
            from tritonbn.bench.timing import copy_bandwidth_gbps

            rows.append(("copy_gbps", round(copy_bandwidth_gbps(torch.device("cuda", 0)), 1), "GB/s"))
    else:
        rows.append(("gpu", "none", ""))
    return [{"quantity": q, "value": v, "unit": u} for q, v, u in rows]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tritonbn.gpu_session.env", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="results root (default bench_results)")
    p.add_argument("--json", type=Path, default=None, help="also write the values as a JSON object here")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the copy-bandwidth measurement")
    return p


def main(argv: list[str] | None = None) -> int:
    from tritonbn import provenance
    from tritonbn.gpu_session.records import write_record

    args = build_parser().parse_args(argv)
    rows = collect_environment(measure_bandwidth=not args.no_bandwidth)
    prov = provenance.collect(torch.device("cuda", 0) if torch.cuda.is_available() else "cpu")
    path = write_record(rows, "env", args.out, prov)
    for r in rows:
        print(f"  {r['quantity']:20s} {r['value']} {r['unit']}".rstrip())
    if args.json:
        values = {"provenance": prov, **{r["quantity"]: r["value"] for r in rows}}
        args.json.write_text(json.dumps(values, indent=1, default=str))
    print(f"env: {len(rows)} quantities -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
