"""Triton kernels for batch normalization.

Every kernel sees its tensors as a 2-d matrix of ``R = N * S`` rows by ``C`` channels, where row ``r``
is sample ``n = r // S`` at flattened spatial position ``s = r % S`` and an element lives at
``n * stride_n + s * stride_s + c * stride_c``. The same code therefore serves contiguous (NC...) and
channels_last tensors, and many non-contiguous views, without copies: the launcher only picks the tile
shape (a tall ``BLOCK_R x 1`` column when channels are outermost, a ``BLOCK_R x BLOCK_C`` tile when they
are innermost) and passes the strides.

Programs cover (row-block, channel-block) tiles, numbered on a flat 1-d grid (CUDA's y and z grid axes
stop at 65535 blocks), so a layer with few channels still fills the GPU and one with very many, or a
tensor beyond 2^31 elements, still launches. Reductions write per-row-block partials and are finished by
a second, O(C * row-blocks), kernel or by a torch sum over the partials: no atomics, so results are
bit-for-bit deterministic.

Kernels have no side effects beyond their outputs; running statistics are updated by the caller.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(
    R,
    C,
    S,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Row/channel offsets and masks of this program's tile, in int64 (channel blocks vary fastest)."""
    pid = tl.program_id(0).to(tl.int64)
    num_pid_c = tl.cdiv(C, BLOCK_C)
    pid_r = pid // num_pid_c
    pid_c = pid - pid_r * num_pid_c
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    m_r = offs_r < R
    m_c = offs_c < C
    n = offs_r // S
    s = offs_r - n * S
    return pid_r, offs_r, offs_c, m_r, m_c, n, s


