"""The launcher's paths on both sides of every threshold, and the launches each pass makes.

Every tile-policy threshold switches the kernels onto different code: one tile per channel block (one
launch) or many; one chunk per channel block or many (a merge by the last program); one tile per program
or a loop over several; a ragged last chunk; masks on each axis; one position block or several; shared or
separate strides; a merge that loops over its partials. Each is checked against the float64 reference
written from the formulas (forward, running statistics, backward, fused add + ReLU), on both sides.

Launch counts are deterministic, so they are asserted exactly: kernels stubbed, ATen operators counted with
a dispatch mode (``tritonbn.bench.host``), which needs neither a GPU nor the interpreter.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_close, make_input, max_errors, reference_grads

import tritonbn
from tritonbn import launch, reference
from tritonbn.bench.host import count_launches

# (tile elements, one-tile limit, programs aimed at, merge step): the policies a test runs under
POLICIES = {
    "one-tile": dict(tile=2048, single=1 << 20, programs=64),
    "many-chunks": dict(tile=8, single=0, programs=1 << 20),
    "chunk-loops": dict(tile=8, single=0, programs=2),
    "ragged-chunks": dict(tile=8, single=0, programs=3),
    "merge-loops": dict(tile=4, single=0, programs=1 << 20, merge_block=2),
    # the launcher's floor on tiles per program (3: chunks of 3 tiles and a ragged last one)
    "min-tiles": dict(tile=8, single=0, programs=1 << 20, min_tiles=3),
}

SHAPES = {
    # NCHW with a spatial size that is not a power of two (masks on S), and one that is
    "nchw-odd": ((5, 3, 3, 5), "contiguous"),
    "nchw-pow2": ((4, 3, 4, 4), "contiguous"),
    # S = 12: strides and S multiples of 4, not 16 (the kernels are told VEC = 4 and mask S)
    "nchw-vec4": ((3, 2, 3, 4), "contiguous"),
    # S = 9: every (n, c) plane unaligned, C·S = 36 a multiple of 4: the elementwise passes read FLAT
    # n x (c·S + s) tiles (masks on the flat axis); and C·S = 400 over two flat blocks, a channel straddling
    "nchw-flat": ((5, 4, 3, 3), "contiguous"),
    "nchw-flat-wide": ((3, 16, 5, 5), "contiguous"),
    # channels_last with C not a power of two (masks on C)
    "nhwc": ((3, 5, 3, 3), "channels_last"),
    # C = 12: VEC = 4 with masks on C
    "nhwc-vec4": ((2, 12, 3, 3), "channels_last"),
    # C = 48: three unmasked blocks of 16 channels (with tiles narrower than C)
    "nhwc-c48": ((2, 48, 2, 3), "channels_last"),
    # C a power of two: the elementwise passes' tiles are contiguous blocks (DENSE)
    "nhwc-dense": ((3, 8, 2, 3), "channels_last"),
    "2d-dense": ((37, 16), "contiguous"),
    # (N, C): rows are the samples
    "2d": ((37, 6), "contiguous"),
    # a strided view (every other sample): N and S cannot fold, sample blocks of their own
    "strided": ((3, 4, 2, 3), "strided"),
    "3d": ((2, 3, 2, 3, 3), "contiguous"),
}


def _check_pass(device, dtype, shape, layout, relu_add=False):
    x = make_input(shape, dtype, device, layout, mean=3.0, std=2.0).requires_grad_()
    C = shape[1]
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = (torch.rand(C, dtype=pdtype, device=device) + 0.5).requires_grad_()
    b = torch.randn(C, dtype=pdtype, device=device).requires_grad_()
    rm, rv = torch.randn(C, dtype=pdtype, device=device), torch.rand(C, dtype=pdtype, device=device) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    res = make_input(shape, dtype, device, "contiguous").requires_grad_() if relu_add else None
    if relu_add:
        y = tritonbn.batch_norm_relu(x, rm, rv, w, b, training=True, momentum=0.3, residual=res)
    else:
        y = tritonbn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    rm64, rv64 = rm0.double(), rv0.double()
    y64 = reference.batch_norm(x64, None, None, w64, b64, training=True)
    mean, var, count = reference.batch_norm_stats(x64.detach())
    rm64, rv64 = reference.running_stats_update(rm64, rv64, mean, var, count, 0.3)
    r64 = None
    if relu_add:
        r64 = res.detach().double().requires_grad_()
        y64 = torch.relu(y64 + r64)
    assert_close(y, y64, dtype, "y")
    assert_close(rm, rm64, dtype, "running_mean")
    assert_close(rv, rv64, dtype, "running_var")
    dy = torch.randn_like(y)
    inputs = [x, w, b] + ([res] if relu_add else [])
    got = torch.autograd.grad(y, inputs, dy)
    want = torch.autograd.grad(y64, [x64, w64, b64] + ([r64] if relu_add else []), dy.double())
    for g, r, q in zip(got, want, ["dx", "dweight", "dbias", "dx"], strict=False):
        assert_close(g, r, dtype, q, q)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_train_paths_match_reference(kernels, tile_policy, policy, shape_name):
    tile_policy(**POLICIES[policy])
    shape, layout = SHAPES[shape_name]
    _check_pass(kernels, torch.float32, shape, layout)


@pytest.mark.parametrize("policy", ["one-tile", "many-chunks", "ragged-chunks"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_train_paths_other_dtypes(kernels, tile_policy, policy, dtype):
    tile_policy(**POLICIES[policy])
    _check_pass(kernels, dtype, (4, 3, 3, 3), "channels_last")
    _check_pass(kernels, dtype, (3, 2, 5), "contiguous")
    _check_pass(kernels, dtype, *SHAPES["nchw-flat"])


@pytest.mark.parametrize("policy", ["one-tile", "many-chunks", "chunk-loops"])
@pytest.mark.parametrize("shape_name", ["nchw-odd", "nchw-flat", "nhwc", "nhwc-dense", "strided"])
def test_fused_add_relu_paths(kernels, tile_policy, policy, shape_name):
    tile_policy(**POLICIES[policy])
    shape, layout = SHAPES[shape_name]
    _check_pass(kernels, torch.float32, shape, layout, relu_add=True)


@pytest.mark.parametrize("relu_add", [False, True], ids=["plain", "relu_add"])
@pytest.mark.parametrize("shape_name", ["nhwc-dense", "2d-dense"])
def test_dense_tiles_of_several_rows(kernels, tile_policy, shape_name, relu_add):
    """Contiguous-block (DENSE) tiles of several rows of channels, whose lane offsets the kernels compute
    with the tile's width in place of the position stride: train, eval and backward against the float64
    reference."""
    tile_policy(tile=64, single=0, programs=2)
    shape, layout = SHAPES[shape_name]
    x = make_input(shape, torch.float32, kernels, layout)
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(x))
    ew = launch.elementwise_launch(rows, False, 3, 4)
    assert ew.dense and ew.geo.BLOCK_S > 1 and shape[1] == ew.geo.BLOCK_C and ew.geo.TPP > 1
    _check_pass(kernels, torch.float32, shape, layout, relu_add=relu_add)
    C = shape[1]
    w, b = torch.rand(C, device=kernels) + 0.5, torch.randn(C, device=kernels)
    rm, rv = torch.randn(C, device=kernels), torch.rand(C, device=kernels) + 0.5
    y = tritonbn.batch_norm(x, rm, rv, w, b, training=False)
    y_ref = reference.batch_norm(x, rm.double(), rv.double(), w, b, training=False)
    assert_close(y, y_ref, torch.float32, "y")


@pytest.mark.parametrize("policy", ["one-tile", "many-chunks", "chunk-loops"])
@pytest.mark.parametrize("detach", [False, True], ids=["eval", "detached"])
@pytest.mark.parametrize("shape_name", ["nchw-odd", "nchw-flat-wide"])
def test_eval_and_detached_paths(kernels, tile_policy, policy, detach, shape_name):
    """Constant statistics: dx is written by the reduction pass itself (one backward launch)."""
    tile_policy(**POLICIES[policy])
    shape, _ = SHAPES[shape_name]
    C = shape[1]
    x = make_input(shape, torch.float32, kernels).requires_grad_()
    w = (torch.rand(C, device=kernels) + 0.5).requires_grad_()
    b = torch.randn(C, device=kernels).requires_grad_()
    rm, rv = torch.randn(C, device=kernels), torch.rand(C, device=kernels) + 0.5
    y = tritonbn.batch_norm(x, rm, rv, w, b, training=detach, detach_stats=detach)
    dy = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    if detach:
        mean, var, _ = reference.batch_norm_stats(x.detach())
    else:
        mean, var = rm.double(), rv.double()
    y_ref = reference.batch_norm(x.detach(), mean, var, w.detach(), b.detach(), training=False)
    assert_close(y, y_ref, torch.float32, "y")
    want = reference.batch_norm_backward(dy, x.detach(), w.detach(), mean, torch.rsqrt(var + 1e-5), training=False)
    for g, r, q in zip((dx, dw, db), want, ["dx", "dweight", "dbias"], strict=True):
        assert_close(g, r, torch.float32, q, q)


def test_one_tile_threshold_both_sides(kernels, tile_policy):
    """A channel block of 4·3·5 = 60 rows padded to 4·8 = 32... the limit decides one launch or two."""
    x = make_input((4, 3, 3, 5), torch.float32, kernels).requires_grad_()
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(x))
    for single, expected in ((4 * 16, True), (4 * 16 - 1, False)):
        tile_policy(tile=16, single=single)
        assert launch.geometry(rows).single is expected
        y = tritonbn.batch_norm(x, None, None, training=True)
        y_ref = reference.batch_norm(x.detach(), None, None, training=True)
        assert_close(y, y_ref, torch.float32, "y")
        dy = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, dy)
        dx_ref, _, _ = reference_grads(dy, x)
        assert_close(dx, dx_ref, torch.float32, "dx")


def test_tickets_are_reset_after_a_merge(kernels, tile_policy):
    """The last program of each channel block resets its ticket, so the next call starts from zero."""
    tile_policy(tile=8, single=0, programs=1 << 20)
    x = make_input((6, 5, 3, 3), torch.float32, kernels, "channels_last").requires_grad_()
    y = tritonbn.batch_norm(x, None, None, training=True)
    torch.autograd.grad(y, x, torch.randn_like(y))
    locks = [buf for key, buf in launch._LOCKS.items() if key[0] == str(x.device) or key[0] == x.device.index]
    assert locks and all(int(buf.abs().sum()) == 0 for buf in locks)


def test_repeated_calls_reuse_their_plan(kernels):
    launch.clear_plans()
    x = make_input((4, 3, 5), torch.float32, kernels).requires_grad_()
    for _ in range(3):
        y = tritonbn.batch_norm(x, None, None, training=True)
        torch.autograd.grad(y, x, torch.randn_like(y))
    assert len(launch._FORWARD_PLANS) == 1
    assert len(launch._BACKWARD_PLANS) == 1


@pytest.mark.parametrize(
    "shape, layout, flat, vec",
    [
        ((256, 512, 7, 7), "contiguous", True, 16),  # S = 49: scalar along S, C·S = 25088 = 2^9 · 49
        ((32, 2048, 7, 7), "contiguous", True, 16),
        ((32, 256, 14, 14), "contiguous", True, 16),  # S = 196: 4 elements along S, 16 flat
        ((32, 64, 56, 56), "contiguous", False, 16),  # already 16 along S
        ((32, 3, 7, 7), "contiguous", False, 1),  # C·S = 147: nothing aligned either way
        ((2, 16, 7, 7), "contiguous", False, 1),  # one tile per flat block: no loop to spread its setup
        ((32, 512, 7, 7), "channels_last", False, 16),  # tiles along C already
        ((4, 2, 2049, 2049), "contiguous", False, 1),  # C·S beyond 2^22: the float division's bound
    ],
)
def test_flat_elementwise_passes(tile_policy, shape, layout, flat, vec):
    """The elementwise passes (normalise, dx) tile NC... tensors as n x (c·S + s) when that widens their
    accesses and each program loops over tiles (the GPU's tile policy); the FLAT arguments address every
    element once."""
    tile_policy(tile=2048, programs=1024, min_tiles=4, min_programs=256)
    x = torch.empty(shape, device="meta")
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(torch.empty_like(x)))
    ew = launch.elementwise_launch(rows, False, 3, 4)
    geo, ints, is_flat = ew.geo, ew.ints, ew.flat
    assert (is_flat, geo.VEC) == (flat, vec)
    sizes, (tpp, table_channels, positions) = ints[:3], ints[-3:]
    assert table_channels == shape[1] and tpp == geo.TPP
    if flat:
        assert (*sizes, positions) == (1, shape[0], rows.C * rows.S, rows.S) and geo.INNER_C and geo.TPP >= 2
        assert ints[3:6] == (0, rows.strides[0][0], 1)  # (n: the tile rows, then the flat axis of stride 1)


@pytest.mark.parametrize(
    "shape, layout, itemsize, block_s, block_c, dense",
    [
        ((32, 64, 56, 56), "channels_last", 4, 32, 64, True),  # rows of exactly BLOCK_C channels
        ((32, 256, 14, 14), "channels_last", 4, 8, 256, True),
        ((32, 512, 14, 14), "channels_last", 4, 4, 512, True),
        # as wide as 128 threads' 16-byte accesses: one access's channels per thread
        ((32, 2048, 7, 7), "channels_last", 4, 4, 512, False),
        ((32, 64, 56, 56), "channels_last", 2, 32, 64, False),  # half precision: two accesses per thread
        ((32, 2048, 7, 7), "channels_last", 2, 2, 1024, False),
        ((8, 96, 28, 28), "channels_last", 4, 64, 32, False),  # rows of 96 channels, tiles of 32
        ((4096, 256), "contiguous", 8, 4, 256, True),  # (N, C), float64: tiles of 1024 elements
        ((32, 64, 56, 56), "contiguous", 4, 64, 1, False),  # NCHW: a tile spans 32 samples
    ],
)
def test_dense_elementwise_tiles(tile_policy, shape, layout, itemsize, block_s, block_c, dense):
    """The elementwise passes take channel blocks as wide as the threads' 16-byte accesses span, so that with C
    a power of two up to that width each tile is one contiguous block (DENSE: a thread's accesses are
    immediate offsets from one address) where elements are 4 bytes or more; they still launch a full GPU's
    programs (GPU policy)."""
    tile_policy(tile=2048, programs=1024, min_tiles=4, min_programs=256)
    x = torch.empty(shape, device="meta")
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(torch.empty_like(x)))
    ew = launch.elementwise_launch(rows, itemsize == 8, 3, itemsize)
    geo = ew.geo
    assert (geo.BLOCK_S, geo.BLOCK_C, ew.dense, ew.flat, geo.MASK_C) == (block_s, block_c, dense, False, False)
    # no merge bounds an elementwise pass's chunks: however wide the channel blocks, the programs fill the GPU
    # (a merge's bound would leave 16384 / 1024 = 16 chunks)
    assert min(150, geo.CB * geo.T // 8) <= geo.CB * geo.P and geo.P * geo.TPP >= geo.T > (geo.P - 1) * geo.TPP


@pytest.mark.parametrize(
    "C, single, block_c, mask_c",
    [
        (96, False, 32, False),  # 3 blocks of 32, not 2 of 64 with the second half empty
        (48, False, 16, False),
        (48, True, 16, False),
        (80, False, 16, False),
        (64, False, 64, False),
        (1000, False, 64, True),  # 1024 lanes for 1000 channels: within C/8
        (2064, False, 64, True),  # within C/8, not 129 blocks of 16
        (40, False, 64, True),  # no block within C/8 or dividing C with 16 channels or more: one of 64
        (24, False, 32, True),
        (3, False, 4, True),
    ],
)
def test_channel_blocks_leave_little_padding(tile_policy, C, single, block_c, mask_c):
    """Channels-innermost tiles take the widest power-of-two channel block (down to 64) whose blocks leave at
    most C/8 lanes past C, else one of at least MIN_CHANNEL_BLOCK channels dividing C, else the widest (GPU
    policy), on the loop and one-tile paths."""
    tile_policy(tile=2048, single=8192, programs=1024, min_tiles=4, min_programs=256)
    N = 4 if single else 4096
    rows = launch.rows_view(launch.ncs_view(torch.empty((N, C), device="meta")))
    geo = launch.geometry(rows, single_ok=single)
    assert (geo.single, geo.BLOCK_C, geo.MASK_C, geo.CB) == (single, block_c, mask_c, -(-C // block_c))


@pytest.mark.parametrize(
    "shape, dtype, layout, flat, block_ch, vec",
    [
        ((256, 2048, 7, 7), torch.bfloat16, "contiguous", True, 8, 8),  # S = 49: scalar along S, 16 bytes on C·S
        ((256, 2048, 7, 7), torch.float32, "contiguous", True, 4, 4),
        ((256, 2048, 7, 7), torch.float64, "contiguous", True, 2, 2),
        ((64, 1024, 14, 14), torch.bfloat16, "contiguous", True, 2, 8),  # S = 196: 8 bytes along S
        ((256, 1024, 14, 14), torch.float32, "contiguous", False, 0, 4),  # 16 bytes along S already
        ((256, 512, 7, 7), torch.bfloat16, "contiguous", False, 0, 1),  # 4 tiles per program: too few
        ((32, 2048, 7, 7), torch.float32, "contiguous", False, 0, 1),  # one tile per channel block
        ((256, 64, 56, 56), torch.float16, "contiguous", False, 0, 16),
        ((256, 3, 7, 7), torch.float32, "contiguous", False, 0, 1),  # C·S = 147: nothing aligned either way
        ((256, 64, 33, 33), torch.float64, "contiguous", False, 0, 1),  # 2 channels = 4096 lanes: over a tile
        ((64, 512, 7, 7), torch.float16, "channels_last", False, 0, 16),  # tiles along C
    ],
)
def test_flat_reductions(tile_policy, shape, dtype, layout, flat, block_ch, vec):
    """The reduction passes (statistics, backward sums) of NC... tensors read along the (channel, position)
    plane when that widens their accesses and each program loops over at least FLAT_MIN_TILES tiles: each
    program takes the lanes of BLOCK_CH whole channels, starting and ending on a VEC boundary; the forward
    and backward plans launch it so (the GPU's policy)."""
    tile_policy(tile=2048, single=8192, programs=1024, min_tiles=4, min_programs=256, flat_min_tiles=8)
    x = torch.empty(shape, dtype=dtype, device="meta")
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(x))
    red = launch.reduction_launch(rows, True, dtype == torch.float64, x.element_size())
    geo = red.geo
    assert (red.flat, red.geo.VEC) == (flat, vec)
    N, C = shape[:2]
    S = math.prod(shape[2:])
    if flat:
        lanes = block_ch * S
        assert red.block_ch == block_ch and red.meta()["BLOCK_CH"] == block_ch and red.meta()["FLAT"]
        assert red.ints(2)[:6] == (1, N, C * S, 0, C * S, 1) and (red.channels, red.positions) == (C, S)
        assert lanes % vec == 0 and lanes <= geo.BLOCK_C < 2 * lanes and (lanes != geo.BLOCK_C) == geo.MASK_C
        assert -(-C // block_ch) == geo.CB and geo.grid == (geo.CB, geo.P) and not geo.single
        assert geo.P * geo.TPP >= geo.T > (geo.P - 1) * geo.TPP and geo.TPP >= 8
        assert red.meta()["BLOCK_CS"] >= S > red.meta()["BLOCK_CS"] // 2 and geo.BLOCK_C <= launch.FLAT_MAX_LANES
    else:
        assert red.rows == rows and (red.channels, red.positions, red.block_ch) == (C, 1, geo.BLOCK_C)
    # the plans launch it: the statistics kernel, and the backward's reduction
    fwd = launch._forward_plan(x, None, True, True, True, True, False)
    bwd = launch._backward_plan(x, x, None, True, True, True, True, False, False, True)
    for plan in (fwd, bwd):
        kernel, grid, ints, meta = plan.launches[0]
        padded = 1 << (S - 1).bit_length() if flat else 1
        assert (meta["FLAT"], meta["BLOCK_CH"], meta["BLOCK_CS"], grid) == (flat, red.block_ch, padded, geo.grid)
        assert ints[-2:] == (C, S if flat else 1)


@pytest.mark.parametrize("policy", ["many-chunks", "ragged-chunks", "merge-loops"])
def test_flat_reduction_statistics_are_shifted_per_channel(kernels, tile_policy, policy):
    """On the FLAT reduction path each lane subtracts its own channel's shift: a channel of mean 1e4 and
    std 1 next to one of mean -3e3 keeps its variance, mean and dweight, where E[x²] - E[x]² in float32 would
    lose every digit. (The variance is within 1e-3, not float32's 1e-7: chunks of one sample store their
    means in float32, each within half an ulp of 1e4.)"""
    tile_policy(**POLICIES[policy])
    x64 = torch.randn(6, 4, 3, 3, dtype=torch.float64) + torch.tensor([1e4, -3e3, 0.0, 5.0]).reshape(1, 4, 1, 1)
    x = x64.float().to(kernels).requires_grad_()
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(x))
    assert launch.reduction_launch(rows, True, False, 4).flat
    mean, var, _ = launch.batch_stats(x.detach(), 1e-5)
    mean_ref, var_ref, _ = reference.batch_norm_stats(x.detach())
    err = ((var.double().cpu() - var_ref) / var_ref).abs()
    assert err.max() < 1e-3 and err[2:].max() < 1e-5
    naive = (x.detach().cpu() ** 2).mean((0, 2, 3)) - x.detach().cpu().mean((0, 2, 3)) ** 2
    assert (naive.double()[0] - var_ref[0]).abs() > 100 * err[0] * var_ref[0]
    assert (mean.double().cpu() - mean_ref).abs().max() < 1e-3
    w = torch.rand(4, device=kernels, requires_grad=True)
    y = tritonbn.batch_norm(x, None, None, w, None, training=True)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    dx_ref, dw_ref, _ = reference_grads(dy, x, w)
    assert max_errors(dw, dw_ref)[1] < 1e-3 and max_errors(dx, dx_ref)[1] < 1e-3


def test_flat_channel_of_a_lane_is_exact():
    """A FLAT lane's channel -- trunc((f + 1/2)·r) in float32 with r within 2 ulp of 1/CS (the GPU's division
    is not correctly rounded), corrected once by the remainder -- is f // CS for every f below the
    launcher's bound (2^22), for spatial sizes of every kind and every reciprocal the hardware may give."""
    import numpy as np

    f = np.arange(launch.FLAT_MAX_PLANE, dtype=np.int64)
    f32 = f.astype(np.float32)
    for cs in (2, 3, 7, 9, 25, 49, 196, 225, 961, 4095, 5329, 12321, 99991, launch.FLAT_MAX_PLANE // 2 - 1):
        exact = np.float32(1.0) / np.float32(cs)
        for ulps in (-2, -1, 0, 1, 2):
            r = exact
            for _ in range(abs(ulps)):
                r = np.nextafter(r, np.float32(np.inf if ulps > 0 else 0), dtype=np.float32)
            q = (f32 * r + np.float32(0.5) * r).astype(np.int64)  # (unfused; fused differs by < 1 ulp)
            rem = f - q * cs
            q += (rem >= cs).astype(np.int64) - (rem < 0).astype(np.int64)
            assert np.array_equal(q, f // cs), (cs, ulps)


@pytest.mark.parametrize(
    "shape, layout, vec, inner",
    [
        ((32, 256, 14, 14), "contiguous", 4, False),  # S = 196: 16-byte float32 vectors along S
        ((32, 2048, 7, 7), "contiguous", 1, False),  # S = 49: every (n, c) plane starts unaligned
        ((32, 64, 56, 56), "contiguous", 16, False),
        ((64, 1000), "contiguous", 8, True),  # (N, C): rows of 1000 channels
        ((8, 40, 15, 15), "channels_last", 8, True),
        ((8, 3, 15, 15), "channels_last", 1, True),  # C = 3: tiles along C, but nothing aligned
    ],
)
def test_alignment_told_to_the_kernels(shape, layout, vec, inner):
    """VEC divides every stride the kernels mark aligned and the contiguous axis's size; the grid is
    (channel blocks, chunks)."""
    x = torch.empty(shape).to(memory_format=torch.channels_last) if layout == "channels_last" else torch.empty(shape)
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(torch.empty_like(x)))
    for kw in ({}, {"single_ok": False}, {"single_ok": False, "wide_acc": True}):
        geo = launch.geometry(rows, **kw)
        assert (vec, inner) == (geo.VEC, geo.INNER_C)
        assert geo.grid == (geo.CB, geo.P) and geo.meta()["VEC"] == vec
        extent = rows.C if inner else rows.S
        marked = [v for sn, ss, sc in rows.strides for v in ((sn, ss) if inner else (sn, sc))]
        assert all(v % geo.VEC == 0 for v in [extent, *marked])


@pytest.mark.parametrize(
    "shape, layout", [((32, 64, 56, 56), "contiguous"), ((32, 512, 7, 7), "channels_last"), ((4096, 256), "contiguous")]
)
def test_programs_loop_over_tiles_and_fill_the_gpu(tile_policy, shape, layout):
    """The GPU policy: a program loops over at least MIN_TILES_PER_PROGRAM tiles, unless that would leave
    fewer than MIN_PROGRAMS programs; never more programs than tiles."""
    tile_policy(tile=2048, programs=1024, min_tiles=4, min_programs=256)
    x = torch.empty(shape)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
    rows = launch.rows_view(launch.ncs_view(x), launch.ncs_view(torch.empty_like(x)))
    for geo in (launch.geometry(rows, single_ok=False), launch.geometry(rows, single_ok=False, wide_acc=True)):
        programs = geo.CB * geo.P
        assert geo.P <= geo.T and geo.P * geo.TPP >= geo.T > (geo.P - 1) * geo.TPP
        assert 2 * programs >= min(256, geo.CB * geo.T)  # (chunks of equal length: P rounds down)
        assert geo.TPP >= 4 or programs <= 2 * 256


@pytest.mark.parametrize("policy", ["one-tile", "chunk-loops", "ragged-chunks", "min-tiles"])
@pytest.mark.parametrize("shape_name", ["nchw-odd", "nchw-vec4", "nhwc-vec4", "2d", "strided"])
@pytest.mark.parametrize("fused", [False, True], ids=["bn", "bn-add-relu"])
def test_double_backward_paths(kernels, tile_policy, policy, shape_name, fused):
    """Second-order gradients -- the channel-sum and channel-affine kernels of the differentiable backward,
    with one tile per program or loops over chunks (ragged ones too), masks and vector hints -- against
    autograd through the float64 reference."""
    tile_policy(**POLICIES[policy])
    shape, layout = SHAPES[shape_name]
    dtype, C = torch.float64, shape[1]
    x = make_input(shape, dtype, kernels, layout, mean=3.0, std=2.0).requires_grad_()
    w = (torch.rand(C, dtype=dtype, device=kernels) + 0.5).requires_grad_()
    b = torch.randn(C, dtype=dtype, device=kernels).requires_grad_()
    res = torch.randn(shape, dtype=dtype, device=kernels) if fused else None

    def ours(x, w, b):
        if fused:
            return tritonbn.batch_norm_relu(x, None, None, w, b, training=True, residual=res)
        return tritonbn.batch_norm(x, None, None, w, b, training=True)

    def ref(x, w, b):
        y = reference.batch_norm(x, None, None, w, b, training=True)
        return torch.relu(y + res) if fused else y

    dy = torch.randn(shape, dtype=dtype, device=kernels).requires_grad_()
    v = torch.randn(shape, dtype=dtype, device=kernels)
    results = []
    for fn in (ours, ref):
        g1 = torch.autograd.grad(fn(x, w, b), (x, w, b), dy, create_graph=True)
        results.append([*g1, *torch.autograd.grad(g1[0], (x, w, dy), v)])
    for got, want, name in zip(*results, ("dx", "dweight", "dbias", "ddx", "ddweight", "ddy"), strict=True):
        assert_close(got, want, dtype, name, name)


# ------------------------------------------------------------------------------------------ launches


@pytest.mark.launch_count
@pytest.mark.parametrize("one_tile", [True, False], ids=["one-tile", "many-tiles"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_launches_per_pass(tile_policy, one_tile, layout):
    """Train forward ≤ 2 launches (1 on one tile), backward ≤ 2 (1 on one tile), eval forward 1, eval and
    detached backward 1, the fused add + ReLU the same; no other kernel (ATen) at all. Counted on a warm
    call: the first one builds the launch plans and, once per device and stream, the merge tickets."""
    tile_policy(**({"tile": 2048, "single": 1 << 20} if one_tile else {"tile": 8, "single": 0}))
    n = 1 if one_tile else 2
    x = torch.randn(4, 6, 3, 3).requires_grad_()
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last).detach().requires_grad_()
    w, b = torch.rand(6, requires_grad=True), torch.randn(6, requires_grad=True)
    rm, rv = torch.zeros(6), torch.ones(6)
    res = torch.randn_like(x).requires_grad_()
    dy = torch.randn_like(x)
    state = {}

    def fwd(training=True, relu=False, detach=False):
        if relu:
            state["y"] = tritonbn.batch_norm_relu(x, rm, rv, w, b, training, residual=res, detach_stats=detach)
        else:
            state["y"] = tritonbn.batch_norm(x, rm, rv, w, b, training, detach_stats=detach)

    def bwd(relu=False):
        torch.autograd.grad(state["y"], (x, w, b, res) if relu else (x, w, b), dy, retain_graph=True)

    expected = [
        ("train forward", lambda: fwd(), n),
        ("train backward", lambda: bwd(), n),
        ("eval forward", lambda: fwd(False), 1),
        ("eval backward", lambda: bwd(), 1),
        ("fused train forward", lambda: fwd(relu=True), n),
        ("fused train backward", lambda: bwd(relu=True), n),
        ("detached train forward", lambda: fwd(detach=True), n),
        ("detached backward", lambda: bwd(), 1),
    ]
    from tritonbn.bench.host import stubbed_kernels

    for what, fn, want in expected:
        with stubbed_kernels():
            fn()
            count = count_launches(fn)
        assert sum(count.aten.values()) == 0, f"{what}: ATen kernels {dict(count.aten)}"
        assert sum(count.triton.values()) == want, f"{what}: {dict(count.triton)}"


@pytest.mark.launch_count
def test_module_launches(tile_policy):
    """Through ``tritonbn.BatchNorm2d``: the same, plus torch's own ``num_batches_tracked += 1``."""
    from tritonbn.bench.host import stubbed_kernels

    tile_policy(tile=2048, single=1 << 20)
    bn = tritonbn.BatchNorm2d(6)
    x = torch.randn(4, 6, 3, 3, requires_grad=True)
    with stubbed_kernels():
        bn(x)
        count = count_launches(lambda: bn(x))
    assert dict(count.aten) == {"add_": 1}
    assert sum(count.triton.values()) == 1


@pytest.mark.parametrize("policy", ["one-tile", "many-chunks"])
def test_nan_stays_nan_in_the_statistics(kernels, tile_policy, policy):
    """A NaN in a channel makes its output, batch variance and running statistics NaN (as torch's do) on
    both paths: the variance's clamp at 0 must not swallow it."""
    tile_policy(**POLICIES[policy])
    for C in (3, 4):  # (C = 4: C·S = 36, the FLAT reduction path when the rows take several tiles)
        x = make_input((4, C, 3, 3), torch.float32, kernels)
        x[1, 0, 2, 1] = float("nan")
        rm, rv = torch.zeros(C, device=kernels), torch.ones(C, device=kernels)
        y = tritonbn.batch_norm(x, rm, rv, training=True)
        rm_t, rv_t = torch.zeros(C), torch.ones(C)
        y_t = torch.nn.functional.batch_norm(x.cpu(), rm_t, rv_t, training=True)
        assert torch.equal(torch.isnan(y.cpu()), torch.isnan(y_t))
        assert torch.equal(torch.isnan(rm.cpu()), torch.isnan(rm_t)) and torch.equal(
            torch.isnan(rv.cpu()), torch.isnan(rv_t)
        )
        assert torch.isnan(rv[0]) and torch.isfinite(rv[1:]).all()
        assert_close(y[:, 1:], reference.batch_norm(x[:, 1:], None, None, training=True), torch.float32, "y")
