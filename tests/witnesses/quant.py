"""Broken quantizers (fp8_quant, fp8_block_quant, silu_mul_fp8_quant, mxfp4_quant,
mxfp4_dequant), one or more per property, each a bug seen in (or one step from) real kernels."""

import torch
import torch.nn.functional as F

from parity.reference import (
    fp8_block_quant as ref_fp8_block_quant,
)
from parity.reference import (
    fp8_quant as ref_fp8_quant,
)
from parity.reference import (
    mxfp4_dequant as ref_mxfp4_dequant,
)
from parity.reference import (
    mxfp4_quant as ref_mxfp4_quant,
)
from parity.reference import (
    silu_mul_fp8_quant as ref_silu_mul_fp8_quant,
)
from parity.reference.numerics import (
    E2M1_VALUES,
    e2m1_decode,
    e2m1_encode,
    exp2i,
    floor_log2,
    pack_nibbles,
    round_to_e4m3,
    ue8m0_pow2_ceil,
    unpack_nibbles,
)
from parity.reference.swiglu import swiglu_math
from tests.witnesses import witness

FP8 = torch.float8_e4m3fn
F32_MAX = torch.finfo(torch.float32).max


def _layout(s, column_major):
    if not column_major:
        return s.contiguous()
    m, g = s.shape
    out = torch.empty_strided((m, g), (1, max(m, 1)), dtype=s.dtype, device=s.device)
    out.copy_(s)
    return out


def _default_scale(amax, scale_format, eps):
    s = amax.clamp(min=eps) / 448.0
    return ue8m0_pow2_ceil(s) if scale_format == "ue8m0" else s


def _fp8_groups(
    y32, gs, scale_format, eps, *, amax=None, scale=None, quotient=None, rounding=round_to_e4m3
):
    """Row-group FP8 quantization of float32 `y32 [M, K]` with replaceable pieces."""
    m, k = y32.shape
    groups = y32.reshape(m, k // gs, gs)
    a = amax(groups) if amax else groups.abs().clamp(max=F32_MAX).amax(-1)
    s = scale(a) if scale else _default_scale(a, scale_format, eps)
    v = quotient(groups, s) if quotient else groups / s.unsqueeze(-1)
    return rounding(v).reshape(m, k).to(FP8), s


def _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, **pieces):
    q, s = _fp8_groups(x.to(torch.float32), group_size, scale_format, eps, **pieces)
    return q, _layout(s, column_major_scales)


def _e4m3_step(v):
    binade = floor_log2(v).clamp(min=-6)
    return exp2i(binade - 3)


def _round_half_away(v):
    """E4M3 rounding with ties away from zero (the classic convention bug)."""
    v = v.clamp(-448.0, 448.0)
    step = _e4m3_step(v)
    return torch.sign(v) * torch.floor(v.abs() / step + 0.5) * step


# --- fp8_quant ---------------------------------------------------------------------------------


@witness("fp8_quant", "matches_reference", why="rounds ties away from zero instead of to even")
def fp8_round_half_away(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
):
    return _fp8_quant_with(
        x, group_size, scale_format, column_major_scales, eps, rounding=_round_half_away
    )


@witness("fp8_quant", "matches_reference", why="ue8m0 scale rounded to nearest, not up")
def fp8_ue8m0_nearest(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
):
    def scale(a):
        s = a.clamp(min=eps) / 448.0
        if scale_format == "ue8m0":
            s = torch.exp2(torch.round(torch.log2(s)))
        return s

    return _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, scale=scale)


@witness("fp8_quant", "matches_reference", why="no eps: an all-zero group gets s = 0, NaN codes")
def fp8_no_eps(x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10):
    def scale(a):
        s = a / 448.0
        return ue8m0_pow2_ceil(s) if scale_format == "ue8m0" else s

    return _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, scale=scale)


@witness("fp8_quant", "matches_reference", why="row-major scales when column-major was asked")
def fp8_ignores_column_major(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
):
    return _fp8_quant_with(x, group_size, scale_format, False, eps)