@triton.jit
def _centered(
    t_ptr,
    mu_ptr,
    n,
    s,
    offs_c,
    mask,
    m_c,
    stride_n,
    stride_c,
    stride_s,
    HAS_MU: tl.constexpr,
    ACC: tl.constexpr,
):
    """Load a tile of ``t`` upcast to ACC, minus the per-channel ``mu`` when given (0 on masked lanes)."""
    p_t = t_ptr + (n * stride_n + s * stride_s)[:, None] + (offs_c * stride_c)[None, :]
    t = tl.load(p_t, mask=mask, other=0.0).to(ACC)
    if HAS_MU:
        mu = tl.load(mu_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
        t = tl.where(mask, t - mu[None, :], 0.0)
    return t


@triton.jit
def _gated(t, gate_ptr, n, s, offs_c, mask, stride_n, stride_c, stride_s):
    """``t`` where the matching element of ``gate`` is > 0, else 0 (the ReLU derivative mask)."""
    p_gate = gate_ptr + (n * stride_n + s * stride_s)[:, None] + (offs_c * stride_c)[None, :]
    gate = tl.load(p_gate, mask=mask, other=0.0)
    return tl.where(gate > 0, t, 0.0)


@triton.jit
def stats_partial_kernel(
    x_ptr,
    mean_p_ptr,
    m2_p_ptr,
    R,
    C,
    S,
    stride_xn,
    stride_xc,
    stride_xs,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per (row-block, channel) partial statistics: the block's mean and M2 = Σ (x - mean)².

    Uses the shifted-data algorithm with the block's first row as the shift K: with d = x - K,
    mean = K + Σd / n and M2 = Σd² - (Σd)² / n. The shift is a sample of the channel, so d is of the order
    of the channel's spread and nothing cancels catastrophically even when |mean| >> std; a constant
    channel gives d = 0 and therefore exactly zero M2.
    """
    pid_r, offs_r, offs_c, m_r, m_c, n, s = _tile(R, C, S, BLOCK_R, BLOCK_C)
    mask = m_r[:, None] & m_c[None, :]
    row0 = pid_r * BLOCK_R
    n0 = row0 // S
    s0 = row0 - n0 * S
    k = tl.load(x_ptr + n0 * stride_xn + s0 * stride_xs + offs_c * stride_xc, mask=m_c, other=0.0).to(ACC)
    x = tl.load(
        x_ptr + (n * stride_xn + s * stride_xs)[:, None] + (offs_c * stride_xc)[None, :], mask=mask, other=0.0
    ).to(ACC)
    d = tl.where(mask, x - k[None, :], 0.0)
    cnt = tl.minimum(R - row0, BLOCK_R).to(ACC)
    sd = tl.sum(d, axis=0)
    mean = k + sd / cnt
    m2 = tl.maximum(tl.sum(d * d, axis=0) - sd * sd / cnt, 0.0)
    p_out = pid_r * C + offs_c
    tl.store(mean_p_ptr + p_out, mean, mask=m_c)
    tl.store(m2_p_ptr + p_out, m2, mask=m_c)


@triton.jit
def _partial_block(
    mean_p_ptr,
    count_p_ptr,
    p_start,
    offs_c,
    m_c,
    P,
    R,
    C,
    HAS_COUNTS: tl.constexpr,
    ROWS_PER_PARTIAL: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    """Counts (BLOCK_P,), means (BLOCK_P, BLOCK_C), mask and offsets of the partials from ``p_start`` on."""
    offs_p = p_start + tl.arange(0, BLOCK_P).to(tl.int64)
    m_p = offs_p < P
    if HAS_COUNTS:
        cnt = tl.load(count_p_ptr + offs_p, mask=m_p, other=0).to(ACC)
    else:
        cnt = tl.where(m_p, tl.minimum(R - offs_p * ROWS_PER_PARTIAL, ROWS_PER_PARTIAL), 0).to(ACC)
    mask = m_p[:, None] & m_c[None, :]
    offs = offs_p[:, None] * C + offs_c[None, :]
    mp = tl.load(mean_p_ptr + offs, mask=mask, other=0.0).to(ACC)
    return cnt, mp, mask, offs


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
    HAS_COUNTS: tl.constexpr,
    ROWS_PER_PARTIAL: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Merge the P partials of each channel with Chan's parallel formula.

    mean = m_0 + Σ n_p (m_p - m_0) / R   (shifted by the first partial's mean)
    M2   = Σ M2_p + Σ n_p (m_p - mean)²
    and write the mean and the biased variance M2 / R.

    Partial p covers ``count_p[p]`` elements when HAS_COUNTS (e.g. one partial per rank, some possibly
    empty), else ROWS_PER_PARTIAL (the last one the remainder of R).
    """
    pid_c = tl.program_id(0).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    m_c = offs_c < C
    m0 = tl.load(mean_p_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for p_start in range(0, P, BLOCK_P):
        cnt, mp, mask, _ = _partial_block(
            mean_p_ptr, count_p_ptr, p_start, offs_c, m_c, P, R, C, HAS_COUNTS, ROWS_PER_PARTIAL, BLOCK_P, ACC
        )
        acc += tl.sum(tl.where(mask, cnt[:, None] * (mp - m0[None, :]), 0.0), axis=0)
    mean = m0 + acc / R
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for p_start in range(0, P, BLOCK_P):
        cnt, mp, mask, offs = _partial_block(
            mean_p_ptr, count_p_ptr, p_start, offs_c, m_c, P, R, C, HAS_COUNTS, ROWS_PER_PARTIAL, BLOCK_P, ACC
        )
        m2p = tl.load(m2_p_ptr + offs, mask=mask, other=0.0).to(ACC)
        dm = mp - mean[None, :]
        m2 += tl.sum(tl.where(mask, m2p + cnt[:, None] * dm * dm, 0.0), axis=0)
    var = m2 / R
    tl.store(mean_ptr + offs_c, mean, mask=m_c)
    tl.store(var_ptr + offs_c, var, mask=m_c)


@triton.jit
def channel_sums_kernel(
    u_ptr,
    mu_u_ptr,
    v_ptr,
    mu_v_ptr,
    sum_u_p_ptr,
    sum_uv_p_ptr,
    gate_ptr,
    R,
    C,
    S,
    stride_un,
    stride_uc,
    stride_us,
    stride_vn,
    stride_vc,
    stride_vs,
    stride_gn,
    stride_gc,
    stride_gs,
    HAS_GATE: tl.constexpr,
    HAS_MU_U: tl.constexpr,
    HAS_V: tl.constexpr,
    HAS_MU_V: tl.constexpr,
    WANT_SUM_U: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per (row-block, channel) partial sums Σ a and Σ a·b with a = u - mu_u and b = v - mu_v.

    With HAS_GATE, ``a`` is zeroed where ``gate <= 0``: the ReLU mask of a fused batch norm + ReLU, so the
    backward reduces dy·[y > 0] without materialising it.

    The batch-norm backward's reductions are Σ dy and Σ dy·(x - mean) (= Σ dy·x̂ / invstd); centring
    ``x`` on the channel mean before multiplying keeps Σ dy·x̂ accurate for channels with a large mean.
    """
    pid_r, offs_r, offs_c, m_r, m_c, n, s = _tile(R, C, S, BLOCK_R, BLOCK_C)
    mask = m_r[:, None] & m_c[None, :]
    a = _centered(u_ptr, mu_u_ptr, n, s, offs_c, mask, m_c, stride_un, stride_uc, stride_us, HAS_MU_U, ACC)
    if HAS_GATE:
        a = _gated(a, gate_ptr, n, s, offs_c, mask, stride_gn, stride_gc, stride_gs)
    p_out = pid_r * C + offs_c
    if WANT_SUM_U:
        tl.store(sum_u_p_ptr + p_out, tl.sum(a, axis=0), mask=m_c)
    if HAS_V:
        b = _centered(v_ptr, mu_v_ptr, n, s, offs_c, mask, m_c, stride_vn, stride_vc, stride_vs, HAS_MU_V, ACC)
        tl.store(sum_uv_p_ptr + p_out, tl.sum(a * b, axis=0), mask=m_c)


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
    R,
    C,
    S,
    stride_on,
    stride_oc,
    stride_os,
    stride_1n,
    stride_1c,
    stride_1s,
    stride_2n,
    stride_2c,
    stride_2s,
    stride_gn,
    stride_gc,
    stride_gs,
    GATE: tl.constexpr,
    RELU: tl.constexpr,
    HAS_T1: tl.constexpr,
    HAS_MU1: tl.constexpr,
    HAS_T2: tl.constexpr,
    HAS_MU2: tl.constexpr,
    HAS_G: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """out = a1[c]·(t1 - mu1[c]) + a2[c]·(t2 - mu2[c]) + g[c], every term optional.

    Covers the normalisation y = (x - mean)·(weight·invstd) + bias (train and eval), the input gradient
    dx = (weight·invstd)·dy + β·(x - mean) + γ, and every per-channel combination the higher-order
    gradients need. Fused activations: ``t2`` with ``a2 = 1`` adds a residual, RELU clamps the result at
    0, and ``gate`` masks by [gate > 0] either ``t1`` (GATE == 1: dy·[y > 0] in a fused ReLU's backward)
    or the whole output (GATE == 2: ReLU's derivative as a differentiable primitive).
    """
    pid_r, offs_r, offs_c, m_r, m_c, n, s = _tile(R, C, S, BLOCK_R, BLOCK_C)
    mask = m_r[:, None] & m_c[None, :]
    out = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
    if HAS_T1:
        t1 = _centered(t1_ptr, mu1_ptr, n, s, offs_c, mask, m_c, stride_1n, stride_1c, stride_1s, HAS_MU1, ACC)
        if GATE == 1:
            t1 = _gated(t1, gate_ptr, n, s, offs_c, mask, stride_gn, stride_gc, stride_gs)
        a1 = tl.load(a1_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
        out += t1 * a1[None, :]
    if HAS_T2:
        t2 = _centered(t2_ptr, mu2_ptr, n, s, offs_c, mask, m_c, stride_2n, stride_2c, stride_2s, HAS_MU2, ACC)
        a2 = tl.load(a2_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
        out += t2 * a2[None, :]
    if HAS_G:
        g = tl.load(g_ptr + offs_c, mask=m_c, other=0.0).to(ACC)
        out += g[None, :]
    if RELU:
        out = tl.maximum(out, 0.0)
    if GATE == 2:
        out = _gated(out, gate_ptr, n, s, offs_c, mask, stride_gn, stride_gc, stride_gs)
    p_out = out_ptr + (n * stride_on + s * stride_os)[:, None] + (offs_c * stride_oc)[None, :]
    tl.store(p_out, out.to(out_ptr.dtype.element_ty), mask=mask)
