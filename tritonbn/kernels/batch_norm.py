"""Triton kernels for batch normalization.

Addressing
----------
Every kernel sees a tensor as ``N`` samples x ``S`` positions x ``C`` channels with one stride per axis
(the launcher collapses the spatial dims, and folds N into S when the two are one dense axis, as in
channels_last and (N, C) inputs). A program works on 3-d tiles ``BLOCK_N x BLOCK_S x BLOCK_C``: sample,
position and channel each have their own tile axis, so no element index is ever divided (a flat row index
``r`` would need ``r // S`` per element). A tile's offset and its lanes' offsets are int32, added in
32 bits before the pointer (one multiply-add per access), unless some element of the pass lies 2^31 or
more elements from the tensor's start (``WIDE``, blocks rounded up): then int64, so tensors beyond 2^31
elements work. A tile that is one contiguous block (``DENSE``) adds its lanes' compile-time offsets to
the 64-bit tile pointer instead, as immediate offsets from one address per thread.
``MASK_N/MASK_S/MASK_C`` are set only for the axes a tile can overhang: a tensor whose sizes are multiples
of the tile runs without masks, and unit strides are specialised by Triton, so contiguous axes get vector
loads wherever alignment allows.

The elementwise kernels (normalise, dx) and the reductions' loops also take a FLAT view: in NC... layouts
every sample's (channel, position) plane is one contiguous axis of C·S values, aligned wherever C·S has a
power-of-two factor even when S itself is odd (7 x 7), so the launcher may pass 1 x N x C·S (the samples
on the position axis, the flat axis on the channel axis); each lane then finds its channel
(:func:`_lane_channels`) and gathers its per-channel values once per program, and a reduction's program,
which takes the lanes of whole channels, sums the lanes of each channel once (:func:`_segment_sum`).

Programs and passes
-------------------
Programs cover (channel block, chunk) pairs on a 2-d grid (program ids 0 and 1); a chunk is
``TPP`` consecutive tiles of the channel block's ``T`` tiles. The fast path of a training step is:

* forward: :func:`bn_forward_stats_kernel` (per-chunk statistics; the last program of each channel block
  merges them, computes invstd and scale, and updates the running statistics) then
  :func:`bn_forward_apply_kernel` (normalise, optional residual and ReLU); when a channel block's rows fit
  one tile (``SINGLE``) the first kernel normalises its registers and the second is not launched;
* eval forward: :func:`bn_forward_apply_kernel` alone (``EVAL``: invstd and scale from the running
  statistics, per program);
* backward: :func:`bn_backward_reduce_kernel` (Σdy and Σdy·(x - mean); the last program writes dweight,
  dbias and the dx coefficients) then :func:`bn_backward_dx_kernel`; one launch when the statistics are
  constants (dx is written in the reduction pass) or a channel block fits one tile.

"The last program" is found with an int32 ticket per channel block (``tl.atomic_add`` with acq_rel
semantics after a CTA barrier, as CUTLASS's semaphore does). The ticket only elects who merges; the merge
itself reads the partials in a fixed order, so results are bit-for-bit deterministic. The ticket is reset
by the program that takes it, so the launcher keeps one zeroed ticket buffer per device and stream.

Arithmetic per element
----------------------
The elementwise passes normalise centred, ``(x - mean)·scale + shift`` (an add and a fused multiply-add
per element), in every dtype: the uncentred ``x·scale + (shift - mean·scale)`` would save the add but
carries the rounding of ``mean·scale``, which is no longer small next to the output when var << eps (a
constant channel of a large value would not give exactly ``shift``, as torch does, and an eval with a
running variance near 0 would lose the result). ReLU is the NaN-propagating maximum (one ``max.NaN``
instruction for float32 and half precision on sm_80 and newer; a select in float64): NaN stays NaN, and
in float32 -0.0 becomes +0.0 (torch.relu keeps -0.0; both compare equal).

The generic :func:`channel_sums_kernel` and :func:`channel_affine_kernel` (the same grid of chunks) serve
the differentiable primitives of the double backward.
"""

# Constexpr branches stay statements (one per specialisation), not conditional expressions.
# ruff: noqa: SIM108

import os

import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _device(fn):
    """``@triton.jit`` for a device helper. In Triton's interpreter a plain function: the same code on the
    interpreter's patched ``triton.language``, without the interpreter re-patching the language module
    on every nested call (which costs milliseconds per call)."""
    return fn if _INTERPRET else triton.jit(fn)


# ---------------------------------------------------------------------------------------------- helpers


