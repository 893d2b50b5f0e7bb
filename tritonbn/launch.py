"""The only place that launches Triton kernels: (N, C, S) views, strides, tile shapes, grids and warps.

A batch-norm pass costs one or two launches and no host synchronisation: train forward = statistics +
normalise (one launch when a channel block's rows fit one tile), eval forward = normalise, backward =
reductions + dx (one launch when the statistics are constants or a channel block fits one tile). Every
per-channel (O(C)) quantity is computed inside the kernels. What a launch needs besides its tensors'
addresses -- views, tile shapes, masks, grid, chunking -- is a :class:`Plan`, computed once per
(sizes, strides, dtypes, flags) and cached, so a repeated call does little more than allocate its
outputs and launch.

Every tensor of shape (N, C, *spatial) is described to the kernels as ``N`` samples of ``C`` channels of
``S = prod(spatial)`` positions with three strides. Contiguous, channels_last and channels_last_3d tensors
and most strided views collapse their spatial dimensions into one stride, so the kernels read them in
place. A view whose spatial dimensions cannot be collapsed (for example ``x[..., :5]`` of a wider tensor)
is the one case that is copied, explicitly, by :func:`ncs_view`.

Per-channel operands (means, scales, shifts) are passed as contiguous (C,) tensors in the accumulation
dtype: float64 for float64 inputs, float32 otherwise.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritonbn.kernels.batch_norm import (
    bn_backward_dx_kernel,
    bn_backward_reduce_kernel,
    bn_forward_apply_kernel,
    bn_forward_stats_kernel,
    channel_affine_kernel,
    channel_sums_kernel,
    stats_merge_kernel,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def uses_triton(t: torch.Tensor) -> bool:
    """Whether a tensor on this device is processed by the Triton kernels (else by :mod:`tritonbn.native`)."""
    return t.is_cuda or (INTERPRET and t.device.type == "cpu")


class NCS(NamedTuple):
    """A tensor seen as (N, C, S) with one stride per axis."""

    tensor: torch.Tensor
    N: int
    C: int
    S: int
    stride_n: int
    stride_c: int
    stride_s: int


def _collapse_spatial(t: torch.Tensor) -> tuple[int, int] | None:
    """(S, stride_s) if the spatial dims of ``t`` are addressable with one stride, else None."""
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:], strict=True) if size != 1]
    if not dims:
        return 1, 1
    size, stride_s = dims[-1]
    expected, total = stride_s * size, size
    for size, stride in reversed(dims[:-1]):
        if stride != expected:
            return None
        expected *= size
        total *= size
    return total, stride_s


def ncs_view(t: torch.Tensor) -> NCS:
    """Describe ``t`` (N, C, *spatial) as (N, C, S) with strides, copying only non-collapsible views."""
    collapsed = _collapse_spatial(t)
    if collapsed is None:
        # The spatial dims cannot share one stride: materialise in the tensor's suggested memory format.
        t = t.contiguous(memory_format=_suggested_format(t))
        collapsed = _collapse_spatial(t)
    S, stride_s = collapsed
    return NCS(t, t.shape[0], t.shape[1], S, t.stride(0), t.stride(1), stride_s)


def _empty_output(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty_like(like)`` (same memory format), unless its spatial dims would not collapse to one
    stride (a dense input with permuted spatial dims): then channels_last or contiguous, as torch suggests."""
    out = torch.empty_like(like, dtype=dtype)
    if _collapse_spatial(out) is None:
        out = torch.empty_like(like, dtype=dtype, memory_format=_suggested_format(like))
    return out


def _suggested_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last(_3d) for a 4d/5d tensor whose channels are innermost, else contiguous."""
    if t.dim() in (4, 5) and t.stride(1) == 1 and t.shape[1] > 1:
        return torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# Tile and grid policy. Module attributes so that tests can force the multi-chunk and multi-tile paths.
# The interpreter runs each program in numpy: fewer, larger programs there.
TILE_ELEMENTS = 1 << 14 if INTERPRET else 2048
"""Elements per loop iteration of a program (4 warps: 16 per thread)."""
VECTOR_TILE_SCALE = 1 if INTERPRET else 2
"""The one-tile path gives each thread this many times 16 elements when the tile's accesses are vectorised
and it accumulates in float32: twice as many elements spread its reductions and per-channel work, within
128 registers. (Loops stay at 16 per thread: 32 measured no better there, at up to twice the registers.)"""
SINGLE_MAX_ELEMENTS = 1 << 15 if INTERPRET else 8192
"""A channel block whose rows fit a tile of at most this many elements runs in one program (one launch)."""
TARGET_PROGRAMS = 64 if INTERPRET else 1024
"""Programs aimed at per launch (an H100/H200 holds ~2000 resident 4-warp programs over 132 SMs)."""
MIN_TILES_PER_PROGRAM = 4
"""A program of a multi-tile pass loops over at least this many tiles (when its channel block has them):
its fixed instructions (setup, partials, ticket) are spread over a loop of at least 8192 elements ..."""
MIN_PROGRAMS = 1 if INTERPRET else 256
"""... unless that leaves fewer programs than this (about two per SM of an H100/H200): then shorter loops."""
MERGE_MAX_VALUES = 16384
"""Bound on partials x channel-block width merged by one program (the tail of a reduction)."""
MERGE_BLOCK_VALUES = 4096
"""Partials x channels a merging program loads per step (more partials: a loop)."""
NUM_WARPS = 4
FLAT_BLOCK_C = 256
"""Lanes along the contiguous (channel·position) axis of a FLAT tile (see :func:`elementwise_launch`): each
lane's channel is found once per program, so wide tiles spread that cost."""
FLAT_MAX_PLANE = 1 << 22
"""FLAT tiles need C·S (plus a tile's overhang) below this: the kernels estimate a lane's channel with a
float32 division and correct it once, which is exact below 2^22."""
FLAT_MAX_LANES = 2048
"""Widest tile of a FLAT reduction (float64: half): its program's channels must fit one row of the tile,
16 accumulated values per thread and sum at 4 warps (as the other tiles of the GPU's policy)."""
FLAT_MIN_TILES = 1 if INTERPRET else 8
"""A FLAT reduction's programs loop over at least this many tiles: their per-channel sums of lanes cost a
few hundred instructions per program (sm_90, bfloat16 7 x 7: ~290 in the statistics, ~250 in the backward
sums, beyond the other path's), which the narrower loop (256 x 2048 x 7 x 7: 7.3 instead of 9.9 and 8.3
instead of 13.7 instructions per element at 16 elements per thread) repays from about 7 and 3 tiles per
program."""
MIN_UNMASKED_RUN = 16
"""Channels-outermost tiles take position blocks that divide S (no mask on S) when S has a power-of-two
factor of at least this many positions (a contiguous run of 32 bytes or more per sample) and the tile stays
at least half full."""
MIN_CHANNEL_BLOCK = 16
"""Channels-innermost tiles take the widest power-of-two channel block, down to 64 channels, whose blocks
leave at most C/8 lanes past C (C = 1000: blocks of 64, the last with 40 channels); failing that, a block
that divides C if one of at least this many channels does (C = 96: 3 blocks of 32, not 2 of 64 whose
second is half empty; each block's rows then start on the same 32-byte sector boundaries as the tensor's);
else the widest block, masked (C = 40: one block of 64)."""
_COUNT_EXACT = 1 << 24  # a chunk's element count stays exact in float32


