"""The resources of every Triton kernel specialisation compiled into a cache folder.

``tritonbn-gpu-session`` points every step at one fresh ``TRITON_CACHE_DIR``; its ``kernels`` step then
reads every compiled tritonbn kernel from there (``python -m tritonbn.gpu_session.kernels --cache DIR``)
and writes one row per specialisation (columns :data:`tritonbn.schema.KERNELS_COLUMNS`):

- ``registers`` and ``spills``: what Triton's compiled kernels report as ``n_regs`` and ``n_spills``, from
  the CUDA driver loading the cubin (``triton.runtime.driver.active.utils.load_binary``, as
  ``CompiledKernel`` does). Without a GPU the same numbers come from ``cuobjdump --dump-resource-usage`` of
  the cubin (the ``cuobjdump`` shipped in triton's wheel; ``spills`` = local memory bytes / 4, the driver's
  definition); the ``source`` column says which.
- ``signature``: the kernel's arguments as compiled, ``name:type`` with ``/16`` for the arguments Triton
  specialised as divisible by 16 (``*f16`` is a pointer to float16); ``tiles``: the ``tl.arange`` extents
  in the kernel (its block sizes); ``num_warps``, ``num_stages``, ``shared_bytes`` and ``arch`` from the
  compiled kernel's metadata.

Only kernels defined in :mod:`tritonbn.kernels` are reported (``--all`` for every kernel in the folder,
e.g. the ones ``torch.compile`` generated).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["build_parser", "CompiledKernel", "find_compiled", "main", "resources", "tritonbn_kernel_names"]


@dataclass
class CompiledKernel:
    """One specialisation in a Triton cache folder."""

    name: str
    hash: str
    cubin: Path
    metadata: dict
    ttir: str

    @property
    def arch(self) -> str:
        target = self.metadata.get("target")
        if isinstance(target, dict):
            return f"{target.get('backend', '')}:{target.get('arch', '')}"
        if isinstance(target, (list, tuple)) and len(target) >= 2:
            return f"{target[0]}:{target[1]}"
        return str(self.metadata.get("arch", ""))

    @property
    def signature(self) -> str:
        """``x_ptr:*f16/16, R:i32/16, C:i32, ...`` from the kernel's TTIR."""
        m = re.search(r"tt\.func public @\w+\((.*?)\)\s+attributes", self.ttir, re.S)
        if not m:
            return ""
        args = []
        for name, ty, attrs in re.findall(r"%(\w+): (\S+?)(?: \{([^}]*)\})? loc\(", m.group(1)):
            ptr = re.fullmatch(r"!tt\.ptr<(\w+)>", ty)
            ty = f"*{ptr.group(1)}" if ptr else ty
            args.append(f"{name}:{ty}{'/16' if 'tt.divisibility = 16' in attrs else ''}")
        return ", ".join(args)

    @property
    def tiles(self) -> str:
        """The distinct ``tl.arange`` extents, largest first (``4096`` or ``64,32``)."""
        ends = {int(e) for e in re.findall(r"tt\.make_range \{end = (\d+) : i32, start = 0 : i32\}", self.ttir)}
        return ",".join(str(e) for e in sorted(ends, reverse=True))


def tritonbn_kernel_names() -> set[str]:
    """The names of the ``@triton.jit`` functions in :mod:`tritonbn.kernels` (helpers included)."""
    import importlib
    import pkgutil

    from triton.runtime.jit import KernelInterface  # JITFunction, or InterpretedFunction under TRITON_INTERPRET

    import tritonbn.kernels as pkg

    names = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        names |= {n for n, v in vars(mod).items() if isinstance(v, KernelInterface)}
    return names


def find_compiled(cache_dir: str | Path, names: set[str] | None = None) -> list[CompiledKernel]:
    """Every kernel with a cubin in ``cache_dir`` (Triton's on-disk cache layout: one folder per hash with
    ``<name>.json`` metadata, ``<name>.cubin`` and ``<name>.ttir``), restricted to ``names`` if given,
    sorted by name and hash."""
    found = []
    for meta_path in sorted(Path(cache_dir).rglob("*.json")):
        if meta_path.name.startswith("__grp__"):
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        name = meta.get("name") if isinstance(meta, dict) else None
        cubin = meta_path.with_suffix(".cubin")
        if not name or not cubin.exists() or (names is not None and name not in names):
            continue
        ttir_path = meta_path.with_suffix(".ttir")
        ttir = ttir_path.read_text() if ttir_path.exists() else ""
        found.append(CompiledKernel(name, str(meta.get("hash", meta_path.parent.name)), cubin, meta, ttir))
    return sorted(found, key=lambda k: (k.name, k.hash))


