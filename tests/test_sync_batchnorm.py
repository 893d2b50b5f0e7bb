"""tritonbn.SyncBatchNorm: a drop-in for torch.nn.SyncBatchNorm on the Triton kernels.

The multi-process tests spawn gloo ranks on the CPU with TRITON_INTERPRET=1, so the kernels run in Triton's
interpreter on any machine. Each rank checks its results against one process running tritonbn's
single-process BatchNorm on the concatenated batch and raises on a mismatch; torch.multiprocessing.spawn
re-raises the first failure here with the rank's traceback.
"""

from __future__ import annotations

import copy
import datetime
import inspect
import io
import re
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import assert_close, make_input
from torch import nn
from torch.multiprocessing.spawn import ProcessException

import tritonbn

# torch added the `bias=` constructor argument of the batch-norm modules recently; older versions lack it.
NO_BIAS = {"bias": False} if "bias" in inspect.signature(nn.SyncBatchNorm.__init__).parameters else {}

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

# ---------------------------------------------------------------------------------------------------------
# Spawned ranks
# ---------------------------------------------------------------------------------------------------------


def _spawn(tmp_path, monkeypatch, world_size: int, target) -> None:
    """Run ``target(rank, world_size)`` in ``world_size`` gloo ranks; fail with the ranks' own errors."""
    if torch.cuda.is_available():
        # These ranks run the kernels in Triton's interpreter on CPU tensors, which CI covers; on a CUDA
        # machine test_sync_batchnorm_on_cuda checks the same layer on CUDA tensors instead.
        pytest.skip("interpreter ranks on CPU tensors; on CUDA see test_sync_batchnorm_on_cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the spawned interpreters
    try:
        mp.spawn(_rank_main, args=(world_size, str(tmp_path), target), nprocs=world_size, join=True)
    except ProcessException as e:
        # A failing rank makes its peers fail too, inside a collective; report the original failures first.
        reports = [p.read_text() for p in sorted(tmp_path.glob("rank*.err"))]
        reports.sort(key=lambda r: "gloo" in r.strip().splitlines()[-1])
        pytest.fail("\n".join(reports) or str(e), pytrace=False)


def _rank_main(rank: int, world_size: int, tmp: str, target) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        target(rank, world_size)
    except BaseException:
        with open(f"{tmp}/rank{rank}.err", "w") as f:
            f.write(f"-- rank {rank}:\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


_REFERENCE = {2: tritonbn.BatchNorm1d, 3: tritonbn.BatchNorm1d, 4: tritonbn.BatchNorm2d, 5: tritonbn.BatchNorm3d}


def _grad(p: torch.Tensor | None) -> torch.Tensor | None:
    if p is None:
        return None
    return p.grad if p.grad is not None else torch.zeros_like(p)


def _layer_case(rank: int, name: str, *, sizes, tail=(), C=3, dtype=torch.float64, layout="contiguous",
                groups=None, steps=1, layer_kwargs=None, check_eval=False) -> None:  # fmt: skip
    """One SyncBatchNorm layer against the single-process BatchNorm on the group's concatenated batch.

    ``sizes[r]`` is rank r's batch size; ``groups`` (default: everyone) splits the ranks into process
    groups, each normalising over its own members.
    """
    world_size = len(sizes)
    groups = groups or [list(range(world_size))]
    # Every rank creates every group, in the same order (torch.distributed's rule for new_group).
    handles = [dist.new_group(g) for g in groups] if len(groups) > 1 else [None]
    members, group = next((g, h) for g, h in zip(groups, handles, strict=True) if rank in g)
    kwargs = layer_kwargs or {}
    torch.manual_seed(len(name))
    sync = tritonbn.SyncBatchNorm(C, process_group=group, **kwargs).to(dtype)
    ref = _REFERENCE[2 + len(tail)](C, **kwargs).to(dtype)
    with torch.no_grad():
        for p, q in zip(sync.parameters(), ref.parameters(), strict=True):
            p.copy_(torch.randn_like(p))
            q.copy_(p)
    starts = [sum(sizes[:r]) for r in range(world_size)]
    rows = torch.cat([torch.arange(starts[r], starts[r] + sizes[r]) for r in members])
    mine = slice(sum(sizes[r] for r in members if r < rank), sum(sizes[r] for r in members if r <= rank))
    for step in range(steps):
        where = f"{name}, rank {rank}, step {step}"
        x_all = make_input((sum(sizes), C, *tail), dtype, "cpu", layout, mean=3.0)
        dy_all = torch.randn_like(x_all)
        x = x_all[starts[rank] : starts[rank] + sizes[rank]].detach().requires_grad_()
        y = sync(x)
        y.backward(dy_all[starts[rank] : starts[rank] + sizes[rank]])
        x_ref = x_all[rows].detach().requires_grad_()
        y_ref = ref(x_ref)
        y_ref.backward(dy_all[rows])

        assert y.dtype == x.dtype and y.shape == x.shape, where
        synchronised = type(y.grad_fn).__name__ == "SyncBatchNormFunctionBackward"
        assert synchronised == (len(members) > 1), f"{where}: {y.grad_fn}"
        if layout == "channels_last" and x.numel():
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            assert y.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt), where
        assert_close(y, y_ref[mine], dtype, "y", f"{where}: y")
        assert_close(x.grad, x_ref.grad[mine], dtype, "grad", f"{where}: dx")
        for p_name in ("weight", "bias"):
            g, g_ref = _grad(getattr(sync, p_name)), _grad(getattr(ref, p_name))
            assert (g is None) == (g_ref is None), where
            if g is not None:
                g = g.clone()
                dist.all_reduce(g, group=group)  # local sums, as DDP would then average them
                assert_close(g, g_ref, dtype, "grad", f"{where}: d{p_name} summed over the group")
        for b_name in ("running_mean", "running_var"):
            b, b_ref = getattr(sync, b_name), getattr(ref, b_name)
            assert (b is None) == (b_ref is None), where
            if b is not None:
                assert_close(b, b_ref, dtype, "stats", f"{where}: {b_name}")
        if ref.num_batches_tracked is not None:
            assert torch.equal(sync.num_batches_tracked, ref.num_batches_tracked), where
        sync.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
    if check_eval:  # eval mode normalises locally with the running statistics: no collective at all
        sync.eval()
        ref.eval()
        x = make_input((sizes[rank], C, *tail), dtype, "cpu", layout) + rank
        assert_close(sync(x), ref(x), dtype, "y", f"{name}, rank {rank}: eval y")


def _three_ranks(rank: int, world_size: int) -> None:
    # Uneven batches with an empty rank; momentum; eval afterwards.
    _layer_case(rank, "2d-empty-rank", sizes=(3, 0, 2), tail=(3, 4), steps=2, check_eval=True)
    # (N, C) input with one value per channel on two ranks (fine: the statistics span 4); no affine;
    # cumulative moving average.
    _layer_case(rank, "1d-nc", sizes=(1, 2, 1), steps=2, layer_kwargs={"affine": False, "momentum": None})
    # float32, channels_last_3d, detached statistics (the backward exchanges nothing).
    _layer_case(
        rank,
        "3d-cl-detached",
        sizes=(1, 2, 1),
        tail=(2, 2, 3),
        dtype=torch.float32,
        layout="channels_last",
        layer_kwargs={"detach_stats": True},
    )
    # Process groups {0, 1} and {2}: a group of one falls back to the local batch norm; no running stats;
    # a weight without bias.
    _layer_case(
        rank,
        "1d-ncl-groups",
        sizes=(2, 3, 2),
        tail=(5,),
        groups=[[0, 1], [2]],
        layer_kwargs={"track_running_stats": False, **NO_BIAS},
    )
    # Every rank empty: empty outputs, running statistics untouched (as for an empty single-process batch).
    _layer_case(rank, "2d-all-empty", sizes=(0, 0, 0), tail=(2, 2))


def test_three_ranks_uneven_and_empty(tmp_path, monkeypatch):
    _spawn(tmp_path, monkeypatch, 3, _three_ranks)


def _ddp_case(rank: int, world_size: int) -> None:
    """A conv + SyncBatchNorm model under DistributedDataParallel equals one process on the full batch."""
    # torch's DDP refuses SyncBatchNorm in a CPU module, because torch's own layer only runs on GPUs; ours
    # runs on the CPU in the interpreter, so lift that check in this test process.
    nn.parallel.DistributedDataParallel._passing_sync_batchnorm_handle = lambda self, module: None
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1)
    ).double()
    ref = tritonbn.convert_model(copy.deepcopy(base))
    model = tritonbn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(base))
    assert type(model[1]) is tritonbn.SyncBatchNorm
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    per_rank = 3
    for step in range(3):
        x = torch.randn(per_rank * world_size, 2, 5, 4, dtype=torch.float64)
        target = torch.randn(per_rank * world_size, 3, 5, 4, dtype=torch.float64)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        opt.zero_grad()
        F.mse_loss(ddp(x[mine]), target[mine]).backward()  # DDP averages the ranks' gradients
        opt.step()
        ref_opt.zero_grad()
        F.mse_loss(ref(x), target).backward()
        ref_opt.step()
        for (k, v), (k_ref, v_ref) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
            assert k == k_ref
            quantity = "stats" if "running" in k or "num_batches" in k else "grad"
            assert_close(v, v_ref, torch.float64, quantity, f"DDP rank {rank}, step {step}: {k}")


