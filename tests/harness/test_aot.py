"""``tritonbn-aot``: every specialisation compiles for sm_90 and sm_80 within its budget, and the checker works."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritonbn import aot


def _nvidia_tools() -> bool:
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return (bin_dir / "ptxas").exists() and (bin_dir / "cuobjdump").exists()


@pytest.mark.skipif(not _nvidia_tools(), reason="triton's wheel has no ptxas/cuobjdump on this platform")
def test_quick_report_compiles_within_budget(tmp_path):
    """The ``--quick`` case set compiles for both arches, with no spill, no 64-bit division and nothing over
    its budget (or its class's recorded ceiling): ``--check`` exits 0."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    jobs = str(min(4, os.cpu_count() or 1))
    cmd = [sys.executable, "-m", "tritonbn.aot", "--quick", "--check", "--no-progress", "--jobs", jobs]
    result = subprocess.run([*cmd, "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    (path,) = tmp_path.glob("*_quick_aot.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["arch"] for r in rows} == {"sm_90", "sm_80"}
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    hot = {r["kernel"] for r in rows if r["hot"] == "True"}
    assert {"bn_forward_stats_kernel", "bn_forward_apply_kernel", "bn_backward_reduce_kernel"} <= hot
    assert {"bn_backward_dx_kernel"} <= hot
    # both paths of the statistics kernel are in the quick set: one tile per channel block, and the loop
    paths = {aot.path_of(r) for r in rows if r["kernel"] == "bn_forward_stats_kernel"}
    assert paths == {"loop", "one-tile"}
    assert all(int(r["div64_per_thread"]) == 0 for r in rows if r["hot"] == "True")
    assert all(r["git_sha"] and r["triton"] and r["compute_capability"] in ("9.0", "8.0") for r in rows)


_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_CTAID.X ;
        /*0020*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0030*/                   FADD R3, R2, R2 ;
        /*0040*/                   STG.E desc[UR4][R4.64], R3 ;
        /*0050*/               @P0 BRA 0x20 ;
        /*0060*/                   EXIT ;
        /*0070*/                   BRA 0x70;
        /*0080*/                   NOP;
"""


def test_sass_loop_is_found():
    total, loop, common = aot.sass_stats(_SASS)
    assert total == 7  # the trailing self-branch and NOP padding are not counted
    assert loop == 4  # LDG, FADD, STG, BRA
    assert common == 7  # no ticket: every instruction is on every program's path


# a one-tile-per-program reduction: its tile, the ticket, then the merge loop of the last program only
_SASS_TICKET = """
        /*0000*/                   S2R R0, SR_CTAID.X ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   FADD R3, R4, R5 ;
        /*0030*/                   STG.E desc[UR4][R8.64], R3 ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/               @P0 ATOMG.E.ADD.STRONG.GPU PT, R5, desc[UR4][R6.64], R5 ;
        /*0060*/                   ISETP.NE.AND P1, PT, R5, 0x3, PT ;
        /*0070*/               @P1 EXIT ;
        /*0080*/                   LDG.E.STRONG.GPU R10, desc[UR4][R8.64] ;
        /*0090*/                   FADD R11, R11, R10 ;
        /*00a0*/               @P2 BRA 0x80 ;
        /*00b0*/                   ATOMG.E.EXCH.STRONG.GPU PT, RZ, desc[UR4][R6.64], RZ ;
        /*00c0*/                   EXIT ;
        /*00d0*/                   BRA 0xd0;
"""


def test_merge_after_the_ticket_is_not_the_element_loop():
    """The loop after the ticket merges partials in one program per channel block: it is neither the
    element loop nor on the common path a program's instructions per element are counted from."""
    total, loop, common = aot.sass_stats(_SASS_TICKET)
    assert (total, loop, common) == (13, 0, 6)
    # a warp-level integer reduction (REDUX) is not a global atomic: the loop after it is still found
    redux = _SASS.replace("S2R R0, SR_CTAID.X", "REDUX.SUM UR4, R3")
    assert aot.sass_stats(redux) == (7, 4, 7)


def _row(**kw):
    row = {
        "kernel": "bn_forward_apply_kernel",
        "hot": True,
        "case": "c",
        "pass": "p",
        "arch": "sm_90",
        "block_n": 1,
        "block_s": 2048,
        "block_c": 1,
        "status": "ok",
        "registers": 40,
        "spill_bytes": 0,
        "div64_per_thread": 0,
        "loop_instructions": 100,
        "elements_per_thread": 16.0,
        "instructions_per_element": 6.25,
        "error": "",
    }
    row.update(kw)
    return row


def test_checker_fails_what_it_should(monkeypatch):
    monkeypatch.setattr(aot, "CEILINGS", {})
    assert aot.violations([_row()]) == []
    assert aot.violations([_row(status="error", error="boom")])
    assert aot.violations([_row(spill_bytes=8)])
    assert aot.violations([_row(div64_per_thread=1)])
    assert aot.violations([_row(registers=129)])
    assert aot.violations([_row(instructions_per_element=8.5)])
    # a latency-bound program (few elements per thread) is reported, not held to the per-element budget
    assert aot.violations([_row(instructions_per_element=30.0, elements_per_thread=4.0)]) == []
    # a cold kernel is not held to the budget, but must compile
    assert aot.violations([_row(hot=False, registers=200)]) == []
    # a class with a ceiling: over the budget is tolerated up to the ceiling, not beyond
    monkeypatch.setattr(aot, "CEILINGS", {("bn_forward_apply_kernel", "loop"): (12.0, 160)})
    assert aot.violations([_row(instructions_per_element=11.0, registers=150)]) == []
    assert aot.violations([_row(instructions_per_element=12.5)])
    assert aot.violations([_row(registers=170)])
    # the other path of the same kernel has no ceiling: the budget applies
    assert aot.violations([_row(loop_instructions=0, instructions_per_element=11.0)])
