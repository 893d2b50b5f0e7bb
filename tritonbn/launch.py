"""The only place that launches Triton kernels: (N, C, S) views, strides, tile shapes, grids and warps.

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
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritonbn.kernels.batch_norm import (
    channel_affine_kernel,
    channel_sums_kernel,
    stats_merge_kernel,
    stats_partial_kernel,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


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


class Tiles(NamedTuple):
    BLOCK_R: int
    BLOCK_C: int
    num_warps: int


@functools.lru_cache(maxsize=1024)
def _tiles(R: int, C: int, channels_inner: bool) -> Tiles:
    """Tile shape for an (R rows x C channels) problem.

    Channels outermost (NC... layouts): a tall column of one channel, read contiguously along S.
    Channels innermost (channels_last, (N, C) inputs): a row-block x channel-block tile, read
    contiguously along C. The interpreter runs each program in numpy, so it gets fewer, larger tiles.
    """
    max_elems = 1 << 14 if INTERPRET else 4096
    if channels_inner and C > 1:
        block_c = min(triton.next_power_of_2(C), 64)
        block_r = max(1, min(triton.next_power_of_2(R), max_elems // block_c))
    else:
        block_c = 1
        block_r = min(triton.next_power_of_2(R), max_elems)
    num_warps = 8 if block_r * block_c >= 4096 else 4
    return Tiles(block_r, block_c, num_warps)


def _tiles_for(view: NCS) -> Tiles:
    R = view.N * view.S
    channels_inner = view.stride_c == 1 and (view.S == 1 or view.stride_s != 1)
    return _tiles(R, view.C, channels_inner)


def _row_blocks(R: int, tiles: Tiles) -> int:
    return triton.cdiv(R, tiles.BLOCK_R)


def _grid(R: int, C: int, tiles: Tiles) -> tuple[int]:
    """A flat grid of (row-block, channel-block) tiles; the kernels unflatten it (see ``_tile``)."""
    return (_row_blocks(R, tiles) * triton.cdiv(C, tiles.BLOCK_C),)


def _per_channel(t: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.detach().to(acc).contiguous()


def batch_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel batch mean, biased variance and 1/sqrt(var + eps) of ``x`` (N, C, *spatial).

    Pass 1 writes (mean, M2) partials per (row-block, channel); pass 2 merges them with Chan's formula.
    """
    view = ncs_view(x)
    R, C = view.N * view.S, view.C
    acc = acc_dtype(x.dtype)
    tiles = _tiles_for(view)
    grid = _grid(R, C, tiles)
    P = _row_blocks(R, tiles)
    mean_p = torch.empty((P, C), dtype=acc, device=x.device)
    m2_p = torch.empty((P, C), dtype=acc, device=x.device)
    stats_partial_kernel[grid](
        view.tensor,
        mean_p,
        m2_p,
        R,
        C,
        view.S,
        view.stride_n,
        view.stride_c,
        view.stride_s,
        BLOCK_R=tiles.BLOCK_R,
        BLOCK_C=tiles.BLOCK_C,
        ACC=_tl_acc(acc),
        num_warps=tiles.num_warps,
    )
    return merge_stats(mean_p, m2_p, None, R, eps, rows_per_partial=tiles.BLOCK_R)


