"""Helpers shared by the quantizer specs (fp8_quant, fp8_block_quant, silu_mul_fp8_quant,
mxfp4_quant, mxfp4_dequant): the E4M3 grid, boundary-aware code checks, per-group value
regimes, and the token relations.

Quantizer outputs are codes: they are compared exactly (bits), never with a float tolerance.
The one freedom the contract grants (`docs/ops.md`, fp8_quant) is the reciprocal multiply: a
code may be one E4M3 step off where `x / s` lies near the midpoint between two codes (ops.md
says 2 float32 ulps; `RECIP_MID_ULPS` is the bound derived for DeepGEMM's `448 / amax`, 3.875).
`e4m3_codes_ok` implements that, and only where it can happen: when `s` is a power of two the
reciprocal is exact, `x * (1 / s) == x / s`, and the code must be the RNE one.
The FP8 references are evaluated on the CPU (`on_cpu`): on CUDA torch divides by a Python
scalar through its reciprocal, so `amax / 448` there is not the contract's quotient.

silu_mul_fp8_quant quantizes a float32 SwiGLU that no two libraries compute bit-identically; its
check (`_silu_intervals`) bounds that intermediate by the swiglu OpSpec's float32 error, and is
the fp8_quant rule wherever the SwiGLU is exact.

Value regimes are built per quantization group (a row group, a 2-D block or an MX block) from a
group-index map, so that exact rounding midpoints, all-zero groups, saturation and extreme
exponents land where the scale makes them matter.
"""

from __future__ import annotations

import itertools

import torch
from hypothesis import strategies as st

from parity.properties import strategies as S
from parity.properties.case import Case, Gen, ulp
from parity.properties.tolerance import Verdict, check_meta, combine, isnan_any
from parity.reference.numerics import (
    E2M1_VALUES,
    round_to_e4m3,
    ue8m0_pow2_ceil,
)
from parity.registry import Relation, Variant

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0


GRID: dict[str, torch.Tensor] = {}


def e4m3_grid(device) -> torch.Tensor:
    """The 127 finite non-negative E4M3 magnitudes (codes 0..126 in order), float64."""
    key = str(device)
    if key not in GRID:
        codes = torch.arange(127, dtype=torch.uint8)
        GRID[key] = codes.view(FP8).to(torch.float64).to(device)
    return GRID[key]


def e4m3_mids() -> torch.Tensor:
    """The 126 midpoints between adjacent non-negative E4M3 values (2**-10 .. 432), float64."""
    g = e4m3_grid("cpu")
    return (g[:-1] + g[1:]) / 2


def is_pow2(s: torch.Tensor) -> torch.Tensor:
    m, _ = torch.frexp(s.to(torch.float32))
    return m == 0.5


# The reciprocal rule's reach, in float32 ulps of the E4M3 midpoint m. A kernel computes v = x * r
# in float32 with r an approximation of 1/s; the contract's q = x / s with s = fl(amax / 448).
# Each float32 rounding is a factor (1 + d), |d| <= u = 2**-24:
#   x * fl(1 / s) (the rule ops.md states):          fl(1/s), the product: 2 roundings;
#   DeepGEMM per_block_cast_to_fp8, x * (448.0 / amax): torch evaluates 448.0 / t as
#     t.reciprocal() * 448, so fl(1/amax), * 448, the product with x, and the contract's own
#     rounding of s = amax / 448 in q: 4 roundings (3 with a true division 448 / amax).
# So |v - q| <= ((1 + u)**4 - 1) |q| < 4u (1 + 2u) |q|. v rounds to another code than q only if
# a midpoint m lies between them, so |q - m| <= |v - q| < 4u |m| (1 + 2**-21). An E4M3 midpoint
# has 5 significant bits, |m| <= (31/16) 2**e in binade e, and ulp32(m) = 2**(e - 23) = 2u 2**e:
# 4u |m| <= 4 (31/32) ulp32(m) = 3.875 ulp32(m). (Three roundings give 2.906, two 1.9375: the
# 2 ulps of ops.md.) DeepGEMM's codes land 2.1 ulps from a midpoint in practice (issue 9 s. 7).
RECIP_MID_ULPS = 3.875 * (1 + 2.0**-20)