def _first_order_only(rank: int) -> None:
    """The synchronised backward is first order: differentiating it again raises instead of being wrong."""
    x = torch.randn(2 + rank, 3, 4, dtype=torch.float64, requires_grad=True)
    y = tritonbn.SyncBatchNorm(3).double()(x)
    (dx,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dx.sum().backward()


def _one_value_in_the_group(rank: int) -> None:
    """One value per channel across the whole group: single-process batch norm's ValueError on every rank,
    where torch's SyncBatchNorm would move running_var toward 0 (a biased variance of 0 divided by n - 1 = 0)."""
    for tail in ((), (1,), (1, 1)):
        x = torch.randn(1 - rank, 3, *tail, dtype=torch.float64)  # rank 0 holds one sample, rank 1 none
        m = tritonbn.SyncBatchNorm(3).double()
        message = f"Expected more than 1 value per channel when training, got input size {x.size()}"
        with pytest.raises(ValueError, match=re.escape(message)):
            m(x)
        assert torch.equal(m.running_var, torch.ones(3, dtype=torch.float64)), "running_var moved"


def _nonfinite_in_the_group(rank: int) -> None:
    """inf and NaN on one rank: the output and statistics of torch's batch norm on the whole batch. Rank 0
    holds more samples, so its partial (a mean of inf in channel 1) is the reference of Chan's merge."""
    sizes = (3, 2)
    x_all = make_input((sum(sizes), 3, 4), torch.float32, "cpu", mean=3.0)
    x_all[0, 1, 0] = float("inf")
    x_all[4, 0, 3] = float("-inf")
    x_all[3, 2, 1] = float("nan")
    start = sum(sizes[:rank])
    m = tritonbn.SyncBatchNorm(3, momentum=1.0)
    y = m(x_all[start : start + sizes[rank]])
    rm, rv = torch.zeros(3), torch.ones(3)
    y_ref = F.batch_norm(x_all, rm, rv, training=True, momentum=1.0)
    torch.testing.assert_close(y, y_ref[start : start + sizes[rank]], equal_nan=True)
    torch.testing.assert_close(m.running_mean, rm, equal_nan=True)
    torch.testing.assert_close(m.running_var, rv, equal_nan=True)
    assert m.running_mean[1].item() == float("inf") and m.running_mean[0].item() == float("-inf")


def _fused_in_the_group(rank: int) -> None:
    """SyncBatchNormReLU and SyncBatchNormAddReLU against relu(batch_norm(x) [+ r]) on the whole batch: the
    ReLU mask folded into the synchronised backward, the residual's gradient from the same pass."""
    sizes = (3, 2)
    start = sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    for cls in (tritonbn.SyncBatchNormReLU, tritonbn.SyncBatchNormAddReLU):
        for need_x in (True, False):
            torch.manual_seed(1)
            x_all = make_input((sum(sizes), 3, 2, 3), torch.float64, "cpu", mean=0.5)
            r_all, dy_all = torch.randn_like(x_all), torch.randn_like(x_all)
            m = cls(3, momentum=0.5).double()
            w, b = (torch.randn(3, dtype=torch.float64) for _ in range(2))
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(b)
            x, r = x_all[mine].clone().requires_grad_(need_x), r_all[mine].clone().requires_grad_()
            y = m(x, r) if cls.takes_residual else m(x)
            y.backward(dy_all[mine])
            x_ref, r_ref = x_all.clone().requires_grad_(), r_all.clone().requires_grad_()
            w_ref, b_ref = w.clone().requires_grad_(), b.clone().requires_grad_()
            rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
            y_ref = F.batch_norm(x_ref, rm, rv, w_ref, b_ref, training=True, momentum=0.5)
            y_ref = torch.relu(y_ref + r_ref if cls.takes_residual else y_ref)
            y_ref.backward(dy_all)
            where = f"{cls.__name__}, rank {rank}, need_x {need_x}"
            assert_close(y, y_ref[mine], torch.float64, "y", f"{where}: y")
            if need_x:
                assert_close(x.grad, x_ref.grad[mine], torch.float64, "grad", f"{where}: dx")
            if cls.takes_residual:
                assert_close(r.grad, r_ref.grad[mine], torch.float64, "grad", f"{where}: dresidual")
            for p, p_ref in ((m.weight, w_ref), (m.bias, b_ref)):
                g = p.grad.clone()
                dist.all_reduce(g)
                assert_close(g, p_ref.grad, torch.float64, "grad", f"{where}: dweight/dbias")
            assert_close(m.running_var, rv, torch.float64, "stats", f"{where}: running_var")


def _two_ranks(rank: int, world_size: int) -> None:
    _one_value_in_the_group(rank)
    _fused_in_the_group(rank)
    _nonfinite_in_the_group(rank)
    _layer_case(rank, "2d-cl-uneven", sizes=(4, 1), tail=(3, 5), layout="channels_last", steps=2)
    # The one-tensor all_gather that NCCL gets (gloo takes it too in recent torch versions).
    get_backend = dist.get_backend
    dist.get_backend = lambda group=None: "nccl"
    try:
        _layer_case(rank, "2d-gather-single", sizes=(2, 3), tail=(2, 3))
    finally:
        dist.get_backend = get_backend
    _first_order_only(rank)
    _layer_case(rank, "1d-ncl-f32", sizes=(2, 5), tail=(7,), dtype=torch.float32, layer_kwargs={"momentum": 0.3})
    _ddp_case(rank, world_size)


def test_two_ranks_and_ddp_training(tmp_path, monkeypatch):
    _spawn(tmp_path, monkeypatch, 2, _two_ranks)


# ---------------------------------------------------------------------------------------------------------
# One process: the torch.nn.SyncBatchNorm contract, conversions, fallbacks
# ---------------------------------------------------------------------------------------------------------

CONFIGS = [
    {},
    {"affine": False},
    {"track_running_stats": False, "momentum": None},
    {"eps": 1e-3, "momentum": 0.3, **NO_BIAS},
]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=["default", "no-affine", "no-stats", "eps-no-bias"])
def test_repr_and_state_dict_match_torch(kwargs):
    theirs = nn.SyncBatchNorm(5, **kwargs)
    ours = tritonbn.SyncBatchNorm(5, **kwargs)
    assert isinstance(ours, nn.SyncBatchNorm)
    assert repr(ours) == repr(theirs)
    assert tritonbn.SyncBatchNorm(5, detach_stats=True, **kwargs).extra_repr() == theirs.extra_repr() + (
        ", detach_stats=True"
    )
    sd, sd_ref = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(sd_ref)
    for k in sd:
        assert sd[k].shape == sd_ref[k].shape and sd[k].dtype == sd_ref[k].dtype, k
    # Checkpoints move both ways, through a file.
    with torch.no_grad():
        for t in theirs.state_dict().values():
            t.copy_(torch.randint(1, 9, t.shape) if not t.is_floating_point() else torch.rand(t.shape))
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    buf.seek(0)
    ours.load_state_dict(torch.load(buf))
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