def _channel_block(C: int, cap: int) -> int:
    """Channels per tile when channels are innermost: a power of two up to ``cap``
    (:data:`MIN_CHANNEL_BLOCK`)."""

    def fits(bc: int) -> bool:
        return triton.cdiv(C, bc) * bc * 8 <= 9 * C

    bc = min(_p2(C), cap)
    while bc > 64 and not fits(bc):
        bc //= 2
    if fits(bc):
        return bc
    run = min(C & -C, bc)  # the largest power of two dividing C
    return run if run >= MIN_CHANNEL_BLOCK else bc


def _launch(kernel, grid, args, meta):
    """Launch ``kernel`` on ``grid``: the one call site of every Triton launch (and a seam for counting).

    Triton launches on the current CUDA device's current stream: a tensor on another device is launched
    with that device made current (as torch's own operators do)."""
    x = args[0]
    if x.is_cuda and x.get_device() != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            kernel[grid](*args, **meta)
        return
    kernel[grid](*args, **meta)


class Rows(NamedTuple):
    """Sizes and per-tensor (n, s, c) strides of the tensors of one call, seen as N x S x C."""

    N: int
    S: int
    C: int
    strides: tuple[tuple[int, int, int], ...]


def rows_view(*views: NCS) -> Rows:
    """Common N x S x C geometry of same-shaped views: S absorbs N when every tensor allows it (dense over
    (N, spatial), as channels_last and contiguous (N, C) inputs are), so most tiles are 1-d in rows."""
    v0 = views[0]
    N, S, C = v0.N, v0.S, v0.C
    strides = [(v.stride_n, v.stride_s, v.stride_c) for v in views]
    if S == 1:
        return Rows(1, N, C, tuple((0, sn, sc) for sn, _, sc in strides))
    if N > 1 and all(sn == S * ss for sn, ss, _ in strides):
        return Rows(1, N * S, C, tuple((0, ss, sc) for _, ss, sc in strides))
    return Rows(N, S, C, tuple(strides))


class Geometry(NamedTuple):
    """Tiles, masks and grid of one pass over an N x S x C problem."""

    BLOCK_N: int
    BLOCK_S: int
    BLOCK_C: int
    MASK_N: bool
    MASK_S: bool
    MASK_C: bool
    WIDE: bool
    ONE_S_BLOCK: bool
    SAME_STRIDES: bool
    SB: int  # position blocks
    T: int  # tiles per channel block
    CB: int  # channel blocks
    TPP: int  # tiles per program (chunk)
    P: int  # chunks per channel block
    single: bool
    num_warps: int
    block_p: int
    VEC: int  # a power of two dividing every stride but the contiguous axis's, and that axis's size
    INNER_C: bool  # channels are the contiguous axis of the tiles (else positions, or neither)

    @property
    def grid(self) -> tuple[int, int]:
        """(channel blocks, chunks): a program reads its channel block and chunk without dividing."""
        return (self.CB, self.P)

    def meta(self) -> dict:
        """The constexprs shared by the kernels."""
        return {
            "VEC": self.VEC,
            "INNER_C": self.INNER_C,
            "BLOCK_N": self.BLOCK_N,
            "BLOCK_S": self.BLOCK_S,
            "BLOCK_C": self.BLOCK_C,
            "MASK_N": self.MASK_N,
            "MASK_S": self.MASK_S,
            "MASK_C": self.MASK_C,
            "WIDE": self.WIDE,
            "ONE_S_BLOCK": self.ONE_S_BLOCK,
            "SAME_STRIDES": self.SAME_STRIDES,
            "num_warps": self.num_warps,
        }


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def _vec(rows: Rows, inner: bool) -> int:
    """The largest power of two up to 16 that divides every tensor's strides on the two axes that are not
    the tiles' contiguous one, and the contiguous axis's size: the kernels mark those values multiples of
    it, so that a tile's accesses along the contiguous axis can be 8-16 bytes wide (1: no contiguous axis)."""
    if inner:
        values = [rows.C] + [v for sn, ss, _ in rows.strides for v in (sn, ss)]
    elif all(ss == 1 for _, ss, _ in rows.strides):
        values = [rows.S] + [v for sn, _, sc in rows.strides for v in (sn, sc)]
    else:
        return 1
    g = 0
    for v in values:
        g = math.gcd(g, v)
    if g == 0:
        return 16
    return min(16, g & -g)


def _wide(rows: Rows, bn: int, bs: int, bc: int) -> bool:
    """Whether an element offset (tiles rounded up to whole blocks) can reach 2^31: then int64 offsets."""
    n = triton.cdiv(rows.N, bn) * bn - 1
    s = triton.cdiv(rows.S, bs) * bs - 1
    c = triton.cdiv(rows.C, bc) * bc - 1
    span = max(abs(sn) * n + abs(ss) * s + abs(sc) * c for sn, ss, sc in rows.strides)
    return span >= 2**31 - 1


