"""tritonbn-gpu-session on the CPU: the dry run, the budget and cap rules, staging and packing, and every
CPU-checkable piece of its steps (JUnit conversion, the kernel report, the summary, the ResNet-style
training step on a tiny model). The real run needs CUDA and is the session's own business."""

from __future__ import annotations

import math
import signal
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tritonbn.gpu_session.__main__ import main, selected_steps
from tritonbn.gpu_session.junit import junit_rows, nodeid
from tritonbn.gpu_session.kernels import CompiledKernel
from tritonbn.gpu_session.records import write_record
from tritonbn.gpu_session.session import FINAL_RESERVE_S, Session, Step
from tritonbn.gpu_session.steps import STEP_NAMES, STEPS
from tritonbn.gpu_session.summary import bench_ratios, read_kind, render_summary
from tritonbn.schema import BENCH_COLUMNS, CsvWriter, result_path

from .conftest import REPO, requires_no_cuda

PROV = {
    "timestamp": "2026-01-02T03:04:05Z",
    "git_sha": "abc1234",
    "gpu": "Test GPU",
    "compute_capability": "9.0",
    "torch": "t",
    "cuda": "c",
    "cudnn": "d",
    "triton": "x",
}


# --- the command ---------------------------------------------------------------------------------------------


def test_dry_run_is_green(run_cli, tmp_path):
    """What CI runs so the command cannot rot: the plan, imports, arguments, test collection, the kernel
    reader on a kernel compiled for sm_90, and the summary/archive on fixture files; nothing is written."""
    res = run_cli("tritonbn.gpu_session", "--dry-run", "--out", str(tmp_path), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in STEP_NAMES:
        assert f" {name} " in res.stdout
    assert "tests collected" in res.stdout and "compiled for sm_90" in res.stdout
    assert "dry run: OK" in res.stdout
    assert not any(tmp_path.iterdir())


@requires_no_cuda
def test_refuses_without_cuda(capsys, tmp_path):
    assert main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_only_selects_steps_in_priority_order_and_always_env():
    assert [s.name for s in selected_steps(["train", "tests"])] == ["env", "tests", "train"]
    assert [s.name for s in selected_steps(None)] == list(STEP_NAMES)
    (bench,) = [s for s in selected_steps(["bench"], [("bench", 500.0)]) if s.name == "bench"]
    assert bench.cap_s == 500.0
    for only, caps in ((["bogus"], []), ([], []), (None, [("nope", 5.0)])):
        with pytest.raises(ValueError, match="step"):
            selected_steps(only, caps)
    for argv in (["--only", "bogus"], ["--only", ","], ["--budget-s", "nan"], ["--budget-s", "0"], ["--cap", "x"]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--dry-run"])
        assert e.value.code == 2


def test_an_out_folder_holding_a_session_is_refused(tmp_path, capsys):
    (tmp_path / "summary.md").write_text("earlier session")
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path)])
    assert e.value.code == 2 and "already holds a session" in capsys.readouterr().err
    assert (tmp_path / "summary.md").read_text() == "earlier session"


def test_default_caps_fit_the_budget_with_the_reserves():
    """Priority order as the GPU agenda lists it; the kernels step runs last with its cap reserved; within
    the default budget the correctness steps (environment, tests, kernels, check) always get their whole
    caps, and the rest shrink or are skipped by the rules, never overrun."""
    assert STEP_NAMES == ("env", "gpu-tests", "tests", "kernels", "check", "bench", "sync", "train")
    assert [s.name for s in STEPS if s.last] == ["kernels"]
    for s in STEPS:
        assert 0 < s.min_s <= s.cap_s and 0 <= s.margin_s < s.cap_s
    first = STEP_NAMES[: STEP_NAMES.index("check") + 1]
    assert sum(s.cap_s for s in STEPS if s.name in first) + FINAL_RESERVE_S <= 360


# --- the runner: budget, caps, staging, packing ------------------------------------------------------------


def _writer(kind: str, rows: int = 1):
    """A step that writes a record into its staging folder, then returns ``ok``."""

    def run(session: Session, cap: float):
        write_record([{"quantity": f"q{i}", "value": i} for i in range(rows)], kind, session.staging(run.name), PROV)
        return "ok", f"cap {cap:.0f}"

    return run