@pytest.mark.parametrize("shape", [(4,), (2, 0, 3)], ids=["1d", "no-channels"])
def test_input_errors_match_torch(shape):
    x = torch.randn(shape)
    with pytest.raises(Exception) as theirs:
        nn.SyncBatchNorm(shape[1] if len(shape) > 1 else 4)(x)
    with pytest.raises(type(theirs.value), match=re.escape(str(theirs.value))):
        tritonbn.SyncBatchNorm(shape[1] if len(shape) > 1 else 4)(x)


def test_convert_sync_batchnorm_like_torch():
    def build():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(2, 3, 1),
            nn.BatchNorm2d(3, momentum=None),
            nn.Sequential(tritonbn.BatchNorm1d(4, affine=False, detach_stats=True), nn.SyncBatchNorm(4, eps=1e-3)),
        )
        net[1].eval()
        net[1].qconfig = "qconfig"
        return net

    group = object()  # stands in for a process group; never used outside training with distributed set up
    net = build()
    ours = tritonbn.SyncBatchNorm.convert_sync_batchnorm(net, group)
    theirs = nn.SyncBatchNorm.convert_sync_batchnorm(build(), group)
    assert ours is net  # children replaced in place, the root returned
    assert repr(ours).replace(", detach_stats=True", "") == repr(theirs)
    for m, m_ref in ((ours[1], theirs[1]), (ours[2][0], theirs[2][0]), (ours[2][1], theirs[2][1])):
        assert type(m) is tritonbn.SyncBatchNorm and type(m_ref) is nn.SyncBatchNorm
        assert m.process_group is group and m.training == m_ref.training
        assert list(m.state_dict()) == list(m_ref.state_dict())
    assert ours[1].qconfig == "qconfig" and not ours[1].training
    assert ours[2][0].detach_stats and not ours[2][1].detach_stats
    # Parameters and buffers are shared with the converted layers, not copied.
    bn = nn.BatchNorm2d(3)
    sbn = tritonbn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(sbn) is tritonbn.SyncBatchNorm and sbn.process_group is None
    assert sbn.weight is bn.weight and sbn.running_var is bn.running_var
    assert sbn.num_batches_tracked is bn.num_batches_tracked