@witness("fp8_quant", "matches_reference", why="flushes E4M3 subnormal codes to zero")
def fp8_ftz_codes(x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10):
    def rounding(v):
        r = round_to_e4m3(v)
        return torch.where(r.abs() < 2.0**-6, r * 0.0, r)

    return _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, rounding=rounding)


@witness("fp8_quant", "matches_reference", why="reciprocal off by 8 float32 ulps (approx rcp)")
def fp8_sloppy_reciprocal(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
):
    def quotient(groups, s):
        inv = (1.0 / s) * (1.0 + 2.0**-20)
        return groups * inv.unsqueeze(-1)

    return _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, quotient=quotient)


@witness("fp8_quant", "matches_reference", why="casts without clamping: beyond 448 becomes NaN")
def fp8_nonsaturating_cast(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
):
    def rounding(v):
        r = round_to_e4m3(v)
        return torch.where(v.abs() > 448.0, float("nan"), r)

    return _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, rounding=rounding)


@witness("fp8_quant", "matches_reference", why="amax over raw |x|: inf makes the scale inf")
def fp8_inf_amax(x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10):
    return _fp8_quant_with(
        x,
        group_size,
        scale_format,
        column_major_scales,
        eps,
        amax=lambda g: g.abs().amax(-1),
    )


@witness("fp8_quant", "writes_all_outputs", why="never writes the last row of q (tail bug)")
def fp8_skips_tail(x, **kw):
    q, s = ref_fp8_quant(x, **kw)
    out = torch.empty_like(q)
    if q.shape[0] > 1:
        out[:-1] = q[:-1]
    elif q.shape[0] == 1:
        out.copy_(q)
    return out, s


@witness("fp8_quant", "inputs_unchanged", why="takes |x| in place")
def fp8_abs_in_place(x, **kw):
    out = ref_fp8_quant(x, **kw)
    x.abs_()
    return out


_calls = [0]


def _flaky(t):
    """Perturb one element of `t` every other call."""
    _calls[0] += 1
    if _calls[0] % 2 and t.numel():
        flat = t.view(torch.uint8).view(-1) if t.dtype in (FP8, torch.uint8) else t.view(-1)
        if flat.dtype == torch.uint8:
            flat[0] = flat[0] ^ 1
        else:
            flat[0] = flat[0] * 2 + 1
    return t


@witness("fp8_quant", "deterministic", why="perturbs one code every other call")
def fp8_flaky(x, **kw):
    q, s = ref_fp8_quant(x, **kw)
    return _flaky(q.clone()), s


@witness("fp8_quant", "nan_policy", why="amax with fmax semantics drops NaN")
def fp8_drops_nan(x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10):
    return _fp8_quant_with(
        x,
        group_size,
        scale_format,
        column_major_scales,
        eps,
        amax=lambda g: torch.nan_to_num(g.abs(), nan=0.0).clamp(max=F32_MAX).amax(-1),
    )


