"""Triton kernel of `route` (router top-k: softmax, DeepSeek-V3 grouped top-k with bias, and
DeepSeek-V4's sqrtsoftplus scores). Imported lazily by `route.py`.

A program takes BLOCK_T tokens, each as a [NG_PAD, GS_PAD] tile of its experts (expert g * GS +
j; n_group groups of GS experts; padding lanes are never chosen). Selection is on an int32 key
whose integer order is the float order of the key (`_sortable`): NaN keys count as -inf (the
reference ranks them last), -0.0 as +0.0 (they are equal keys), and INT32_MIN marks an expert
already taken or outside the kept groups (below every real key, -inf included). Each of the k
picks is a max over the tile and, among equal keys, the lowest expert id: the reference's tie
rule, so equal keys are never a source of disagreement.

Keys: "softmax" ranks by the logit itself (softmax is increasing in it, as the reference
does), so its ids are exactly the reference's; "dsv3" `sigmoid(l) + bias`, "sqrtsoftplus"
`sqrt(softplus(l)) + bias` in float32, within the contract's key bounds (`route_key_bounds`):
softplus is `max(l, 0) + log1p(exp(-|l|))` with log1p from the series `2 atanh(z)`, z =
u / (2 + u) <= 1/3 (no rounding of 1 + exp(l): small scores keep their relative accuracy).
Groups: the sum of the two largest keys of each group (one float32 addition, as the
reference), the topk_group best groups with ties to the lower group id.
Weights: the selected score (softmax: exp(l - max) / sum), divided by the sum of the k if
renormalizing, times the scaling factor; a token with a NaN key gets NaN weights.
"""

import triton
import triton.language as tl

from parity.optimized.triton._kernels_fp8_block_quant import to_f32

_INT_MIN = tl.constexpr(-2147483648)
_BIG = tl.constexpr(2147483647)

TILE = {"elems": 4096}  # expert slots a program (tokens x padded experts)


@triton.jit
def _sortable(x):
    """int32 whose order is the float order of float32 `x` (-0.0 as +0.0, NaN as -inf)."""
    x = tl.where(x != x, float("-inf"), x)
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


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
def _argmax_lowest(key, ids):
    """(max key, lowest id holding it) over the last two axes of [BLOCK_T, NG_PAD, GS_PAD]."""
    m = tl.max(tl.max(key, axis=2), axis=1)
    hit = key == m[:, None, None]
    idx = tl.min(tl.min(tl.where(hit, ids, _BIG), axis=2), axis=1)
    return m, idx