def e4m3_codes_ok(y32, s_el, want, got) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element: the code `got` is right for `y32 / s_el` given the reference code `want`.

    Bit-exact (the two NaN encodings are one NaN), or one step off where the exact quotient lies
    within `RECIP_MID_ULPS` float32 ulps of the midpoint between the two codes around it and `s`
    is not a power of two (a power-of-two reciprocal is exact, so no kernel can round
    differently there). Returns (ok mask, x/s in float64 for messages).
    """
    wn, gn = isnan_any(want), isnan_any(got)
    wb, gb = want.view(torch.uint8), got.view(torch.uint8)
    ok = (wb == gb) | (wn & gn)
    q = y32.to(torch.float64) / s_el.to(torch.float64)
    a = q.clamp(-E4M3_MAX, E4M3_MAX).abs()
    grid = e4m3_grid(a.device)
    idx = (torch.searchsorted(grid, a.contiguous(), right=True) - 1).clamp(0, 125)
    mid = (grid[idx] + grid[idx + 1]) / 2
    near = ((a - mid).abs() <= RECIP_MID_ULPS * ulp(mid, torch.float32)) & ~is_pow2(s_el)
    wmag = (wb & 0x7F).long()
    alt = (2 * idx + 1 - wmag).clamp(0, 126)
    alt_bits = (wb & 0x80) | alt.to(torch.uint8)
    one_step = near & ((wmag == idx) | (wmag == idx + 1)) & ~wn & ~gn & (gb == alt_bits)
    return ok | one_step, q


def same_f32(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Bitwise equality of float32 tensors, any NaN equal to any NaN."""
    g, w = got.contiguous(), want.contiguous()
    both_nan = torch.isnan(g) & torch.isnan(w)
    return (g.view(torch.int32) == w.view(torch.int32)) | both_nan


def fmt_idx(mask: torch.Tensor) -> list:
    return mask.nonzero()[:1].tolist()[0] if mask.any() else []


def code_report(name, bad, got, want, quot) -> Verdict:
    n = int(bad.sum())
    i = tuple(fmt_idx(bad))
    gb, wb = int(got.view(torch.uint8)[i]), int(want.view(torch.uint8)[i])
    gv, wv = float(got[i].float()), float(want[i].float())
    msg = (
        f"{name}: {n} of {bad.numel()} codes wrong beyond the reciprocal rule, first at "
        f"{list(i)}: got 0x{gb:02x} ({gv:.6g}), want 0x{wb:02x} ({wv:.6g}), x/s = "
        f"{float(quot[i]):.9g}"
    )
    return Verdict(False, msg, float(n), [(name, i, gv, wv, 0.0)])


def scale_report(name, bad, got, want) -> Verdict:
    n = int(bad.sum())
    i = tuple(fmt_idx(bad))
    gv, wv = float(got[i]), float(want[i])
    msg = (
        f"{name}: {n} of {bad.numel()} scales differ (exact), first at {list(i)}: "
        f"got {gv!r}, want {wv!r}"
    )
    return Verdict(False, msg, float(n), [(name, i, gv, wv, 0.0)])


def layout_ok(name: str, t: torch.Tensor, column_major: bool) -> Verdict:
    """Row-major (contiguous) or, with column_major_scales, strides (1, M) (dims of size 1 free)."""
    m, g = t.shape
    want = (1, max(m, 1)) if column_major else (max(g, 1), 1)
    if t.numel() and any(t.shape[d] > 1 and t.stride(d) != want[d] for d in range(2)):
        kind = "column-major" if column_major else "row-major"
        return Verdict(False, f"{name}: strides {t.stride()}, expected {kind} {want}")
    return Verdict.passed()


def contiguous_ok(name: str, t: torch.Tensor) -> Verdict:
    if not t.is_contiguous():
        return Verdict(False, f"{name}: not contiguous (strides {t.stride()})")
    return Verdict.passed()


def two_outputs(outs) -> Verdict | None:
    if len(outs) != 2:
        return Verdict(False, f"expected two outputs (q, scales), got {len(outs)}")
    return None