def _step(name, run, cap=10.0, min_s=1.0, **kw) -> Step:
    if hasattr(run, "__code__") and run.__code__.co_name == "run":
        run.name = name
    return Step(name, f"test step {name}", cap, min_s, 0.0, run, **kw)


def _sleeper(seconds: float):
    def run(session: Session, cap: float):
        rc = session.command([sys.executable, "-c", f"import time; print('start', flush=True); time.sleep({seconds})"],
                             cap, tag="sleep")  # fmt: skip
        return ("timed out", "killed") if rc is None else ("ok", "")

    return run


def test_steps_run_in_order_with_results_staged_into_bench_results(tmp_path):
    s = Session(tmp_path / "out", tmp_path / "work", 120.0, echo=False)
    results = s.run_steps([_step("a", _writer("env")), _step("b", _writer("env", 2))])
    assert [(r.name, r.status) for r in results] == [("a", "ok"), ("b", "ok")]
    files = sorted((tmp_path / "work/results/bench_results/test-gpu").iterdir())
    # two steps wrote the same name: the second is kept next to the first, never over it
    assert [f.name for f in files] == ["2026-01-02_abc1234_2_env.csv", "2026-01-02_abc1234_env.csv"]
    assert results[0].files == ["results/bench_results/test-gpu/2026-01-02_abc1234_env.csv"]


def test_a_step_that_overruns_its_cap_is_killed_and_quarantined(tmp_path):
    def slow(session: Session, cap: float):
        write_record([{"quantity": "q", "value": 1}], "env", session.staging("slow"), PROV)
        return _sleeper(60)(session, cap)

    s = Session(tmp_path / "out", tmp_path / "work", 120.0, echo=False)
    start = time.monotonic()
    (r,) = s.run_steps([_step("slow", slow, cap=2.0)])
    assert time.monotonic() - start < 15
    assert r.status == "timed out" and "partial/" in r.note
    assert not (tmp_path / "work/results/bench_results").exists()
    assert (tmp_path / "work/partial/slow/test-gpu/2026-01-02_abc1234_env.csv").exists()
    assert "stopped at its time cap" in (tmp_path / "out/session.log").read_text()


def test_budget_shrinks_caps_skips_what_does_not_fit_and_reserves_the_last_step(tmp_path):
    s = Session(tmp_path / "out", tmp_path / "work", 40.0, echo=False)
    caps = {}

    def record(name):
        def run(session, cap):
            caps[name] = cap
            return "ok", ""

        return run

    steps = [
        _step("first", record("first"), cap=100.0),  # shrinks to what is left after the reserves
        _step("big", record("big"), cap=40.0, min_s=30.0),  # more than the budget can give
        _step("needs", record("needs"), needs=("no_such_module_xyz",)),
        _step("last", record("last"), cap=10.0, last=True),
    ]
    results = s.run_steps(steps)
    by = {r.name: r for r in results}
    assert [r.name for r in results] == ["first", "big", "needs", "last"]
    assert caps["first"] == pytest.approx(40.0 - FINAL_RESERVE_S - 10.0, abs=1.0)
    assert by["big"].status == "skipped" and "time budget" in by["big"].note
    assert by["needs"].status == "skipped" and "no_such_module_xyz" in by["needs"].note
    assert by["last"].status == "ok" and caps["last"] == pytest.approx(10.0)


def test_results_never_take_a_name_the_checkout_already_has(tmp_path):
    """Extracting a session's archive into the checkout it ran from never replaces a committed file."""
    committed = tmp_path / "repo" / "bench_results" / "test-gpu" / "2026-01-02_abc1234_env.csv"
    committed.parent.mkdir(parents=True)
    committed.write_text("committed earlier")
    s = Session(tmp_path / "out", tmp_path / "work", 60.0, echo=False, repo=tmp_path / "repo")
    (r,) = s.run_steps([_step("a", _writer("env"))])
    assert r.files == ["results/bench_results/test-gpu/2026-01-02_abc1234_2_env.csv"]