def test_convert_model_maps_sync_batchnorm_both_ways():
    group = object()
    net = nn.Sequential(nn.Linear(3, 4), nn.SyncBatchNorm(4, momentum=0.2, process_group=group), nn.BatchNorm1d(4))
    weight, running_mean = net[1].weight, net[1].running_mean
    converted = tritonbn.convert_model(net, detach_stats=True)
    assert type(converted[1]) is tritonbn.SyncBatchNorm and type(converted[2]) is tritonbn.BatchNorm1d
    assert converted[1].process_group is group and converted[1].momentum == 0.2
    assert converted[1].weight is weight and converted[1].running_mean is running_mean
    assert converted[1].detach_stats
    reverted = tritonbn.revert_model(converted)
    assert type(reverted[1]) is nn.SyncBatchNorm and type(reverted[2]) is nn.BatchNorm1d
    assert reverted[1].process_group is group and reverted[1].weight is weight
    assert "detach_stats" not in reverted[1].__dict__
    assert repr(reverted[1]) == repr(nn.SyncBatchNorm(4, momentum=0.2))
    # A subclass of torch's SyncBatchNorm is left alone, as for BatchNorm.
    sub = type("MySyncBN", (nn.SyncBatchNorm,), {})(4)
    assert tritonbn.convert_model(sub) is sub