@functools.lru_cache(maxsize=4096)
def geometry(
    rows: Rows,
    *,
    single_ok: bool = True,
    wide_acc: bool = False,
    flat: bool = False,
    elementwise: int = 0,
    segment: tuple[int, int] | None = None,
) -> Geometry:
    """Tile shape and grid for a pass over ``rows`` (see the module and kernels' docstrings).

    Channels innermost (stride 1, as in channels_last and (N, C) inputs): tiles of up to 64 channels by
    rows, read along C (:func:`_channel_block`); ``elementwise`` (the bytes of the smallest element of an
    elementwise pass, 0 for other passes): up to as many channels as the threads' 16-byte accesses span
    (see :func:`elementwise_launch`). Channels outermost (NC... layouts): one channel by a
    block of samples x positions, read along the positions; S gets its own tile axis, so no element index is
    divided. ``flat``: ``rows`` is a FLAT view (:func:`flat_rows`), tiles up to FLAT_BLOCK_C lanes wide.
    ``segment`` = (channels per program, positions per channel): ``rows`` is a FLAT view read by a
    reduction, whose programs each take the lanes of whole channels (:func:`reduction_launch`; never one tile
    per channel block); the channel blocks count those channels.
    """
    N, S, C = rows.N, rows.S, rows.C
    sn, ss, sc = rows.strides[0]
    inner = sc == 1 and C > 1 and (S == 1 or ss != 1)
    pn, ps, pc = _p2(N), _p2(S), _p2(C)
    same = all(st == rows.strides[0] for st in rows.strides)
    vec = _vec(rows, inner)
    width = 2 if wide_acc else 1  # registers per accumulated value: float64 tiles hold float32's bytes
    if segment is not None:
        # lanes of whole channels: a block of bch channels starts at a multiple of VEC
        bch, cs = segment
        channels = C // cs
        lanes = bch * cs
        vec = min(vec, lanes & -lanes)
        pc, cb_seg, mask_c = _p2(lanes), triton.cdiv(channels, bch), lanes != _p2(lanes) or channels % bch != 0
    if single_ok and segment is None:
        # One program per channel block holding all of its rows: the one-launch path.
        bc = _channel_block(C, 64) if inner else 1
        while inner and bc > min(pc, 8) and pn * ps * bc > SINGLE_MAX_ELEMENTS:
            bc //= 2
        if pn * ps * bc <= SINGLE_MAX_ELEMENTS:
            elems = pn * ps * bc
            per_thread = 16 // width * (VECTOR_TILE_SCALE if vec >= 2 and not wide_acc else 1)
            warps = max(1, min(16, elems // (32 * per_thread)))
            return Geometry(
                pn,
                ps,
                bc,
                pn != N,
                ps != S,
                C % bc != 0,
                _wide(rows, pn, ps, bc),
                True,
                same,
                1,
                1,
                triton.cdiv(C, bc),
                1,
                1,
                True,
                warps,
                1,
                vec,
                inner,
            )
    tile = TILE_ELEMENTS // width
    if flat:
        cap = FLAT_BLOCK_C
    elif elementwise:
        cap = max(64, min(tile, NUM_WARPS * 32 * max(1, 16 // elementwise)))
    else:
        cap = 64
    bc = _channel_block(C, cap) if inner else 1
    if segment is not None:
        bc = pc
    bs = min(ps, max(1, tile // bc))
    bn = min(pn, max(1, tile // (bc * bs)))
    run = min(S & -S, tile)  # the largest power of two dividing S
    if not inner and S % bs != 0 and run >= MIN_UNMASKED_RUN and min(pn, tile // run) * run * 2 >= tile:
        # position blocks that divide S (56 x 56 = 64 x 49, 28 x 28 = 16 x 49): no mask on S, and more samples
        bs, bn = run, min(pn, tile // run)
    SB, NB, CB = triton.cdiv(S, bs), triton.cdiv(N, bn), triton.cdiv(C, bc)
    merged = bc  # channels a merging program holds
    if segment is not None:
        CB, merged = cb_seg, bch
    T = NB * SB
    floor = max(T // MIN_TILES_PER_PROGRAM, triton.cdiv(MIN_PROGRAMS, CB))  # long loops, a full GPU
    merge_cap = T if elementwise else max(1, MERGE_MAX_VALUES // merged)  # (elementwise passes merge nothing)
    P = min(T, max(1, TARGET_PROGRAMS // CB), merge_cap, max(1, floor))
    TPP = max(triton.cdiv(T, P), 1)
    TPP = min(TPP, max(1, _COUNT_EXACT // (bn * bs * (segment[1] if segment else 1))))
    P = triton.cdiv(T, TPP)
    block_p = min(_p2(P), max(1, MERGE_BLOCK_VALUES // width // merged))
    return Geometry(
        bn,
        bs,
        bc,
        N % bn != 0,
        S % bs != 0,
        mask_c if segment is not None else C % bc != 0,
        _wide(rows, bn, bs, bc),
        SB == 1,
        same,
        SB,
        T,
        CB,
        TPP,
        P,
        False,
        NUM_WARPS,
        block_p,
        vec,
        inner,
    )


def flat_rows(rows: Rows) -> Rows | None:
    """``rows`` seen as N samples x one axis of C·S (channel, position) values, when in every tensor that
    plane is contiguous (positions of stride 1, channels of stride S: NC... layouts); else None.

    An elementwise pass (normalise, dx) or a reduction's loop then tiles along that axis: in NCHW with
    S = 7 x 7 each (n, c) plane starts unaligned and a tile along S must be read one element at a time, while
    C·S is aligned whenever C has a power-of-two factor."""
    N, S, C = rows.N, rows.S, rows.C
    if S < 2 or C < 2 or C * S + FLAT_BLOCK_C > FLAT_MAX_PLANE:
        return None
    if any(ss != 1 or sc != S for _, ss, sc in rows.strides):
        return None
    return Rows(1, N, C * S, tuple((0, sn, 1) for sn, _, _ in rows.strides))


def _view_ints(view: Rows, tensors: int) -> tuple[int, ...]:
    """``N, S, C`` of ``view`` and the (n, s, c) strides of ``tensors`` tensors (zeros for those it lacks): the
    leading integer arguments of every batch-norm kernel."""
    strides = (*view.strides, *((0, 0, 0),) * (tensors - len(view.strides)))
    return (view.N, view.S, view.C, *(v for st in strides for v in st))


class Elementwise(NamedTuple):
    """How an elementwise pass (normalise, dx) reads its tensors: the tiles' geometry, the kernels' leading
    integer arguments, and the FLAT and DENSE switches."""

    geo: Geometry
    ints: tuple[int, ...]
    flat: bool
    dense: bool

    def meta(self) -> dict:
        return {**self.geo.meta(), "FLAT": self.flat, "DENSE": self.dense}


def _dense(rows: Rows, geo: Geometry) -> bool:
    """Whether every tile of ``geo`` over ``rows`` is one contiguous block of memory in every tensor: one
    row of channels (channels innermost, BLOCK_S = 1), rows of exactly BLOCK_C channels one after the other,
    or one run of positions. A thread's accesses then sit at constant distances from its first, which the
    kernels address as immediate offsets from one pointer per tensor."""
    if geo.BLOCK_N != 1:
        return False
    if geo.INNER_C:
        return all(sc == 1 and (geo.BLOCK_S == 1 or ss == geo.BLOCK_C) for _, ss, sc in rows.strides)
    return all(ss == 1 for _, ss, _ in rows.strides)  # (channels outermost: BLOCK_C = 1)


def elementwise_launch(rows: Rows, wide_acc: bool, tensors: int, itemsize: int) -> Elementwise:
    """The tiles and leading integer arguments of an elementwise pass over ``rows``.

    The arguments are ``N, S, C, (sn, ss, sc) per tensor, SB, T, TPP, CR, CS``: the tiles' sizes, the strides
    of ``tensors`` tensors (zeros for those ``rows`` lacks), then the per-channel tables' length CR and, with
    FLAT, the positions per channel CS. Channels-innermost tiles are as wide as the threads' 16-byte
    accesses span (512 float32 channels at 4 warps, 1024 in half precision), so a thread still holds one
    access's worth of channels and loads their per-channel values once per program, and with C a power of
    two up to that width every tile is one contiguous block (DENSE, :func:`_dense`; taken for elements of 4
    bytes or more, ``itemsize`` being the smallest of the pass's tensors: a thread's four 16-byte accesses
    per tensor then need one address instead of four, while two accesses of half-precision elements are
    cheaper addressed one by one). FLAT (:func:`flat_rows`) is taken when its accesses are wider than those
    of the N x S x C tiles and each program loops over at least two tiles (its lanes' channels and
    per-channel values are found once per program)."""
    geo = geometry(rows, single_ok=False, wide_acc=wide_acc, elementwise=itemsize)
    view, flat, cs = rows, False, 1
    frows = flat_rows(rows) if geo.VEC < 16 else None
    if frows is not None:
        fgeo = geometry(frows, single_ok=False, wide_acc=wide_acc, flat=True, elementwise=itemsize)
        if fgeo.VEC > geo.VEC and fgeo.TPP >= 2:
            geo, view, flat, cs = fgeo, frows, True, rows.S
    ints = (*_view_ints(view, tensors), geo.SB, geo.T, geo.TPP, rows.C, cs)
    return Elementwise(geo, ints, flat, itemsize >= 4 and _dense(view, geo))


class Reduction(NamedTuple):
    """How a reduction pass (statistics, backward sums) reads its tensors: the tiles' geometry, the view
    they tile, and the kernels' FLAT arguments."""

    geo: Geometry
    rows: Rows  # the view the tiles cover: ``rows`` itself or its FLAT view
    flat: bool
    channels: int  # CR: channels of the per-channel tables
    positions: int  # CS: positions per channel of a FLAT view (1 otherwise)
    block_ch: int  # channels per program

    def ints(self, tensors: int) -> tuple[int, ...]:
        """``N, S, C`` and the (n, s, c) strides of ``tensors`` tensors (zeros for those the view lacks)."""
        return _view_ints(self.rows, tensors)

    def meta(self) -> dict:
        return {**self.geo.meta(), "FLAT": self.flat, "BLOCK_CH": self.block_ch, "BLOCK_CS": _p2(self.positions)}


@functools.lru_cache(maxsize=4096)
def reduction_launch(rows: Rows, single_ok: bool, wide_acc: bool, itemsize: int) -> Reduction:
    """The tiles of a reduction pass over ``rows`` (elements of ``itemsize`` bytes).

    NC... tensors whose positions are not aligned for wide accesses (S = 7 x 7, 14 x 14 in half precision)
    are read along their (channel, position) plane (:func:`flat_rows`), up to 16 bytes per access: each
    program takes the lanes of BLOCK_CH whole channels, the fewest whose lanes start and end on a 16-byte
    boundary, and sums its lanes per channel once (see ``_segment_sum`` in the kernels). Taken on the loop
    path when that widens the accesses and each program loops over at least FLAT_MIN_TILES tiles (the
    per-channel sums of lanes are a fixed cost per program); one tile per channel block keeps its N x S x C
    tile.
    """
    geo = geometry(rows, single_ok=single_ok, wide_acc=wide_acc)
    plain = Reduction(geo, rows, False, rows.C, 1, geo.BLOCK_C)
    frows = flat_rows(rows) if not geo.single and geo.VEC * itemsize < 16 else None
    if frows is None:
        return plain
    vec = min(_vec(frows, True), 16 // itemsize)
    if vec <= geo.VEC:
        return plain
    bch = vec // math.gcd(rows.S, vec)
    lanes = _p2(bch * rows.S)  # a tile's width (the last block's lanes overhang C·S by up to this many)
    if lanes * (2 if wide_acc else 1) > FLAT_MAX_LANES or frows.C + lanes > FLAT_MAX_PLANE:
        return plain
    fgeo = geometry(frows, single_ok=False, wide_acc=wide_acc, segment=(bch, rows.S))
    if fgeo.VEC <= geo.VEC or fgeo.TPP < FLAT_MIN_TILES:
        return plain
    return Reduction(fgeo, frows, True, rows.C, rows.S, bch)


def one_tile(x: torch.Tensor) -> bool:
    """Whether a training forward or backward over ``x`` (and tensors strided like it) runs one program per
    channel block holding all of its rows: one launch per pass, each element of x read once. ``x``: (N, C,
    *spatial) or (N, C), any dtype and layout the kernels take."""
    return geometry(rows_view(ncs_view(x)), wide_acc=x.dtype == torch.float64).single


def _split(v: float) -> tuple[float, float]:
    """``v`` as float32 hi + lo: kernels take float arguments as float32; the pair keeps float64 precision."""
    return _split_cached(float(v))


@functools.lru_cache(maxsize=256)
def _split3(a: float, b: float, c: float) -> tuple[float, float, float, float, float, float]:
    """:func:`_split` of three values at once (a training forward's eps, momentum and unbiasing factor)."""
    return (*_split(a), *_split(b), *_split(c))


@functools.lru_cache(maxsize=256)
def _split_cached(v: float) -> tuple[float, float]:
    hi = struct.unpack("f", struct.pack("f", v))[0] if math.isfinite(v) and abs(v) < 3e38 else v
    lo = v - hi if math.isfinite(v) else 0.0
    lo = struct.unpack("f", struct.pack("f", lo))[0]
    return hi, lo


_LOCKS: dict = {}
_RETIRED_LOCKS: list = []


def _locks(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 tickets for ``n`` channel blocks, one buffer per (device, stream); kernels reset them.

    Launches on one stream run one after the other, so a buffer is never used by two kernels at once.
    While a CUDA graph is being captured each launch gets a fresh zeroed buffer instead (its memset becomes a
    node of the graph), so graphs replayed concurrently never share tickets; a buffer that is outgrown is
    kept alive, since a graph captured earlier may still hold its address.
    """
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.zeros(n, dtype=torch.int32, device=device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = (index, torch.cuda.current_stream(index).cuda_stream)
    else:
        key = (str(device), 0)
    buf = _LOCKS.get(key)
    if buf is None or buf.numel() < n:
        if buf is not None:
            _RETIRED_LOCKS.append(buf)
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _LOCKS[key] = buf
    return buf


# --------------------------------------------------------------------------------- batch-norm passes


def _unit_stride(t: torch.Tensor | None) -> torch.Tensor | None:
    """A (C,) tensor the kernels can index as ``ptr + c`` (1-d: contiguous means stride 1 or at most one
    element)."""
    if t is None or t.is_contiguous():
        return t
    return t.contiguous()


class _Plan(NamedTuple):
    """What a repeated call needs besides its tensors: output strides, workspace rows, launches."""

    out_stride: tuple[int, ...] | None  # None: the input's own strides
    ws_rows: int
    acc: torch.dtype
    lock_blocks: int  # channel blocks needing a ticket (0: none)
    launches: tuple  # (kernel, grid, leading int args, meta)
    extra: tuple  # pass-specific constants (forward: M / (M - 1))


_FORWARD_PLANS: dict = {}
_BACKWARD_PLANS: dict = {}
_PLAN_CACHE_SIZE = 4096


def _new_like(x: torch.Tensor, stride: tuple[int, ...] | None, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor shaped like ``x``: with x's strides (``stride`` None), else ``stride``."""
    if stride is None:
        return torch.empty_like(x) if dtype == x.dtype else torch.empty_like(x, dtype=dtype)
    return torch.empty_strided(x.shape, stride, dtype=dtype, device=x.device)


def _cache(plans: dict, key, plan):
    if len(plans) >= _PLAN_CACHE_SIZE:
        plans.clear()
    plans[key] = plan
    return plan


def clear_plans() -> None:
    """Forget cached tile shapes and launch plans (after changing the tile policy attributes above)."""
    geometry.cache_clear()
    reduction_launch.cache_clear()
    _FORWARD_PLANS.clear()
    _BACKWARD_PLANS.clear()


def _forward_plan(x, residual, training, has_w, has_b, has_running, relu) -> _Plan | None:
    """The launches of a forward over tensors shaped and strided like ``x`` (None: x or the residual needs
    a copy first, not planned)."""
    xv = ncs_view(x)
    if xv.tensor is not x or (residual is not None and ncs_view(residual).tensor is not residual):
        return None
    y = _empty_output(x, x.dtype)
    views = [xv, ncs_view(y)] + ([ncs_view(residual)] if residual is not None else [])
    rows = rows_view(*views)
    acc = acc_dtype(x.dtype)
    flags = {"HAS_W": has_w, "HAS_B": has_b, "HAS_RES": residual is not None, "RELU": relu, "ACC": _tl_acc(acc)}
    if not training:
        ew = elementwise_launch(rows, acc == torch.float64, 3, x.element_size())
        meta = {**ew.meta(), **flags, "EVAL": True}
        launch = (bn_forward_apply_kernel, ew.geo.grid, ew.ints, meta)
        return _Plan(None if y.stride() == x.stride() else y.stride(), 4, acc, 0, (launch,), ())
    red = reduction_launch(rows, True, acc == torch.float64, x.element_size())
    geo = red.geo
    M = rows.N * rows.S
    meta = {**red.meta(), **flags, "SINGLE": geo.single, "HAS_RUNNING": has_running, "BLOCK_P": geo.block_p}
    args = (*red.ints(3), geo.SB, geo.T, geo.TPP, geo.P, M, red.channels, red.positions)
    launches = [(bn_forward_stats_kernel, geo.grid, args, meta)]
    if not geo.single:
        ew = elementwise_launch(rows, acc == torch.float64, 3, x.element_size())
        meta2 = {**ew.meta(), **flags, "EVAL": False}
        launches.append((bn_forward_apply_kernel, ew.geo.grid, ew.ints, meta2))
    ws_rows = 4 if geo.single else 4 + 3 * geo.P
    out_stride = None if y.stride() == x.stride() else y.stride()
    return _Plan(
        out_stride, ws_rows, acc, 0 if geo.single else geo.CB, tuple(launches), (M / (M - 1) if M > 1 else 1.0,)
    )


def bn_forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = act((x - mean)·weight·invstd + bias + residual)`` and the per-channel statistics.

    ``x`` (N, C, *spatial), non-empty, any dtype the kernels support; ``weight``/``bias``/running
    statistics (C,) or None; ``residual`` like ``x`` or None; ``act`` is ReLU with ``relu``.
    Training normalises with the batch mean and biased variance and, when the running statistics are
    given, updates them in place (momentum, unbiased variance, in their own dtype); eval normalises with
    the running statistics. Returns ``(y, stats)``: y in x's dtype and memory format, and ``stats`` of
    shape (≥ 4, C) in the accumulation dtype whose rows 0-3 are mean, invstd = 1/sqrt(var + eps),
    weight·invstd and the (batch: biased; eval: running) variance. One launch in eval and when a channel
    block fits one tile, otherwise two; a repeated call reuses its cached plan.
    """
    has_running = running_mean is not None and running_var is not None
    key = (
        x.shape,
        x.stride(),
        x.dtype,
        training,
        weight is None,
        bias is None,
        has_running,
        None if residual is None else residual.stride(),
        relu,
    )
    plan = _FORWARD_PLANS.get(key)
    if plan is None:
        plan = _forward_plan(x, residual, training, weight is not None, bias is not None, has_running, relu)
        if plan is None:  # a view that must be copied first (rare): plan the copy
            x = ncs_view(x).tensor
            residual = ncs_view(residual).tensor if residual is not None else None
            plan = _forward_plan(x, residual, training, weight is not None, bias is not None, has_running, relu)
        else:
            _cache(_FORWARD_PLANS, key, plan)
    # (C,) tensors the kernels index as ptr + c (a 1-d tensor is contiguous iff its stride is 1 or it has
    # at most one element)
    if (
        (weight is not None and not weight.is_contiguous())
        or (bias is not None and not bias.is_contiguous())
        or (has_running and not (running_mean.is_contiguous() and running_var.is_contiguous()))
    ):
        return _strided_params_forward(
            x, weight, bias, running_mean, running_var, training, momentum, eps, residual, relu
        )
    y = _new_like(x, plan.out_stride, x.dtype)
    stats = torch.empty(plan.ws_rows, x.shape[1], dtype=plan.acc, device=x.device)  # (sizes as varargs: faster)
    kernel, grid, ints, meta = plan.launches[0]
    if not training:
        eps_hi, eps_lo = _split(eps)
        _launch(
            kernel, grid, (x, y, residual, weight, bias, running_mean, running_var, stats, *ints, eps_hi, eps_lo), meta
        )
        return y, stats
    locks = _locks(x.device, plan.lock_blocks) if plan.lock_blocks else None
    eps_hi, eps_lo, mom_hi, mom_lo, unb_hi, unb_lo = _split3(eps, momentum, plan.extra[0])
    _launch(
        kernel,
        grid,
        (
            x,
            y,
            residual,
            weight,
            bias,
            running_mean,
            running_var,
            stats,
            locks,
            *ints,
            eps_hi,
            eps_lo,
            mom_hi,
            mom_lo,
            unb_hi,
            unb_lo,
        ),
        meta,
    )
    if len(plan.launches) > 1:
        kernel, grid, ints, meta = plan.launches[1]
        _launch(kernel, grid, (x, y, residual, weight, bias, None, None, stats, *ints, eps_hi, eps_lo), meta)
    return y, stats


def _strided_params_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, residual, relu):
    """bn_forward for (C,) parameters or buffers that are strided views (rare): unit-stride copies, with
    the running statistics written back."""
    rm, rv = _unit_stride(running_mean), _unit_stride(running_var)
    out = bn_forward(x, _unit_stride(weight), _unit_stride(bias), rm, rv, training, momentum, eps, residual, relu)
    if training:
        for buf, copy in ((running_mean, rm), (running_var, rv)):
            if buf is not None and copy is not buf:
                buf.copy_(copy)
    return out


def bn_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    *,
    stats_grad: bool,
    need_input: bool = True,
    need_weight: bool = True,
    need_bias: bool = True,
    relu_output: torch.Tensor | None = None,
    need_residual: bool = False,
    bias_dtype: torch.dtype | None = None,
    coef_only: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The fused first-order backward: ``(dx, dweight, dbias, dresidual, coef)``.

    ``stats`` is the (≥ 2, C) statistics tensor of the forward (rows: mean, invstd). With ``relu_output`` (the y of a
    fused ReLU) every dy is zeroed where y <= 0 (torch's ReLU backward: NaN passes); ``need_residual`` also returns
    that gated dy, the residual's gradient (without ``relu_output``: ``grad_output`` itself, no pass). ``coef``
    (5, C) holds (scale, beta, gamma, Σdy, Σdy·(x - mean)) when a reduction ran (else None). ``coef_only`` runs the
    reduction alone (SyncBatchNorm exchanges Σdy and Σdy·(x - mean) before dx). See
    :func:`tritonbn.autograd.backward_kernels` for the formulas.
    """
    return backward_passes(
        grad_output,
        x,
        weight,
        stats,
        stats_grad,
        need_input,
        need_weight,
        need_bias,
        relu_output,
        need_residual,
        bias_dtype,
        coef_only,
    )


def backward_passes(
    grad_output,
    x,
    weight,
    stats,
    stats_grad,
    need_input,
    need_weight,
    need_bias,
    gate,
    need_residual,
    bias_dtype,
    coef_only,
):
    """:func:`bn_backward` with positional arguments (the autograd backward's call, ~2 µs less host time)."""
    # Without a ReLU the residual's gradient is dy itself: nothing to compute.
    residual_is_dy = need_residual and gate is None and not coef_only
    need_residual = need_residual and not residual_is_dy
    need_weight = need_weight and weight is not None
    weight = _unit_stride(weight)
    key = (
        grad_output.shape,
        grad_output.stride(),
        x.stride(),
        grad_output.dtype,
        x.dtype,
        None if gate is None else gate.stride(),
        stats_grad,
        need_input,
        need_weight,
        need_bias,
        need_residual,
        coef_only,
        weight is None,
    )
    plan = _BACKWARD_PLANS.get(key)
    if plan is None:
        args = (stats_grad, need_input, need_weight, need_bias, need_residual, coef_only, weight is not None)
        plan = _backward_plan(grad_output, x, gate, *args)
        if plan is None:  # views that must be copied first (rare)
            grad_output, x = ncs_view(grad_output).tensor, ncs_view(x).tensor
            gate = ncs_view(gate).tensor if gate is not None else None
            plan = _backward_plan(grad_output, x, gate, *args)
        else:
            _cache(_BACKWARD_PLANS, key, plan)
    C = x.shape[1]
    device = x.device
    dx = dres = None
    if not coef_only:
        if need_input:
            dx = _new_like(x, plan.out_stride, x.dtype)
        if need_residual:
            dres = _new_like(x, plan.out_stride, grad_output.dtype)
    # (weight is a (C,) unit-stride tensor: empty_like is the cheapest allocation of its kind)
    dw = torch.empty_like(weight) if need_weight else None
    db = None
    if need_bias:
        db_dtype = bias_dtype or (weight.dtype if weight is not None else plan.acc)
        if weight is not None and db_dtype == weight.dtype:
            db = torch.empty_like(weight)
        else:
            db = torch.empty(C, dtype=db_dtype, device=device)
    coef = torch.empty(plan.ws_rows, C, dtype=plan.acc, device=device) if plan.ws_rows else None
    for kernel, grid, ints, meta in plan.launches:
        if kernel is bn_backward_reduce_kernel:
            locks = _locks(device, plan.lock_blocks) if plan.lock_blocks else None
            _launch(kernel, grid, (grad_output, x, gate, dx, dres, weight, stats, dw, db, coef, locks, *ints), meta)
        else:
            _launch(kernel, grid, (grad_output, x, gate, dx, dres, weight, stats, coef, *ints), meta)
    return dx, dw, db, grad_output if residual_is_dy else dres, coef


def _backward_plan(dy, x, gate, stats_grad, need_input, need_weight, need_bias, need_residual, coef_only, has_w):
    """The launches of a backward over tensors shaped and strided like ``dy``, ``x``, ``gate`` (None: one
    of them needs a copy first, not planned)."""
    gv, xv = ncs_view(dy), ncs_view(x)
    yv = ncs_view(gate) if gate is not None else xv
    if gv.tensor is not dy or xv.tensor is not x or (gate is not None and yv.tensor is not gate):
        return None
    writes = (need_input or need_residual) and not coef_only
    out = _empty_output(x, x.dtype) if writes else None
    dv = ncs_view(out) if out is not None else xv
    rows = rows_view(gv, xv, yv, dv)
    acc = acc_dtype(x.dtype)
    flags = {"GATE": gate is not None, "HAS_W": has_w, "ACC": _tl_acc(acc)}
    need_sums = need_weight or need_bias or (need_input and stats_grad) or coef_only
    launches = []
    ws_rows = lock_blocks = 0
    rest = writes
    if need_sums:
        red = reduction_launch(rows, not coef_only, acc == torch.float64, max(dy.element_size(), x.element_size()))
        geo = red.geo
        # dx (and dres) in the reduction pass: from the registers (one tile), or dx = scale·g (constant stats)
        in_pass = geo.single or not stats_grad
        meta = {
            **red.meta(),
            **flags,
            "SINGLE": geo.single,
            "STATS_GRAD": stats_grad,
            "WRITE_DX": need_input and writes and in_pass,
            "WRITE_DRES": need_residual and writes and in_pass,
            "NEED_XMU": need_weight or stats_grad or coef_only,
            "NEED_DW": need_weight,
            "NEED_DB": need_bias,
            "WRITE_COEF": not geo.single or coef_only,
            "BLOCK_P": geo.block_p,
        }
        args = (*red.ints(4), geo.SB, geo.T, geo.TPP, geo.P, rows.N * rows.S, red.channels, red.positions)
        launches.append((bn_backward_reduce_kernel, geo.grid, args, meta))
        ws_rows = 0 if geo.single and not coef_only else 5 + (0 if geo.single else 2 * geo.P)
        lock_blocks = 0 if geo.single else geo.CB
        rest = writes and not in_pass
    if rest:
        ew = elementwise_launch(rows, acc == torch.float64, 4, min(dy.element_size(), x.element_size()))
        meta = {
            **ew.meta(),
            **flags,
            "STATS_GRAD": stats_grad and need_sums,
            "WRITE_DX": need_input,
            "WRITE_DRES": need_residual,
        }
        launches.append((bn_backward_dx_kernel, ew.geo.grid, ew.ints, meta))
    out_stride = None if out is None or out.stride() == x.stride() else out.stride()
    return _Plan(out_stride, ws_rows, acc, lock_blocks, tuple(launches), ())


def bn_backward_dx(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    stats: torch.Tensor,
    coef: torch.Tensor,
    *,
    relu_output: torch.Tensor | None = None,
    need_residual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(dx, dresidual)``: dx = coef[0]·g + coef[1]·(x - stats[0]) + coef[2] with g = dy (zeroed where
    ``relu_output`` <= 0), the input gradient from given coefficients, in one launch (SyncBatchNorm's, after
    its all_reduce). With ``need_residual`` the same pass also writes g, a fused add + ReLU's residual
    gradient (dy itself without ``relu_output``: no write); else ``dresidual`` is None."""
    gv, xv = ncs_view(grad_output), ncs_view(x)
    dx = _empty_output(xv.tensor, x.dtype)
    write_dres = need_residual and relu_output is not None
    dres = torch.empty_like(dx, dtype=grad_output.dtype) if write_dres else None
    yv = ncs_view(relu_output) if relu_output is not None else xv
    rows = rows_view(gv, xv, yv, ncs_view(dx))
    ew = elementwise_launch(rows, x.dtype == torch.float64, 4, min(grad_output.element_size(), x.element_size()))
    geo, ints = ew.geo, ew.ints
    meta = {
        **ew.meta(),
        "STATS_GRAD": True,
        "GATE": relu_output is not None,
        "WRITE_DX": True,
        "WRITE_DRES": write_dres,
        "HAS_W": False,
        "ACC": _tl_acc(acc_dtype(x.dtype)),
    }
    _launch(
        bn_backward_dx_kernel,
        geo.grid,
        (
            gv.tensor,
            xv.tensor,
            yv.tensor if relu_output is not None else None,
            dx,
            dres,
            None,
            stats.contiguous(),
            coef.contiguous(),
            *ints,
        ),
        meta,
    )
    if need_residual and relu_output is None:
        dres = grad_output
    return dx, dres


def bn_apply(
    x: torch.Tensor,
    stats: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``y = act((x - stats[0])·stats[2] + bias + residual)``: the normalisation with given statistics (mean
    and scale rows of a (≥ 3, C) accumulation-dtype tensor), one launch; ``act`` is a ReLU with ``relu``
    (NaN kept). SyncBatchNorm normalises with its group's statistics. ``residual`` has x's shape and dtype."""
    bias = _unit_stride(bias)
    xv = ncs_view(x)
    if residual is not None:
        residual = ncs_view(residual).tensor
    y = _empty_output(xv.tensor, x.dtype)
    views = [xv, ncs_view(y)] + ([ncs_view(residual)] if residual is not None else [])
    rows = rows_view(*views)
    ew = elementwise_launch(rows, x.dtype == torch.float64, 3, x.element_size())
    geo, ints = ew.geo, ew.ints
    meta = ew.meta()
    meta.update(
        EVAL=False,
        HAS_W=False,
        HAS_B=bias is not None,
        HAS_RES=residual is not None,
        RELU=relu,
        ACC=_tl_acc(acc_dtype(x.dtype)),
    )
    _launch(
        bn_forward_apply_kernel,
        geo.grid,
        (
            xv.tensor,
            y,
            residual,
            None,
            bias,
            None,
            None,
            stats.contiguous(),
            *ints,
            0.0,
            0.0,
        ),
        meta,
    )
    return y


def batch_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel batch mean, biased variance and 1/sqrt(var + eps) of a non-empty ``x`` (N, C, *spatial).

    One launch of the statistics kernel; nothing else is written (``y`` is computed and dropped only on the
    one-tile path, where it costs no extra pass).
    """
    _, stats = bn_forward(x, None, None, None, None, True, 0.0, eps)
    return stats[0], stats[3], stats[1]


def merge_stats(
    mean_p: torch.Tensor,
    m2_p: torch.Tensor,
    count_p: torch.Tensor,
    total: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge (P, C) partial means and M2s with (P,) counts (zeros allowed; the first one non-zero) into
    per-channel mean, biased variance and invstd (Chan's formula): how SyncBatchNorm merges its ranks."""
    P, C = mean_p.shape
    acc = mean_p.dtype
    mean = torch.empty(C, dtype=acc, device=mean_p.device)
    var = torch.empty_like(mean)
    block_c = min(triton.next_power_of_2(C), 64)
    block_p = max(1, min(triton.next_power_of_2(P), 4096 // block_c))
    _launch(
        stats_merge_kernel,
        (triton.cdiv(C, block_c),),
        (mean_p.contiguous(), m2_p.contiguous(), count_p.contiguous(), mean, var, P, total, C),
        {"BLOCK_P": block_p, "BLOCK_C": block_c, "ACC": _tl_acc(acc)},
    )
    # O(C), in torch: IEEE sqrt and division in the accumulation dtype.
    invstd = 1.0 / torch.sqrt(var + eps)
    return mean, var, invstd


# ---------------------------------------------------------------------------- generic primitives


def _per_channel(t: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.detach().to(acc).contiguous()


def channel_sums(
    u: torch.Tensor,
    mu_u: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    mu_v: torch.Tensor | None = None,
    *,
    want_sum_u: bool = False,
    gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-channel ``Σ (u - mu_u)`` (if ``want_sum_u``) and ``Σ (u - mu_u)·(v - mu_v)`` (if ``v`` is given).

    Sums run over N and the spatial dims in the accumulation dtype; ``mu_*`` are per-channel (C,) centres.
    With ``gate``, ``u - mu_u`` counts only where not ``gate <= 0`` (a fused ReLU's mask). Each program sums a
    chunk of tiles; a torch sum finishes the per-chunk partials (the primitives of the double backward).
    """
    acc = acc_dtype(torch.promote_types(u.dtype, v.dtype) if v is not None else u.dtype)
    uv = ncs_view(u)
    vv = ncs_view(v) if v is not None else uv
    gv = ncs_view(gate) if gate is not None else uv
    rows = rows_view(uv, vv, gv)
    C = rows.C
    if rows.N * rows.S * C == 0:  # nothing to sum (and no tiles to plan)
        zero = torch.zeros(C, dtype=acc, device=u.device)
        return (zero if want_sum_u else None, zero.clone() if v is not None else None)
    # (float64 keeps full-size tiles here: within 128 registers, and half the instructions per element)
    geo = geometry(rows, single_ok=False)
    sum_u_p = torch.empty((geo.P, C), dtype=acc, device=u.device) if want_sum_u else None
    sum_uv_p = torch.empty((geo.P, C), dtype=acc, device=u.device) if v is not None else None
    mu_u, mu_v = _per_channel(mu_u, acc), _per_channel(mu_v, acc)
    meta = geo.meta()
    meta.update(
        HAS_GATE=gate is not None,
        HAS_MU_U=mu_u is not None,
        HAS_V=v is not None,
        HAS_MU_V=mu_v is not None,
        WANT_SUM_U=want_sum_u,
        ACC=_tl_acc(acc),
    )
    _launch(
        channel_sums_kernel,
        geo.grid,
        (
            uv.tensor,
            mu_u,
            vv.tensor,
            mu_v,
            sum_u_p,
            sum_uv_p,
            gv.tensor,
            rows.N,
            rows.S,
            C,
            *rows.strides[0],
            *rows.strides[1],
            *rows.strides[2],
            geo.SB,
            geo.T,
            geo.TPP,
        ),
        meta,
    )
    # O(C * chunks) finishing sum over the partials (deterministic; no atomics).
    return (
        sum_u_p.sum(0) if sum_u_p is not None else None,
        sum_uv_p.sum(0) if sum_uv_p is not None else None,
    )


def channel_affine(
    like: torch.Tensor,
    t1: torch.Tensor | None = None,
    mu1: torch.Tensor | None = None,
    a1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
    mu2: torch.Tensor | None = None,
    a2: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
    relu: bool = False,
    gate: torch.Tensor | None = None,
    gate_output: bool = False,
) -> torch.Tensor:
    """``a1[c]·(t1 - mu1[c]) + a2[c]·(t2 - mu2[c]) + g[c]``, shaped and laid out like ``like``.

    Any term may be omitted (a missing ``mu`` is 0). The output is ``torch.empty_like(like)``
    (same memory format) in ``dtype`` (default ``like.dtype``). ``relu`` clamps the result at 0;
    ``gate`` zeroes ``t1`` (or, with ``gate_output``, the result) where ``gate <= 0``.
    """
    dtype = dtype or like.dtype
    out = _empty_output(like, dtype)
    if out.numel() == 0:
        return out
    acc = acc_dtype(dtype if t1 is None else torch.promote_types(dtype, t1.dtype))
    ov = ncs_view(out)
    v1 = ncs_view(t1) if t1 is not None else ov
    v2 = ncs_view(t2) if t2 is not None else ov
    gv = ncs_view(gate) if gate is not None else ov
    rows = rows_view(ov, v1, v2, gv)
    geo = geometry(rows, single_ok=False)  # (float64: full-size tiles, as in channel_sums)
    meta = geo.meta()
    meta.update(
        GATE=0 if gate is None else 2 if gate_output else 1,
        RELU=relu,
        HAS_T1=t1 is not None,
        HAS_MU1=mu1 is not None,
        HAS_T2=t2 is not None,
        HAS_MU2=mu2 is not None,
        HAS_G=g is not None,
        ACC=_tl_acc(acc),
    )
    _launch(
        channel_affine_kernel,
        geo.grid,
        (
            out,
            v1.tensor,
            _per_channel(mu1, acc),
            _per_channel(a1, acc),
            v2.tensor,
            _per_channel(mu2, acc),
            _per_channel(a2, acc),
            _per_channel(g, acc),
            gv.tensor,
            rows.N,
            rows.S,
            rows.C,
            *rows.strides[0],
            *rows.strides[1],
            *rows.strides[2],
            *rows.strides[3],
            geo.SB,
            geo.T,
            geo.TPP,
        ),
        meta,
    )
    return out