@witness("fp8_quant", "error_parity", why="no input validation")
def fp8_no_validation(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
):
    x32 = x.to(torch.float32)
    m, k = x32.shape[0], x32.shape[-1]
    gs = max(int(group_size), 1)
    q, s = _fp8_groups(x32.reshape(m, -1)[:, : (k // gs) * gs], gs, scale_format, abs(eps))
    return q, s


@witness("fp8_quant", "token_permutation", why="row 0 is quantized with the last row's scale")
@witness("fp8_quant", "batch_split", why="row 0 is quantized with the last row's scale")
def fp8_row0_uses_last_scale(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
):
    q, s = _fp8_groups(x.to(torch.float32), group_size, scale_format, eps)
    if x.shape[0] > 1:
        s[0] = s[-1]
        g0 = x[0].to(torch.float32).reshape(-1, group_size)
        q[0] = round_to_e4m3(g0 / s[0].unsqueeze(-1)).reshape(-1).to(FP8)
    return q, _layout(s, column_major_scales)


@witness(
    "fp8_quant", "pow2_scaling", why="ue8m0 as exp2(ceil(log2(s))) in float32", max_examples=600
)
def fp8_log2_ue8m0(x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10):
    def scale(a):
        s = a.clamp(min=eps) / 448.0
        if scale_format == "ue8m0":
            s = torch.exp2(torch.ceil(torch.log2(s)))
        return s

    return _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, scale=scale)


@witness("fp8_quant", "pow2_scaling", why="s = (amax + eps) / 448: eps added, not a floor")
def fp8_eps_added(x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10):
    def scale(a):
        s = (a + eps) / 448.0
        return ue8m0_pow2_ceil(s) if scale_format == "ue8m0" else s

    return _fp8_quant_with(x, group_size, scale_format, column_major_scales, eps, scale=scale)


# --- fp8_block_quant ---------------------------------------------------------------------------


def _block_quant(
    w, block_shape, scale_format, *, eps=1e-4, rounding=round_to_e4m3, amax=None, scale_hook=None
):
    w32 = w.to(torch.float32)
    *lead, r, c = w32.shape
    br, bc = block_shape
    nr, nc = -(-r // br), -(-c // bc)
    padded = F.pad(w32, (0, nc * bc - c, 0, nr * br - r))
    blocks = padded.reshape(*lead, nr, br, nc, bc)
    a = amax(blocks) if amax else blocks.abs().clamp(max=F32_MAX).amax(dim=(-3, -1))
    s = _default_scale(a, scale_format, eps)
    if scale_hook:
        s = scale_hook(s)
    s_el = s.repeat_interleave(br, -2).repeat_interleave(bc, -1)[..., :r, :c]
    return rounding(w32 / s_el).to(FP8), s.contiguous()


@witness("fp8_block_quant", "matches_reference", why="rounds ties away from zero")
def block_round_half_away(w, *, block_shape=(128, 128), scale_format="fp32"):
    return _block_quant(w, block_shape, scale_format, rounding=_round_half_away)


@witness("fp8_block_quant", "matches_reference", why="eps 1e-10 (fp8_quant's) instead of 1e-4")
def block_wrong_eps(w, *, block_shape=(128, 128), scale_format="fp32"):
    return _block_quant(w, block_shape, scale_format, eps=1e-10)


@witness("fp8_block_quant", "matches_reference", why="a partial last block reuses the last scale")
def block_partial_reuses_scale(w, *, block_shape=(128, 128), scale_format="fp32"):
    r, c = w.shape[-2:]
    br, bc = block_shape

    def hook(s):
        s = s.clone()
        if r % br and s.shape[-2] > 1:
            s[..., -1, :] = s[..., -2, :]
        if c % bc and s.shape[-1] > 1:
            s[..., :, -1] = s[..., :, -2]
        return s

    return _block_quant(w, block_shape, scale_format, scale_hook=hook)


@witness("fp8_block_quant", "matches_reference", why="block_shape read as (cols, rows)")
def block_transposed_shape(w, *, block_shape=(128, 128), scale_format="fp32"):
    q, s = _block_quant(w, tuple(block_shape)[::-1], scale_format)
    return q, s


@witness("fp8_block_quant", "writes_all_outputs", why="never writes the last row of each expert")
def block_skips_tail(w, **kw):
    q, s = ref_fp8_block_quant(w, **kw)
    out = torch.empty_like(q)
    if q.shape[-2] > 1:
        out[..., :-1, :] = q[..., :-1, :]
    else:
        out.copy_(q)
    return out, s


@witness("fp8_block_quant", "inputs_unchanged", why="negates the weight in place")
def block_neg_in_place(w, **kw):
    out = ref_fp8_block_quant(w, **kw)
    w.neg_()
    return out


@witness("fp8_block_quant", "deterministic", why="perturbs one code every other call")
def block_flaky(w, **kw):
    q, s = ref_fp8_block_quant(w, **kw)
    return _flaky(q.clone()), s


@witness("fp8_block_quant", "nan_policy", why="amax drops NaN")
def block_drops_nan(w, *, block_shape=(128, 128), scale_format="fp32"):
    return _block_quant(
        w,
        block_shape,
        scale_format,
        amax=lambda b: torch.nan_to_num(b.abs(), nan=0.0).clamp(max=F32_MAX).amax(dim=(-3, -1)),
    )


@witness("fp8_block_quant", "error_parity", why="no input validation")
def block_no_validation(w, *, block_shape=(128, 128), scale_format="fp32"):
    bs = tuple(block_shape) if isinstance(block_shape, (tuple, list)) else (128, 128)
    bs = (max(int(bs[0]), 1), max(int(bs[-1]), 1))
    w = w.reshape(1, -1) if w.dim() < 2 else w
    return _block_quant(w, bs, "ue8m0" if scale_format == "ue8m0" else "fp32")


@witness("fp8_block_quant", "expert_permutation", why="expert 0 uses the last expert's scales")
@witness("fp8_block_quant", "batch_split", why="expert 0 uses the last expert's scales")
def block_expert0_uses_last(w, *, block_shape=(128, 128), scale_format="fp32"):
    if w.dim() < 3 or w.shape[0] < 2:
        return ref_fp8_block_quant(w, block_shape=block_shape, scale_format=scale_format)

    def hook(s):
        s = s.clone()
        s[0] = s[-1]
        return s

    return _block_quant(w, block_shape, scale_format, scale_hook=hook)


# --- silu_mul_fp8_quant ------------------------------------------------------------------------


def _silu(x, limit, clamp_mode, *, swap=False, inter=torch.float32):
    if swap:
        n = x.shape[-1] // 2
        x = torch.cat([x[..., n:], x[..., :n]], dim=-1)
    y = swiglu_math(
        x,
        limit=limit,
        alpha=1.0,
        beta=0.0,
        layout="concat",
        clamp_mode=clamp_mode,
        dtype=torch.float32,
    )
    return y.to(inter).to(torch.float32)


def _silu_quant(
    x,
    group_size,
    limit,
    clamp_mode,
    scale_format,
    column_major_scales,
    *,
    swap=False,
    inter=torch.float32,
    **pieces,
):
    y = _silu(x, limit, clamp_mode, swap=swap, inter=inter)
    q, s = _fp8_groups(y, group_size, scale_format, 1e-10, **pieces)
    return q, _layout(s, column_major_scales)


_SILU_DEFAULTS = {
    "group_size": 128,
    "limit": None,
    "clamp_mode": "pre",
    "scale_format": "fp32",
    "column_major_scales": False,
}


def _silu_args(kw):
    o = {**_SILU_DEFAULTS, **kw}
    return (
        o["group_size"],
        o["limit"],
        o["clamp_mode"],
        o["scale_format"],
        o["column_major_scales"],
    )


@witness("silu_mul_fp8_quant", "matches_reference", why="gate and up halves swapped")
def silu_swapped_halves(x, **kw):
    return _silu_quant(x, *_silu_args(kw), swap=True)


@witness("silu_mul_fp8_quant", "matches_reference", why="applies the post clamp when asked for pre")
def silu_post_for_pre(x, **kw):
    gs, limit, _, fmt, cm = _silu_args(kw)
    return _silu_quant(x, gs, limit, "post", fmt, cm)


@witness("silu_mul_fp8_quant", "matches_reference", why="rounds the SwiGLU output to float16")
def silu_fp16_intermediate(x, **kw):
    inter = torch.bfloat16 if x.dtype == torch.float16 else torch.float16
    return _silu_quant(x, *_silu_args(kw), inter=inter)


@witness("silu_mul_fp8_quant", "matches_reference", why="rounds ties away from zero")
def silu_round_half_away(x, **kw):
    return _silu_quant(x, *_silu_args(kw), rounding=_round_half_away)


@witness("silu_mul_fp8_quant", "matches_reference", why="ignores limit (no clamp at all)")
def silu_ignores_limit(x, **kw):
    gs, _, cm_, fmt, cm = _silu_args(kw)
    return _silu_quant(x, gs, None, cm_, fmt, cm)


@witness("silu_mul_fp8_quant", "matches_reference", why="sigmoid evaluated in bfloat16")
def silu_bf16_sigmoid(x, **kw):
    gs, limit, clamp_mode, fmt, cm = _silu_args(kw)
    n = x.shape[-1] // 2
    g, u = x[..., :n].float(), x[..., n:].float()
    if limit is not None:
        u = u.clamp(-limit, limit)
        g = g.clamp(max=limit) if clamp_mode == "pre" else g
    act = g * torch.sigmoid(g.bfloat16()).float()
    if limit is not None and clamp_mode == "post":
        act = act.clamp(max=limit)
    q, s = _fp8_groups(act * u, gs, fmt, 1e-10)
    return q, _layout(s, cm)


@witness("silu_mul_fp8_quant", "writes_all_outputs", why="never writes the last row of q")
def silu_skips_tail(x, **kw):
    q, s = ref_silu_mul_fp8_quant(x, **kw)
    out = torch.empty_like(q)
    if q.shape[0] > 1:
        out[:-1] = q[:-1]
    elif q.shape[0] == 1:
        out.copy_(q)
    return out, s


@witness("silu_mul_fp8_quant", "inputs_unchanged", why="clamps its input in place")
def silu_clamps_in_place(x, **kw):
    out = ref_silu_mul_fp8_quant(x, **kw)
    lim = kw.get("limit") or 1.0
    x.clamp_(-lim, lim)
    return out


@witness("silu_mul_fp8_quant", "deterministic", why="perturbs one code every other call")
def silu_flaky(x, **kw):
    q, s = ref_silu_mul_fp8_quant(x, **kw)
    return _flaky(q.clone()), s


@witness("silu_mul_fp8_quant", "nan_policy", why="replaces NaN inputs by zero")
def silu_drops_nan(x, **kw):
    return ref_silu_mul_fp8_quant(torch.nan_to_num(x, nan=0.0), **kw)


@witness("silu_mul_fp8_quant", "error_parity", why="no input validation")
def silu_no_validation(x, **kw):
    gs, limit, clamp_mode, fmt, cm = _silu_args(kw)
    x = x.to(torch.float32)
    x = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
    n = x.shape[-1] // 2
    gs = max(int(gs), 1)
    nn = (n // gs) * gs
    x = torch.cat([x[:, :nn], x[:, n : n + nn]], dim=-1)
    mode = "post" if clamp_mode == "post" else "pre"
    lim = abs(limit) if limit is not None else None
    return _silu_quant(x, gs, lim, mode, "ue8m0" if fmt == "ue8m0" else "fp32", bool(cm))


@witness("silu_mul_fp8_quant", "token_permutation", why="row 0 is computed from the last row")
@witness("silu_mul_fp8_quant", "batch_split", why="row 0 is computed from the last row")
def silu_row_mixup(x, **kw):
    q, s = ref_silu_mul_fp8_quant(x, **kw)
    if q.shape[0] > 1:
        q[0] = q[-1]
        s[0] = s[-1]
    return q, s


# --- mxfp4_quant -------------------------------------------------------------------------------


def _mx_quant(
    x,
    rounding="floor",
    *,
    exponent=None,
    nan_aware=True,
    round_fn=e2m1_encode,
    swap_nibbles=False,
    code_offset=0,
    zero_code=None,
):
    x32 = x.to(torch.float32)
    *lead, k = x32.shape
    blocks = x32.reshape(*lead, k // 32, 32)
    has_nan = blocks.isnan().any(-1)
    amax = torch.nan_to_num(blocks.abs(), nan=0.0).clamp(max=F32_MAX).amax(-1)
    if exponent is not None:
        e = exponent(amax)
    else:
        m, big = torch.frexp(amax)
        e = big - 3 if rounding == "floor" else big - 3 + (m > 0.75).to(torch.int32)
    e = torch.where(amax == 0, -127, e).clamp(-127, 127)
    codes = round_fn(blocks / exp2i(e).unsqueeze(-1))
    scales = e + 127 + code_offset
    if zero_code is not None:
        scales = torch.where(amax == 0, zero_code, scales)
    if nan_aware:
        codes = torch.where(has_nan.unsqueeze(-1), 0, codes)
        scales = torch.where(has_nan, 255, scales)
    codes = codes.reshape(*lead, k).to(torch.uint8)
    if swap_nibbles:
        packed = (codes[..., 1::2] & 15) | ((codes[..., 0::2] & 15) << 4)
    else:
        packed = pack_nibbles(codes)
    return packed.contiguous(), scales.to(torch.uint8).contiguous()


def _e2m1_half_away(v):
    mag = v.abs()
    code = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for lo in range(7):
        mid = (E2M1_VALUES[lo] + E2M1_VALUES[lo + 1]) / 2
        code = code + (mag >= mid).to(torch.uint8)
    return code | (torch.signbit(v).to(torch.uint8) << 3)


@witness("mxfp4_quant", "matches_reference", why="floor and ceil scale rounding swapped")
def mx_rounding_swapped(x, *, block=32, scale_rounding="floor"):
    return _mx_quant(x, "ceil" if scale_rounding == "floor" else "floor")


@witness("mxfp4_quant", "matches_reference", why="element 2i in the high nibble")
def mx_nibbles_swapped(x, *, block=32, scale_rounding="floor"):
    return _mx_quant(x, scale_rounding, swap_nibbles=True)


@witness("mxfp4_quant", "matches_reference", why="scale code off by one (bias 128)")
def mx_scale_off_by_one(x, *, block=32, scale_rounding="floor"):
    return _mx_quant(x, scale_rounding, code_offset=1)


@witness("mxfp4_quant", "matches_reference", why="E2M1 ties rounded away from zero")
def mx_round_half_away(x, *, block=32, scale_rounding="floor"):
    return _mx_quant(x, scale_rounding, round_fn=_e2m1_half_away)


@witness("mxfp4_quant", "matches_reference", why="an all-zero block gets scale code 127, not 0")
def mx_zero_block_code(x, *, block=32, scale_rounding="floor"):
    return _mx_quant(x, scale_rounding, zero_code=127)


@witness("mxfp4_quant", "writes_all_outputs", why="never writes the last scale of each row")
def mx_skips_tail(x, **kw):
    p, s = ref_mxfp4_quant(x, **kw)
    out = torch.empty_like(s)
    if s.shape[-1] > 1:
        out[..., :-1] = s[..., :-1]
    else:
        out.copy_(s)
        p = torch.empty_like(p)
    return p, out


@witness("mxfp4_quant", "inputs_unchanged", why="takes |x| in place")
def mx_abs_in_place(x, **kw):
    out = ref_mxfp4_quant(x, **kw)
    x.abs_()
    return out


@witness("mxfp4_quant", "deterministic", why="perturbs one code every other call")
def mx_flaky(x, **kw):
    p, s = ref_mxfp4_quant(x, **kw)
    return _flaky(p.clone()), s


@witness("mxfp4_quant", "nan_policy", why="NaN ignored by amax: the block gets a finite scale")
def mx_drops_nan(x, *, block=32, scale_rounding="floor"):
    return _mx_quant(x, scale_rounding, nan_aware=False)


@witness("mxfp4_quant", "error_parity", why="no input validation")
def mx_no_validation(x, *, block=32, scale_rounding="floor"):
    x = x.to(torch.float32).reshape(-1) if x.dim() == 0 else x.to(torch.float32)
    k = (x.shape[-1] // 32) * 32
    return _mx_quant(x[..., :k], "ceil" if scale_rounding == "ceil" else "floor")


@witness("mxfp4_quant", "token_permutation", why="row 0 gets the last row's scales")
@witness("mxfp4_quant", "batch_split", why="row 0 gets the last row's scales")
def mx_row_mixup(x, **kw):
    p, s = ref_mxfp4_quant(x, **kw)
    if x.dim() > 1 and s.shape[0] > 1:
        s[0] = s[-1]
    return p, s


@witness("mxfp4_quant", "pow2_scaling", why="block exponent from a float32 log2", max_examples=600)
def mx_log2_exponent(x, *, block=32, scale_rounding="floor"):
    def exponent(amax):
        if scale_rounding == "floor":
            e = torch.floor(torch.log2(amax)) - 2
        else:
            e = torch.ceil(torch.log2(amax / 6.0))
        return torch.nan_to_num(e, neginf=-127.0).clamp(-127, 127).to(torch.int32)

    return _mx_quant(x, scale_rounding, exponent=exponent)


# --- mxfp4_dequant -----------------------------------------------------------------------------


def _mx_dequant(
    packed, scales, dtype, *, swap=False, offset=0, signed_zero=True, in_dtype=False, nan_code=True
):
    codes = unpack_nibbles(packed)
    if swap:
        codes = torch.stack((packed >> 4, packed & 15), -1).flatten(-2)
    vals = e2m1_decode(codes)
    if not signed_zero:
        vals = torch.where(vals == 0, torch.zeros_like(vals), vals)
    *lead, k = vals.shape
    vals = vals.reshape(*lead, k // 32, 32)
    e = scales.to(torch.int32) - 127 + offset
    if in_dtype:
        scale = torch.exp2(e.to(torch.float32)).to(dtype)
        out = vals.to(dtype) * scale.unsqueeze(-1)
    else:
        scale = exp2i(e.clamp(-149, 127))
        if not nan_code:
            scale = torch.where(scales == 255, float("inf"), scale)
        out = vals * scale.unsqueeze(-1)
    if nan_code:
        out = torch.where((scales == 255).unsqueeze(-1), float("nan"), out.to(torch.float32))
    return out.reshape(*lead, k).to(dtype).contiguous()


@witness("mxfp4_dequant", "matches_reference", why="element 2i read from the high nibble")
def mxd_nibbles_swapped(packed, scales, *, dtype=torch.bfloat16):
    return _mx_dequant(packed, scales, dtype, swap=True)


@witness("mxfp4_dequant", "matches_reference", why="scale exponent off by one")
def mxd_scale_off_by_one(packed, scales, *, dtype=torch.bfloat16):
    return _mx_dequant(packed, scales, dtype, offset=1)


@witness("mxfp4_dequant", "matches_reference", why="-0.0 (code 8) decoded as +0.0")
def mxd_drops_zero_sign(packed, scales, *, dtype=torch.bfloat16):
    return _mx_dequant(packed, scales, dtype, signed_zero=False)


@witness("mxfp4_dequant", "matches_reference", why="scale built in the output dtype (underflows)")
def mxd_scale_in_dtype(packed, scales, *, dtype=torch.bfloat16):
    return _mx_dequant(packed, scales, dtype, in_dtype=True)


@witness("mxfp4_dequant", "writes_all_outputs", why="never writes the last row")
def mxd_skips_tail(packed, scales, **kw):
    x = ref_mxfp4_dequant(packed, scales, **kw)
    out = torch.empty_like(x)
    if x.dim() > 1 and x.shape[0] > 1:
        out[:-1] = x[:-1]
    elif x.shape[-1] > 32:
        out[..., :-32] = x[..., :-32]
    return out


@witness("mxfp4_dequant", "inputs_unchanged", why="swaps the nibbles of packed in place")
def mxd_modifies_packed(packed, scales, **kw):
    out = ref_mxfp4_dequant(packed, scales, **kw)
    packed.copy_((packed >> 4) | (packed << 4))
    return out


@witness("mxfp4_dequant", "deterministic", why="perturbs one value every other call")
def mxd_flaky(packed, scales, **kw):
    return _flaky(ref_mxfp4_dequant(packed, scales, **kw))


@witness("mxfp4_dequant", "nan_policy", why="scale code 255 decoded as 2**128 (inf), not NaN")
def mxd_255_as_inf(packed, scales, *, dtype=torch.bfloat16):
    return _mx_dequant(packed, scales, dtype, nan_code=False)


@witness("mxfp4_dequant", "error_parity", why="no input validation")
def mxd_no_validation(packed, scales, *, dtype=torch.bfloat16):
    return _mx_dequant(packed.to(torch.uint8), scales.to(torch.uint8), dtype)


@witness("mxfp4_dequant", "token_permutation", why="row 0 is decoded with the last row's scales")
@witness("mxfp4_dequant", "batch_split", why="row 0 is decoded with the last row's scales")
def mxd_row_mixup(packed, scales, **kw):
    if packed.dim() > 1 and packed.shape[0] > 1:
        scales = scales.clone()
        scales[0] = scales[-1]
    return ref_mxfp4_dequant(packed, scales, **kw)
