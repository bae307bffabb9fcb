"""OpSpecs of the quantizers: fp8_quant, fp8_block_quant, silu_mul_fp8_quant, mxfp4_quant,
mxfp4_dequant.

Quantizer outputs are codes: they are compared exactly (bits), never with a float tolerance.
The one freedom the contract grants (`docs/ops.md`, fp8_quant) is the reciprocal multiply: a
code may be one E4M3 step off where `x / s` lies within 2 float32 ulps of the midpoint between
two codes. `_e4m3_codes_ok` implements exactly that, and only where it can happen: when `s` is a
power of two the reciprocal is exact, `x * (1 / s) == x / s`, and the code must be the RNE one.
The FP8 references are evaluated on the CPU (`_on_cpu`): on CUDA torch divides by a Python
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

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of, ulp
from parity.properties.tolerance import Verdict, check_meta, combine, exact, isnan_any
from parity.reference.numerics import (
    E2M1_VALUES,
    E8M0_BIAS,
    E8M0_NAN,
    e8m0_decode,
    round_to_e4m3,
    ue8m0_pow2_ceil,
    unpack_nibbles,
)
from parity.reference.quant import (
    BLOCK_QUANT_EPS,
    MX_BLOCK,
    _expand_blocks,
)
from parity.reference.swiglu import swiglu_math
from parity.registry import OpSpec, Relation, add_spec

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
_F32_TINY = torch.finfo(torch.float32).tiny

TOL_FP8 = (
    "codes and scales bit-exact; one e4m3 step allowed where x/s is within 2 u32 of a code "
    "midpoint and s is not a power of two (reciprocal multiply)"
)
TOL_BLOCK = (
    "codes and block scales bit-exact; one e4m3 step allowed where w/s is within 2 u32 of a "
    "code midpoint and s is not a power of two (DeepGEMM multiplies by 448/amax)"
)
TOL_SILU = (
    "per group, the float32- or the x.dtype-intermediate path under the fp8_quant rule, the "
    "float32 SwiGLU within 16 u32 |y| (exact where gate >= 20): scale from an amax in range, "
    "codes rounding a value in range"
)
TOL_MXQ = (
    "packed codes and scale codes bit-exact (power-of-two scales make the division exact); "
    "element codes of a NaN block (scale 255) are free"
)
TOL_MXD = "bit-exact: each value * 2**(code-127) is exact in float32, rounded once to dtype"


# --- E4M3 grid and the boundary-aware exact comparison -----------------------------------------

_GRID: dict[str, torch.Tensor] = {}


def _e4m3_grid(device) -> torch.Tensor:
    """The 127 finite non-negative E4M3 magnitudes (codes 0..126 in order), float64."""
    key = str(device)
    if key not in _GRID:
        codes = torch.arange(127, dtype=torch.uint8)
        _GRID[key] = codes.view(FP8).to(torch.float64).to(device)
    return _GRID[key]


def _e4m3_mids() -> torch.Tensor:
    """The 126 midpoints between adjacent non-negative E4M3 values (2**-10 .. 432), float64."""
    g = _e4m3_grid("cpu")
    return (g[:-1] + g[1:]) / 2


def _is_pow2(s: torch.Tensor) -> torch.Tensor:
    m, _ = torch.frexp(s.to(torch.float32))
    return m == 0.5


def _e4m3_codes_ok(y32, s_el, want, got) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element: the code `got` is right for `y32 / s_el` given the reference code `want`.

    Bit-exact (the two NaN encodings are one NaN), or one step off where the exact quotient lies
    within 2 float32 ulps of the midpoint between the two codes around it and `s` is not a power
    of two (a power-of-two reciprocal is exact, so no kernel can round differently there).
    Returns (ok mask, x/s in float64 for messages).
    """
    wn, gn = isnan_any(want), isnan_any(got)
    wb, gb = want.view(torch.uint8), got.view(torch.uint8)
    ok = (wb == gb) | (wn & gn)
    q = y32.to(torch.float64) / s_el.to(torch.float64)
    a = q.clamp(-E4M3_MAX, E4M3_MAX).abs()
    grid = _e4m3_grid(a.device)
    idx = (torch.searchsorted(grid, a.contiguous(), right=True) - 1).clamp(0, 125)
    mid = (grid[idx] + grid[idx + 1]) / 2
    near = ((a - mid).abs() <= 2 * ulp(mid, torch.float32)) & ~_is_pow2(s_el)
    wmag = (wb & 0x7F).long()
    alt = (2 * idx + 1 - wmag).clamp(0, 126)
    alt_bits = (wb & 0x80) | alt.to(torch.uint8)
    one_step = near & ((wmag == idx) | (wmag == idx + 1)) & ~wn & ~gn & (gb == alt_bits)
    return ok | one_step, q