@triton.jit
def _route_kernel(
    l_ptr,  # [T, E]
    b_ptr,  # [E] (unused for softmax)
    w_ptr,  # float32 [T, K]
    i_ptr,  # int32 [T, K]
    T,
    scale,
    E: tl.constexpr,
    GS: tl.constexpr,  # experts a group
    NG: tl.constexpr,
    NG_PAD: tl.constexpr,
    GS_PAD: tl.constexpr,
    TOPK_GROUP: tl.constexpr,
    K: tl.constexpr,
    K_PAD: tl.constexpr,
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
    mask = tmask[:, None, None] & emask
    x = tl.load(l_ptr + t.to(tl.int64)[:, None, None] * E + ids, mask=mask, other=float("-inf"))
    x = to_f32(x)
    nan_row = tl.max(tl.max((x != x).to(tl.int32), axis=2), axis=1) > 0
    if METHOD == 0:
        key = x
        mx = tl.max(tl.max(tl.where(x != x, float("-inf"), x), axis=2), axis=1)
        ex = tl.exp(x - mx[:, None, None])
        ex = tl.where(emask, ex, 0.0)
        score = ex / tl.sum(tl.sum(ex, axis=2), axis=1)[:, None, None]
    else:
        score = _score(x, METHOD)
        bias = to_f32(tl.load(b_ptr + ids, mask=emask, other=0.0))
        key = score + bias
    ik = tl.where(emask, _sortable(key), _INT_MIN)
    # a NaN key (NaN logit, NaN bias, or +inf score with a -inf bias) makes the row NaN, as
    # in the reference
    nan_row = nan_row | (tl.max(tl.max((emask & (key != key)).to(tl.int32), axis=2), axis=1) > 0)

    if NG > 1:
        # Group score: the sum of the two largest keys (NaN as -inf), one float32 addition.
        kf = tl.where(key != key, float("-inf"), key)
        kf = tl.where(emask, kf, float("-inf"))
        m1 = tl.max(kf, axis=2)  # [BLOCK_T, NG_PAD]
        first = tl.min(tl.where(kf == m1[:, :, None], ids, _BIG), axis=2)
        if GS > 1:
            m2 = tl.max(tl.where(ids == first[:, :, None], float("-inf"), kf), axis=2)
            gscore = m1 + m2
        else:
            gscore = m1
        gk = tl.where((g < NG)[None, :], _sortable(gscore), _INT_MIN)
        keep = tl.zeros((BLOCK_T, NG_PAD), dtype=tl.int1)
        for _ in tl.static_range(TOPK_GROUP):
            gm = tl.max(gk, axis=1)
            gi = tl.min(tl.where(gk == gm[:, None], g[None, :], _BIG), axis=1)
            pick = g[None, :] == gi[:, None]
            keep = keep | pick
            gk = tl.where(pick, _INT_MIN, gk)
        ik = tl.where(keep[:, :, None], ik, _INT_MIN)

    kk = tl.arange(0, K_PAD)
    out_w = tl.zeros((BLOCK_T, K_PAD), dtype=tl.float32)
    out_i = tl.zeros((BLOCK_T, K_PAD), dtype=tl.int32)
    for n in tl.static_range(K):
        _, idx = _argmax_lowest(ik, ids)
        sel = ids == idx[:, None, None]
        w = tl.sum(tl.sum(tl.where(sel, score, 0.0), axis=2), axis=1)
        ik = tl.where(sel, _INT_MIN, ik)
        out_w = tl.where(kk[None, :] == n, w[:, None], out_w)
        out_i = tl.where(kk[None, :] == n, idx[:, None], out_i)
    if RENORM:
        out_w = out_w / tl.sum(out_w, axis=1)[:, None]
    out_w = out_w * scale
    out_w = tl.where(nan_row[:, None], float("nan"), out_w)
    omask = tmask[:, None] & (kk < K)[None, :]
    o = t.to(tl.int64)[:, None] * K + kk[None, :]
    tl.store(w_ptr + o, out_w, mask=omask)
    tl.store(i_ptr + o, out_i, mask=omask)


METHOD_CODES = {"softmax": 0, "dsv3": 1, "sqrtsoftplus": 2}


def launch(logits, bias, weights, ids, *, k, method, n_group, topk_group, renormalize, scale):
    """logits [T, E] contiguous (T > 0), bias [E] contiguous or None; weights float32 [T, k]
    and ids int32 [T, k] contiguous."""
    t, e = logits.shape
    gs = e // n_group
    ng_pad, gs_pad = triton.next_power_of_2(n_group), triton.next_power_of_2(gs)
    block_t = max(1, min(triton.next_power_of_2(t), TILE["elems"] // (ng_pad * gs_pad)))
    _route_kernel[(triton.cdiv(t, block_t),)](
        logits,
        logits if bias is None else bias,
        weights,
        ids,
        t,
        scale,
        E=e,
        GS=gs,
        NG=n_group,
        NG_PAD=ng_pad,
        GS_PAD=gs_pad,
        TOPK_GROUP=topk_group,
        K=k,
        K_PAD=triton.next_power_of_2(k),
        BLOCK_T=block_t,
        METHOD=METHOD_CODES[method],
        RENORM=renormalize,
        num_warps=4,
    )