@pytest.mark.parametrize("sigint", ["default", "ignored"], ids=["foreground", "background-job"])
def test_a_pytest_run_stopped_at_its_cap_still_writes_its_report(tmp_path, sigint):
    """The stop starts with SIGINT, on which pytest writes the JUnit report of the tests that ran -- also
    when the session itself ignores SIGINT, as a job a non-interactive shell starts with ``&`` does."""
    previous = signal.getsignal(signal.SIGINT)
    if sigint == "ignored":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_fast():\n    pass\n\n"
                                           "def test_slow():\n    time.sleep(60)\n")  # fmt: skip
    s = Session(tmp_path / "out", tmp_path / "work", 60.0, echo=False, repo=tmp_path)
    xml = tmp_path / "r.xml"
    start = time.monotonic()
    try:
        rc = s.command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        "test_slow.py"], timeout_s=16.0)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc is None and time.monotonic() - start < 16.0
    outcomes = {r["nodeid"]: r["outcome"] for r in junit_rows(xml, "tests", root=tmp_path)}
    assert outcomes["test_slow.py::test_fast"] == "passed"


def test_the_output_folder_is_brought_up_to_date_after_every_step(tmp_path):
    seen = []

    def look(session, cap):
        seen.append(sorted(p.name for p in session.out.iterdir()))
        return "ok", ""

    s = Session(tmp_path / "out", tmp_path / "work", 60.0, echo=False, summarize=lambda s: f"{len(s.steps)} steps")
    s.run_steps([_step("a", _writer("env")), _step("b", look)])
    assert seen == [["gpu-session.tar.gz", "session.log", "summary.md"]]
    assert (tmp_path / "out" / "summary.md").read_text() == "2 steps"


def test_a_signal_stops_the_running_step_and_skips_the_rest(tmp_path):
    """SIGTERM during a step: its child processes are stopped, the step is 'interrupted', the others
    skipped, and the output folder still gets the summary and the archive; exit status 1."""
    import argparse
    import os
    import signal
    import threading

    from tritonbn.gpu_session.__main__ import run

    steps = [_step("a", _writer("env")), _step("sleepy", _sleeper(60), cap=50.0), _step("never", _writer("env"))]
    args = argparse.Namespace(out=tmp_path / "out", work_dir=tmp_path / "work", budget_s=100.0)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.monotonic()
    try:
        rc = run(args, steps)
    finally:
        timer.cancel()
    assert rc == 1 and time.monotonic() - start < 30
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| sleepy | interrupted |" in text and "| never | skipped |" in text and "| a | ok |" in text
    with tarfile.open(tmp_path / "out" / "gpu-session.tar.gz") as tar:
        assert "bench_results/test-gpu/2026-01-02_abc1234_env.csv" in tar.getnames()


def test_a_crashing_step_is_an_error_not_a_crash(tmp_path):
    def boom(session, cap):
        raise RuntimeError("broken step")

    s = Session(tmp_path / "out", tmp_path / "work", 60.0, echo=False)
    (r,) = s.run_steps([_step("boom", boom)])
    assert r.status == "error" and "broken step" in r.note


def test_finish_packs_results_log_and_summary(tmp_path):
    s = Session(tmp_path / "out", tmp_path / "work", 60.0, echo=False)
    s.run_steps([_step("a", _writer("env"))])
    s.junit.mkdir(parents=True)
    (s.junit / "tests.xml").write_text("<testsuites/>")
    archive = s.finish("# summary\n")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    packed = {"bench_results/test-gpu/2026-01-02_abc1234_env.csv", "junit/tests.xml", "summary.md", "session.log"}
    assert packed <= names
    assert "steps.json" in names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-session.tar.gz", "session.log", "summary.md"]


def test_children_never_run_the_interpreter_and_share_a_fresh_kernel_cache(tmp_path):
    s = Session(tmp_path / "out", tmp_path / "work", 60.0, echo=False, env={"TRITON_INTERPRET": "1", "PATH": ""})
    assert "TRITON_INTERPRET" not in s.env
    assert s.env["TRITON_CACHE_DIR"] == str(tmp_path / "work" / "triton-cache")
    assert s.env["PYTHONPATH"].split(":")[0] == str(REPO)


# --- the pieces of the steps ---------------------------------------------------------------------------------


