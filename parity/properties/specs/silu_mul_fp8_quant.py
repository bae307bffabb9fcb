"""OpSpec of silu_mul_fp8_quant: a float32 SwiGLU quantized to E4M3 groups. The intermediate
is bounded by the swiglu spec's float32 error (`_silu_intervals`); where the SwiGLU is exact
this is the fp8_quant rule.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of, ulp
from parity.properties.specs._quant import (
    E4M3_MAX,
    EPS_ON_SCALE,
    FP8,
    NAN_DROPPED,
    RECIP_MID_ULPS,
    RECIP_SCALE,
    UE8M0_LOG2,
    check_names,
    fmt_idx,
    fp8_meta_checks,
    fp8_rows_under,
    group_values,
    groups_count,
    is_pow2,
    mutate_common,
    nonempty,
    on_cpu,
    row_groups,
    scales_layout,
    scales_under,
    to_column_major,
    two_outputs,
)
from parity.properties.tolerance import Verdict, isnan_any
from parity.reference.numerics import (
    round_to_e4m3,
)
from parity.reference.swiglu import swiglu_math
from parity.registry import OpSpec, Relation, Variant, add_spec

_F32_TINY = torch.finfo(torch.float32).tiny
TOLERANCE = (
    "per group, the float32- or the x.dtype-intermediate path under the fp8_quant rule, the "
    "float32 SwiGLU within 16 u32 |y| (exact where gate >= 20): scale from an amax in range, "
    "codes rounding a value in range"
)


SILU_REGIMES = [
    "normal",
    "midpoint",
    "near_pow2",
    "zero_groups",
    "across_limit",
    "wide",
    "ties",
    "inf",
    "large",
]


@st.composite
def _silu_meta(draw, size: str, dtypes):
    gs = draw(st.sampled_from([128, 64, 32, 16]))
    nmax = 256 if size == "small" else 4096
    regime = draw(st.sampled_from(SILU_REGIMES))
    limit = draw(st.sampled_from([None, 10.0, 7.0, 0.5]))
    if regime in ("midpoint", "near_pow2"):
        limit = None  # gate = 32 gives silu(gate) == gate exactly only unclamped
    elif regime in ("inf", "across_limit") and limit is None:
        limit = 10.0  # infinities only where the clamp makes them finite
    return {
        "M": draw(S.tokens(size=size)),
        "N": gs * draw(groups_count(size, gs, nmax)),
        "dtype": draw(S.float_dtypes(dtypes)),
        "options": {
            "group_size": gs,
            "limit": limit,
            "clamp_mode": draw(st.sampled_from(["pre", "post"])),
            "scale_format": draw(st.sampled_from(["fp32", "ue8m0"])),
            "column_major_scales": draw(st.booleans()),
        },
        "regime": regime,
        "seed": draw(S.seeds()),
    }


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _silu_meta(size, dtypes)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = dict(meta["options"])
    m, n, gs = meta["M"], meta["N"], opts["group_size"]
    regime = meta["regime"]
    gid, ng, first = row_groups([m], n, gs, device)
    f64 = torch.float64
    if regime in ("midpoint", "near_pow2"):
        # sigmoid(32) == 1 in float32, so y = 32 * up is exact: on E4M3 midpoints times 2**j, or
        # (float32 x) a group amax a few ulps off 448 * 2**k, where a float32 log2 misrounds
        gate = torch.full((m, n), 32.0, dtype=f64, device=device)
        up = group_values(g, [m, n], gid, ng, first, regime, dtype).to(f64) / 32.0
    elif regime == "across_limit":
        lim = opts["limit"] or 10.0
        gate = g.normal((m, n)).to(f64) * 1.5 * lim
        up = g.normal((m, n)).to(f64) * 1.5 * lim
    elif regime == "inf":
        gate = g.normal((m, n)).to(f64) * 4.0
        up = g.normal((m, n)).to(f64) * 4.0
        if m * n:
            gate = torch.where(g.mask((m, n), 0.03), float("inf"), gate)
            sign = torch.where(g.mask((m, n), 0.5), -1.0, 1.0).to(f64)
            up = torch.where(g.mask((m, n), 0.03), sign * float("inf"), up)
    else:
        gate = g.normal((m, n)).to(f64) * 4.0
        up = group_values(g, [m, n], gid, ng, first, regime, dtype).to(f64)
        if regime == "large":
            gate = gate * 100.0
    x = torch.cat([gate, up], dim=-1).to(dtype)
    if meta.get("nan"):
        x = g.inject_nan(x)
    bad = meta.get("invalid")
    x = mutate_common(x, bad)
    if bad == "rank1":
        x = x.reshape(-1)
    elif bad == "rank3":
        x = x.unsqueeze(0)
    elif bad == "odd_last_dim":
        x = x[:, :-1]
    elif bad == "n_not_divisible":
        x = torch.cat([x[:, : n - 1], x[:, n : 2 * n - 1]], dim=-1)
    elif bad == "group_size_zero":
        opts["group_size"] = 0
    elif bad == "bad_scale_format":
        opts["scale_format"] = "fp16"
    elif bad == "bad_clamp_mode":
        opts["clamp_mode"] = "both"
    elif bad == "negative_limit":
        opts["limit"] = -1.0
    elif bad == "column_major_not_bool":
        opts["column_major_scales"] = "yes"
    return Case("silu_mul_fp8_quant", (x,), opts, meta, str(device))


# The fused kernel's float32 SwiGLU is not bit-defined (exp and sigmoid differ by an ulp between
# libraries: torch on CUDA and on the CPU disagree on ~10% of elements). Its error bound is the
# swiglu OpSpec's float32 one, 16 u32 |y| + tiny32 |gate| |up|, except where gate >= 20: every
# faithful float32 sigmoid returns exactly 1 there (1 - sigmoid(20) < 2**-25), so silu(gate) is
# gate and y = gate * up is one rounding, the same in every kernel. The check takes each element
# as an interval [lo, hi] (a point where y is exact), and accepts a group whose scale comes from
# an amax inside the intervals and whose codes round a value inside them (under the reciprocal
# rule). Where every interval is a point this is exactly the fp8_quant rule.
SILU_F32_SLACK_U32 = 16
_EXACT_GATE = 20.0
_U32 = 2.0**-24


def _up_minus_zero(x: torch.Tensor) -> torch.Tensor:
    """Where up is -0.0: the contract's `up + beta` (beta 0) makes those +0.0, a kernel that
    multiplies by up itself keeps the sign (variant up_sign_kept), and the product is a zero
    either way, of the opposite sign."""
    u = x[..., x.shape[-1] // 2 :]
    return (u == 0) & torch.signbit(u)


def _keep_up_sign(x, lo, hi, names):
    """Under up_sign_kept, the zero products of an up of -0.0 with their sign flipped (the
    contract's interval there is the point +-0.0)."""
    if "up_sign_kept" not in names:
        return lo, hi
    m = _up_minus_zero(x)
    return torch.where(m, -lo, lo), torch.where(m, -hi, hi)


def _silu_intervals(x: torch.Tensor, o: dict, inter: torch.dtype):
    """float64 (lo, hi) of the SwiGLU intermediate per element, rounded to `inter` (x.dtype:
    the unfused path; float32: the fused one)."""
    limit, mode = o.get("limit"), o.get("clamp_mode", "pre")
    y64 = swiglu_math(
        x, limit=limit, alpha=1.0, beta=0.0, layout="concat", clamp_mode=mode, dtype=torch.float64
    )
    n = x.shape[-1] // 2
    g, u = x[..., :n].to(torch.float64), x[..., n:].to(torch.float64)
    if limit is not None:
        u = u.clamp(-limit, limit)
        if mode == "pre":
            g = g.clamp(max=limit)
    exact = g >= _EXACT_GATE
    g_eff = g.clamp(max=limit) if limit is not None else g
    # g * u is exact in float64; up + beta (beta 0) makes an up of -0.0 a +0.0 (the contract's
    # order), so g >= 20 times up -0.0 is +0.0: the reference's code, missed here until 2026-12-05
    y_exact = (g_eff * (u + 0.0)).to(torch.float32).to(torch.float64)
    slack = SILU_F32_SLACK_U32 * _U32 * y64.abs() + _F32_TINY * g.abs() * u.abs()
    slack = torch.where(exact, 0.0, slack)
    # y -/+ 0.0 would turn -0.0 into +0.0: a point interval keeps y itself
    lo = torch.where(slack > 0, y64 - slack, torch.where(exact, y_exact, y64))
    hi = torch.where(slack > 0, y64 + slack, torch.where(exact, y_exact, y64))
    if inter != torch.float32:  # rounding to x.dtype is monotone: the bounds round with it
        lo, hi = lo.to(inter).to(torch.float64), hi.to(inter).to(torch.float64)
    else:  # the fused kernel's y is a float32: round outward, never inward
        lo, hi = _f32_outward(lo, hi)
    return lo, hi


def _rounded_act_intervals(x: torch.Tensor, o: dict):
    """float64 (lo, hi) of the intermediate under rounded_act: silu(gate) computed in float32
    (the same 16 u32 slack, a point where gate >= 20) and rounded to x.dtype, times up (x.dtype,
    clamped), the product kept in float32 or rounded to x.dtype (both forms are in use). Every
    rounding is monotone, so the rounded ends bound the rounded values."""
    limit, mode = o.get("limit"), o.get("clamp_mode", "pre")
    n = x.shape[-1] // 2
    g, u = x[..., :n].to(torch.float64), x[..., n:].to(torch.float64)
    if limit is not None:
        u = u.clamp(-limit, limit)
        if mode == "pre":
            g = g.clamp(max=limit)
    act = g * torch.sigmoid(g)
    if limit is not None and mode == "post":
        act = act.clamp(max=limit)
    exact = g >= _EXACT_GATE  # float32 sigmoid is 1: act is g (post: min(g, limit)) exactly
    slack = SILU_F32_SLACK_U32 * _U32 * act.abs() + _F32_TINY * g.abs()
    slack = torch.where(exact, 0.0, slack)
    a_lo = torch.where(slack > 0, act - slack, act).to(x.dtype).to(torch.float64)
    a_hi = torch.where(slack > 0, act + slack, act).to(x.dtype).to(torch.float64)
    u = u.to(x.dtype).to(torch.float64) + 0.0  # the contract's up + beta: -0.0 is +0.0
    p1, p2 = a_lo * u, a_hi * u  # exact in float64
    p_lo, p_hi = torch.minimum(p1, p2), torch.maximum(p1, p2)
    # a zero product takes its sign from the ends: both signs of zero where they differ
    neg, pos = torch.signbit(p1) | torch.signbit(p2), ~torch.signbit(p1) | ~torch.signbit(p2)
    p_lo = torch.where((p_lo == 0) & neg, -0.0, p_lo)
    p_hi = torch.where((p_hi == 0) & pos, 0.0, p_hi)
    r_lo, r_hi = p_lo.to(x.dtype).to(torch.float64), p_hi.to(x.dtype).to(torch.float64)
    f_lo, f_hi = _f32_outward(p_lo, p_hi)
    return torch.minimum(r_lo, f_lo), torch.maximum(r_hi, f_hi)


def _f32_outward(lo: torch.Tensor, hi: torch.Tensor):
    """float64 bounds widened to the float32 values just outside them (NaN and +-0 kept)."""
    lo32, hi32 = lo.to(torch.float32), hi.to(torch.float32)
    lo32 = torch.where(lo32.to(torch.float64) > lo, torch.nextafter(lo32, -lo32.abs() - 1), lo32)
    hi32 = torch.where(hi32.to(torch.float64) < hi, torch.nextafter(hi32, hi32.abs() + 1), hi32)
    return lo32.to(torch.float64), hi32.to(torch.float64)


def _interval_groups_ok(lo, hi, got_q, got_s, gs: int, scale_format: str, eps: float, names=()):
    """Per group of `[M, N]` intervals: (group ok, codes ok, scales ok, scale range lo, hi)."""
    m = lo.shape[0]
    f64 = torch.float64
    nan = torch.isnan(lo) | torch.isnan(hi)
    straddle = (lo <= 0) & (hi >= 0)
    mag_min = torch.where(straddle, torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    mag_max = torch.maximum(lo.abs(), hi.abs())
    f32max = torch.finfo(torch.float32).max
    drop = "nan_dropped" in names  # the group's amax skips its NaN elements
    if drop:
        mag_min, mag_max = torch.nan_to_num(mag_min, nan=0.0), torch.nan_to_num(mag_max, nan=0.0)
    a_lo = mag_min.clamp(max=f32max).reshape(m, -1, gs).amax(-1)
    a_hi = mag_max.clamp(max=f32max).reshape(m, -1, gs).amax(-1)
    a_lo, a_hi = _f32_outward(a_lo, a_hi)
    nan_group = nan.reshape(m, -1, gs).any(-1) & (not drop)
    s_lo, alt_lo, alt_ok_lo = scales_under(
        a_lo.clamp(min=0).to(torch.float32), scale_format, eps, names
    )
    s_hi, alt_hi, alt_ok_hi = scales_under(a_hi.to(torch.float32), scale_format, eps, names)
    # ue8m0_log2: the power of two below either end where a float32 log2 can round down to it
    s_lo = torch.minimum(s_lo, torch.where(alt_ok_lo, alt_lo, s_lo))
    s_lo = torch.minimum(s_lo, torch.where(alt_ok_hi, alt_hi, s_lo))
    sk = got_s.contiguous()
    scales_ok = torch.where(nan_group, torch.isnan(sk), (sk >= s_lo) & (sk <= s_hi))

    sk_el = sk.repeat_interleave(gs, dim=-1).to(f64)
    v_lo, v_hi = lo / sk_el, hi / sk_el
    recip = ~is_pow2(sk_el)  # the reciprocal rule (RECIP_MID_ULPS float32 ulps either side)
    v_lo = torch.where(recip, v_lo - RECIP_MID_ULPS * ulp(v_lo, torch.float32), v_lo)
    v_hi = torch.where(recip, v_hi + RECIP_MID_ULPS * ulp(v_hi, torch.float32), v_hi)
    c_lo = round_to_e4m3(v_lo.clamp(-E4M3_MAX, E4M3_MAX)).to(f64)
    c_hi = round_to_e4m3(v_hi.clamp(-E4M3_MAX, E4M3_MAX)).to(f64)
    gn = isnan_any(got_q)
    gv = got_q.to(f64)
    in_range = (gv >= c_lo) & (gv <= c_hi)
    neg_ok = (lo < 0) | ((lo == 0) & torch.signbit(lo))
    pos_ok = (hi > 0) | ((hi == 0) & ~torch.signbit(hi))
    sign_ok = (gv != 0) | torch.where(torch.signbit(gv), neg_ok, pos_ok)
    nan_el = nan_group.repeat_interleave(gs, dim=-1)
    codes_ok = torch.where(nan_el, gn, ~gn & in_range & sign_ok)
    if drop:  # tl.clamp(NaN, -448, 448) is -448: code 0xFE
        codes_ok = torch.where(nan, got_q.view(torch.uint8) == 0xFE, codes_ok)
    groups_ok = codes_ok.reshape(m, -1, gs).all(-1) & scales_ok
    return groups_ok, codes_ok, scales_ok, s_lo, s_hi


def compare(case: Case, outs: tuple) -> Verdict:
    return _judge(case, outs, frozenset())


def _judge(case: Case, outs: tuple, names: frozenset) -> Verdict:
    (x,) = case.args
    o = case.kwargs
    gs = o.get("group_size", 128)
    fmt = o.get("scale_format", "fp32")
    if (bad := two_outputs(outs)) is not None:
        return bad
    q, s = outs
    m, n = x.shape[0], x.shape[1] // 2
    want_q = torch.empty((m, n), dtype=FP8, device=x.device)
    want_s = torch.empty((m, n // gs), dtype=torch.float32, device=x.device)
    v = fp8_meta_checks(q, s, want_q, want_s, o.get("column_major_scales", False))
    if not v or q.numel() == 0:
        return v
    if "rounded_act" in names:
        inters = ["rounded_act"]
    else:
        inters = [torch.float32] if x.dtype == torch.float32 else [torch.float32, x.dtype]
    ok, first = None, None
    for inter in inters:
        if inter == "rounded_act":
            lo, hi = _rounded_act_intervals(x, o)
        else:
            lo, hi = _silu_intervals(x, o, inter)
        lo, hi = _keep_up_sign(x, lo, hi, names)
        r = _interval_groups_ok(lo, hi, q, s, gs, fmt, 1e-10, names)
        ok = r[0] if ok is None else ok | r[0]
        first = first or (lo, hi, *r)
    if ok.all():
        return Verdict.passed()
    # report against the fused (float32-intermediate) intervals, in the failing groups
    lo, hi, _, codes_ok, scales_ok, s_lo, s_hi = first
    bad = ~ok
    nbad = int(bad.sum())
    if names:
        under = " + ".join(sorted(names))
        parts = [f"{nbad} of {ok.numel()} groups do not match the quantization under {under}"]
    elif x.dtype == torch.float32:
        parts = [f"{nbad} of {ok.numel()} groups miss the float32-intermediate quantization"]
    else:
        parts = [
            f"{nbad} of {ok.numel()} groups match neither the float32- nor the "
            f"{str(x.dtype).replace('torch.', '')}-intermediate quantization"
        ]
    worst = []
    bad_scales = ~scales_ok & bad
    if bad_scales.any():
        i = tuple(fmt_idx(bad_scales))
        gv = float(s.contiguous()[i])
        parts.append(
            f"scales: {int(bad_scales.sum())} outside the range an amax within the SwiGLU "
            f"tolerance gives, first at {list(i)}: got {gv!r}, want "
            f"[{float(s_lo[i])!r}, {float(s_hi[i])!r}]"
        )
        worst.append(("scales", i, gv, float(s_lo[i]), 0.0))
    bad_codes = ~codes_ok & bad.repeat_interleave(gs, dim=-1)
    if bad_codes.any():
        i = tuple(fmt_idx(bad_codes))
        gq = q[i]
        sk = float(s.contiguous()[i[0], i[1] // gs])
        parts.append(
            f"q: {int(bad_codes.sum())} codes round no value of their interval, first at "
            f"{list(i)}: got 0x{int(gq.view(torch.uint8)):02x} ({float(gq.float()):.6g}), "
            f"y/s in [{float(lo[i]) / sk:.9g}, {float(hi[i]) / sk:.9g}]"
        )
        worst.append(("q", i, float(gq.float()), float(lo[i]) / sk, 0.0))
    return Verdict(False, "; ".join(parts), float(nbad), worst)


ROUNDED_ACT = Variant(
    "rounded_act",
    "vLLM's fused SiLU+mul+quant (following its C++ silu_and_mul): silu(gate) and up rounded to "
    "x.dtype before the multiply (a double rounding), the product kept or rounded to x.dtype",
    "vllm model_executor/layers/quantization/utils/fp8_utils.py (silu_mul_per_token_group_"
    "quant_fp8_colmajor); csrc/activation_kernels.cu",
)
UP_SIGN_KEPT = Variant(
    "up_sign_kept",
    "SiLU-and-mul kernels that multiply by up without the contract's `+ beta` (beta 0): an up "
    "of -0.0 keeps its sign, so silu(gate) * up is a zero of the other sign and its E4M3 code "
    "0x80 where the contract's is 0x00 (or the reverse for a negative gate)",
    "vllm csrc/activation_kernels.cu (act_and_mul_kernel: ACT_FN(x) * y); the fused "
    "silu_mul_per_token_group_quant kernels built on it",
)
VARIANTS = (RECIP_SCALE, UE8M0_LOG2, EPS_ON_SCALE, NAN_DROPPED, ROUNDED_ACT, UP_SIGN_KEPT)
_NAMES = [v.name for v in VARIANTS]


def compare_variants(case: Case, outs: tuple, names: frozenset) -> Verdict:
    """`compare` with the reference computed under the variants `names`: the scale rule of each
    quantizer variant, rounded_act's intermediate in place of the two contract ones."""
    return _judge(case, outs, check_names("silu_mul_fp8_quant", names, _NAMES))


def reference_under(case: Case, names: frozenset) -> tuple:
    """The reference outputs under `names` (the float32-intermediate path of the reference;
    rounded_act: the twice-rounded intermediate, product rounded to x.dtype)."""
    names = check_names("silu_mul_fp8_quant", names, _NAMES)
    (x,) = case.args
    o = case.kwargs
    if not names:
        return on_cpu(ref.silu_mul_fp8_quant, x, **o)
    xc = x.cpu()
    if "rounded_act" in names:
        n = xc.shape[-1] // 2
        limit, mode = o.get("limit"), o.get("clamp_mode", "pre")
        g, u = xc[..., :n].float(), xc[..., n:].float()
        if limit is not None:
            u = u.clamp(-limit, limit)
            g = g.clamp(max=limit) if mode == "pre" else g
        act = g * torch.sigmoid(g)
        act = act.clamp(max=limit) if limit is not None and mode == "post" else act
        y = (act.to(xc.dtype) * (u.to(xc.dtype) + 0.0)).float()
    else:
        y = swiglu_math(
            xc,
            limit=o.get("limit"),
            alpha=1.0,
            beta=0.0,
            layout="concat",
            clamp_mode=o.get("clamp_mode", "pre"),
            dtype=torch.float32,
        )
    if "up_sign_kept" in names:  # the zero products of an up of -0.0: the other sign
        y = torch.where(_up_minus_zero(xc), -y, y)
    q, s, _ = fp8_rows_under(
        y, o.get("group_size", 128), o.get("scale_format", "fp32"), 1e-10, names
    )
    if o.get("column_major_scales", False):
        s = to_column_major(s)
    return q.to(x.device), s.to(x.device)


MUTATIONS = [
    "int_dtype",
    "float64",
    "fp8_input",
    "not_a_tensor",
    "rank1",
    "rank3",
    "odd_last_dim",
    "n_not_divisible",
    "group_size_zero",
    "bad_scale_format",
    "bad_clamp_mode",
    "negative_limit",
    "column_major_not_bool",
]


def _as_laid_out(case: Case, outs: tuple) -> tuple:
    if len(outs) != 2 or not all(isinstance(o, torch.Tensor) and o.dim() == 2 for o in outs):
        return outs
    q, sc = outs
    col = case.kwargs.get("column_major_scales", False)
    return q.contiguous(), to_column_major(sc) if col else sc.contiguous()


def compare_pair(case: Case, a: tuple, b: tuple) -> Verdict:
    """Derived (a: permuted or split, mapped back) against base (b). Not bitwise: the float32
    SwiGLU inside is not bit-defined and the CPU sigmoid rounds by a token's position (vector
    body, scalar tail), which can move a group's amax across a scale boundary; each output must
    pass the tolerance model on its own (the reference failed bitwise after ~1000 cases).
    Layouts are matches_reference's business (outputs may come back from a worker process
    contiguous), so both are laid out as the case asks first."""
    for name, out in (("derived", a), ("base", b)):
        v = compare(case, _as_laid_out(case, out))
        if not v:
            return Verdict(False, f"{name}: {v.message}", v.ratio, v.worst)
    return Verdict.passed()


def bench(T: int) -> dict:
    """The expert activation: T tokens of the expert intermediate size."""
    return {
        "M": T,
        "N": S.BENCH_N,
        "dtype": "bfloat16",
        "regime": "normal",
        "options": {
            "group_size": 128,
            "limit": 10.0,
            "clamp_mode": "pre",
            "scale_format": "fp32",
            "column_major_scales": False,
        },
    }


SPEC = add_spec(
    OpSpec(
        name="silu_mul_fp8_quant",
        reference=ref.silu_mul_fp8_quant,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        invalid_when=lambda m: m["M"] > 0,
        nan_when=nonempty,
        relations=(
            Relation("token_permutation", scales_layout(S.permute_tokens()), exact=False),
            Relation("batch_split", scales_layout(S.split_tokens()), exact=False),
        ),
        compare_pair=compare_pair,
        bench=bench,
        memory_bound=True,
        variants=VARIANTS,
        compare_variants=compare_variants,
        reference_under=reference_under,
    )
)
