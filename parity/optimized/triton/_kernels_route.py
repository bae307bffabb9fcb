"""Triton kernel of `route` (router top-k: softmax, DeepSeek-V3 grouped top-k with bias, and
DeepSeek-V4's sqrtsoftplus scores). Imported lazily by `route.py`.

A program takes BLOCK_T tokens, each as a [NG_PAD, GS_PAD] tile of its experts (expert g * GS +
j; n_group groups of GS experts; padding lanes are never chosen). With E <= 512 a program is one
warp: the lanes hold a group's experts and each thread the groups and tokens, so every reduction
is in-thread work plus warp shuffles, with no shared memory and no barrier (four warps on a
256-expert tile spent ~33 us a program on ~60 cross-warp reductions and register spills).

Selection is on an int32 key whose integer order is the float order of the key (`_sortable`: NaN
as -inf, as the reference ranks it last, and -0.0 as +0.0, equal keys); INT32_MIN marks an expert
already taken, in a dropped group, or padding (below every real key). A pick is two int32 max
reductions (each a warp `redux` after the in-thread part): the largest key, then among the
experts holding it the largest `INT32_MAX - id`, i.e. the lowest id (the reference's tie rule, so
ties are never a source of disagreement).
The weights are computed after the k picks from the picked logits, reloaded (the score function
is elementwise, so the value is the one the tile would hold), not by a reduction a pick.

Keys: "softmax" ranks by the logit itself (softmax is increasing in it, as the reference
does), so its ids are exactly the reference's; "dsv3" `sigmoid(l) + bias`, "sqrtsoftplus"
`sqrt(softplus(l)) + bias` in float32, within the contract's key bounds (`route_key_bounds`):
softplus is `max(l, 0) + log1p(exp(-|l|))` with log1p from the series `2 atanh(z)`, z =
u / (2 + u) <= 1/3 (no rounding of 1 + exp(l): small scores keep their relative accuracy).
Groups: the sum of the two largest keys of each group (one float32 addition, as the
reference; NaN keys count as -inf), the topk_group best groups with ties to the lower group id.
Weights: the selected score (softmax: exp(l - max) / sum), divided by the sum of the k if
renormalizing, times the scaling factor; a token with a NaN key gets NaN weights.
"""

import triton
import triton.language as tl

from parity.optimized.triton._kernels_fp8_block_quant import to_f32

_INT_MIN = tl.constexpr(-2147483648)
_BIG = tl.constexpr(2147483647)
_KEPT = tl.constexpr(-2147483647)  # a kept group: above padding, below _sortable(-inf)

# Expert slots a thread holds: a program's tokens x padded experts / threads. 8 slots a token
# at E=256 on one warp; two tokens a program once there are enough tokens to fill the GPU.
TILE = {"slots": 16, "wide_t": 2048}