def to_column_major(s: torch.Tensor) -> torch.Tensor:
    m, g = s.shape
    out = torch.empty_strided((m, g), (1, max(m, 1)), dtype=s.dtype, device=s.device)
    out.copy_(s)
    return out


FP8_REGIMES = [
    "mixed",
    "normal",
    "midpoint",
    "near_mid",
    "zero_groups",
    "wide",
    "large",
    "denormal",
    "ties",
    "inf",
    "near_pow2",
    "extreme",
]

MIXED_FP8 = ["normal", "midpoint", "near_mid", "zero_groups", "near_pow2", "ties", "large"]
MIXED_MX = ["normal", "midpoint", "saturate", "zero_groups", "near_pow2", "ties", "wide"]

E2M1_GRID_AND_MIDS = sorted(
    set(E2M1_VALUES) | {(a + b) / 2 for a, b in itertools.pairwise(E2M1_VALUES)}
)


def exp_range(dtype: torch.dtype, kind: str) -> tuple[int, int]:
    """Per-group power-of-two exponents for which every constructed value is exact in dtype."""
    if dtype == torch.float16:
        return (-4, 6) if kind == "fp8" else (-14, 12)
    return (-20, 20) if kind == "fp8" else (-100, 100)


def pick_from(g: Gen, table, shape) -> torch.Tensor:
    t = torch.tensor(table, dtype=torch.float64, device=g.device)
    return t[g.integers(shape, 0, len(table))]