def test_junit_report_of_a_real_pytest_run(tmp_path):
    """pytest's own JUnit XML, one row per test with its outcome, duration and first message line."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "test_demo.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_ok():
                pass

            @pytest.mark.parametrize("v", [1, 2])
            def test_param(v):
                assert v == 1, "v is not one"

            def test_skip():
                pytest.skip("not here")

            class TestK:
                def test_m(self):
                    raise RuntimeError("boom")
            """
        )
    )
    xml = tmp_path / "r.xml"
    import subprocess

    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", "pkg"],
                   cwd=tmp_path, capture_output=True, timeout=120)  # fmt: skip
    rows = {r["nodeid"]: r for r in junit_rows(xml, "tests", root=tmp_path)}
    assert rows["pkg/test_demo.py::test_ok"]["outcome"] == "passed"
    assert rows["pkg/test_demo.py::test_param[1]"]["outcome"] == "passed"
    assert rows["pkg/test_demo.py::test_param[2]"]["outcome"] == "failed"
    assert "v is not one" in rows["pkg/test_demo.py::test_param[2]"]["message"]
    assert rows["pkg/test_demo.py::test_skip"]["outcome"] == "skipped"
    assert rows["pkg/test_demo.py::TestK::test_m"]["outcome"] == "failed"
    assert all(r["run"] == "tests" and r["seconds"] >= 0 for r in rows.values())
    assert nodeid("tests.harness.test_x", "test_y") == "tests/harness/test_x.py::test_y"


def test_deadline_skips_tests_not_started_in_time(run_cli):
    """tests/conftest.py honours TRITONBN_TEST_DEADLINE: a run past its deadline skips, with the reason."""
    res = run_cli(
        "pytest",
        "tests/test_examples.py",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        env={"TRITONBN_TEST_DEADLINE": str(time.time() - 1)},
        timeout=300,
    )
    assert res.returncode == 0, res.stdout
    assert "time budget of this run exhausted" in res.stdout and " passed" not in res.stdout


def test_kernel_signature_and_tiles_from_ttir():
    ttir = (
        'tt.func public @k(%x_ptr: !tt.ptr<f16> {tt.divisibility = 16 : i32} loc("x_ptr"(#loc)), '
        '%R: i32 {tt.divisibility = 16 : i32} loc("R"(#loc)), %C: i32 loc("C"(#loc))) attributes {noinline = false} {\n'
        "  %0 = tt.make_range {end = 64 : i32, start = 0 : i32} : tensor<64xi32>\n"
        "  %1 = tt.make_range {end = 256 : i32, start = 0 : i32} : tensor<256xi32>\n"
    )
    k = CompiledKernel("k", "h", Path("k.cubin"), {"target": {"backend": "cuda", "arch": 90}}, ttir)
    assert k.signature == "x_ptr:*f16/16, R:i32/16, C:i32"
    assert k.tiles == "256,64" and k.arch == "cuda:90"


def _bench_row(provider, ms, wall, dtype="fp16", spatial="4x4", mode="train", pass_="fwd_bwd", status="ok"):
    return {c: None for c in BENCH_COLUMNS} | PROV | {
        "provider": provider, "ms_median": ms, "wall_ms": wall, "dtype": dtype, "spatial": spatial, "mode": mode,
        "pass": pass_, "status": status, "suite": "s", "dim": 4, "N": 2, "C": 3, "layout": "contiguous",
        "affine": True, "numel": 96}  # fmt: skip


def test_bench_ratios_are_geomeans_over_configurations_both_timed(tmp_path):
    rows = [
        _bench_row("cudnn", 2.0, 4.0, spatial="a"),
        _bench_row("tritonbn", 1.0, 8.0, spatial="a"),
        _bench_row("cudnn", 1.0, 4.0, spatial="b"),
        _bench_row("tritonbn", 2.0, 2.0, spatial="b"),
        _bench_row("cudnn", 1.0, 1.0, spatial="c"),  # tritonbn not timed: left out
        _bench_row("tritonbn", None, None, spatial="c", status="mismatch: y"),
        _bench_row("cudnn", 1.0, 1.0, spatial="a", mode="eval"),  # other mode: left out
    ]
    with CsvWriter(result_path(tmp_path, "test-gpu", "2026-01-02", "abc1234"), BENCH_COLUMNS) as w:
        w.write_all(rows)
    read = read_kind(tmp_path, "bench")
    g, worst, n = bench_ratios(read, "cudnn")["fp16"]
    assert n == 2 and g == pytest.approx(1.0) and worst == pytest.approx(0.5)
    g, worst, n = bench_ratios(read, "cudnn", metric="wall_ms")["fp16"]
    assert n == 2 and g == pytest.approx(1.0) and worst == pytest.approx(0.5)
    # GPU times from different timers (a CUDA graph against do_bench) are not compared
    mixed = [dict(r, timer="cudagraph" if r["provider"] == "tritonbn" and r["spatial"] == "a" else "do_bench")
             for r in read]  # fmt: skip
    assert bench_ratios(mixed, "cudnn")["fp16"][2] == 1
    assert bench_ratios(mixed, "cudnn", metric="wall_ms")["fp16"][2] == 2