def _driver_resources(kernel: CompiledKernel) -> tuple[int, int]:
    """``(n_regs, n_spills)`` as Triton's ``CompiledKernel`` gets them: the driver loads the cubin."""
    import torch
    from triton.runtime import driver

    torch.cuda.init()
    device = torch.cuda.current_device()
    loaded = driver.active.utils.load_binary(
        kernel.name, kernel.cubin.read_bytes(), int(kernel.metadata.get("shared", 0)), device
    )
    return int(loaded[2]), int(loaded[3])


def cuobjdump_path() -> str | None:
    """The ``cuobjdump`` shipped in triton's wheel, else one on the PATH."""
    try:
        import triton

        shipped = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if shipped.exists():
            return str(shipped)
    except ImportError:
        pass
    return shutil.which("cuobjdump")


def _cuobjdump_resources(kernel: CompiledKernel, tool: str) -> tuple[int, int]:
    out = subprocess.run(
        [tool, "--dump-resource-usage", str(kernel.cubin)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    m = re.search(rf"Function {re.escape(kernel.name)}:\s*\n\s*REG:(\d+)\s.*?LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump printed no resource usage for {kernel.name}")
    return int(m.group(1)), int(m.group(2)) // 4


def resources(kernels: list[CompiledKernel], use_driver: bool | None = None) -> list[dict]:
    """Rows (provenance excluded) for ``kernels``: the driver's numbers when a GPU is there (or
    ``use_driver``), else cuobjdump's; a kernel neither can read gets ``source`` = ``error: ...``."""
    if use_driver is None:
        try:
            import torch

            use_driver = torch.cuda.is_available()
        except ImportError:
            use_driver = False
    tool = None if use_driver else cuobjdump_path()
    rows = []
    for k in kernels:
        row = {
            "kernel": k.name,
            "hash": k.hash[:16],
            "arch": k.arch,
            "num_warps": k.metadata.get("num_warps"),
            "num_stages": k.metadata.get("num_stages"),
            "shared_bytes": k.metadata.get("shared"),
            "registers": None,
            "spills": None,
            "signature": k.signature,
            "tiles": k.tiles,
        }
        try:
            if use_driver:
                row["registers"], row["spills"] = _driver_resources(k)
                row["source"] = "driver"
            elif tool:
                row["registers"], row["spills"] = _cuobjdump_resources(k, tool)
                row["source"] = "cuobjdump"
            else:
                row["source"] = "error: no GPU and no cuobjdump"
        except Exception as e:  # noqa: BLE001 - recorded per kernel
            row["source"] = f"error: {type(e).__name__}: {e}".replace("\n", " ")[:200]
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tritonbn.gpu_session.kernels", description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="the TRITON_CACHE_DIR the kernels were compiled into")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="results root (default bench_results)")
    p.add_argument("--all", action="store_true", help="every kernel in the folder, not only tritonbn's")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write ``<out>/<device>/<date>_<sha>_kernels.csv``; exit 1 when no kernel could be read."""
    import torch

    from tritonbn import provenance
    from tritonbn.gpu_session.records import write_record

    args = build_parser().parse_args(argv)
    kernels = find_compiled(args.cache, None if args.all else tritonbn_kernel_names())
    rows = resources(kernels)
    if not rows:
        print(f"kernels: no compiled tritonbn kernel under {args.cache}")
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = write_record(rows, "kernels", args.out, provenance.collect(device))
    read = [r for r in rows if r["registers"] is not None]
    for name in sorted({r["kernel"] for r in read}):
        mine = [r for r in read if r["kernel"] == name]
        worst = max(mine, key=lambda r: r["registers"])
        spills = sum(1 for r in mine if r["spills"])
        print(
            f"  {name:28s} {len(mine):4d} specialisations, registers {min(r['registers'] for r in mine)}"
            f"-{worst['registers']} (max at tiles {worst['tiles']}, {worst['num_warps']} warps), {spills} spilling"
        )
    print(f"kernels: {len(read)} of {len(rows)} specialisations read ({rows[0]['source']}) -> {path}")
    return 0 if read else 1


if __name__ == "__main__":
    sys.exit(main())