def _single_process_matches_batchnorm(device, *, train: bool, **kwargs):
    torch.manual_seed(1)
    sync = tritonbn.SyncBatchNorm(3, momentum=None, **kwargs).to(device, torch.float64)
    ref = tritonbn.BatchNorm2d(3, momentum=None, **kwargs).to(device, torch.float64)
    with torch.no_grad():
        for p, q in zip(sync.parameters(), ref.parameters(), strict=True):
            p.copy_(torch.randn_like(p))
            q.copy_(p)
    sync.train(train)
    ref.train(train)
    for _ in range(2):
        x = make_input((4, 3, 3, 5), torch.float64, device, mean=2.0).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        dy = torch.randn_like(x)
        y, y_ref = sync(x), ref(x_ref)
        y.backward(dy)
        y_ref.backward(dy)
        assert_close(y, y_ref, torch.float64, "y")
        assert_close(x.grad, x_ref.grad, torch.float64, "grad")
        assert_close(sync.weight.grad, ref.weight.grad, torch.float64, "grad")
        assert_close(sync.running_var, ref.running_var, torch.float64, "stats")
        assert torch.equal(sync.num_batches_tracked, ref.num_batches_tracked)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_not_distributed_is_single_process_batchnorm(kernels, train):
    assert not dist.is_initialized()
    _single_process_matches_batchnorm(kernels, train=train, detach_stats=train)