@_device
def _rel_offsets(
    stride_n,
    stride_s,
    stride_c,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Offsets of a tile's elements relative to its first element, (BLOCK_N·BLOCK_S, BLOCK_C).

    Tile row r is sample r // BLOCK_S, position r % BLOCK_S: powers of two, so a shift and a mask, computed
    once per program (never per element per iteration).
    """
    oc = tl.arange(0, BLOCK_C)
    if WIDE:
        oc = oc.to(tl.int64)
    if BLOCK_N == 1:
        os_ = tl.arange(0, BLOCK_S)
        if WIDE:
            os_ = os_.to(tl.int64)
        rows = os_ * stride_s
    else:
        r = tl.arange(0, BLOCK_N * BLOCK_S)
        on = r // BLOCK_S
        os_ = r % BLOCK_S
        if WIDE:
            on = on.to(tl.int64)
            os_ = os_.to(tl.int64)
        rows = on * stride_n + os_ * stride_s
    if BLOCK_C == 1:
        return rows[:, None]
    return rows[:, None] + (oc * stride_c)[None, :]


@_device
def _tile_mask(
    n0,
    s0,
    c0,
    N,
    S,
    C,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
):
    """In-bounds mask of the tile at (n0, s0, c0); only the axes that can overhang are tested."""
    r = tl.arange(0, BLOCK_N * BLOCK_S)
    m = tl.full([BLOCK_N * BLOCK_S, BLOCK_C], 1, tl.int1)
    if MASK_N:
        m = m & ((n0 + r // BLOCK_S) < N)[:, None]
    if MASK_S:
        m = m & ((s0 + r % BLOCK_S) < S)[:, None]
    if MASK_C:
        m = m & ((c0 + tl.arange(0, BLOCK_C)) < C)[None, :]
    return m


@_device
def _tile_start(t, SB, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, WIDE: tl.constexpr):
    """Sample block and position block of tile ``t`` (tiles enumerate sample blocks x position blocks);
    int64 with WIDE, so that block starts past 2^31 (a channel of 2^31 rows or more) do not wrap. (Tile
    counts stay far below 2^31: the division itself is 32-bit.)"""
    nb = t // SB
    sb = t - nb * SB
    if WIDE:
        nb = nb.to(tl.int64)
        sb = sb.to(tl.int64)
    return nb, sb


@_device
def _next_tile(nb, sb, SB):
    """The tile after (nb, sb), without a division."""
    sb += 1
    wrap = sb == SB
    return nb + wrap.to(tl.int32), tl.where(wrap, 0, sb)


@_device
def _tile(
    nb,
    sb,
    c0,
    N,
    S,
    C,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
    ONE_S_BLOCK: tl.constexpr,
):
    """(n0, s0, mask) of tile (nb, sb): its first sample and position, and its in-bounds mask."""
    n0 = nb * BLOCK_N
    if ONE_S_BLOCK:
        s0 = nb * 0
    else:
        s0 = sb * BLOCK_S
    return n0, s0, _tile_mask(n0, s0, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C)


@_device
def _advance(nb, sb, SB, ONE_S_BLOCK: tl.constexpr):
    """The next tile of a chunk: the next sample block with one position block, else :func:`_next_tile`."""
    if ONE_S_BLOCK:
        return nb + 1, sb
    else:
        return _next_tile(nb, sb, SB)


@_device
def _aligned(v, VEC: tl.constexpr):
    """``v``, known to the compiler as a multiple of VEC (the launcher guarantees that it is one).

    Triton specialises an integer argument divisible by 16 and nothing finer, so a stride of 196 or 1000
    would otherwise count as odd and every access along the contiguous axis would be scalar; ``(v // VEC)
    * VEC`` (two scalar instructions per program) gives the axis analysis the divisibility that lets
    tiles load and store 8-16 bytes per instruction."""
    if VEC > 1:
        v = (v // VEC) * VEC
    return v


@_device
def _aligned_strides(sn, ss, sc, VEC: tl.constexpr, INNER_C: tl.constexpr):
    """The strides of the two axes that are not the tile's contiguous one (C with INNER_C, else S), marked
    multiples of VEC."""
    if INNER_C:
        return _aligned(sn, VEC), _aligned(ss, VEC), sc
    else:
        return _aligned(sn, VEC), ss, _aligned(sc, VEC)


@_device
def _load_zero_rows(ptr, off, rel, mask, ROW_MASK: tl.constexpr, ACC: tl.constexpr):
    """A tile in the accumulation dtype, 0 on rows masked off along N or S (with ROW_MASK); lanes masked off
    along C (MASK_C alone) are left unset: their sums are never stored (lanes of channels past C) or never
    summed into a channel (a FLAT reduction's lanes past its block, see :func:`_segment_sum`)."""
    if ROW_MASK:
        return tl.load(_at(ptr, off, rel, False), mask=mask, other=0.0).to(ACC)
    else:
        return tl.load(_at(ptr, off, rel, False), mask=mask).to(ACC)


@_device
def _other_strides(sn, ss, sc, on, os_, oc, SAME_STRIDES: tl.constexpr, VEC: tl.constexpr, INNER_C: tl.constexpr):
    """Another tensor's strides (on, os_, oc), marked aligned like the first tensor's (sn, ss, sc), which
    they are with SAME_STRIDES."""
    if SAME_STRIDES:
        return sn, ss, sc
    else:
        return _aligned_strides(on, os_, oc, VEC, INNER_C)


@_device
def _aligned_extents(S, C, VEC: tl.constexpr, INNER_C: tl.constexpr):
    """(S, C) with the contiguous axis's size marked a multiple of VEC."""
    if INNER_C:
        return S, _aligned(C, VEC)
    else:
        return _aligned(S, VEC), C


@_device
def _other_rel(
    rel,
    sn,
    ss,
    sc,
    SAME_STRIDES: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Another tensor's tile offsets: the first tensor's (``rel``) with SAME_STRIDES."""
    if SAME_STRIDES:
        return rel
    else:
        return _rel_offsets(sn, ss, sc, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)


@_device
def _sum_nc(t):
    """Sum over the tile's rows: (BLOCK_N·BLOCK_S, BLOCK_C) -> (BLOCK_C,)."""
    return tl.sum(t, axis=0)


@_device
def _clamp0(v):
    """max(v, 0) that keeps NaN (a variance from data holding NaN or inf stays NaN, as torch's does)."""
    return tl.where(v < 0, 0.0, v)


@_device
def _relu(v):
    """max(v, 0) that keeps NaN, as torch.relu does: the NaN-propagating maximum, one ``max.NaN`` instruction
    in float32 on sm_80 and newer (a plain hardware max would drop the NaN); in float64, which has no such
    instruction (LLVM's expansion costs ~8 instructions per element), a compare and a select. -0.0 gives
    +0.0 in float32 (torch.relu keeps -0.0)."""
    if v.dtype == tl.float64:
        return tl.where(v < 0, 0.0, v)
    else:
        return tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)


@_device
def _finite_or_zero(v, ACC: tl.constexpr):
    """v where it is finite, else 0. A shift taken from the data (the shifted-data algorithm's K, a merge's
    reference mean) must be finite: inf - inf is NaN, which would turn a mean of inf into NaN. A shift of 0
    lets the sums carry the inf or NaN into the mean, as torch's sum does. (The test runs in the
    accumulation dtype: Triton's interpreter computes bfloat16 inf - inf as 0.)"""
    a = v.to(ACC)
    return tl.where(a - a == 0, v, 0.0)


@_device
def _split_scalar(hi, lo, ACC: tl.constexpr):
    """A host float passed as two float32 halves (hi + lo), rebuilt in the accumulation dtype."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@_device
def _invstd(var, eps, ACC: tl.constexpr):
    """1 / sqrt(var + eps): IEEE in float64; the hardware rsqrt in float32 (within 2 ulp of torch's 1/sqrt)."""
    if tl.float64 == ACC:
        return 1.0 / tl.sqrt(var + eps)
    else:
        return tl.math.rsqrt(var + eps)


@_device
def _last_program(lock_ptr, pid_c, P):
    """True in the program that completes its channel block's P partials (then resets the ticket).

    All threads' partial stores are ordered before the ticket by the barrier; acq_rel at GPU scope makes
    them visible to the program that draws the last ticket.
    """
    tl.debug_barrier()
    ticket = tl.atomic_add(lock_ptr + pid_c, 1, sem="acq_rel")
    last = ticket == P - 1
    return last


@_device
def _update_running(rm_ptr, rv_ptr, offs_c, m_c, mean, var, mom_hi, mom_lo, unb_hi, unb_lo, ACC: tl.constexpr):
    """running = (1 - momentum)·running + momentum·batch, the variance unbiased by M / (M - 1) (as torch)."""
    mom = _split_scalar(mom_hi, mom_lo, ACC)
    unbias = _split_scalar(unb_hi, unb_lo, ACC)
    rm = tl.load(rm_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    tl.store(rm_ptr + offs_c, (rm * (1.0 - mom) + mean * mom).to(rm_ptr.dtype.element_ty), mask=m_c)
    rv = tl.load(rv_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    tl.store(rv_ptr + offs_c, (rv * (1.0 - mom) + (var * unbias) * mom).to(rv_ptr.dtype.element_ty), mask=m_c)


@_device
def _merge_partials(
    part_ptr, offs_c, m_c, c0, P, C, M, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr
):
    """Merge P (mean, M2, count) partials per channel with Chan's parallel formula, in partial order.

    mean = m_0 + Σ n_p (m_p - m_0) / M   (shifted by the first partial's mean, or 0 if not finite)
    M2   = Σ M2_p + Σ n_p (m_p - mean)²
    Returns the mean and the biased variance M2 / M. The partials are laid out (3, P, C); a chunk's count
    is the same for every channel of its block, so it is read once per partial (from channel c0).
    """
    m0 = _finite_or_zero(tl.load(part_ptr + offs_c, mask=m_c, other=0.0, cache_modifier=".cg").to(ACC), ACC)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        m_p = offs_p < P
        mask = m_p[:, None] & m_c[None, :]
        offs = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
        mp = tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(ACC)
        cnt = tl.load(part_ptr + 2 * P * C + offs_p.to(tl.int64) * C + c0, mask=m_p, other=0.0, cache_modifier=".cg")
        acc += tl.sum(cnt.to(ACC)[:, None] * (mp - m0[None, :]), axis=0)
    mean = m0 + acc / M
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        m_p = offs_p < P
        mask = m_p[:, None] & m_c[None, :]
        offs = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
        mp = tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(ACC)
        m2p = tl.load(part_ptr + P * C + offs, mask=mask, other=0.0, cache_modifier=".cg").to(ACC)
        cnt = tl.load(part_ptr + 2 * P * C + offs_p.to(tl.int64) * C + c0, mask=m_p, other=0.0, cache_modifier=".cg")
        dm = mp - mean[None, :]
        m2 += tl.sum(m2p + cnt.to(ACC)[:, None] * dm * dm, axis=0)
    return mean, m2 / M


@_device
def _sum_partials(part_ptr, offs_c, m_c, P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Σ over P partials per channel, in partial order (deterministic), of a (P, C) slab."""
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = (offs_p < P)[:, None] & m_c[None, :]
        offs = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
        acc += tl.sum(tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(ACC), axis=0)
    return acc


# ---------------------------------------------------------------------------------------------- forward


@_device
def _program(C, BLOCK_C: tl.constexpr):
    """(channel block, chunk, first channel, channel offsets, channel mask) of this program: the grid is
    (channel blocks, chunks), so nothing is divided."""
    pid_c = tl.program_id(0)
    c0 = pid_c * BLOCK_C
    offs_c = c0 + tl.arange(0, BLOCK_C)
    return pid_c, tl.program_id(1), c0, offs_c, offs_c < C


@_device
def _lane_channels(offs_c, CS, FLAT: tl.constexpr):
    """The channel of each lane of the tile's channel axis: the lane itself, or with FLAT its flat index
    f // CS. FLAT (NC... layouts whose positions are not aligned for wide accesses, e.g. 7 x 7): the
    launcher views every (n, c, s) as n x (c·CS + s), one contiguous axis that the tiles read 8-16 bytes at
    a time; a lane's per-channel values are gathered once per program, not per element.

    The quotient is estimated in float32 as trunc((f + 1/2)·r), r ≈ 1/CS (the hardware's division is
    within 2 ulp, not correctly rounded), then corrected once with the remainder f - q·CS: the estimate is
    within 1 of f // CS while f·2^-22 < CS, which the launcher's bound f < 2^22 (lanes past C·S included)
    guarantees, so the result is exact (a handful of instructions per lane instead of an integer division's twenty)."""
    if FLAT:
        r = 1.0 / CS.to(tl.float32)
        q = (offs_c.to(tl.float32) * r + 0.5 * r).to(tl.int32)
        rem = offs_c - q * CS
        q += (rem >= CS).to(tl.int32) - (rem < 0).to(tl.int32)
        return q
    else:
        return offs_c


@_device
def _reduction_program(C, CR, CS, BLOCK_C: tl.constexpr, BLOCK_CH: tl.constexpr, VEC: tl.constexpr, FLAT: tl.constexpr):
    """(channel block, chunk, first lane, lane offsets, lanes' extent, lanes' channels, channels, channel mask)
    of a reduction program. Without FLAT the lanes are the channels. With FLAT (a reduction over an NC...
    tensor read along its (channel, position) plane, see :func:`_segment_sum`) the program's BLOCK_CH
    channels are the BLOCK_CH·CS consecutive lanes from c0 = block·BLOCK_CH·CS, a multiple of VEC (as the
    launcher chooses BLOCK_CH), and the lanes' extent is the block's end: the lanes past it are masked."""
    pid_c = tl.program_id(0)
    if FLAT:
        offs_ch = pid_c * BLOCK_CH + tl.arange(0, BLOCK_CH)
        c0 = _aligned(pid_c * (BLOCK_CH * CS), VEC)
        offs_c = c0 + tl.arange(0, BLOCK_C)
        end = _aligned(tl.minimum(c0 + BLOCK_CH * CS, C), VEC)
        return pid_c, tl.program_id(1), c0, offs_c, end, _lane_channels(offs_c, CS, True), offs_ch, offs_ch < CR
    else:
        pid_c, pid_p, c0, offs_c, m_c = _program(C, BLOCK_C)
        return pid_c, pid_p, c0, offs_c, C, offs_c, offs_c, m_c


@_device
def _segment_sum(v, CS, BLOCK_CH: tl.constexpr, BLOCK_CS: tl.constexpr, FLAT: tl.constexpr):
    """Per-lane sums (BLOCK_C,) -> per-channel sums (BLOCK_CH,): with FLAT the sum of the CS lanes of each of
    the program's channels (channel j owns lanes j·CS ... j·CS + CS - 1, BLOCK_CS >= CS), gathered into a
    BLOCK_CH x BLOCK_CS tile once per program (lanes of other channels, NaN included, are never read);
    else ``v`` itself."""
    if FLAT:
        s = tl.arange(0, BLOCK_CS)[None, :]
        inside = s < CS
        idx = tl.where(inside, tl.arange(0, BLOCK_CH)[:, None] * CS + s, 0)
        g = tl.reshape(tl.gather(v, tl.reshape(idx, [BLOCK_CH * BLOCK_CS]), 0), [BLOCK_CH, BLOCK_CS])
        return tl.sum(tl.where(inside, g, 0.0), axis=1)
    else:
        return v


@_device
def _off(n0, s0, c0, stride_n, stride_s, stride_c, WIDE: tl.constexpr):
    """Offset of element (n0, s0, c0): int32, or int64 with WIDE (tensors spanning 2^31 elements or more)."""
    if WIDE:
        return n0.to(tl.int64) * stride_n + s0.to(tl.int64) * stride_s + c0.to(tl.int64) * stride_c
    else:
        return n0 * stride_n + s0 * stride_s + c0 * stride_c


@_device
def _at(ptr, off, rel, DENSE: tl.constexpr):
    """The addresses of a tile at element offset ``off`` (uniform) with per-lane offsets ``rel``, for every
    tile access of the kernels: the offsets are summed first (in int32, one multiply-add per access; int64
    with WIDE); but when the tile is one contiguous block (DENSE: ``rel`` is a compile-time pattern) the lane
    offsets are added to the tile pointer, so that a thread's accesses become immediate offsets from one
    address."""
    if DENSE:
        return (ptr + off) + rel
    else:
        return ptr + (off + rel)


@_device
def _dense_strides(ss, INNER_C: tl.constexpr, BLOCK_C: tl.constexpr, DENSE: tl.constexpr):
    """The position stride for a tile's lane offsets: with DENSE and channels innermost, BLOCK_C (the tile's
    rows are exactly BLOCK_C channels apart), a compile-time constant; otherwise ``ss`` itself."""
    if DENSE and INNER_C:
        return BLOCK_C
    else:
        return ss


@_device
def _forward_tail(
    w_ptr,
    rm_ptr,
    rv_ptr,
    stats_ptr,
    offs_c,
    m_c,
    C,
    mean,
    var,
    eps_hi,
    eps_lo,
    mom_hi,
    mom_lo,
    unb_hi,
    unb_lo,
    HAS_W: tl.constexpr,
    HAS_RUNNING: tl.constexpr,
    ACC: tl.constexpr,
):
    """invstd and scale = weight·invstd from the batch statistics; writes ``stats`` (mean, invstd, scale,
    var) and updates the running statistics. Returns the scale."""
    invstd = _invstd(var, _split_scalar(eps_hi, eps_lo, ACC), ACC)
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    tl.store(stats_ptr + offs_c, mean, mask=m_c)
    tl.store(stats_ptr + C + offs_c, invstd, mask=m_c)
    tl.store(stats_ptr + 2 * C + offs_c, scale, mask=m_c)
    tl.store(stats_ptr + 3 * C + offs_c, var, mask=m_c)
    if HAS_RUNNING:
        _update_running(rm_ptr, rv_ptr, offs_c, m_c, mean, var, mom_hi, mom_lo, unb_hi, unb_lo, ACC)
    return scale


@triton.jit
def bn_forward_stats_kernel(
    x_ptr,
    y_ptr,
    res_ptr,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    stats_ptr,
    lock_ptr,
    N,
    S,
    C,
    sxn,
    sxs,
    sxc,
    syn,
    sys_,
    syc,
    srn,
    srs,
    src,
    SB,
    T,
    TPP,
    P,
    M,
    CR,
    CS,
    eps_hi,
    eps_lo,
    mom_hi,
    mom_lo,
    unb_hi,
    unb_lo,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
    WIDE: tl.constexpr,
    ONE_S_BLOCK: tl.constexpr,
    SAME_STRIDES: tl.constexpr,
    VEC: tl.constexpr,
    INNER_C: tl.constexpr,
    FLAT: tl.constexpr,
    BLOCK_CH: tl.constexpr,
    BLOCK_CS: tl.constexpr,
    SINGLE: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RUNNING: tl.constexpr,
    HAS_RES: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    """Batch statistics of a training forward; with SINGLE also the normalised output.

    Writes ``stats`` (4, CR) = (mean, invstd, weight·invstd, biased var) and updates the running statistics
    in their own dtype. Statistics use the shifted-data algorithm with the shift K = the first element of
    the program's first tile, per channel (0 if it is not finite): d = x - K, mean = K + Σd/n,
    M2 = Σd² - (Σd)²/n, so nothing cancels catastrophically when |mean| >> std and a constant channel gives
    M2 = 0; masked lanes read K itself and add exactly 0. Without SINGLE each program reduces a chunk of TPP
    tiles into partials (3, P, CR) = (mean, M2, count) after ``stats``, and the last program of the channel
    block merges them (Chan). With SINGLE (T == 1: the channel block's rows are one tile) the program keeps d
    in registers and writes ``y = act(d·scale + (K - mean)·scale + bias + residual)``, scale = weight·invstd.
    SAME_STRIDES: y and the residual have x's strides.

    FLAT (NC... tensors whose positions are not aligned for wide accesses, e.g. 7 x 7): the launcher passes
    the 1 x N x C·S view, CR channels of CS positions, and BLOCK_CH channels per program; the tile's lanes
    run along the (channel, position) plane, each lane sums its own values, and the lanes of a channel are
    summed once per program (:func:`_segment_sum`, BLOCK_CS = CS rounded up to a power of two); never with
    SINGLE. Otherwise CR = C, CS = 1, BLOCK_CH = BLOCK_C and BLOCK_CS = 1.
    """
    tl.static_assert(not (FLAT and SINGLE), "FLAT reductions loop over tiles")
    sxn, sxs, sxc = _aligned_strides(sxn, sxs, sxc, VEC, INNER_C)
    syn, sys_, syc = _other_strides(sxn, sxs, sxc, syn, sys_, syc, SAME_STRIDES, VEC, INNER_C)
    srn, srs, src = _other_strides(sxn, sxs, sxc, srn, srs, src, SAME_STRIDES, VEC, INNER_C)
    S, C = _aligned_extents(S, C, VEC, INNER_C)
    if not FLAT:
        CR = C  # (the same number, marked a multiple of VEC along C)
    pid_c, pid_p, c0, offs_c, C, lane_ch, offs_ch, m_ch = _reduction_program(C, CR, CS, BLOCK_C, BLOCK_CH, VEC, FLAT)
    rel_x = _rel_offsets(sxn, sxs, sxc, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    part_ptr = stats_ptr + 4 * CR
    t0 = pid_p * TPP
    nb, sb = _tile_start(t0, SB, BLOCK_N, BLOCK_S, WIDE)
    n0 = nb * BLOCK_N
    if ONE_S_BLOCK:
        s0 = nb * 0
    else:
        s0 = sb * BLOCK_S
    # K per lane (with FLAT: the first position of the lane's channel), and per channel
    k_x = _finite_or_zero(tl.load(x_ptr + _off(n0, s0, lane_ch * CS, sxn, sxs, sxc, WIDE), mask=offs_c < C), ACC)
    if FLAT:
        k = _finite_or_zero(tl.load(x_ptr + _off(n0, s0, offs_ch * CS, sxn, sxs, sxc, WIDE), mask=m_ch), ACC)
        k = k.to(ACC)
        k_lane = k_x.to(ACC)
    else:
        k = k_x.to(ACC)
        k_lane = k
    # lanes masked off along N or S read K (d = 0 adds nothing); lanes masked off along C are never stored
    # (FLAT: never summed into a channel)
    k_other = tl.broadcast_to(k_x[None, :], [BLOCK_N * BLOCK_S, BLOCK_C])
    if SINGLE:
        mask = _tile_mask(n0, s0, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C)
        if MASK_N or MASK_S:
            d = tl.load(_at(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, False), mask=mask, other=k_other).to(
                ACC
            )
        else:
            d = tl.load(_at(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, False), mask=mask).to(ACC)
        d = d - k_lane[None, :]
        sd = _sum_nc(d)
        sdd = _sum_nc(d * d)
        inv_m = 1.0 / tl.cast(M, ACC)
        dm = sd * inv_m
        mean = k + dm
        var = _clamp0(sdd * inv_m - dm * dm)
        scale = _forward_tail(
            w_ptr,
            rm_ptr,
            rv_ptr,
            stats_ptr,
            offs_ch,
            m_ch,
            CR,
            mean,
            var,
            eps_hi,
            eps_lo,
            mom_hi,
            mom_lo,
            unb_hi,
            unb_lo,
            HAS_W,
            HAS_RUNNING,
            ACC,
        )
        shift = -dm * scale
        if HAS_B:
            shift += tl.load(b_ptr + offs_ch, mask=m_ch, other=0.0).to(ACC)
        y = d * scale[None, :] + shift[None, :]
        if HAS_RES:
            rel_r = _other_rel(rel_x, srn, srs, src, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
            y += tl.load(_at(res_ptr, _off(n0, s0, c0, srn, srs, src, WIDE), rel_r, False), mask=mask).to(ACC)
        if RELU:
            y = _relu(y)
        rel_y = _other_rel(rel_x, syn, sys_, syc, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
        tl.store(
            _at(y_ptr, _off(n0, s0, c0, syn, sys_, syc, WIDE), rel_y, False), y.to(y_ptr.dtype.element_ty), mask=mask
        )
    else:
        t1 = tl.minimum(t0 + TPP, T)
        acc_d = tl.zeros([BLOCK_N * BLOCK_S, BLOCK_C], dtype=ACC)
        acc_dd = tl.zeros([BLOCK_N * BLOCK_S, BLOCK_C], dtype=ACC)
        cnt = (pid_p * 0).to(tl.int64)
        for _ in range(t0, t1):
            n0, s0, mask = _tile(nb, sb, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C, ONE_S_BLOCK)
            if MASK_N or MASK_S:
                x = tl.load(_at(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, False), mask=mask, other=k_other)
            else:
                x = tl.load(_at(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, False), mask=mask)
            d = x.to(ACC) - k_lane[None, :]
            acc_d += d
            acc_dd += d * d
            cnt += tl.minimum(N - n0, BLOCK_N) * tl.minimum(S - s0, BLOCK_S)
            nb, sb = _advance(nb, sb, SB, ONE_S_BLOCK)
        sd = _segment_sum(_sum_nc(acc_d), CS, BLOCK_CH, BLOCK_CS, FLAT)
        sdd = _segment_sum(_sum_nc(acc_dd), CS, BLOCK_CH, BLOCK_CS, FLAT)
        n = (cnt * CS).to(ACC)
        p_out = pid_p.to(tl.int64) * CR + offs_ch
        tl.store(part_ptr + p_out, k + sd / n, mask=m_ch)
        tl.store(part_ptr + P * CR + p_out, _clamp0(sdd - sd * sd / n), mask=m_ch)
        tl.store(part_ptr + 2 * P * CR + p_out, tl.zeros([BLOCK_CH], dtype=ACC) + n, mask=m_ch)
        if _last_program(lock_ptr, pid_c, P):
            ch0 = pid_c * BLOCK_CH
            mean, var = _merge_partials(part_ptr, offs_ch, m_ch, ch0, P, CR, M, BLOCK_P, BLOCK_CH, ACC)
            _forward_tail(
                w_ptr,
                rm_ptr,
                rv_ptr,
                stats_ptr,
                offs_ch,
                m_ch,
                CR,
                mean,
                var,
                eps_hi,
                eps_lo,
                mom_hi,
                mom_lo,
                unb_hi,
                unb_lo,
                HAS_W,
                HAS_RUNNING,
                ACC,
            )
            tl.atomic_xchg(lock_ptr + pid_c, 0)


@triton.jit
def bn_forward_apply_kernel(
    x_ptr,
    y_ptr,
    res_ptr,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    stats_ptr,
    N,
    S,
    C,
    sxn,
    sxs,
    sxc,
    syn,
    sys_,
    syc,
    srn,
    srs,
    src,
    SB,
    T,
    TPP,
    CR,
    CS,
    eps_hi,
    eps_lo,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
    WIDE: tl.constexpr,
    ONE_S_BLOCK: tl.constexpr,
    SAME_STRIDES: tl.constexpr,
    VEC: tl.constexpr,
    INNER_C: tl.constexpr,
    FLAT: tl.constexpr,
    DENSE: tl.constexpr,
    EVAL: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
):
    """``y = act((x - mean)·scale + bias + residual)`` over a chunk of TPP tiles per program, where
    scale = weight·invstd (centred first: no cancellation for channels whose |mean| >> std).

    Training: mean and scale come from ``stats`` (written by the statistics kernel). EVAL: from the running
    statistics, ``invstd = 1 / sqrt(running_var + eps)``, and the programs of the first chunk write
    ``stats`` (mean, invstd, scale, running var) for the backward. The per-channel tables have CR channels
    (C, unless FLAT: see :func:`_lane_channels`).
    """
    pid_c, pid_p, c0, offs_c, m_c = _program(C, BLOCK_C)
    ch = _lane_channels(offs_c, CS, FLAT)
    sxn, sxs, sxc = _aligned_strides(sxn, sxs, sxc, VEC, INNER_C)
    syn, sys_, syc = _other_strides(sxn, sxs, sxc, syn, sys_, syc, SAME_STRIDES, VEC, INNER_C)
    srn, srs, src = _other_strides(sxn, sxs, sxc, srn, srs, src, SAME_STRIDES, VEC, INNER_C)
    S, C = _aligned_extents(S, C, VEC, INNER_C)
    if EVAL:
        mean = tl.load(rm_ptr + ch, mask=m_c, other=0.0).to(ACC)
        var = tl.load(rv_ptr + ch, mask=m_c, other=1.0).to(ACC)
        invstd = _invstd(var, _split_scalar(eps_hi, eps_lo, ACC), ACC)
        scale = invstd
        if HAS_W:
            scale = scale * tl.load(w_ptr + ch, mask=m_c, other=0.0).to(ACC)
        if pid_p == 0:
            # (FLAT: the lanes of one channel store the same values)
            tl.store(stats_ptr + ch, mean, mask=m_c)
            tl.store(stats_ptr + CR + ch, invstd, mask=m_c)
            tl.store(stats_ptr + 2 * CR + ch, scale, mask=m_c)
            tl.store(stats_ptr + 3 * CR + ch, var, mask=m_c)
    else:
        mean = tl.load(stats_ptr + ch, mask=m_c, other=0.0)
        scale = tl.load(stats_ptr + 2 * CR + ch, mask=m_c, other=0.0)
    if HAS_B:
        bias = tl.load(b_ptr + ch, mask=m_c, other=0.0).to(ACC)
    else:
        bias = mean * 0.0
    rel_x = _rel_offsets(sxn, _dense_strides(sxs, INNER_C, BLOCK_C, DENSE), sxc, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_y = _other_rel(rel_x, syn, sys_, syc, SAME_STRIDES or DENSE, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_r = _other_rel(rel_x, srn, srs, src, SAME_STRIDES or DENSE, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    t0 = pid_p * TPP
    t1 = tl.minimum(t0 + TPP, T)
    nb, sb = _tile_start(t0, SB, BLOCK_N, BLOCK_S, WIDE)
    for _ in range(t0, t1):
        n0, s0, mask = _tile(nb, sb, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C, ONE_S_BLOCK)
        x = tl.load(_at(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, DENSE), mask=mask).to(ACC)
        y = (x - mean[None, :]) * scale[None, :] + bias[None, :]
        if HAS_RES:
            y += tl.load(_at(res_ptr, _off(n0, s0, c0, srn, srs, src, WIDE), rel_r, DENSE), mask=mask).to(ACC)
        if RELU:
            y = _relu(y)
        tl.store(
            _at(y_ptr, _off(n0, s0, c0, syn, sys_, syc, WIDE), rel_y, DENSE), y.to(y_ptr.dtype.element_ty), mask=mask
        )
        nb, sb = _advance(nb, sb, SB, ONE_S_BLOCK)


# --------------------------------------------------------------------------------------------- backward


@triton.jit
def bn_backward_reduce_kernel(
    dy_ptr,
    x_ptr,
    y_ptr,
    dx_ptr,
    dres_ptr,
    w_ptr,
    stats_ptr,
    dw_ptr,
    db_ptr,
    coef_ptr,
    lock_ptr,
    N,
    S,
    C,
    sgn,
    sgs,
    sgc,
    sxn,
    sxs,
    sxc,
    syn,
    sys_,
    syc,
    sdn,
    sds,
    sdc,
    SB,
    T,
    TPP,
    P,
    M,
    CR,
    CS,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
    WIDE: tl.constexpr,
    ONE_S_BLOCK: tl.constexpr,
    SAME_STRIDES: tl.constexpr,
    VEC: tl.constexpr,
    INNER_C: tl.constexpr,
    FLAT: tl.constexpr,
    BLOCK_CH: tl.constexpr,
    BLOCK_CS: tl.constexpr,
    SINGLE: tl.constexpr,
    STATS_GRAD: tl.constexpr,
    GATE: tl.constexpr,
    WRITE_DX: tl.constexpr,
    WRITE_DRES: tl.constexpr,
    NEED_XMU: tl.constexpr,
    HAS_W: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    WRITE_COEF: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    """Σg and Σg·(x - mean) per channel, g = dy (zeroed where y <= 0 with GATE: a fused
    ReLU's mask, as torch's ``threshold_backward``, which lets NaN through).

    The last program of each channel block (or the only one, SINGLE) writes dweight = invstd·Σg·(x - mean)
    and dbias = Σg in their dtypes, and ``coef`` (5, CR) = (scale, beta, gamma, Σg, Σg·(x - mean)) with
    scale = weight·invstd and, when the statistics depend on x (STATS_GRAD),
    beta = -scale·invstd²·Σg·(x - mean)/M, gamma = -scale·Σg/M, so that dx = scale·g + beta·(x - mean) +
    gamma (the batch-norm input gradient, as torch's batch_norm_backward). Partial sums (2, P, CR) follow
    ``coef``. WRITE_DX writes dx in this pass: with SINGLE from the registers, otherwise (constant
    statistics) dx = scale·g. WRITE_DRES writes g, the residual's gradient of a fused add + ReLU. dx and dres
    share the strides of ``dx``; SAME_STRIDES: every tensor has dy's strides. FLAT, CR, CS, BLOCK_CH and
    BLOCK_CS: as in :func:`bn_forward_stats_kernel`.
    """
    tl.static_assert(not (FLAT and SINGLE), "FLAT reductions loop over tiles")
    sgn, sgs, sgc = _aligned_strides(sgn, sgs, sgc, VEC, INNER_C)
    sxn, sxs, sxc = _other_strides(sgn, sgs, sgc, sxn, sxs, sxc, SAME_STRIDES, VEC, INNER_C)
    syn, sys_, syc = _other_strides(sgn, sgs, sgc, syn, sys_, syc, SAME_STRIDES, VEC, INNER_C)
    sdn, sds, sdc = _other_strides(sgn, sgs, sgc, sdn, sds, sdc, SAME_STRIDES, VEC, INNER_C)
    S, C = _aligned_extents(S, C, VEC, INNER_C)
    if not FLAT:
        CR = C  # (the same number, marked a multiple of VEC along C)
    pid_c, pid_p, c0, offs_c, C, lane_ch, offs_ch, m_ch = _reduction_program(C, CR, CS, BLOCK_C, BLOCK_CH, VEC, FLAT)
    m_lane = offs_c < C
    mean = tl.load(stats_ptr + offs_ch, mask=m_ch, other=0.0)
    invstd = tl.load(stats_ptr + CR + offs_ch, mask=m_ch, other=0.0)
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_ch, mask=m_ch, other=0.0).to(ACC)
    if FLAT:
        # the lanes' own copies of their channel's mean and scale
        mean_l = tl.load(stats_ptr + lane_ch, mask=m_lane, other=0.0)
        scale_l = tl.load(stats_ptr + CR + lane_ch, mask=m_lane, other=0.0)
        if HAS_W:
            scale_l = scale_l * tl.load(w_ptr + lane_ch, mask=m_lane, other=0.0).to(ACC)
    else:
        mean_l = mean
        scale_l = scale
    rel_g = _rel_offsets(sgn, sgs, sgc, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_x = _other_rel(rel_g, sxn, sxs, sxc, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_y = _other_rel(rel_g, syn, sys_, syc, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_d = _other_rel(rel_g, sdn, sds, sdc, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    t0 = pid_p * TPP
    nb, sb = _tile_start(t0, SB, BLOCK_N, BLOCK_S, WIDE)
    if SINGLE:
        n0 = nb * BLOCK_N
        s0 = nb * 0
        mask = _tile_mask(n0, s0, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C)
        g = _load_zero_rows(dy_ptr, _off(n0, s0, c0, sgn, sgs, sgc, WIDE), rel_g, mask, MASK_N or MASK_S, ACC)
        if GATE:
            gate = tl.load(_at(y_ptr, _off(n0, s0, c0, syn, sys_, syc, WIDE), rel_y, False), mask=mask)
            g = tl.where(gate <= 0, 0.0, g)
        if WRITE_DRES:
            tl.store(
                _at(dres_ptr, _off(n0, s0, c0, sdn, sds, sdc, WIDE), rel_d, False),
                g.to(dres_ptr.dtype.element_ty),
                mask=mask,
            )
        sum_g = _sum_nc(g)
        if NEED_XMU:
            # masked lanes: g = 0, so x - mean (finite) adds nothing
            x = _load_zero_rows(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, mask, MASK_N or MASK_S, ACC)
            xm = x - mean_l[None, :]
            sum_gx = _sum_nc(g * xm)
        else:
            sum_gx = tl.zeros([BLOCK_CH], dtype=ACC)
        beta, gamma = _backward_tail(
            dw_ptr,
            db_ptr,
            coef_ptr,
            offs_ch,
            m_ch,
            CR,
            M,
            scale,
            invstd,
            sum_g,
            sum_gx,
            STATS_GRAD,
            NEED_DW,
            NEED_DB,
            WRITE_COEF,
        )
        if WRITE_DX:
            if STATS_GRAD:
                dx = (g * scale_l[None, :] + gamma[None, :]) + xm * beta[None, :]
            else:
                dx = g * scale_l[None, :]
            tl.store(
                _at(dx_ptr, _off(n0, s0, c0, sdn, sds, sdc, WIDE), rel_d, False),
                dx.to(dx_ptr.dtype.element_ty),
                mask=mask,
            )
    else:
        acc_g = tl.zeros([BLOCK_N * BLOCK_S, BLOCK_C], dtype=ACC)
        acc_gx = tl.zeros([BLOCK_N * BLOCK_S, BLOCK_C], dtype=ACC)
        t1 = tl.minimum(t0 + TPP, T)
        for _ in range(t0, t1):
            n0, s0, mask = _tile(nb, sb, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C, ONE_S_BLOCK)
            g = _load_zero_rows(dy_ptr, _off(n0, s0, c0, sgn, sgs, sgc, WIDE), rel_g, mask, MASK_N or MASK_S, ACC)
            if GATE:
                gate = tl.load(_at(y_ptr, _off(n0, s0, c0, syn, sys_, syc, WIDE), rel_y, False), mask=mask)
                g = tl.where(gate <= 0, 0.0, g)
            acc_g += g
            if NEED_XMU:
                x = _load_zero_rows(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, mask, MASK_N or MASK_S, ACC)
                acc_gx += g * (x - mean_l[None, :])  # g is 0 on rows masked off along N or S
            if WRITE_DX:
                dx = g * scale_l[None, :]
                tl.store(
                    _at(dx_ptr, _off(n0, s0, c0, sdn, sds, sdc, WIDE), rel_d, False),
                    dx.to(dx_ptr.dtype.element_ty),
                    mask=mask,
                )
            if WRITE_DRES:
                tl.store(
                    _at(dres_ptr, _off(n0, s0, c0, sdn, sds, sdc, WIDE), rel_d, False),
                    g.to(dres_ptr.dtype.element_ty),
                    mask=mask,
                )
            nb, sb = _advance(nb, sb, SB, ONE_S_BLOCK)
        part_ptr = coef_ptr + 5 * CR
        p_out = pid_p.to(tl.int64) * CR + offs_ch
        tl.store(part_ptr + p_out, _segment_sum(_sum_nc(acc_g), CS, BLOCK_CH, BLOCK_CS, FLAT), mask=m_ch)
        tl.store(part_ptr + P * CR + p_out, _segment_sum(_sum_nc(acc_gx), CS, BLOCK_CH, BLOCK_CS, FLAT), mask=m_ch)
        if _last_program(lock_ptr, pid_c, P):
            sum_g = _sum_partials(part_ptr, offs_ch, m_ch, P, CR, BLOCK_P, BLOCK_CH, ACC)
            sum_gx = _sum_partials(part_ptr + P * CR, offs_ch, m_ch, P, CR, BLOCK_P, BLOCK_CH, ACC)
            _backward_tail(
                dw_ptr,
                db_ptr,
                coef_ptr,
                offs_ch,
                m_ch,
                CR,
                M,
                scale,
                invstd,
                sum_g,
                sum_gx,
                STATS_GRAD,
                NEED_DW,
                NEED_DB,
                WRITE_COEF,
            )
            tl.atomic_xchg(lock_ptr + pid_c, 0)


@_device
def _backward_tail(
    dw_ptr,
    db_ptr,
    coef_ptr,
    offs_c,
    m_c,
    C,
    M,
    scale,
    invstd,
    sum_g,
    sum_gx,
    STATS_GRAD: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    WRITE_COEF: tl.constexpr,
):
    """dweight, dbias and the dx coefficients (scale, beta, gamma, Σg, Σg·(x - mean)) from the channel sums;
    the coefficients are stored only with WRITE_COEF (a dx pass or the caller reads them)."""
    if NEED_DW:
        tl.store(dw_ptr + offs_c, (sum_gx * invstd).to(dw_ptr.dtype.element_ty), mask=m_c)
    if NEED_DB:
        tl.store(db_ptr + offs_c, sum_g.to(db_ptr.dtype.element_ty), mask=m_c)
    if STATS_GRAD:
        inv_m = 1.0 / tl.cast(M, scale.dtype)
        beta = -scale * invstd * invstd * sum_gx * inv_m
        gamma = -scale * sum_g * inv_m
    else:
        beta = scale * 0.0
        gamma = scale * 0.0
    if WRITE_COEF:
        tl.store(coef_ptr + offs_c, scale, mask=m_c)
        tl.store(coef_ptr + C + offs_c, beta, mask=m_c)
        tl.store(coef_ptr + 2 * C + offs_c, gamma, mask=m_c)
        tl.store(coef_ptr + 3 * C + offs_c, sum_g, mask=m_c)
        tl.store(coef_ptr + 4 * C + offs_c, sum_gx, mask=m_c)
    return beta, gamma


@triton.jit
def bn_backward_dx_kernel(
    dy_ptr,
    x_ptr,
    y_ptr,
    dx_ptr,
    dres_ptr,
    w_ptr,
    stats_ptr,
    coef_ptr,
    N,
    S,
    C,
    sgn,
    sgs,
    sgc,
    sxn,
    sxs,
    sxc,
    syn,
    sys_,
    syc,
    sdn,
    sds,
    sdc,
    SB,
    T,
    TPP,
    CR,
    CS,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
    WIDE: tl.constexpr,
    ONE_S_BLOCK: tl.constexpr,
    SAME_STRIDES: tl.constexpr,
    VEC: tl.constexpr,
    INNER_C: tl.constexpr,
    FLAT: tl.constexpr,
    DENSE: tl.constexpr,
    STATS_GRAD: tl.constexpr,
    GATE: tl.constexpr,
    WRITE_DX: tl.constexpr,
    WRITE_DRES: tl.constexpr,
    HAS_W: tl.constexpr,
    ACC: tl.constexpr,
):
    """dx = scale·g + beta·(x - mean) + gamma over a chunk of TPP tiles, g = dy (zeroed where y <= 0 with GATE).

    With STATS_GRAD the coefficients come from ``coef`` (written by the reduction kernel); otherwise
    dx = weight·invstd·g from ``stats`` directly (eval, detached statistics: no reduction pass needed).
    WRITE_DRES also writes g, a fused add + ReLU's residual gradient (with the strides of dx). The per-channel
    tables have CR channels (C, unless FLAT: see :func:`_lane_channels`).
    """
    pid_c, pid_p, c0, offs_c, m_c = _program(C, BLOCK_C)
    ch = _lane_channels(offs_c, CS, FLAT)
    sgn, sgs, sgc = _aligned_strides(sgn, sgs, sgc, VEC, INNER_C)
    sxn, sxs, sxc = _other_strides(sgn, sgs, sgc, sxn, sxs, sxc, SAME_STRIDES, VEC, INNER_C)
    syn, sys_, syc = _other_strides(sgn, sgs, sgc, syn, sys_, syc, SAME_STRIDES, VEC, INNER_C)
    sdn, sds, sdc = _other_strides(sgn, sgs, sgc, sdn, sds, sdc, SAME_STRIDES, VEC, INNER_C)
    S, C = _aligned_extents(S, C, VEC, INNER_C)
    if STATS_GRAD:
        scale = tl.load(coef_ptr + ch, mask=m_c, other=0.0)
        beta = tl.load(coef_ptr + CR + ch, mask=m_c, other=0.0)
        gamma = tl.load(coef_ptr + 2 * CR + ch, mask=m_c, other=0.0)
        mean = tl.load(stats_ptr + ch, mask=m_c, other=0.0)
    else:
        scale = tl.load(stats_ptr + CR + ch, mask=m_c, other=0.0)
        if HAS_W:
            scale = scale * tl.load(w_ptr + ch, mask=m_c, other=0.0).to(ACC)
    rel_g = _rel_offsets(sgn, _dense_strides(sgs, INNER_C, BLOCK_C, DENSE), sgc, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_x = _other_rel(rel_g, sxn, sxs, sxc, SAME_STRIDES or DENSE, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_y = _other_rel(rel_g, syn, sys_, syc, SAME_STRIDES or DENSE, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_d = _other_rel(rel_g, sdn, sds, sdc, SAME_STRIDES or DENSE, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    t0 = pid_p * TPP
    t1 = tl.minimum(t0 + TPP, T)
    nb, sb = _tile_start(t0, SB, BLOCK_N, BLOCK_S, WIDE)
    for _ in range(t0, t1):
        n0, s0, mask = _tile(nb, sb, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C, ONE_S_BLOCK)
        g = tl.load(_at(dy_ptr, _off(n0, s0, c0, sgn, sgs, sgc, WIDE), rel_g, DENSE), mask=mask).to(ACC)
        if GATE:
            gate = tl.load(_at(y_ptr, _off(n0, s0, c0, syn, sys_, syc, WIDE), rel_y, DENSE), mask=mask)
            g = tl.where(gate <= 0, 0.0, g)
        if WRITE_DX:
            if STATS_GRAD:
                x = tl.load(_at(x_ptr, _off(n0, s0, c0, sxn, sxs, sxc, WIDE), rel_x, DENSE), mask=mask).to(ACC)
                dx = (g * scale[None, :] + gamma[None, :]) + (x - mean[None, :]) * beta[None, :]
            else:
                dx = g * scale[None, :]
            tl.store(
                _at(dx_ptr, _off(n0, s0, c0, sdn, sds, sdc, WIDE), rel_d, DENSE),
                dx.to(dx_ptr.dtype.element_ty),
                mask=mask,
            )
        if WRITE_DRES:
            tl.store(
                _at(dres_ptr, _off(n0, s0, c0, sdn, sds, sdc, WIDE), rel_d, DENSE),
                g.to(dres_ptr.dtype.element_ty),
                mask=mask,
            )
        nb, sb = _advance(nb, sb, SB, ONE_S_BLOCK)


# ------------------------------------------------------------------------------------ generic primitives


@triton.jit
def stats_merge_kernel(
    mean_p_ptr,
    m2_p_ptr,
    count_p_ptr,
    mean_ptr,
    var_ptr,
    P,
    R,
    C,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Merge P (mean, M2, count) partials per channel with Chan's parallel formula (some counts may be 0).

    mean = m_0 + Σ n_p (m_p - m_0) / R   (m_0 = the first partial's mean, or 0 if not finite; put a non-empty
    partial first)
    M2   = Σ M2_p + Σ n_p (m_p - mean)²
    Writes the mean and the biased variance M2 / R. Used to merge the statistics of a process group's ranks.
    """
    pid_c = tl.program_id(0)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = offs_c < C
    m0 = _finite_or_zero(tl.load(mean_p_ptr + offs_c, mask=m_c, other=0.0).to(ACC), ACC)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        m_p = offs_p < P
        mask = m_p[:, None] & m_c[None, :]
        offs = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
        cnt = tl.load(count_p_ptr + offs_p, mask=m_p, other=0).to(ACC)
        mp = tl.load(mean_p_ptr + offs, mask=mask, other=0.0).to(ACC)
        acc += tl.sum(tl.where(mask, cnt[:, None] * (mp - m0[None, :]), 0.0), axis=0)
    mean = m0 + acc / R
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        m_p = offs_p < P
        mask = m_p[:, None] & m_c[None, :]
        offs = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
        cnt = tl.load(count_p_ptr + offs_p, mask=m_p, other=0).to(ACC)
        mp = tl.load(mean_p_ptr + offs, mask=mask, other=0.0).to(ACC)
        m2p = tl.load(m2_p_ptr + offs, mask=mask, other=0.0).to(ACC)
        dm = mp - mean[None, :]
        m2 += tl.sum(tl.where(mask, m2p + cnt[:, None] * dm * dm, 0.0), axis=0)
    tl.store(mean_ptr + offs_c, mean, mask=m_c)
    tl.store(var_ptr + offs_c, m2 / R, mask=m_c)


@triton.jit
def channel_sums_kernel(
    u_ptr,
    mu_u_ptr,
    v_ptr,
    mu_v_ptr,
    sum_u_p_ptr,
    sum_uv_p_ptr,
    gate_ptr,
    N,
    S,
    C,
    sun,
    sus,
    suc,
    svn,
    svs,
    svc,
    sgn,
    sgs,
    sgc,
    SB,
    T,
    TPP,
    HAS_GATE: tl.constexpr,
    HAS_MU_U: tl.constexpr,
    HAS_V: tl.constexpr,
    HAS_MU_V: tl.constexpr,
    WANT_SUM_U: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
    WIDE: tl.constexpr,
    ONE_S_BLOCK: tl.constexpr,
    SAME_STRIDES: tl.constexpr,
    VEC: tl.constexpr,
    INNER_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per (chunk, channel) partial sums Σ a and Σ a·b over a chunk of TPP tiles, with a = u - mu_u and
    b = v - mu_v, into ``sum_u_p`` / ``sum_uv_p`` (P, C).

    With HAS_GATE, ``a`` is zeroed where ``gate <= 0`` (a ReLU's mask, letting NaN through as torch's
    ``threshold_backward`` does). Centring on the channel mean before multiplying keeps Σ dy·(x - mean)
    accurate for channels with a large mean. SAME_STRIDES: v and gate have u's strides.
    """
    pid_c, pid_p, c0, offs_c, m_c = _program(C, BLOCK_C)
    sun, sus, suc = _aligned_strides(sun, sus, suc, VEC, INNER_C)
    svn, svs, svc = _other_strides(sun, sus, suc, svn, svs, svc, SAME_STRIDES, VEC, INNER_C)
    sgn, sgs, sgc = _other_strides(sun, sus, suc, sgn, sgs, sgc, SAME_STRIDES, VEC, INNER_C)
    S, C = _aligned_extents(S, C, VEC, INNER_C)
    rel_u = _rel_offsets(sun, sus, suc, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_v = _other_rel(rel_u, svn, svs, svc, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_g = _other_rel(rel_u, sgn, sgs, sgc, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    if HAS_MU_U:
        mu_u = tl.load(mu_u_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    if HAS_MU_V:
        mu_v = tl.load(mu_v_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    acc_a = tl.zeros([BLOCK_N * BLOCK_S, BLOCK_C], dtype=ACC)
    acc_ab = tl.zeros([BLOCK_N * BLOCK_S, BLOCK_C], dtype=ACC)
    t0 = pid_p * TPP
    t1 = tl.minimum(t0 + TPP, T)
    nb, sb = _tile_start(t0, SB, BLOCK_N, BLOCK_S, WIDE)
    for _ in range(t0, t1):
        n0, s0, mask = _tile(nb, sb, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C, ONE_S_BLOCK)
        # rows masked off along N or S add exactly 0; lanes of channels past C are never stored
        a = tl.load(_at(u_ptr, _off(n0, s0, c0, sun, sus, suc, WIDE), rel_u, False), mask=mask, other=0.0).to(ACC)
        if HAS_MU_U:
            a = a - mu_u[None, :]
            if MASK_N or MASK_S:
                a = tl.where(mask, a, 0.0)
        if HAS_GATE:
            gate = tl.load(_at(gate_ptr, _off(n0, s0, c0, sgn, sgs, sgc, WIDE), rel_g, False), mask=mask)
            a = tl.where(gate <= 0, 0.0, a)
        if WANT_SUM_U:
            acc_a += a
        if HAS_V:
            b = tl.load(_at(v_ptr, _off(n0, s0, c0, svn, svs, svc, WIDE), rel_v, False), mask=mask, other=0.0).to(ACC)
            if HAS_MU_V:
                b = b - mu_v[None, :]
                if MASK_N or MASK_S:
                    b = tl.where(mask, b, 0.0)
            acc_ab += a * b
        nb, sb = _advance(nb, sb, SB, ONE_S_BLOCK)
    p_out = pid_p.to(tl.int64) * C + offs_c
    if WANT_SUM_U:
        tl.store(sum_u_p_ptr + p_out, _sum_nc(acc_a), mask=m_c)
    if HAS_V:
        tl.store(sum_uv_p_ptr + p_out, _sum_nc(acc_ab), mask=m_c)


@triton.jit
def channel_affine_kernel(
    out_ptr,
    t1_ptr,
    mu1_ptr,
    a1_ptr,
    t2_ptr,
    mu2_ptr,
    a2_ptr,
    g_ptr,
    gate_ptr,
    N,
    S,
    C,
    son,
    sos,
    soc,
    s1n,
    s1s,
    s1c,
    s2n,
    s2s,
    s2c,
    sgn,
    sgs,
    sgc,
    SB,
    T,
    TPP,
    GATE: tl.constexpr,
    RELU: tl.constexpr,
    HAS_T1: tl.constexpr,
    HAS_MU1: tl.constexpr,
    HAS_T2: tl.constexpr,
    HAS_MU2: tl.constexpr,
    HAS_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_S: tl.constexpr,
    MASK_C: tl.constexpr,
    WIDE: tl.constexpr,
    ONE_S_BLOCK: tl.constexpr,
    SAME_STRIDES: tl.constexpr,
    VEC: tl.constexpr,
    INNER_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """out = a1[c]·(t1 - mu1[c]) + a2[c]·(t2 - mu2[c]) + g[c], every term optional, over a chunk of TPP
    tiles per program (the per-channel values are loaded once per program).

    Fused activations: RELU clamps the result at 0 (keeping NaN), and ``gate`` zeroes where gate <= 0 either
    ``t1`` (GATE == 1) or the whole output (GATE == 2: ReLU's derivative as a differentiable primitive).
    SAME_STRIDES: every operand has the output's strides.
    """
    pid_c, pid_p, c0, offs_c, m_c = _program(C, BLOCK_C)
    son, sos, soc = _aligned_strides(son, sos, soc, VEC, INNER_C)
    s1n, s1s, s1c = _other_strides(son, sos, soc, s1n, s1s, s1c, SAME_STRIDES, VEC, INNER_C)
    s2n, s2s, s2c = _other_strides(son, sos, soc, s2n, s2s, s2c, SAME_STRIDES, VEC, INNER_C)
    sgn, sgs, sgc = _other_strides(son, sos, soc, sgn, sgs, sgc, SAME_STRIDES, VEC, INNER_C)
    S, C = _aligned_extents(S, C, VEC, INNER_C)
    rel_o = _rel_offsets(son, sos, soc, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_1 = _other_rel(rel_o, s1n, s1s, s1c, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_2 = _other_rel(rel_o, s2n, s2s, s2c, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    rel_g = _other_rel(rel_o, sgn, sgs, sgc, SAME_STRIDES, BLOCK_N, BLOCK_S, BLOCK_C, WIDE)
    if HAS_T1:
        a1 = tl.load(a1_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
        if HAS_MU1:
            mu1 = tl.load(mu1_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    if HAS_T2:
        a2 = tl.load(a2_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
        if HAS_MU2:
            mu2 = tl.load(mu2_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    if HAS_G:
        g = tl.load(g_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    t0 = pid_p * TPP
    t1 = tl.minimum(t0 + TPP, T)
    nb, sb = _tile_start(t0, SB, BLOCK_N, BLOCK_S, WIDE)
    for _ in range(t0, t1):
        n0, s0, mask = _tile(nb, sb, c0, N, S, C, BLOCK_N, BLOCK_S, BLOCK_C, MASK_N, MASK_S, MASK_C, ONE_S_BLOCK)
        if GATE != 0:
            gate = tl.load(_at(gate_ptr, _off(n0, s0, c0, sgn, sgs, sgc, WIDE), rel_g, False), mask=mask)
        out = tl.zeros([BLOCK_N * BLOCK_S, BLOCK_C], dtype=ACC)
        if HAS_T1:
            v1 = tl.load(_at(t1_ptr, _off(n0, s0, c0, s1n, s1s, s1c, WIDE), rel_1, False), mask=mask).to(ACC)
            if HAS_MU1:
                v1 = v1 - mu1[None, :]
            if GATE == 1:
                v1 = tl.where(gate <= 0, 0.0, v1)
            out = v1 * a1[None, :]
        if HAS_T2:
            v2 = tl.load(_at(t2_ptr, _off(n0, s0, c0, s2n, s2s, s2c, WIDE), rel_2, False), mask=mask).to(ACC)
            if HAS_MU2:
                v2 = v2 - mu2[None, :]
            if HAS_T1:
                out += v2 * a2[None, :]
            else:
                out = v2 * a2[None, :]
        if HAS_G:
            if HAS_T1 or HAS_T2:
                out += g[None, :]
            else:
                out += tl.broadcast_to(g[None, :], [BLOCK_N * BLOCK_S, BLOCK_C])
        if RELU:
            out = _relu(out)
        if GATE == 2:
            out = tl.where(gate <= 0, 0.0, out)
        tl.store(
            _at(out_ptr, _off(n0, s0, c0, son, sos, soc, WIDE), rel_o, False),
            out.to(out_ptr.dtype.element_ty),
            mask=mask,
        )
        nb, sb = _advance(nb, sb, SB, ONE_S_BLOCK)