def test_summary_of_fixture_results_has_every_section(tmp_path):
    from tritonbn.gpu_session.selfcheck import _write_fixtures

    _write_fixtures(tmp_path)
    steps = [{"name": "env", "status": "ok", "seconds": 3.0, "cap_s": 20.0, "note": "G | 1 SM"}]
    env = {"gpu": "G", "torch": "2.11", "copy_gbps": 4000.0, "provenance": {"git_sha": "abc", "timestamp": "2026-"}}
    text = render_summary(steps, env, tmp_path, 360.0, 100.0)
    assert text.startswith("# tritonbn GPU session: G, 2026-, git abc")
    assert "| env | ok | 3 s | 20 s | G \\| 1 SM |" in text  # a | in a note does not break the table
    assert "1 passed, 0 failed" in text and "`tests/test_x.py::test_b`: AssertionError: fixture" in text
    assert "| cudnn | fp16 | 2.00× (2.00×) | 2.00× (2.00×) | 1 |" in text
    assert "| resnet50 b64 | bf16 | 100.0 | 90.0 | 1.11× |" in text
    assert "copy 4000 GB/s" in text


def test_training_step_on_a_tiny_model(kernels):
    """The train step's code path on a small network with the ResNet patterns: torch and tritonbn start from
    the same weights and batch, so their losses agree; all three batch norms are fused (torch.fx: the
    Sequential bn → relu, and the block's bn → relu and bn → add → relu called from its forward)."""
    from tritonbn.gpu_session.train import run_training

    # float32 convolutions and matmuls in float32 on a GPU too (TF32 would round the two runs differently)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    cudnn = torch.backends.cudnn
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=False, deterministic=True, allow_tf32=False):
            rows = run_training("tiny", ("fp32",), timed_steps=1, device=kernels)
    finally:
        torch.set_float32_matmul_precision(precision)
    assert [(r["batch_norm"], r["status"]) for r in rows] == [("torch", "ok"), ("tritonbn", "ok")]
    torch_row, ours = rows
    assert (torch_row["bn_layers"], torch_row["fused_relu"]) == (3, 0)
    assert (ours["bn_layers"], ours["fused_relu"]) == (3, 3) and not ours.get("note")
    assert math.isclose(torch_row["loss_start"], ours["loss_start"], rel_tol=1e-5)
    assert math.isclose(torch_row["loss_after"], ours["loss_after"], rel_tol=1e-4)
    assert torch_row["loss_after"] < torch_row["loss_start"]  # it trains
    assert all(r["ms_median"] > 0 and r["train_steps"] == 3 for r in rows)
    skipped = run_training("tiny", ("fp32",), timed_steps=1, device=kernels, max_seconds=1e-9)
    assert skipped[-1]["status"] == "skipped"


def test_training_step_fuses_what_does_not_trace_as_convert_model_does():
    """A model torch.fx cannot trace gets convert_model(fuse_relu=True) (nn.Sequential neighbours) and a note."""
    from torch import nn

    import tritonbn
    from tritonbn.gpu_session.train import count_batch_norms, fuse

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.seq(x)
            return torch.relu(self.bn(y)) if y.sum() > 0 else y  # data-dependent control flow

    model, note = fuse(Untraceable())
    assert type(model) is Untraceable and type(model.seq[0]) is tritonbn.BatchNorm2dReLU
    assert count_batch_norms(model) == (2, 1)
    assert note.startswith("not traceable by torch.fx (TraceError: ") and "nn.Sequential neighbours only" in note


def test_environment_without_a_gpu():
    from tritonbn.gpu_session.env import collect_environment

    if torch.cuda.is_available():
        pytest.skip("checks the record of a machine without CUDA")
    values = {r["quantity"]: r["value"] for r in collect_environment()}
    assert values["gpu"] == "none" and values["torch"] == torch.__version__ and "copy_gbps" not in values