def group_values(
    g: Gen,
    shape,
    gid: torch.Tensor,
    ngroups: int,
    first: torch.Tensor,
    regime: str,
    dtype: torch.dtype,
    *,
    kind: str = "fp8",
    scale_format: str = "fp32",
    eps: float = 1e-10,
) -> torch.Tensor:
    """Values of `shape` in `dtype`; `gid` maps each element to its group, `first` marks one
    element per group (the one that carries the group's amax in the structured regimes)."""
    shape = list(shape)
    f64 = torch.float64
    if regime == "mixed":
        # a different structured regime in each group: one case meets many group kinds; no
        # inf, denormal or extreme groups, so the power-of-two relation still applies
        subs = MIXED_FP8 if kind == "fp8" else MIXED_MX
        pick = g.integers((ngroups,), 0, len(subs))[gid]
        out = torch.zeros(shape, dtype=dtype, device=g.device)
        for i, sub in enumerate(subs):
            v = group_values(
                g,
                shape,
                gid,
                ngroups,
                first,
                sub,
                dtype,
                kind=kind,
                scale_format=scale_format,
                eps=eps,
            )
            out = torch.where(pick == i, v, out)
        return out
    sign = torch.where(g.mask(shape, 0.5), -1.0, 1.0).to(f64)
    lo, hi = exp_range(dtype, kind)
    top = E4M3_MAX if kind == "fp8" else 6.0
    if regime == "normal":
        k = g.integers((ngroups,), -6, 7).to(f64)
        v = g.normal(shape).to(f64) * torch.exp2(k)[gid]
    elif regime == "wide":
        span = (-20.0, 15.0) if dtype == torch.float16 else (-24.0, 24.0)
        v = sign * g.host(torch.exp2, g.uniform(shape, *span).to(f64))
    elif regime == "zero_groups":
        v = g.normal(shape).to(f64) * 4.0
        zero = g.mask((ngroups,), 0.4)[gid]
        neg0 = g.mask(shape, 0.3)
        v = torch.where(zero, torch.where(neg0, -0.0, 0.0).to(f64), v)
    elif regime == "large":
        v = g.uniform(shape, -600.0, 600.0).to(f64)
    elif regime == "denormal":
        tiny = torch.finfo(dtype).tiny
        sub = g.uniform(shape, -1.0, 1.0).to(f64) * tiny
        all_sub = g.mask((ngroups,), 0.5)[gid]
        v = torch.where(all_sub | g.mask(shape, 0.7), sub, g.normal(shape).to(f64))
    elif regime == "ties":
        k = g.integers((ngroups,), -3, 4).to(f64)
        v = torch.round(g.uniform(shape, -4.0, 4.0).to(f64) * 2.0) / 2.0 * torch.exp2(k)[gid]
    elif regime == "inf":
        v = g.normal(shape).to(f64) * 8.0
        if v.numel():
            v = g.inject_nan(v, p=0.02)
            v = torch.where(torch.isnan(v), sign * float("inf"), v)
    elif regime in ("midpoint", "saturate"):
        # group scale 2**j exactly: the amax element is 448 * 2**j (FP8) or 6 * 2**j (MX: both
        # roundings pick e = j); the others sit on the code grid and its midpoints.
        j = g.integers((ngroups,), lo, hi + 1).to(f64)
        if kind == "fp8":
            table = [float(m) for m in e4m3_mids()] + [1.0, 2.0, 0.5]
        else:
            table = E2M1_GRID_AND_MIDS
        v = sign * pick_from(g, table, shape) * torch.exp2(j)[gid]
        peak = top if regime == "midpoint" else 7.5  # 7.5 * 2**j saturates with "floor"
        v = torch.where(first, sign * peak * torch.exp2(j)[gid], v)
    elif regime == "near_mid":
        # x/s within a few float32 ulps of an E4M3 midpoint, s not a power of two (float32 x)
        k = g.integers((ngroups,), 0, 10).to(f64)
        amax = (g.uniform((ngroups,), 0.5, 0.99).to(f64) * torch.exp2(k)).to(dtype)
        s = scale_of(amax.to(torch.float32), scale_format, eps)
        mids = pick_from(g, [float(m) for m in e4m3_mids()][:-1], shape)
        nudge = 1.0 + g.integers(shape, -6, 7).to(f64) * 2.0**-23
        v = sign * mids * s.to(f64)[gid] * nudge
        v = torch.where(first, sign * amax.to(f64)[gid], v)
    elif regime == "near_pow2":
        # the amax a few float32 ulps either side of 448 * 2**k (FP8) or 2**k, 6 * 2**k (MX),
        # where a float32 log2 rounds to the wrong side of the power of two; small |k|: it is
        # right near 2**0 and wrong a few binades away, so a rescaling crosses that line
        k = g.integers((ngroups,), -6, 7).to(f64)
        if kind == "fp8":
            base = E4M3_MAX * torch.exp2(k)
        else:  # 2**k is the "floor" boundary, 6 * 2**k the "ceil" one
            base = torch.where(g.mask((ngroups,), 0.5), 1.0, 6.0).to(f64) * torch.exp2(k)
        m = pick_from(g, [-2.0, -1.0, 0.0, 1.0, 1.0, 2.0], (ngroups,))
        amax = base * torch.where(m < 0, 1.0 + m * 2.0**-24, 1.0 + m * 2.0**-23)
        v = g.uniform(shape, -0.9, 0.9).to(f64) * base[gid]
        v = torch.where(first, sign * amax[gid], v)
    elif regime == "extreme":
        fi = torch.finfo(dtype)
        if dtype == torch.float16:
            table = [-24.0, -20.0, -14.0, 0.0, 14.0, 15.0]
        elif dtype == torch.bfloat16:
            table = [-133.0, -129.0, -126.0, -100.0, 0.0, 100.0, 126.0, 127.0]
        else:
            table = [-149.0, -140.0, -128.0, -126.0, 0.0, 100.0, 126.0, 127.0]
        k = pick_from(g, table, (ngroups,))
        v = g.uniform(shape, -1.0, 1.0).to(f64) * torch.exp2(k)[gid]
        v = torch.where(first, sign * torch.exp2(k)[gid] * 1.5, v).clamp(-fi.max, fi.max)
    else:
        raise ValueError(f"unknown regime {regime!r}")
    return v.to(dtype)