@triton.jit
def _sortable(x):
    """int32 whose order is the float order of float32 `x` (-0.0 as +0.0, NaN as -inf)."""
    x = tl.where(x != x, float("-inf"), x)
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _unsortable(s):
    """The float32 of a `_sortable` int32 (the map is its own inverse on the bits)."""
    return (s ^ ((s >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _log1p_small(u):
    """log(1 + u) for u in [0, 1]: 2 atanh(z), z = u / (2 + u) in [0, 1/3], series to z**19
    (the next term is below 2**-30 relative)."""
    z = u / (2.0 + u)
    z2 = z * z
    p = 1.0 / 19.0
    p = p * z2 + 1.0 / 17.0
    p = p * z2 + 1.0 / 15.0
    p = p * z2 + 1.0 / 13.0
    p = p * z2 + 1.0 / 11.0
    p = p * z2 + 1.0 / 9.0
    p = p * z2 + 1.0 / 7.0
    p = p * z2 + 1.0 / 5.0
    p = p * z2 + 1.0 / 3.0
    return 2.0 * z + 2.0 * z * z2 * p


@triton.jit
def _score(x, METHOD: tl.constexpr):
    """dsv3 (1): sigmoid(x); sqrtsoftplus (2): sqrt(log(1 + exp(x)))."""
    if METHOD == 1:
        return 1.0 / (1.0 + tl.exp(-x))
    else:
        sp = tl.maximum(x, 0.0) + _log1p_small(tl.exp(-tl.abs(x)))
        sp = tl.where(x == float("inf"), float("inf"), sp)
        return tl.sqrt_rn(sp)


@triton.jit
def _max2(v):
    """Max over the last two axes of [BLOCK_T, NG_PAD, GS_PAD]: the groups first (in-thread),
    then the lanes (shuffles), so the shuffles carry one value a token."""
    return tl.max(tl.max(v, axis=1), axis=1)


# Constexprs: the tile, the score method, renormalisation, k and topk_group (unrolled picks).
# T, E and the groups are run-time ints (each distinct constexpr is a compile on a GPU): the
# masks follow them. E and GS keep triton's divisibility specialisation (a few keys): the
# logits' addresses t * E + g * GS + j need it for 16-byte loads. k, topk_group, the method and
# renormalisation were run-time too (a loop and uniform branches: 338 -> 152 keys in 3000 of
# the nightly's draws) and cost 10-15% of the kernel's time on the H100 (2026-12-06, graph
# replay, DeepSeek-V3 routing: T 1 3.35 -> 3.91 us, T 8192 19.5 -> 22.0); as constexprs the
# kernel is within 1.5-2.5% of the all-constexpr one (3.40, 19.8 us).
@triton.jit(do_not_specialize=["T", "NG"])
def _route_kernel(
    l_ptr,  # [T, E]
    b_ptr,  # [E] (unused for softmax)
    w_ptr,  # float32 [T, K]
    i_ptr,  # int32 [T, K]
    T,
    scale,
    E,
    GS,  # experts a group
    NG,
    NG_PAD: tl.constexpr,
    GS_PAD: tl.constexpr,
    K_PAD: tl.constexpr,
    TOPK_GROUP: tl.constexpr,
    K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    METHOD: tl.constexpr,  # 0 softmax, 1 dsv3, 2 sqrtsoftplus
    RENORM: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    g = tl.arange(0, NG_PAD)
    j = tl.arange(0, GS_PAD)
    ids = (g[:, None] * GS + j[None, :])[None, :, :]  # [1, NG_PAD, GS_PAD]
    emask = ((g < NG)[:, None] & (j < GS)[None, :])[None, :, :]
    tmask = t < T
    row = t.to(tl.int64) * E  # int64: T * E may pass 2**31
    x = tl.load(l_ptr + row[:, None, None] + ids, mask=tmask[:, None, None] & emask, other=0.0)
    x = to_f32(x)
    if METHOD == 0:
        key = x
    else:
        key = _score(x, METHOD) + to_f32(tl.load(b_ptr + ids, mask=emask, other=0.0))
    # a NaN key (NaN logit, NaN bias, or +inf score with a -inf bias) makes the row NaN, as in
    # the reference (both scores are NaN at a NaN logit)
    nan_row = _max2((emask & (key != key)).to(tl.int32)) > 0
    hi = tl.where(emask, _sortable(key), _INT_MIN)  # INT_MIN: never picked
    lo = ids ^ _BIG  # INT32_MAX - id: the larger, the lower the id

    if NG_PAD > 1:  # NG > 1 (NG_PAD is NG rounded up to a power of two)
        # Group score: the sum of the two largest keys (NaN as -inf), one float32 addition; the
        # second is the first again when two experts hold it.
        m1 = tl.max(hi, axis=2)  # [BLOCK_T, NG_PAD]
        gscore = _unsortable(m1)
        if GS_PAD > 1:  # GS > 1
            top = hi == m1[:, :, None]
            m2 = tl.max(tl.where(top, _INT_MIN, hi), axis=2)
            m2 = tl.where(tl.sum(top.to(tl.int32), axis=2) > 1, m1, m2)
            gscore = gscore + _unsortable(m2)
        # The topk_group best groups, ties to the lower group id (in-thread: a thread holds
        # every group of its tokens); a kept group's key becomes _KEPT, below every real key.
        gk = tl.where((g < NG)[None, :], _sortable(gscore), _INT_MIN)
        for _ in tl.static_range(TOPK_GROUP):
            best = gk == tl.max(gk, axis=1)[:, None]
            first = tl.min(tl.where(best, g[None, :], NG_PAD), axis=1)
            gk = tl.where(g[None, :] == first[:, None], _KEPT, gk)
        hi = tl.where((gk == _KEPT)[:, :, None], hi, _INT_MIN)

    # Pick n: the largest key, then the lowest id holding it (the largest lo), two int32 max
    # reductions; the picked expert leaves by its id.
    kk = tl.arange(0, K_PAD)
    out_i = tl.zeros((BLOCK_T, K_PAD), dtype=tl.int32)
    for n in tl.static_range(K):
        m_hi = _max2(hi)
        m_lo = _max2(tl.where(hi == m_hi[:, None, None], lo, -1))
        hi = tl.where(lo == m_lo[:, None, None], _INT_MIN, hi)
        out_i = tl.where(kk[None, :] == n, (m_lo ^ _BIG)[:, None], out_i)

    omask = tmask[:, None] & (kk < K)[None, :]
    xs = to_f32(tl.load(l_ptr + row[:, None] + out_i, mask=omask, other=0.0))
    if METHOD == 0:
        mx = _max2(tl.where(x != x, float("-inf"), tl.where(emask, x, float("-inf"))))
        ex = tl.where(emask, tl.exp(x - mx[:, None, None]), 0.0)
        out_w = tl.exp(xs - mx[:, None]) / tl.sum(tl.sum(ex, axis=1), axis=1)[:, None]
    else:
        out_w = _score(xs, METHOD)
    out_w = tl.where(omask, out_w, 0.0)
    if RENORM:
        out_w = out_w / tl.sum(out_w, axis=1)[:, None]
    out_w = out_w * scale
    out_w = tl.where(nan_row[:, None], float("nan"), out_w)
    o = t.to(tl.int64)[:, None] * K + kk[None, :]
    tl.store(w_ptr + o, out_w, mask=omask)
    tl.store(i_ptr + o, out_i, mask=omask)


METHOD_CODES = {"softmax": 0, "dsv3": 1, "sqrtsoftplus": 2}


def config(t: int, e: int, n_group: int) -> tuple[int, int, int, int]:
    """(NG_PAD, GS_PAD, BLOCK_T, num_warps) of a launch: one warp up to 512 padded experts
    (at least 32 but where a group is one expert: the group score's second key needs GS > 1),
    more for wider tiles (TILE["slots"] expert slots a thread and token at most); one token a
    program up to TILE["wide_t"] tokens (the time of a program is the latency of its chain of
    reductions: more programs in flight), as many as fit TILE["slots"] above (fewer programs)."""
    ng_pad = triton.next_power_of_2(n_group)
    gs_pad = triton.next_power_of_2(e // n_group)
    if gs_pad > 1:  # at least a warp's 32 lanes a token: small E share one tile shape (keys)
        gs_pad = max(gs_pad, 32 // ng_pad)
    width = ng_pad * gs_pad
    warps = min(8, max(1, width // 512))
    block_t = 1 if t <= TILE["wide_t"] else max(1, TILE["slots"] * 32 * warps // width)
    return ng_pad, gs_pad, block_t, warps