def merge_stats(
    mean_p: torch.Tensor,
    m2_p: torch.Tensor,
    count_p: torch.Tensor | None,
    total: int,
    eps: float,
    *,
    rows_per_partial: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge (P, C) partial means and M2s into per-channel mean, biased variance and invstd (Chan's formula).

    ``count_p`` (P,) gives each partial's element count (zeros allowed); without it partial p covers
    ``rows_per_partial`` elements, the last one the remainder of ``total``.
    """
    P, C = mean_p.shape
    acc = mean_p.dtype
    mean = torch.empty(C, dtype=acc, device=mean_p.device)
    var = torch.empty_like(mean)
    block_c = min(triton.next_power_of_2(C), 64)
    block_p = max(1, min(triton.next_power_of_2(P), 4096 // block_c))
    stats_merge_kernel[(triton.cdiv(C, block_c),)](
        mean_p.contiguous(),
        m2_p.contiguous(),
        count_p.contiguous() if count_p is not None else None,
        mean,
        var,
        P,
        total,
        C,
        HAS_COUNTS=count_p is not None,
        ROWS_PER_PARTIAL=rows_per_partial,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        ACC=_tl_acc(acc),
    )
    # O(C), in torch: IEEE sqrt and division, and eps in the accumulation dtype (a float kernel argument
    # would be passed as float32 on CUDA even for float64 inputs).
    invstd = 1.0 / torch.sqrt(var + eps)
    return mean, var, invstd


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
    With ``gate``, ``u - mu_u`` counts only where ``gate > 0`` (a fused ReLU's mask).
    """
    acc = acc_dtype(torch.promote_types(u.dtype, v.dtype) if v is not None else u.dtype)
    uv = ncs_view(u)
    vv = ncs_view(v) if v is not None else uv
    gv = ncs_view(gate) if gate is not None else uv
    R, C = uv.N * uv.S, uv.C
    tiles = _tiles_for(uv)
    grid = _grid(R, C, tiles)
    P = _row_blocks(R, tiles)
    sum_u_p = torch.empty((P, C), dtype=acc, device=u.device) if want_sum_u else None
    sum_uv_p = torch.empty((P, C), dtype=acc, device=u.device) if v is not None else None
    mu_u, mu_v = _per_channel(mu_u, acc), _per_channel(mu_v, acc)
    channel_sums_kernel[grid](
        uv.tensor,
        mu_u,
        vv.tensor,
        mu_v,
        sum_u_p,
        sum_uv_p,
        gv.tensor,
        R,
        C,
        uv.S,
        uv.stride_n,
        uv.stride_c,
        uv.stride_s,
        vv.stride_n,
        vv.stride_c,
        vv.stride_s,
        gv.stride_n,
        gv.stride_c,
        gv.stride_s,
        HAS_GATE=gate is not None,
        HAS_MU_U=mu_u is not None,
        HAS_V=v is not None,
        HAS_MU_V=mu_v is not None,
        WANT_SUM_U=want_sum_u,
        BLOCK_R=tiles.BLOCK_R,
        BLOCK_C=tiles.BLOCK_C,
        ACC=_tl_acc(acc),
        num_warps=tiles.num_warps,
    )
    # O(C * row-blocks) finishing sum over the partials (deterministic; no atomics).
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
    R, C = ov.N * ov.S, ov.C
    tiles = _tiles_for(ov)
    channel_affine_kernel[_grid(R, C, tiles)](
        out,
        v1.tensor,
        _per_channel(mu1, acc),
        _per_channel(a1, acc),
        v2.tensor,
        _per_channel(mu2, acc),
        _per_channel(a2, acc),
        _per_channel(g, acc),
        gv.tensor,
        R,
        C,
        ov.S,
        ov.stride_n,
        ov.stride_c,
        ov.stride_s,
        v1.stride_n,
        v1.stride_c,
        v1.stride_s,
        v2.stride_n,
        v2.stride_c,
        v2.stride_s,
        gv.stride_n,
        gv.stride_c,
        gv.stride_s,
        GATE=0 if gate is None else 2 if gate_output else 1,
        RELU=relu,
        HAS_T1=t1 is not None,
        HAS_MU1=mu1 is not None,
        HAS_T2=t2 is not None,
        HAS_MU2=mu2 is not None,
        HAS_G=g is not None,
        BLOCK_R=tiles.BLOCK_R,
        BLOCK_C=tiles.BLOCK_C,
        ACC=_tl_acc(acc),
        num_warps=tiles.num_warps,
    )
    return out