def row_groups(lead_shape, k: int, gs: int, device):
    """gid / first maps for groups of `gs` along the last dim of `[*lead_shape, k]`."""
    rows = 1
    for d in lead_shape:
        rows *= d
    col = torch.arange(k, device=device)
    row = torch.arange(rows, device=device).unsqueeze(-1)
    gid = (row * (k // gs) + col // gs).reshape(*lead_shape, k)
    first = (col % gs == 0).expand(rows, k).reshape(*lead_shape, k)
    return gid, rows * (k // gs), first


def mutate_common(x: torch.Tensor, bad: str | None) -> torch.Tensor:
    """Tensor-level bad inputs shared by the quantizers of float inputs."""
    if bad == "int_dtype":
        return x.to(torch.int32)
    if bad == "float64":
        return x.to(torch.float64)
    if bad == "fp8_input":
        return x.float().clamp(-448, 448).to(FP8)
    if bad == "not_a_tensor":
        # the same nesting, at most two entries a dimension: a full-size list (29M floats at
        # T 4097 x 7168) cost the GPU's error_parity units 40 s of copying and printing a
        # suite (cProfile, H100, 2026-12-05) and tests nothing more
        return x[tuple(slice(0, 2) for _ in x.shape)].tolist()
    return x


def groups_count(size: str, gs: int, kmax: int) -> st.SearchStrategy[int]:
    return S.sizes(
        small=[1, 2, 3, 4], full=[7, 8, 16, 28, 56], size=size, lo=1, hi=max(1, kmax // gs)
    )


def fp8_meta_checks(q, s, want_q, want_s, column_major: bool) -> Verdict:
    v = combine([check_meta("q", q, want_q), check_meta("scales", s, want_s)])
    if not v:
        return v
    return combine([contiguous_ok("q", q), layout_ok("scales", s, column_major)])


def on_cpu(fn, *args, **kwargs):
    """`fn` evaluated on the CPU, tensor results moved back to the device of `args[0]` (layout
    kept). The FP8 scale is `amax / 448` as a true division: torch on CUDA divides a tensor by a
    Python scalar as a multiply by the reciprocal, 1 ulp off in about half the groups, while
    the CPU divides truly. The CPU result is the contract's."""
    dev = args[0].device
    cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    outs = fn(*cpu, **kwargs)
    if isinstance(outs, torch.Tensor):
        return outs.to(dev)
    return tuple(o.to(dev) if isinstance(o, torch.Tensor) else o for o in outs)


def nonempty(meta: dict) -> bool:
    return all(meta.get(d, 1) > 0 for d in ("M", "K", "N", "R", "C")) and all(
        d > 0 for d in meta.get("lead", [])
    )


def scales_layout(transform, out: int = 1):
    """Wrap a relation so the combined scales have the layout the case asks for."""

    def wrapped(case: Case, rng):
        got = transform(case, rng)
        if got is None:
            return None
        cases, combine_fn = got
        if not case.kwargs.get("column_major_scales", False):
            return cases, combine_fn

        def relayout(results):
            outs = list(combine_fn(results))
            if isinstance(outs[out], torch.Tensor) and outs[out].dim() == 2:
                outs[out] = to_column_major(outs[out])
            return tuple(outs)

        return cases, relayout

    return wrapped


def min_rank(transform, rank: int, arg: int = 0):
    """A token/expert relation over dim 0 applies only where dim 0 is not the quantized dim."""

    def wrapped(case: Case, rng):
        x = case.args[arg]
        if not isinstance(x, torch.Tensor) or x.dim() < rank:
            return None
        return transform(case, rng)

    return wrapped


POW2_STEPS = [1, -1, 2, -2, 3, -3, 5, -5, 8, -8]


def exact_pow2_multiple(x: torch.Tensor, j: int) -> torch.Tensor | None:
    """`x * 2**j` in x.dtype if that is exact for every element (no overflow, no rounding)."""
    y64 = x.to(torch.float64) * 2.0**j
    y = y64.to(x.dtype)
    if not torch.equal(y.to(torch.float64), y64):
        return None
    return y


def with_x(case: Case, x: torch.Tensor, **meta) -> Case:
    return Case(case.op, (x, *case.args[1:]), dict(case.kwargs), {**case.meta, **meta}, case.device)


def scale_of(amax32: torch.Tensor, scale_format: str, eps: float) -> torch.Tensor:
    """The contract's scale from a float32 amax: a true division (a tensor divisor: torch on
    CUDA turns division by a Python scalar into a reciprocal multiply)."""
    a = amax32.clamp(min=eps)
    s = a / torch.full_like(a, E4M3_MAX)
    return ue8m0_pow2_ceil(s) if scale_format == "ue8m0" else s


def mx_lead(size: str) -> st.SearchStrategy[list]:
    """Leading dims of an MX tensor: [M] mostly, [E, M] (experts) or none (a 1-D vector)."""
    t = S.tokens(size=size)
    return st.sampled_from(["tokens", "experts", "tokens", "vector"]).flatmap(
        lambda kind: (
            t.map(lambda m: [m])
            if kind == "tokens"
            else st.tuples(st.sampled_from([2, 3]), t).map(list)
            if kind == "experts"
            else st.just([])
        )
    )


def mx_blocks(size: str) -> st.SearchStrategy[int]:
    return S.sizes(
        small=[1, 2, 3, 4, 5, 8, 16],
        full=[56, 64, 128, 224],
        size=size,
        lo=1,
        hi=16 if size == "small" else 224,
    )


TOKEN_RELATIONS = (
    Relation("token_permutation", scales_layout(S.permute_tokens())),
    Relation("batch_split", scales_layout(S.split_tokens())),
)


# --- named variants of the FP8 quantizers (docs/contract-notes.md, "Named variants") -----------

RECIP_SCALE = Variant(
    "recip_scale",
    "vLLM per_token_group_quant_fp8: scale = amax * fl(1/448) in float32, not amax / 448 (one "
    "float32 ulp apart in about half the groups; it matches torch's CUDA division by a scalar)",
    "vllm model_executor/layers/quantization/utils/fp8_utils.py",
)
UE8M0_LOG2 = Variant(
    "ue8m0_log2",
    "vLLM and SGLang Triton quantizers (and DeepGEMM's ceil_to_ue8m0): ue8m0 scale as float32 "
    "exp2(ceil(log2(s))), which gives half the scale for an s just above a power of two",
    "vllm fp8_utils.py _per_token_group_quant_fp8; sglang srt/layers/quantization/fp8_kernel.py",
    breaks=("pow2_scaling",),  # a float32 log2 misrounds in some binades and not in others
)
EPS_ON_SCALE = Variant(
    "eps_on_scale",
    "vLLM C++ per_token_group_fp8_quant: the floor applies to the scale, max(amax / 448, eps), "
    "not to amax (an all-zero ue8m0 group gets 2**-33 instead of 2**-42 at eps 1e-10)",
    "vllm-project/vllm#53339 (csrc/quantization/fp8/per_token_group_quant.cu)",
    breaks=("pow2_scaling",),  # max(amax / 448, eps) does not scale with x where eps wins
)
NAN_DROPPED = Variant(
    "nan_dropped",
    "vLLM and SGLang Triton quantizers: tl.max and tl.clamp drop NaN, so a NaN group's scale "
    "comes from its other elements and the NaN element gets code 0xFE (-448)",
    "vllm fp8_utils.py, sglang fp8_kernel.py; sgl-project/sglang#32188",
)

_F32 = torch.float32
_F32_MAX_T = torch.finfo(torch.float32).max


def amax_under(groups: torch.Tensor, dim, names) -> torch.Tensor:
    """The contract's amax (inf counted as the float32 maximum, NaN propagating) or, under
    nan_dropped, the amax of the group's other elements (0 for an all-NaN group)."""
    a = groups.abs().clamp(max=_F32_MAX_T)
    if "nan_dropped" in names:
        a = torch.nan_to_num(a, nan=0.0)
    return a.amax(dim=dim)


def _log2_may_round_down(s: torch.Tensor) -> torch.Tensor:
    """Where a float32 log2 of `s` (just above a power of two, s = 2**k (1 + r)) may return the
    integer k: log2(1 + r) within half an ulp of k plus a faithful log2's one ulp."""
    s64 = s.to(torch.float64)
    m, e = torch.frexp(s64)  # s = m 2**e, m in [0.5, 1): k = e - 1, 1 + r = 2m
    k = (e - 1).to(torch.float64)
    above = torch.log2(2 * m)  # log2(1 + r) >= 0, exact in float64 to far below ulp32(k)
    return (m != 0.5) & torch.isfinite(s64) & (k != 0) & (above <= 1.5 * ulp(k, _F32))


def _div448(a: torch.Tensor, names) -> torch.Tensor:
    if "recip_scale" in names:  # fl(1/448), then one float32 product
        return a * torch.tensor(1.0 / E4M3_MAX, dtype=_F32, device=a.device)
    return a / torch.full_like(a, E4M3_MAX)  # a true division (see scale_of)


def scales_under(amax32: torch.Tensor, scale_format: str, eps: float, names):
    """(s, alt, alt_ok): the group scale under `names` and another one a variant also allows
    (ue8m0_log2: the power of two below, where a float32 log2 can round down to it)."""
    if "eps_on_scale" in names:
        s = _div448(amax32, names).clamp(min=eps)
    else:
        s = _div448(amax32.clamp(min=eps), names)
    s = s.to(_F32)
    if scale_format != "ue8m0":
        return s, s, torch.zeros_like(s, dtype=torch.bool)
    p = ue8m0_pow2_ceil(s)
    if "ue8m0_log2" not in names:
        return p, p, torch.zeros_like(p, dtype=torch.bool)
    return p, p / 2, _log2_may_round_down(s)


def pick_scale(got_s: torch.Tensor, s, alt, alt_ok):
    """(the scale each group is judged with, scales ok): the kernel's own scale where the
    variant allows it, else the variant's main scale."""
    main = same_f32(got_s, s)
    other = alt_ok & same_f32(got_s, alt) & ~main
    return torch.where(other, alt, s), main | other


def codes_under(v: torch.Tensor, names) -> torch.Tensor:
    """E4M3 values of float32 quotients `v` (saturating), NaN as the variants make it."""
    q = round_to_e4m3(v)
    if "nan_dropped" in names:  # tl.clamp(NaN, -448, 448) is -448 (max drops the NaN first)
        q = torch.where(torch.isnan(v), torch.full_like(q, -E4M3_MAX), q)
    return q


def check_names(spec_name: str, names, known) -> frozenset:
    bad = sorted(set(names) - set(known))
    if bad:
        raise ValueError(f"{spec_name}: unknown variants {bad}; variants: {sorted(known)}")
    return frozenset(names)


def fp8_rows_under(y32: torch.Tensor, gs: int, fmt: str, eps: float, names, got_s=None):
    """Row-group FP8 of float32 `y32 [M, K]` (CPU) under `names`: (want codes as FP8, the
    scale each group is judged with, scales ok). Without `got_s`: the variant's main scales."""
    m, k = y32.shape
    groups = y32.reshape(m, k // gs, gs)
    s, alt, alt_ok = scales_under(amax_under(groups, -1, names), fmt, eps, names)
    if got_s is None:
        s_c, s_ok = s, torch.ones_like(s, dtype=torch.bool)
    else:
        s_c, s_ok = pick_scale(got_s.contiguous().to(_F32), s, alt, alt_ok)
    q = codes_under(groups / s_c.unsqueeze(-1), names)
    return q.reshape(m, k).to(FP8), s_c, s_ok


def fp8_rows_verdict(y32, q, s, gs, fmt, eps, names) -> Verdict:
    """Codes and scales of row-group FP8 output (q, s) against the reference under `names`:
    scales exactly one the variants allow, codes as fp8_quant's rule for that scale."""
    q, s = q.cpu(), s.cpu()
    want_q, s_c, s_ok = fp8_rows_under(y32, gs, fmt, eps, names, got_s=s)
    codes_ok, quot = e4m3_codes_ok(y32, s_c.repeat_interleave(gs, dim=-1), want_q, q)
    out = []
    if not s_ok.all():
        out.append(scale_report("scales", ~s_ok, s.contiguous(), s_c))
    if not codes_ok.all():
        out.append(code_report("q", ~codes_ok, q, want_q, quot))
    return combine(out) if out else Verdict.passed()
