import csv
import time

import pytest
import torch

from tritonbn.bench.__main__ import build_parser, main
from tritonbn.bench.providers import classify_backend
from tritonbn.bench.runner import BenchConfig, configurations, run_config
from tritonbn.bench.suites import Shape
from tritonbn.bench.summary import format_summary, speedups
from tritonbn.schema import BENCH_COLUMNS, PROVENANCE_COLUMNS

from .conftest import requires_cuda, requires_no_cuda


def test_parser_defaults():
    args = build_parser().parse_args([])
    assert args.suite == ["quick"]
    assert args.dtype == ["fp32", "fp16", "bf16"]
    assert args.layout == ["contiguous", "channels_last"]
    assert args.mode == ["train", "eval"]
    assert args.passes == ["fwd", "bwd", "fwd_bwd"]
    assert args.provider == ["tritonbn", "cudnn", "native", "inductor"]
    assert str(args.out) == "bench_results"


def test_parser_choices():
    args = build_parser().parse_args(
        ["--suite", "resnet50", "unet3d", "--dtype", "bf16", "--pass", "bwd", "--provider", "cudnn", "--out", "x"]
    )
    assert args.suite == ["resnet50", "unet3d"] and args.dtype == ["bf16"] and args.passes == ["bwd"]
    for bad in (["--suite", "nope"], ["--dtype", "fp64"], ["--layout", "nhwc"], ["--pass", "all"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(bad)
        assert e.value.code == 2


def test_list_suites_needs_no_gpu(capsys):
    assert main(["--list-suites", "--suite", "resnet50"]) == 0
    assert "256x64x112x112" in capsys.readouterr().out


@requires_no_cuda
def test_refuses_without_cuda(run_cli, tmp_path):
    res = run_cli("tritonbn.bench", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr
    assert not any(tmp_path.iterdir())  # and writes nothing


@requires_no_cuda
def test_refuses_without_cuda_in_process(capsys, tmp_path):
    assert main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_configurations_skip_channels_last_for_2d_3d():
    cfgs = list(
        configurations(
            {"s": [Shape(4, 3), Shape(2, 3, (4, 5))]},
            [torch.float32],
            ["contiguous", "channels_last"],
            ["train"],
            [True],
        )
    )
    assert [(c.shape.dim, c.layout) for c in cfgs] == [(2, "contiguous"), (4, "contiguous"), (4, "channels_last")]


def _fake_timer(make_fn, use_cudagraph):
    make_fn()()
    return (2.0, 1.5, 2.5), "fake"


def _fake_wall_timer(make_fn):
    make_fn()()
    return 3.0


def test_wall_time_per_call_is_a_synchronised_loop_divided():
    """wall_ms_per_call: synchronise, n back-to-back calls, synchronise; the median loop over n, in ms."""
    from tritonbn.bench.timing import wall_ms_per_call

    calls, syncs = [], []

    def make_fn():
        return lambda: (calls.append(time.perf_counter()), time.sleep(0.002))

    ms = wall_ms_per_call(make_fn, target_ms=30, loops=3, synchronize=lambda: syncs.append(len(calls)))
    assert 2.0 <= ms < 10.0
    assert len(calls) >= 2 + 3 * 3  # the warm-up, the estimate, then at least 3 calls per loop
    assert syncs[-1] == len(calls)  # the last call is synchronised before the clock stops


def test_spread_order_samples_every_shape_first():
    from tritonbn.bench.__main__ import planned_configurations

    grid = planned_configurations(build_parser().parse_args(["--suite", "quick", "resnet50"]))
    spread = planned_configurations(build_parser().parse_args(["--suite", "quick", "resnet50", "--order", "spread"]))
    assert sorted(map(repr, grid)) == sorted(map(repr, spread))  # the same configurations
    shapes = {(c.suite, c.shape) for c in grid}
    first = spread[: len(shapes)]
    assert {(c.suite, c.shape) for c in first} == shapes  # each shape once before any twice
    variants = {(c.dtype, c.layout, c.mode) for c in first}
    assert len(variants) == 12 and {c.mode for c in first} == {"train", "eval"}


def test_max_seconds_and_planned_configurations():
    from tritonbn.bench.__main__ import planned_configurations

    args = build_parser().parse_args(["--suite", "quick", "resnet50", "--max-seconds", "30", "--no-wall"])
    assert args.max_seconds == 30 and args.no_wall
    assert len(planned_configurations(args)) == 492
    assert len(planned_configurations(build_parser().parse_args(["--limit", "3"]))) == 3
    with pytest.raises(SystemExit):
        main(["--max-seconds", "0"])


def test_run_config_plumbing_on_cpu():
    """The loop on the CPU with a fake timer: verification, backends, error rows, traffic, GB/s."""
    cfg = BenchConfig("t", Shape(4, 3, (5, 6)), torch.float16, "channels_last", "train", True)
    rows = run_config(
        cfg,
        ["tritonbn", "native", "cudnn"],
        ["fwd", "bwd", "fwd_bwd"],
        torch.device("cpu"),
        _fake_timer,
        peak_gbps=1.0,
        cudagraph_max_bytes=0,
        wall_timer=_fake_wall_timer,
    )
    assert len(rows) == 9
    by = {(r["provider"], r["pass"]): r for r in rows}
    for p in ("tritonbn", "native"):
        for pass_ in ("fwd", "bwd", "fwd_bwd"):
            r = by[(p, pass_)]
            assert r["status"] == "ok", r["status"]
            assert r["ms_median"] == 2.0 and r["gbps"] == pytest.approx(r["bytes"] / 2e-3 / 1e9)
            assert r["pct_of_peak"] == pytest.approx(100 * r["gbps"])
            assert r["wall_ms"] == 3.0
    assert by[("native", "fwd")]["backend"] == "native"
    assert by[("tritonbn", "fwd")]["backend"] in ("triton", "torch-native")
    assert by[("tritonbn", "fwd")]["bytes"] == 2 * 360 * 2 + 8 * 3 * 4
    # the implementation's own traffic: tritonbn in one tile per channel block here; native 3 passes forward
    assert by[("tritonbn", "fwd")]["own_bytes"] == by[("tritonbn", "fwd")]["bytes"]
    assert by[("native", "fwd")]["own_bytes"] == 3 * 360 * 2 + 8 * 3 * 4
    assert by[("cudnn", "fwd")]["own_bytes"] is None
    # cuDNN has no CPU kernel: recorded as an error, not timed
    assert all(
        by[("cudnn", p)]["status"].startswith("error") and by[("cudnn", p)]["ms_median"] is None
        for p in ("fwd", "bwd", "fwd_bwd")
    )
    assert set(BENCH_COLUMNS) - set(rows[0]) <= set(PROVENANCE_COLUMNS)


def test_own_traffic_model():
    """Passes over the activation as each implementation's kernels make them (README, "How it works")."""
    from tritonbn.bench.suites import own_traffic_bytes, traffic_bytes
    from tritonbn.launch import one_tile

    numel, C, elt, p = 1000, 10, 2, 4

    def own(provider, pass_, training=True, single=False):
        extra = traffic_bytes(pass_, 0, C, elt, p, True, training=training)
        got = own_traffic_bytes(provider, pass_, numel, C, elt, p, True, training=training, one_tile=single)
        return None if got is None else (got - extra) // (numel * elt)

    assert [own("tritonbn", q) for q in ("fwd", "bwd", "fwd_bwd")] == [3, 5, 8]
    assert [own("tritonbn", q, single=True) for q in ("fwd", "bwd", "fwd_bwd")] == [2, 3, 5]
    assert [own("tritonbn", q, training=False) for q in ("fwd", "bwd", "fwd_bwd")] == [2, 3, 5]
    assert [own("native", q) for q in ("fwd", "bwd", "fwd_bwd")] == [3, 5, 8]
    assert own("native", "bwd", training=False) is None  # not modelled
    no_affine = own_traffic_bytes("tritonbn", "bwd", numel, C, elt, p, False, training=False)
    assert no_affine - traffic_bytes("bwd", 0, C, elt, p, False, training=False) == 2 * numel * elt  # dy, dx
    assert own_traffic_bytes("tritonbn", "fwd", numel, C, elt, p, True, one_tile=None) is None  # path unknown
    assert own_traffic_bytes("tritonbn", "fwd", numel, C, elt, p, True, training=False, one_tile=None)
    assert own("cudnn", "fwd") is None and own("inductor", "fwd_bwd") is None
    with pytest.raises(ValueError):
        own_traffic_bytes("tritonbn", "sideways", numel, C, elt, p, True)
    # one tile per channel block while a channel's rows fit one tile
    assert one_tile(torch.empty(4, 3, 5, 6, device="meta"))
    assert not one_tile(torch.empty(256, 2, 32, 32, device="meta"))


def test_wrong_provider_is_not_timed(monkeypatch):
    """A provider whose output disagrees with the reference gets a mismatch status and no timing."""
    import tritonbn.bench.runner as runner

    real = runner.make_forward

    def broken(provider, t, training):
        f = real(provider, t, training)
        return lambda x: f(x) * 1.01

    monkeypatch.setattr(runner, "make_forward", broken)
    cfg = BenchConfig("t", Shape(8, 2, (3,)), torch.float32, "contiguous", "eval", True)
    rows = run_config(cfg, ["native"], ["fwd"], torch.device("cpu"), _fake_timer, 1.0, 0)
    assert rows[0]["status"].startswith("mismatch: y rel err") and rows[0]["ms_median"] is None


def test_setup_failure_is_recorded(monkeypatch):
    import tritonbn.bench.runner as runner

    def oom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "make_tensors", oom)
    cfg = BenchConfig("t", Shape(8, 2, (3,)), torch.float16, "contiguous", "train", True)
    rows = run_config(cfg, ["native", "tritonbn"], ["fwd", "bwd"], torch.device("cpu"), _fake_timer, 1.0, 0)
    assert len(rows) == 4
    assert all(r["status"] == "error: reference: RuntimeError: out of memory" for r in rows)
    assert rows[0]["bytes"] == 2 * 48 * 2 + 8 * 2 * 4


def test_classify_backend():
    assert classify_backend("cudnn", ["aten::cudnn_batch_norm", "aten::cudnn_batch_norm_backward"]) == "cudnn"
    assert classify_backend("native", ["aten::native_batch_norm", "void at::native::elementwise"]) == "native"
    assert classify_backend("tritonbn", ["stats_partial_kernel", "aten::empty"]) == "triton"
    assert classify_backend("tritonbn", ["aten::native_batch_norm"]) == "torch-native"
    assert classify_backend("inductor", ["triton_red_fused__native_batch_norm_legit_functional_0"]) == (
        "inductor-triton"
    )
    assert classify_backend("inductor", ["aten::cudnn_batch_norm"]) == "inductor+cudnn"


def _row(provider, ms, shape="1x2", dtype="fp16", status="ok"):
    return {
        "suite": "s",
        "dtype": dtype,
        "dim": 2,
        "N": 1,
        "C": 2,
        "spatial": shape,
        "layout": "contiguous",
        "mode": "train",
        "pass": "fwd",
        "affine": True,
        "provider": provider,
        "ms_median": ms,
        "status": status,
    }


def test_summary_geomean_speedup():
    rows = [
        _row("cudnn", 2.0, "a"),
        _row("tritonbn", 1.0, "a"),
        _row("cudnn", 2.0, "b"),
        _row("tritonbn", 4.0, "b"),
        _row("native", None, "a", status="error: x"),
    ]
    table = speedups(rows)
    s, n = table[("s", "fp16")]["tritonbn"]
    assert n == 2 and s == pytest.approx(1.0)  # geomean of 2x and 0.5x
    text = format_summary(rows, ["tritonbn", "cudnn", "native"])
    assert "1.00x" in text and "native: 1 rows not timed" in text


@pytest.mark.gpu
@requires_cuda
def test_bench_smoke_on_gpu(tmp_path):
    rc = main(
        [
            "--suite",
            "quick",
            "--limit",
            "2",
            "--dtype",
            "fp16",
            "--rep",
            "5",
            "--warmup",
            "2",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    (path,) = tmp_path.glob("*/*.csv")
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == BENCH_COLUMNS
    assert {r["provider"] for r in rows} == {"tritonbn", "cudnn", "native", "inductor"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(float(r["gbps"]) > 0 and float(r["peak_gbps"]) > 0 for r in ok)
    assert {r["backend"] for r in rows if r["provider"] == "cudnn" and r["status"] == "ok"} <= {"cudnn", "cudnn?"}


def test_host_report_counts_launches_and_times_both(run_cli, tmp_path):
    """``tritonbn-bench --host`` on the CPU: one row per (implementation, pass), tritonbn's launches exact
    (1 per pass for a one-tile tensor, no other operator), torch's measured against the same passes."""
    env = {"TRITON_INTERPRET": "0"}
    result = run_cli("tritonbn.bench", "--host", "--host-rounds", "1", "--out", str(tmp_path), "--no-progress", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = (tmp_path / "cpu").glob("*_host.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    from tritonbn.bench.host import PASSES
    from tritonbn.schema import HOST_COLUMNS

    assert list(rows[0]) == list(HOST_COLUMNS)
    assert {(r["impl"], r["pass"]) for r in rows} == {(i, p) for i in ("tritonbn", "torch") for p in PASSES}
    ours = {r["pass"]: r for r in rows if r["impl"] == "tritonbn"}
    for pass_, want in {
        "train_forward": 1,
        "train_backward": 1,
        "train_forward_backward": 2,
        "eval_forward": 1,
    }.items():
        assert int(ours[pass_]["triton_launches"]) == want, ours[pass_]
        assert int(ours[pass_]["aten_launches"]) == 0, ours[pass_]
    torch_rows = [r for r in rows if r["impl"] == "torch"]
    assert all(float(r["host_us"]) > 0 and int(r["triton_launches"]) == 0 for r in torch_rows)
    assert all(float(r["host_ratio"]) > 0 for r in rows)
    assert "train forward+backward host time" in result.stdout


def test_host_report_refuses_the_interpreter(run_cli, tmp_path):
    result = run_cli("tritonbn.bench", "--host", "--out", str(tmp_path), env={"TRITON_INTERPRET": "1"})
    assert result.returncode == 2 and "TRITON_INTERPRET" in result.stderr
