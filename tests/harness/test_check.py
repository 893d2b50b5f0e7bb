import csv
import math

import pytest
import torch

from tritonbn.correctness.__main__ import build_parser
from tritonbn.correctness.cases import Case, full_grid, make_inputs, quick_grid
from tritonbn.correctness.tolerances import QUANTITIES, TOL, condition_number, errors, tolerance
from tritonbn.schema import CORRECTNESS_COLUMNS

from .conftest import requires_cuda


def test_tolerance_table_is_complete():
    for dtype in ("fp32", "fp16", "bf16", "fp64"):
        for q in QUANTITIES:
            assert 0 < TOL[(dtype, q)] < 0.1


def test_tolerance_conditioning_floor():
    assert tolerance("fp32", "y") == TOL[("fp32", "y")]
    assert tolerance("fp32", "y", cond=1e4) == pytest.approx(4 * 2**-24 * 1e4)
    assert tolerance("fp32", "running_mean", cond=1e4) == TOL[("fp32", "running_mean")]
    assert tolerance("fp16", "y", cond=1e6) == TOL[("fp16", "y")]
    assert tolerance("fp32", "dbias", reduction=1024) == TOL[("fp32", "dbias")]
    assert tolerance("fp32", "dbias", reduction=4 * 1024) == pytest.approx(2 * TOL[("fp32", "dbias")])
    assert tolerance("fp32", "y", reduction=1 << 20) == TOL[("fp32", "y")]
    assert condition_number(torch.tensor([1e4, 0.0]), torch.tensor([1.0, 1.0]), 0.0) == pytest.approx(1e4)


def test_error_measure():
    r = torch.tensor([0.0, 2.0, -4.0], dtype=torch.float64)
    a = torch.tensor([0.1, 2.0, -4.0], dtype=torch.float32)
    abs_err, rel_err = errors(a, r)
    assert abs_err == pytest.approx(0.1) and rel_err == pytest.approx(0.1 / 4)
    assert errors(None, None) == (0.0, 0.0)
    assert errors(None, torch.zeros(3, dtype=torch.float64)) == (0.0, 0.0)
    assert errors(torch.full((2,), 1e-3), None) == pytest.approx((1e-3, 1e-3))  # zero reference: absolute
    _, nan_rel = errors(torch.tensor([math.nan, 1.0]), torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert not nan_rel <= 1.0  # NaN never passes
    with pytest.raises(ValueError):
        errors(torch.zeros(2), torch.zeros(3, dtype=torch.float64))


def test_grids():
    for grid in (quick_grid(), full_grid()):
        names = [(c.name, c.dtype, c.layout, c.mode) for c in grid]
        assert len(names) == len(set(names))
        assert {c.dtype for c in grid} == {"fp32", "fp16", "bf16", "fp64"}
        assert {c.mode for c in grid} == {"train", "eval"}
        assert any(c.detach_stats for c in grid) and any(c.large_mean for c in grid)
        assert any(c.layout == "channels_last" for c in grid)
    quick = quick_grid()
    assert len({c.shape for c in quick}) <= 6 and max(math.prod(c.shape) for c in quick) < 200
    assert any(c.shape[1] == 1 for c in quick)


def test_large_mean_inputs():
    case = Case((64, 2, 9), "fp64", large_mean=True)
    x = make_inputs(case, "cpu").x
    assert x[:, 0].mean().item() == pytest.approx(1e4, abs=1) and x[:, 0].std().item() == pytest.approx(1, rel=0.3)
    assert abs(x[:, 1].mean().item()) < 5
    cl = make_inputs(Case((2, 3, 4, 5), "fp16", "channels_last"), "cpu")
    assert cl.x.is_contiguous(memory_format=torch.channels_last) and cl.x.dtype == torch.float16
    assert cl.weight.dtype == torch.float32


def test_case_validation():
    with pytest.raises(ValueError):
        Case((2, 3), "fp32", "channels_last")
    with pytest.raises(ValueError):
        Case((2, 3), "fp32", mode="eval", detach_stats=True)


def test_parser():
    args = build_parser().parse_args(["--quick"])
    assert args.quick and args.provider == ["tritonbn", "torch"] and args.dtype == ["fp32", "fp16", "bf16", "fp64"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_check_run_in_interpreter(run_cli, tmp_path):
    """A real ``tritonbn-check`` run under TRITON_INTERPRET=1 on the first cases of the quick grid."""
    res = run_cli(
        "tritonbn.correctness",
        "--quick",
        "--limit",
        "6",
        "--dtype",
        "fp32",
        "bf16",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--device",
        "cpu",  # the interpreter runs CPU tensors, also on a machine with a GPU
        env={"TRITON_INTERPRET": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = (tmp_path / "cpu-interpreter").glob("*_check.csv")
    rows = _read(path)
    assert tuple(rows[0]) == CORRECTNESS_COLUMNS
    assert {r["device"] for r in rows} == {"cpu-interpreter"}
    assert {r["provider"] for r in rows} == {"tritonbn", "torch"}
    ours = [r for r in rows if r["provider"] == "tritonbn"]
    assert {r["backend"] for r in ours} == {"triton-interpreter"}
    assert all(r["passed"] == "true" for r in ours if r["status"] != "skipped")
    assert {"y", "dx", "dweight", "dbias", "ddx", "ddweight", "ddy", "running_mean"} <= {r["quantity"] for r in ours}
    detached = [r for r in rows if r["case"].endswith("+detach")]
    assert detached and all(r["status"] == "skipped" for r in detached if r["provider"] == "torch")
    assert all(r["reference"] == "float64" for r in rows)


def test_check_without_interpreter_says_torch_ran(run_cli, tmp_path):
    res = run_cli(
        "tritonbn.correctness",
        "--quick",
        "--limit",
        "3",
        "--max-seconds",
        "1e-9",  # the first case always runs; none starts after the time is up
        "--dtype",
        "fp32",
        "--out",
        str(tmp_path),
        "--no-progress",
        env={"TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _read(next((tmp_path / "cpu-torch").glob("*_check.csv")))
    assert {r["backend"] for r in rows if r["provider"] == "tritonbn"} == {"torch-ops"}
    assert "TRITON_INTERPRET is not set" in res.stderr
    assert len({r["case"] for r in rows}) == 1 and "stopped after 1 of 3 cases (--max-seconds" in res.stdout


def test_check_exits_nonzero_when_tritonbn_fails(monkeypatch, tmp_path, capsys):
    import tritonbn.correctness.runner as runner
    from tritonbn.correctness.__main__ import main

    real = runner.PROVIDERS["tritonbn"]

    def wrong(*args):
        return real.fn(*args) * 1.001

    monkeypatch.setitem(runner.PROVIDERS, "tritonbn", runner.Provider("tritonbn", wrong, True))
    rc = main(
        ["--quick", "--limit", "1", "--dtype", "fp64", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    )
    assert rc == 1
    assert "FAIL tritonbn" in capsys.readouterr().out


@pytest.mark.gpu
@requires_cuda
def test_check_on_gpu(tmp_path):
    from tritonbn.correctness.__main__ import main

    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = _read(next(tmp_path.glob("*/*_check.csv")))
    assert {r["backend"] for r in rows if r["provider"] == "tritonbn"} == {"triton"}