def test_world_of_one_is_single_process_batchnorm(kernels, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _single_process_matches_batchnorm(kernels, train=True)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# The same layer over a process group on CUDA tensors (and on the CPU through the interpreter)
# ---------------------------------------------------------------------------------------------------------


def _assert_sync_rows(rows, expect_skipped=()):
    by_status = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    assert not by_status.get("error") and not by_status.get("fail"), [
        (r["check"], r.get("quantity"), r.get("max_rel_err"), r.get("note")) for r in rows if r["status"] != "ok"
    ]
    assert sorted({r["check"] for r in by_status.get("skipped", [])}) == sorted(expect_skipped)
    checked = {r["quantity"] for r in by_status["ok"]}
    assert {"y", "dx", "dweight", "dbias", "running_mean", "running_var"} <= checked


@pytest.mark.gpu
def test_sync_batchnorm_on_cuda():
    """Two gloo ranks sharing the GPU with uneven batches (fp32, and fp16 channels_last), and a one-rank
    NCCL group through SyncBatchNormFunction, against float64 on the concatenated batch."""
    from tritonbn.gpu_session.sync import run_sync_checks

    _assert_sync_rows(run_sync_checks("cuda", timeout_s=120))


def test_sync_checks_of_the_gpu_session_on_cpu(kernels, monkeypatch):
    """The gpu session's sync step on the CPU: gloo ranks in the interpreter; NCCL is skipped."""
    if kernels == "cuda":
        pytest.skip("test_sync_batchnorm_on_cuda covers CUDA")
    from tritonbn.gpu_session.sync import SYNC_CASES, run_sync_checks

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rows = run_sync_checks("cpu", cases=SYNC_CASES, timeout_s=120)
    _assert_sync_rows(rows, expect_skipped=["nccl-1"])