def _same_f32(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Bitwise equality of float32 tensors, any NaN equal to any NaN."""
    g, w = got.contiguous(), want.contiguous()
    both_nan = torch.isnan(g) & torch.isnan(w)
    return (g.view(torch.int32) == w.view(torch.int32)) | both_nan


def _fmt_idx(mask: torch.Tensor) -> list:
    return mask.nonzero()[:1].tolist()[0] if mask.any() else []


def _code_report(name, bad, got, want, quot) -> Verdict:
    n = int(bad.sum())
    i = tuple(_fmt_idx(bad))
    gb, wb = int(got.view(torch.uint8)[i]), int(want.view(torch.uint8)[i])
    gv, wv = float(got[i].float()), float(want[i].float())
    msg = (
        f"{name}: {n} of {bad.numel()} codes wrong beyond the reciprocal rule, first at "
        f"{list(i)}: got 0x{gb:02x} ({gv:.6g}), want 0x{wb:02x} ({wv:.6g}), x/s = "
        f"{float(quot[i]):.9g}"
    )
    return Verdict(False, msg, float(n), [(name, i, gv, wv, 0.0)])


def _scale_report(name, bad, got, want) -> Verdict:
    n = int(bad.sum())
    i = tuple(_fmt_idx(bad))
    gv, wv = float(got[i]), float(want[i])
    msg = (
        f"{name}: {n} of {bad.numel()} scales differ (exact), first at {list(i)}: "
        f"got {gv!r}, want {wv!r}"
    )
    return Verdict(False, msg, float(n), [(name, i, gv, wv, 0.0)])


def _layout_ok(name: str, t: torch.Tensor, column_major: bool) -> Verdict:
    """Row-major (contiguous) or, with column_major_scales, strides (1, M) (dims of size 1 free)."""
    m, g = t.shape
    want = (1, max(m, 1)) if column_major else (max(g, 1), 1)
    if t.numel() and any(t.shape[d] > 1 and t.stride(d) != want[d] for d in range(2)):
        kind = "column-major" if column_major else "row-major"
        return Verdict(False, f"{name}: strides {t.stride()}, expected {kind} {want}")
    return Verdict.passed()


def _contiguous(name: str, t: torch.Tensor) -> Verdict:
    if not t.is_contiguous():
        return Verdict(False, f"{name}: not contiguous (strides {t.stride()})")
    return Verdict.passed()


def _two(outs) -> Verdict | None:
    if len(outs) != 2:
        return Verdict(False, f"expected two outputs (q, scales), got {len(outs)}")
    return None


def _column_major(s: torch.Tensor) -> torch.Tensor:
    m, g = s.shape
    out = torch.empty_strided((m, g), (1, max(m, 1)), dtype=s.dtype, device=s.device)
    out.copy_(s)
    return out


# --- value regimes, per quantization group ----------------------------------------------------

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
MX_REGIMES = [
    "mixed",
    "normal",
    "midpoint",
    "saturate",
    "zero_groups",
    "wide",
    "denormal",
    "ties",
    "inf",
    "near_pow2",
    "extreme",
]

_MIXED_FP8 = ["normal", "midpoint", "near_mid", "zero_groups", "near_pow2", "ties", "large"]
_MIXED_MX = ["normal", "midpoint", "saturate", "zero_groups", "near_pow2", "ties", "wide"]

_E2M1_GRID_AND_MIDS = sorted(
    set(E2M1_VALUES) | {(a + b) / 2 for a, b in itertools.pairwise(E2M1_VALUES)}
)


def _exp_range(dtype: torch.dtype, kind: str) -> tuple[int, int]:
    """Per-group power-of-two exponents for which every constructed value is exact in dtype."""
    if dtype == torch.float16:
        return (-4, 6) if kind == "fp8" else (-14, 12)
    return (-20, 20) if kind == "fp8" else (-100, 100)


def _pick(g: Gen, table, shape) -> torch.Tensor:
    t = torch.tensor(table, dtype=torch.float64, device=g.device)
    return t[g.integers(shape, 0, len(table))]


def _group_values(
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
        subs = _MIXED_FP8 if kind == "fp8" else _MIXED_MX
        pick = g.integers((ngroups,), 0, len(subs))[gid]
        out = torch.zeros(shape, dtype=dtype, device=g.device)
        for i, sub in enumerate(subs):
            v = _group_values(
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
    lo, hi = _exp_range(dtype, kind)
    top = E4M3_MAX if kind == "fp8" else 6.0
    if regime == "normal":
        k = g.integers((ngroups,), -6, 7).to(f64)
        v = g.normal(shape).to(f64) * torch.exp2(k)[gid]
    elif regime == "wide":
        span = (-20.0, 15.0) if dtype == torch.float16 else (-24.0, 24.0)
        v = sign * torch.exp2(g.uniform(shape, *span).to(f64))
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
            table = [float(m) for m in _e4m3_mids()] + [1.0, 2.0, 0.5]
        else:
            table = _E2M1_GRID_AND_MIDS
        v = sign * _pick(g, table, shape) * torch.exp2(j)[gid]
        peak = top if regime == "midpoint" else 7.5  # 7.5 * 2**j saturates with "floor"
        v = torch.where(first, sign * peak * torch.exp2(j)[gid], v)
    elif regime == "near_mid":
        # x/s within a few float32 ulps of an E4M3 midpoint, s not a power of two (float32 x)
        k = g.integers((ngroups,), 0, 10).to(f64)
        amax = (g.uniform((ngroups,), 0.5, 0.99).to(f64) * torch.exp2(k)).to(dtype)
        s = _scale_of(amax.to(torch.float32), scale_format, eps)
        mids = _pick(g, [float(m) for m in _e4m3_mids()][:-1], shape)
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
        m = _pick(g, [-2.0, -1.0, 0.0, 1.0, 1.0, 2.0], (ngroups,))
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
        k = _pick(g, table, (ngroups,))
        v = g.uniform(shape, -1.0, 1.0).to(f64) * torch.exp2(k)[gid]
        v = torch.where(first, sign * torch.exp2(k)[gid] * 1.5, v).clamp(-fi.max, fi.max)
    else:
        raise ValueError(f"unknown regime {regime!r}")
    return v.to(dtype)


def _row_groups(lead_shape, k: int, gs: int, device):
    """gid / first maps for groups of `gs` along the last dim of `[*lead_shape, k]`."""
    rows = 1
    for d in lead_shape:
        rows *= d
    col = torch.arange(k, device=device)
    row = torch.arange(rows, device=device).unsqueeze(-1)
    gid = (row * (k // gs) + col // gs).reshape(*lead_shape, k)
    first = (col % gs == 0).expand(rows, k).reshape(*lead_shape, k)
    return gid, rows * (k // gs), first


def _mutate_common(x: torch.Tensor, bad: str | None) -> torch.Tensor:
    """Tensor-level bad inputs shared by the quantizers of float inputs."""
    if bad == "int_dtype":
        return x.to(torch.int32)
    if bad == "float64":
        return x.to(torch.float64)
    if bad == "fp8_input":
        return x.float().clamp(-448, 448).to(FP8)
    if bad == "not_a_tensor":
        return x.tolist()
    return x


# --- fp8_quant ---------------------------------------------------------------------------------

FP8_GROUP_SIZES = [128, 64, 32, 16, 256]


def _groups_count(size: str, gs: int, kmax: int) -> st.SearchStrategy[int]:
    return S.sizes(
        small=[1, 2, 3, 4], full=[7, 8, 16, 28, 56], size=size, lo=1, hi=max(1, kmax // gs)
    )


@st.composite
def _fp8_quant_meta(draw, size: str, dtypes):
    gs = draw(st.sampled_from(FP8_GROUP_SIZES))
    kmax = 512 if size == "small" else 7168
    return {
        "M": draw(S.tokens(size=size)),
        "K": gs * draw(_groups_count(size, gs, kmax)),
        "dtype": draw(S.float_dtypes(dtypes)),
        "options": {
            "group_size": gs,
            "scale_format": draw(st.sampled_from(["fp32", "ue8m0"])),
            "column_major_scales": draw(st.booleans()),
            "eps": draw(st.sampled_from([1e-10, 1e-4, 1e-6, 1e-12])),
        },
        "regime": draw(st.sampled_from(FP8_REGIMES)),
        "seed": draw(S.seeds()),
    }


def fp8_quant_strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _fp8_quant_meta(size, dtypes)


def fp8_quant_build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = dict(meta["options"])
    m, k, gs = meta["M"], meta["K"], opts["group_size"]
    gid, n, first = _row_groups([m], k, gs, device)
    x = _group_values(
        g,
        [m, k],
        gid,
        n,
        first,
        meta["regime"],
        dtype,
        scale_format=opts["scale_format"],
        eps=opts["eps"],
    )
    if meta.get("nan"):
        x = g.inject_nan(x)
    bad = meta.get("invalid")
    x = _mutate_common(x, bad)
    if bad == "rank1":
        x = x.reshape(-1)
    elif bad == "rank3":
        x = x.unsqueeze(0)
    elif bad == "k_not_divisible":
        x = x[:, :-1]
    elif bad == "group_size_zero":
        opts["group_size"] = 0
    elif bad == "group_size_negative":
        opts["group_size"] = -gs
    elif bad == "group_size_float":
        opts["group_size"] = float(gs)
    elif bad == "bad_scale_format":
        opts["scale_format"] = "e8m0"
    elif bad == "column_major_not_bool":
        opts["column_major_scales"] = 1
    elif bad == "eps_zero":
        opts["eps"] = 0.0
    elif bad == "eps_negative":
        opts["eps"] = -1e-10
    elif bad == "eps_nan":
        opts["eps"] = float("nan")
    return Case("fp8_quant", (x,), opts, meta, str(device))


def _fp8_meta_checks(q, s, want_q, want_s, column_major: bool) -> Verdict:
    v = combine([check_meta("q", q, want_q), check_meta("scales", s, want_s)])
    if not v:
        return v
    return combine([_contiguous("q", q), _layout_ok("scales", s, column_major)])


def _fp8_group_ok(y32, want_q, want_s, got_q, got_s, gs):
    """(groups ok [..., G], codes ok [..., K], scales ok [..., G], x/s) of row-group FP8."""
    s_el = want_s.contiguous().repeat_interleave(gs, dim=-1)
    codes_ok, quot = _e4m3_codes_ok(y32, s_el, want_q, got_q)
    scales_ok = _same_f32(got_s, want_s)
    *lead, k = codes_ok.shape
    groups_ok = codes_ok.reshape(*lead, k // gs, gs).all(-1) & scales_ok
    return groups_ok, codes_ok, scales_ok, quot


def _on_cpu(fn, *args, **kwargs):
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


def fp8_quant_compare(case: Case, outs: tuple) -> Verdict:
    (x,) = case.args
    o = case.kwargs
    want_q, want_s = _on_cpu(ref.fp8_quant, x, **o)
    if (bad := _two(outs)) is not None:
        return bad
    q, s = outs
    v = _fp8_meta_checks(q, s, want_q, want_s, o.get("column_major_scales", False))
    if not v:
        return v
    _, codes_ok, scales_ok, quot = _fp8_group_ok(
        x.to(torch.float32), want_q, want_s, q, s, o.get("group_size", 128)
    )
    out = []
    if not scales_ok.all():
        out.append(_scale_report("scales", ~scales_ok, s, want_s))
    if not codes_ok.all():
        out.append(_code_report("q", ~codes_ok, q, want_q, quot))
    return combine(out) if out else Verdict.passed()


FP8_INVALID = [
    "int_dtype",
    "float64",
    "fp8_input",
    "not_a_tensor",
    "rank1",
    "rank3",
    "k_not_divisible",
    "group_size_zero",
    "group_size_negative",
    "group_size_float",
    "bad_scale_format",
    "column_major_not_bool",
    "eps_zero",
    "eps_negative",
    "eps_nan",
]


def fp8_quant_invalid(*, size: str = "small") -> st.SearchStrategy[dict]:
    return S.invalid_cases(FP8_INVALID, fp8_quant_strategy(size=size).filter(lambda m: m["M"] > 0))


def _nonempty(meta: dict) -> bool:
    return all(meta.get(d, 1) > 0 for d in ("M", "K", "N", "R", "C")) and all(
        d > 0 for d in meta.get("lead", [])
    )


def _nan_strategy(strategy):
    def nan_strategy(*, size: str = "small", dtypes=None):
        return S.with_nan(strategy(size=size, dtypes=dtypes).filter(_nonempty))

    return nan_strategy


# --- relations ---------------------------------------------------------------------------------


def _scales_layout(transform, out: int = 1):
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
                outs[out] = _column_major(outs[out])
            return tuple(outs)

        return cases, relayout

    return wrapped


def _min_rank(transform, rank: int, arg: int = 0):
    """A token/expert relation over dim 0 applies only where dim 0 is not the quantized dim."""

    def wrapped(case: Case, rng):
        x = case.args[arg]
        if not isinstance(x, torch.Tensor) or x.dim() < rank:
            return None
        return transform(case, rng)

    return wrapped


_POW2_STEPS = [1, -1, 2, -2, 3, -3, 5, -5, 8, -8]


def _exact_pow2_multiple(x: torch.Tensor, j: int) -> torch.Tensor | None:
    """`x * 2**j` in x.dtype if that is exact for every element (no overflow, no rounding)."""
    y64 = x.to(torch.float64) * 2.0**j
    y = y64.to(x.dtype)
    if not torch.equal(y.to(torch.float64), y64):
        return None
    return y


def _with_x(case: Case, x: torch.Tensor, **meta) -> Case:
    return Case(case.op, (x, *case.args[1:]), dict(case.kwargs), {**case.meta, **meta}, case.device)


def fp8_pow2_scaling(case: Case, rng):
    """x * 2**j: codes identical, scales * 2**j exactly (all-zero groups keep the eps scale).

    Holds for both scale formats: max(amax, eps) / 448 scales exactly while amax >= eps on both
    sides, and x/s is the same real number. Not applicable with inf (amax clamps), a group whose
    amax is below eps, or where x * 2**j is not exact in x.dtype.
    """
    (x,) = case.args
    o = case.kwargs
    gs, eps = o.get("group_size", 128), o.get("eps", 1e-10)
    if x.numel() == 0 or not torch.isfinite(x).all():
        return None
    amax = x.to(torch.float64).abs().reshape(x.shape[0], -1, gs).amax(-1)
    nz = amax > 0
    steps = list(_POW2_STEPS)
    rng.shuffle(steps)
    for j in steps:
        small = nz & ((amax < 2 * eps) | (amax * 2.0**j < 2 * eps))
        if small.any():
            continue
        y = _exact_pow2_multiple(x, j)
        if y is None:
            continue

        def combine_fn(results, j=j, nz=nz):
            ((q, s),) = results
            back = torch.where(nz.to(s.device), s * 2.0**-j, s)
            if o.get("column_major_scales", False):
                back = _column_major(back)
            return q, back

        return [_with_x(case, y, pow2=j)], combine_fn
    return None


# --- fp8_block_quant ---------------------------------------------------------------------------

BLOCK_SHAPES_SMALL = [[128, 128], [32, 32], [16, 64], [64, 16], [1, 32], [8, 8], [32, 1]]
BLOCK_SHAPES_FULL = [[128, 128], [128, 128], [64, 64], [1, 128]]


@st.composite
def _block_meta(draw, size: str, dtypes):
    small = size == "small"
    bs = draw(st.sampled_from(BLOCK_SHAPES_SMALL if small else BLOCK_SHAPES_FULL))
    lead = draw(st.sampled_from([[], [2], [3], [1]] if small else [[], [4], [2], [8]]))
    budget = 48_000 if small else 32_000_000
    e = max(1, lead[0]) if lead else 1
    rmax = 160 if small else 4100
    r = draw(
        S.sizes(
            small=[0, 1, 2, 7, 8, 9, 31, 33, 65, 129],
            full=S.around(128, 1024, 4096),
            size=size,
            lo=0,
            hi=rmax,
        )
    )
    cmax = max(1, min(300 if small else 7200, budget // (e * max(r, 1))))
    c = draw(
        S.sizes(
            small=[1, 2, 3, 15, 16, 17, 31, 33, 63, 65, 127, 129, 255],
            full=S.around(128, 1024, 2048, 7168),
            size=size,
            lo=1,
            hi=cmax,
        )
    )
    return {
        "lead": lead,
        "R": r,
        "C": c,
        "dtype": draw(S.float_dtypes(dtypes)),
        "options": {
            "block_shape": bs,
            "scale_format": draw(st.sampled_from(["fp32", "ue8m0"])),
        },
        "regime": draw(st.sampled_from(FP8_REGIMES)),
        "seed": draw(S.seeds()),
    }


def fp8_block_quant_strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _block_meta(size, dtypes)


def _block_groups(lead, r: int, c: int, bs, device):
    br, bc = bs
    nr, nc = -(-r // br), -(-c // bc)
    e = 1
    for d in lead:
        e *= d
    ei = torch.arange(e, device=device).view(e, 1, 1)
    ri = torch.arange(r, device=device).view(1, r, 1)
    ci = torch.arange(c, device=device).view(1, 1, c)
    gid = ((ei * nr + ri // br) * nc + ci // bc).reshape(*lead, r, c)
    first = ((ri % br == 0) & (ci % bc == 0)).expand(e, r, c).reshape(*lead, r, c)
    return gid, e * nr * nc, first


def fp8_block_quant_build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = {
        "block_shape": tuple(meta["options"]["block_shape"]),
        "scale_format": meta["options"]["scale_format"],
    }
    lead, r, c = meta["lead"], meta["R"], meta["C"]
    gid, n, first = _block_groups(lead, r, c, opts["block_shape"], device)
    w = _group_values(
        g,
        [*lead, r, c],
        gid,
        n,
        first,
        meta["regime"],
        dtype,
        scale_format=opts["scale_format"],
        eps=BLOCK_QUANT_EPS,
    )
    if meta.get("nan"):
        w = g.inject_nan(w)
    bad = meta.get("invalid")
    w = _mutate_common(w, bad)
    if bad == "rank1":
        w = w.reshape(-1)
    elif bad == "block_zero":
        opts["block_shape"] = (0, opts["block_shape"][1])
    elif bad == "block_negative":
        opts["block_shape"] = (opts["block_shape"][0], -128)
    elif bad == "block_len3":
        opts["block_shape"] = (*opts["block_shape"], 1)
    elif bad == "block_not_pair":
        opts["block_shape"] = 128
    elif bad == "block_float":
        opts["block_shape"] = (float(opts["block_shape"][0]), opts["block_shape"][1])
    elif bad == "bad_scale_format":
        opts["scale_format"] = "fp8"
    return Case("fp8_block_quant", (w,), opts, meta, str(device))


def fp8_block_quant_compare(case: Case, outs: tuple) -> Verdict:
    (w,) = case.args
    o = case.kwargs
    want_q, want_s = _on_cpu(ref.fp8_block_quant, w, **o)
    if (bad := _two(outs)) is not None:
        return bad
    q, s = outs
    v = combine([check_meta("q", q, want_q), check_meta("scales", s, want_s)])
    if not v:
        return v
    v = combine([_contiguous("q", q), _contiguous("scales", s)])
    if not v:
        return v
    r, c = w.shape[-2:]
    s_el = _expand_blocks(want_s, tuple(o["block_shape"]), r, c)
    codes_ok, quot = _e4m3_codes_ok(w.to(torch.float32), s_el, want_q, q)
    scales_ok = _same_f32(s, want_s)
    out = []
    if not scales_ok.all():
        out.append(_scale_report("scales", ~scales_ok, s, want_s))
    if not codes_ok.all():
        out.append(_code_report("q", ~codes_ok, q, want_q, quot))
    return combine(out) if out else Verdict.passed()


BLOCK_INVALID = [
    "int_dtype",
    "float64",
    "fp8_input",
    "not_a_tensor",
    "rank1",
    "block_zero",
    "block_negative",
    "block_len3",
    "block_not_pair",
    "block_float",
    "bad_scale_format",
]


def fp8_block_quant_invalid(*, size: str = "small") -> st.SearchStrategy[dict]:
    return S.invalid_cases(BLOCK_INVALID, fp8_block_quant_strategy(size=size))


# --- silu_mul_fp8_quant ------------------------------------------------------------------------

SILU_REGIMES = ["normal", "midpoint", "zero_groups", "across_limit", "wide", "ties", "inf", "large"]


@st.composite
def _silu_meta(draw, size: str, dtypes):
    gs = draw(st.sampled_from([128, 64, 32, 16]))
    nmax = 256 if size == "small" else 4096
    regime = draw(st.sampled_from(SILU_REGIMES))
    limit = draw(st.sampled_from([None, 10.0, 7.0, 0.5]))
    if regime == "midpoint":
        limit = None  # gate = 32 gives silu(gate) == gate exactly only unclamped
    elif regime in ("inf", "across_limit") and limit is None:
        limit = 10.0  # infinities only where the clamp makes them finite
    return {
        "M": draw(S.tokens(size=size)),
        "N": gs * draw(_groups_count(size, gs, nmax)),
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


def silu_strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _silu_meta(size, dtypes)


def silu_build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = dict(meta["options"])
    m, n, gs = meta["M"], meta["N"], opts["group_size"]
    regime = meta["regime"]
    gid, ng, first = _row_groups([m], n, gs, device)
    f64 = torch.float64
    if regime == "midpoint":
        # sigmoid(32) == 1 in float32, so y = 32 * up lands on E4M3 midpoints times 2**j
        gate = torch.full((m, n), 32.0, dtype=f64, device=device)
        up = _group_values(g, [m, n], gid, ng, first, "midpoint", dtype).to(f64) / 32.0
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
        up = _group_values(g, [m, n], gid, ng, first, regime, dtype).to(f64)
        if regime == "large":
            gate = gate * 100.0
    x = torch.cat([gate, up], dim=-1).to(dtype)
    if meta.get("nan"):
        x = g.inject_nan(x)
    bad = meta.get("invalid")
    x = _mutate_common(x, bad)
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
    y_exact = (g_eff * u).to(torch.float32).to(torch.float64)  # g * u is exact in float64
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


def _f32_outward(lo: torch.Tensor, hi: torch.Tensor):
    """float64 bounds widened to the float32 values just outside them (NaN and +-0 kept)."""
    lo32, hi32 = lo.to(torch.float32), hi.to(torch.float32)
    lo32 = torch.where(lo32.to(torch.float64) > lo, torch.nextafter(lo32, -lo32.abs() - 1), lo32)
    hi32 = torch.where(hi32.to(torch.float64) < hi, torch.nextafter(hi32, hi32.abs() + 1), hi32)
    return lo32.to(torch.float64), hi32.to(torch.float64)


def _scale_of(amax32: torch.Tensor, scale_format: str, eps: float) -> torch.Tensor:
    """The contract's scale from a float32 amax: a true division (a tensor divisor: torch on
    CUDA turns division by a Python scalar into a reciprocal multiply)."""
    a = amax32.clamp(min=eps)
    s = a / torch.full_like(a, E4M3_MAX)
    return ue8m0_pow2_ceil(s) if scale_format == "ue8m0" else s


def _interval_groups_ok(lo, hi, got_q, got_s, gs: int, scale_format: str, eps: float):
    """Per group of `[M, N]` intervals: (group ok, codes ok, scales ok, scale range lo, hi)."""
    m = lo.shape[0]
    f64 = torch.float64
    nan = torch.isnan(lo) | torch.isnan(hi)
    straddle = (lo <= 0) & (hi >= 0)
    mag_min = torch.where(straddle, torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    mag_max = torch.maximum(lo.abs(), hi.abs())
    f32max = torch.finfo(torch.float32).max
    a_lo = mag_min.clamp(max=f32max).reshape(m, -1, gs).amax(-1)
    a_hi = mag_max.clamp(max=f32max).reshape(m, -1, gs).amax(-1)
    a_lo, a_hi = _f32_outward(a_lo, a_hi)
    nan_group = nan.reshape(m, -1, gs).any(-1)
    s_lo = _scale_of(a_lo.clamp(min=0).to(torch.float32), scale_format, eps)
    s_hi = _scale_of(a_hi.to(torch.float32), scale_format, eps)
    sk = got_s.contiguous()
    scales_ok = torch.where(nan_group, torch.isnan(sk), (sk >= s_lo) & (sk <= s_hi))

    sk_el = sk.repeat_interleave(gs, dim=-1).to(f64)
    v_lo, v_hi = lo / sk_el, hi / sk_el
    recip = ~_is_pow2(sk_el)  # the reciprocal rule: 2 float32 ulps either side
    v_lo = torch.where(recip, v_lo - 2 * ulp(v_lo, torch.float32), v_lo)
    v_hi = torch.where(recip, v_hi + 2 * ulp(v_hi, torch.float32), v_hi)
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
    groups_ok = codes_ok.reshape(m, -1, gs).all(-1) & scales_ok
    return groups_ok, codes_ok, scales_ok, s_lo, s_hi


def silu_compare(case: Case, outs: tuple) -> Verdict:
    (x,) = case.args
    o = case.kwargs
    gs = o.get("group_size", 128)
    fmt = o.get("scale_format", "fp32")
    if (bad := _two(outs)) is not None:
        return bad
    q, s = outs
    m, n = x.shape[0], x.shape[1] // 2
    want_q = torch.empty((m, n), dtype=FP8, device=x.device)
    want_s = torch.empty((m, n // gs), dtype=torch.float32, device=x.device)
    v = _fp8_meta_checks(q, s, want_q, want_s, o.get("column_major_scales", False))
    if not v or q.numel() == 0:
        return v
    inters = [torch.float32] if x.dtype == torch.float32 else [torch.float32, x.dtype]
    ok, first = None, None
    for inter in inters:
        lo, hi = _silu_intervals(x, o, inter)
        r = _interval_groups_ok(lo, hi, q, s, gs, fmt, 1e-10)
        ok = r[0] if ok is None else ok | r[0]
        first = first or (lo, hi, *r)
    if ok.all():
        return Verdict.passed()
    # report against the fused (float32-intermediate) intervals, in the failing groups
    lo, hi, _, codes_ok, scales_ok, s_lo, s_hi = first
    bad = ~ok
    nbad = int(bad.sum())
    parts = [
        f"{nbad} of {ok.numel()} groups match neither the float32- nor the "
        f"{str(x.dtype).replace('torch.', '')}-intermediate quantization"
    ]
    worst = []
    bad_scales = ~scales_ok & bad
    if bad_scales.any():
        i = tuple(_fmt_idx(bad_scales))
        gv = float(s.contiguous()[i])
        parts.append(
            f"scales: {int(bad_scales.sum())} outside the range an amax within the SwiGLU "
            f"tolerance gives, first at {list(i)}: got {gv!r}, want "
            f"[{float(s_lo[i])!r}, {float(s_hi[i])!r}]"
        )
        worst.append(("scales", i, gv, float(s_lo[i]), 0.0))
    bad_codes = ~codes_ok & bad.repeat_interleave(gs, dim=-1)
    if bad_codes.any():
        i = tuple(_fmt_idx(bad_codes))
        gq = q[i]
        sk = float(s.contiguous()[i[0], i[1] // gs])
        parts.append(
            f"q: {int(bad_codes.sum())} codes round no value of their interval, first at "
            f"{list(i)}: got 0x{int(gq.view(torch.uint8)):02x} ({float(gq.float()):.6g}), "
            f"y/s in [{float(lo[i]) / sk:.9g}, {float(hi[i]) / sk:.9g}]"
        )
        worst.append(("q", i, float(gq.float()), float(lo[i]) / sk, 0.0))
    return Verdict(False, "; ".join(parts), float(nbad), worst)


SILU_INVALID = [
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


def silu_invalid(*, size: str = "small") -> st.SearchStrategy[dict]:
    return S.invalid_cases(SILU_INVALID, silu_strategy(size=size).filter(lambda m: m["M"] > 0))


# --- mxfp4_quant -------------------------------------------------------------------------------


def _mx_lead(size: str) -> st.SearchStrategy[list]:
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


def _mx_blocks(size: str) -> st.SearchStrategy[int]:
    return S.sizes(
        small=[1, 2, 3, 4, 5, 8, 16],
        full=[56, 64, 128, 224],
        size=size,
        lo=1,
        hi=16 if size == "small" else 224,
    )


def mxfp4_quant_strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "lead": _mx_lead(size),
            "K": _mx_blocks(size).map(lambda b: b * MX_BLOCK),
            "dtype": S.float_dtypes(dtypes),
            "options": st.fixed_dictionaries(
                {"scale_rounding": st.sampled_from(["floor", "ceil"])}
            ),
            "regime": st.sampled_from(MX_REGIMES),
            "seed": S.seeds(),
        }
    )


def mxfp4_quant_build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = dict(meta["options"])
    lead, k = list(meta["lead"]), meta["K"]
    gid, n, first = _row_groups(lead, k, MX_BLOCK, device)
    x = _group_values(g, [*lead, k], gid, n, first, meta["regime"], dtype, kind="mx")
    if meta.get("nan"):
        x = g.inject_nan(x)
    bad = meta.get("invalid")
    x = _mutate_common(x, bad)
    if bad == "rank0":
        x = x.reshape(-1)[0]
    elif bad == "k_not_divisible":
        x = x[..., :-2]
    elif bad == "block_16":
        opts["block"] = 16
    elif bad == "block_64":
        opts["block"] = 64
    elif bad == "block_zero":
        opts["block"] = 0
    elif bad == "bad_scale_rounding":
        opts["scale_rounding"] = "nearest"
    return Case("mxfp4_quant", (x,), opts, meta, str(device))


def _nan_blocks(scales: torch.Tensor) -> torch.Tensor:
    """Element mask `[..., K]` of the blocks whose scale code is 255 (their codes are free)."""
    return (scales == E8M0_NAN).repeat_interleave(MX_BLOCK, dim=-1)


def mxfp4_quant_compare(case: Case, outs: tuple) -> Verdict:
    (x,) = case.args
    want_p, want_s = ref.mxfp4_quant(x, **case.kwargs)
    if len(outs) != 2:
        return Verdict(False, f"expected two outputs (packed, scales), got {len(outs)}")
    p, s = outs
    v = combine([check_meta("packed", p, want_p), check_meta("scales", s, want_s)])
    if not v:
        return v
    v = combine([_contiguous("packed", p), _contiguous("scales", s)])
    if not v:
        return v
    out = [exact("scales", s, want_s)]
    got_c, want_c = unpack_nibbles(p), unpack_nibbles(want_p)
    free = _nan_blocks(want_s)
    bad = (got_c != want_c) & ~free
    if bad.any():
        i = tuple(_fmt_idx(bad))
        n = int(bad.sum())
        xv = float(x[i].float())
        out.append(
            Verdict(
                False,
                f"packed: {n} of {bad.numel()} element codes differ (exact), first at "
                f"{list(i)}: got code {int(got_c[i])}, want {int(want_c[i])} (x = {xv:.9g}, "
                f"scale code {int(want_s[(*i[:-1], i[-1] // MX_BLOCK)])})",
                float(n),
                [("packed", i, float(got_c[i]), float(want_c[i]), 0.0)],
            )
        )
    return combine(out)


def mxfp4_quant_canonical(case: Case, outs: tuple) -> tuple:
    """Scales as their values (float32, NaN for code 255: the NaN policy is visible) and the
    element codes of NaN blocks zeroed (the contract leaves them free)."""
    if len(outs) != 2:
        return outs
    p, s = outs
    if not (isinstance(p, torch.Tensor) and isinstance(s, torch.Tensor)):
        return outs
    if p.dtype != torch.uint8 or s.dtype != torch.uint8 or p.dim() < 1 or s.dim() != p.dim():
        return outs
    if tuple(s.shape) != (*p.shape[:-1], 2 * p.shape[-1] // MX_BLOCK):
        return outs
    half = (s == E8M0_NAN).repeat_interleave(MX_BLOCK // 2, dim=-1)
    return torch.where(half, torch.zeros_like(p), p), e8m0_decode(s)


MXQ_INVALID = [
    "int_dtype",
    "float64",
    "fp8_input",
    "not_a_tensor",
    "rank0",
    "k_not_divisible",
    "block_16",
    "block_64",
    "block_zero",
    "bad_scale_rounding",
]


def mxfp4_quant_invalid(*, size: str = "small") -> st.SearchStrategy[dict]:
    return S.invalid_cases(MXQ_INVALID, mxfp4_quant_strategy(size=size).filter(_nonempty))


def _mx_exponent(amax32: torch.Tensor, rounding: str) -> torch.Tensor:
    """The unclamped block exponent (as in the reference: exact, via frexp)."""
    m, big_e = torch.frexp(amax32)
    e = big_e - 3
    if rounding == "ceil":
        e = e + (m > 0.75).to(torch.int32)
    return e


def mxfp4_pow2_scaling(case: Case, rng):
    """x * 2**j: element codes identical, scale codes + j (all-zero blocks keep code 0), where
    every block exponent stays inside [-127, 127] on both sides and x * 2**j is exact."""
    (x,) = case.args
    if x.numel() == 0 or not torch.isfinite(x).all():
        return None
    rounding = case.kwargs.get("scale_rounding", "floor")
    amax = x.to(torch.float32).abs().reshape(*x.shape[:-1], -1, MX_BLOCK).amax(-1)
    nz = amax > 0
    e = _mx_exponent(amax, rounding)
    steps = list(_POW2_STEPS)
    rng.shuffle(steps)
    for j in steps:
        inside = (e >= -E8M0_BIAS) & (e <= E8M0_BIAS) & (e + j >= -E8M0_BIAS) & (e + j <= E8M0_BIAS)
        if (nz & ~inside).any():
            continue
        y = _exact_pow2_multiple(x, j)
        if y is None:
            continue

        def combine_fn(results, j=j, nz=nz):
            ((p, s),) = results
            shifted = ((s.to(torch.int32) - j) % 256).to(torch.uint8)
            return p, torch.where(nz.to(s.device), shifted, s)

        return [_with_x(case, y, pow2=j)], combine_fn
    return None


# --- mxfp4_dequant -----------------------------------------------------------------------------

SCALE_REGIMES = ["typical", "uniform", "extreme", "nan_some", "no_nan_wide"]


def mxfp4_dequant_strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "lead": _mx_lead(size),
            "K": _mx_blocks(size).map(lambda b: b * MX_BLOCK),
            "dtype": S.float_dtypes(dtypes),
            "scale_regime": st.sampled_from(SCALE_REGIMES),
            "seed": S.seeds(),
        }
    )


def mxfp4_dequant_build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    lead, k = list(meta["lead"]), meta["K"]
    packed = g.integers([*lead, k // 2], 0, 256).to(torch.uint8)
    sshape = [*lead, k // MX_BLOCK]
    reg = meta["scale_regime"]
    if reg == "typical":
        scales = g.integers(sshape, 107, 148)
    elif reg == "uniform":
        scales = g.integers(sshape, 0, 256)
    elif reg == "extreme":
        table = torch.tensor([0, 1, 2, 3, 100, 127, 150, 252, 253, 254, 255], device=g.device)
        scales = table[g.integers(sshape, 0, len(table))]
    elif reg == "nan_some":
        scales = torch.where(g.mask(sshape, 0.2), E8M0_NAN, g.integers(sshape, 110, 145))
    else:
        scales = g.integers(sshape, 0, 255)
    scales = scales.to(torch.uint8)
    if meta.get("nan") and scales.numel():
        flat = scales.view(-1)
        flat[int(g.integers((1,), 0, flat.numel()).item())] = E8M0_NAN
        scales = torch.where(g.mask(sshape, 0.1), E8M0_NAN, scales).to(torch.uint8)
    opts = {"dtype": dtype_of(meta["dtype"])}
    bad = meta.get("invalid")
    if bad == "packed_int32":
        packed = packed.to(torch.int32)
    elif bad == "packed_float":
        packed = packed.to(torch.float32)
    elif bad == "scales_float":
        scales = scales.to(torch.float32)
    elif bad == "scales_int32":
        scales = scales.to(torch.int32)
    elif bad == "scales_wrong_last_dim":
        scales = scales[..., :-1]
    elif bad == "scales_extra_dim":
        scales = scales.unsqueeze(0)
    elif bad == "packed_odd":
        packed = packed[..., :-1]
    elif bad == "packed_rank0":
        packed = packed.reshape(-1)[0]
    elif bad == "dtype_float64":
        opts["dtype"] = torch.float64
    elif bad == "dtype_uint8":
        opts["dtype"] = torch.uint8
    elif bad == "dtype_string":
        opts["dtype"] = "bfloat16"
    return Case("mxfp4_dequant", (packed, scales), opts, meta, str(device))


def mxfp4_dequant_compare(case: Case, outs: tuple) -> Verdict:
    want = ref.mxfp4_dequant(*case.args, **case.kwargs)
    if len(outs) != 1:
        return Verdict(False, f"expected one output, got {len(outs)}")
    (x,) = outs
    v = check_meta("x", x, want)
    if not v:
        return v
    v = _contiguous("x", x)
    if not v:
        return v
    return _exact_nan(x, want)


def _exact_nan(got: torch.Tensor, want: torch.Tensor) -> Verdict:
    """Bitwise equal (sign of zero and infinities included), any NaN equal to any NaN."""
    g32, w32 = got.to(torch.float32), want.to(torch.float32)
    gn, wn = torch.isnan(g32), torch.isnan(w32)
    same = (g32.view(torch.int32) == w32.view(torch.int32)) & ~gn & ~wn
    bad = ~(same | (gn & wn))
    if not bad.any():
        return Verdict.passed()
    i = tuple(_fmt_idx(bad))
    n = int(bad.sum())
    return Verdict(
        False,
        f"x: {n} of {bad.numel()} elements differ (exact), first at {list(i)}: got "
        f"{float(g32[i])!r}, want {float(w32[i])!r}",
        float(n),
        [("x", i, float(g32[i]), float(w32[i]), 0.0)],
    )


MXD_INVALID = [
    "packed_int32",
    "packed_float",
    "scales_float",
    "scales_int32",
    "scales_wrong_last_dim",
    "scales_extra_dim",
    "packed_odd",
    "packed_rank0",
    "dtype_float64",
    "dtype_uint8",
    "dtype_string",
]


def mxfp4_dequant_invalid(*, size: str = "small") -> st.SearchStrategy[dict]:
    return S.invalid_cases(MXD_INVALID, mxfp4_dequant_strategy(size=size).filter(_nonempty))


# --- the specs ---------------------------------------------------------------------------------

_tokens = (
    Relation("token_permutation", _scales_layout(S.permute_tokens())),
    Relation("batch_split", _scales_layout(S.split_tokens())),
)

FP8_QUANT = add_spec(
    OpSpec(
        name="fp8_quant",
        reference=ref.fp8_quant,
        strategy=fp8_quant_strategy,
        build=fp8_quant_build,
        compare=fp8_quant_compare,
        tolerance=TOL_FP8,
        invalid=fp8_quant_invalid,
        nan_strategy=_nan_strategy(fp8_quant_strategy),
        relations=(*_tokens, Relation("pow2_scaling", fp8_pow2_scaling)),
    )
)

FP8_BLOCK_QUANT = add_spec(
    OpSpec(
        name="fp8_block_quant",
        reference=ref.fp8_block_quant,
        strategy=fp8_block_quant_strategy,
        build=fp8_block_quant_build,
        compare=fp8_block_quant_compare,
        tolerance=TOL_BLOCK,
        invalid=fp8_block_quant_invalid,
        nan_strategy=_nan_strategy(fp8_block_quant_strategy),
        relations=(
            Relation("expert_permutation", _min_rank(S.permute_tokens(), 3)),
            Relation("batch_split", _min_rank(S.split_tokens(), 3)),
        ),
    )
)

SILU_MUL_FP8_QUANT = add_spec(
    OpSpec(
        name="silu_mul_fp8_quant",
        reference=ref.silu_mul_fp8_quant,
        strategy=silu_strategy,
        build=silu_build,
        compare=silu_compare,
        tolerance=TOL_SILU,
        invalid=silu_invalid,
        nan_strategy=_nan_strategy(silu_strategy),
        relations=_tokens,
    )
)

MXFP4_QUANT = add_spec(
    OpSpec(
        name="mxfp4_quant",
        reference=ref.mxfp4_quant,
        strategy=mxfp4_quant_strategy,
        build=mxfp4_quant_build,
        compare=mxfp4_quant_compare,
        tolerance=TOL_MXQ,
        invalid=mxfp4_quant_invalid,
        canonical=mxfp4_quant_canonical,
        nan_strategy=_nan_strategy(mxfp4_quant_strategy),
        relations=(
            Relation("token_permutation", _min_rank(S.permute_tokens(), 2)),
            Relation("batch_split", _min_rank(S.split_tokens(), 2)),
            Relation("pow2_scaling", mxfp4_pow2_scaling),
        ),
    )
)

MXFP4_DEQUANT = add_spec(
    OpSpec(
        name="mxfp4_dequant",
        reference=ref.mxfp4_dequant,
        strategy=mxfp4_dequant_strategy,
        build=mxfp4_dequant_build,
        compare=mxfp4_dequant_compare,
        tolerance=TOL_MXD,
        invalid=mxfp4_dequant_invalid,
        nan_strategy=_nan_strategy(mxfp4_dequant_strategy),
        relations=(
            Relation("token_permutation", _min_rank(S.permute_tokens(args=(0, 1)), 2)),
            Relation("batch_split", _min_rank(S.split_tokens(args=(0, 1)), 2)),
        ),
    )
)
