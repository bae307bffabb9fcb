"""OpSpec of swiglu: strategy, builder, tolerance model, bad inputs, relations."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of, eps_of, ulp
from parity.properties.tolerance import Verdict, check_meta, close
from parity.registry import OpSpec, Relation, Variant, add_spec

# Tolerance: the output is rounded once from a float32 computation: 1 ulp of the output dtype
# (the rounding, plus the float64 oracle landing across a rounding boundary) plus 16 float32
# unit roundoffs of |y| for exp, the reciprocal in sigmoid and three products; plus
# 4 u32 |z| (1 - sigmoid(z)) |y| with z = alpha * gate: the condition number of sigmoid at z
# times the float32 rounding of alpha and of alpha * gate; plus tiny32 |gate| |up + beta|:
# float32 sigmoid underflows to 0 below about -88 (where up is infinite that makes the
# element ill-conditioned: NaN from 0 * inf, or +-inf, and it is not compared).
TOLERANCE = (
    "1 ulp(out) + 16 u32 |y| + 4 u32 |z|(1-sigmoid z)|y| + tiny32 |gate||up+beta|, "
    "against the float64 oracle"
)


# The plain SiLU-and-mul (vLLM's and FlashInfer's silu_and_mul, SGLang's): a quarter of the
# draws, where the full product of options gives it 1 in 32 and a kernel supporting only it
# drew 27 cases of 462 on the H100 (2026-12-05; nan_policy and batch_split: none). Shrinks to it.
PLAIN = {"limit": None, "alpha": 1.0, "beta": 0.0, "layout": "concat", "clamp_mode": "pre"}


def _options() -> st.SearchStrategy[dict]:
    full = st.fixed_dictionaries(
        {
            "limit": st.sampled_from([None, 10.0, 7.0, 0.5]),
            "alpha": st.sampled_from([1.0, 1.702]),
            "beta": st.sampled_from([0.0, 1.0]),
            "layout": st.sampled_from(["concat", "interleaved"]),
            "clamp_mode": st.sampled_from(["pre", "post"]),
        }
    )
    return st.sampled_from((0, 1, 2, 3)).flatmap(lambda i: st.just(dict(PLAIN)) if i == 0 else full)


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "T": S.tokens(size=size),
            "lead": st.sampled_from([[], [], [2]]),  # extra leading dims: [..., 2N]
            "N": S.sizes(
                small=[1, 2, 3, 7, 8, 31, 64, 65], full=S.around(128, 1024, 2048), size=size, lo=1
            ),
            "dtype": S.float_dtypes(dtypes),
            "options": _options(),
            "regime": st.sampled_from(["normal", "across_limit", "wide", "zeros", "ties"]),
            "seed": S.seeds(),
        }
    )


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = dict(meta["options"])
    shape = [meta["T"], *meta["lead"], 2 * meta["N"]]
    regime = meta["regime"]
    if regime == "across_limit":  # gate and up straddle +-limit, where the two clamps differ
        lim = opts["limit"] or 10.0
        x = g.values(shape, "normal", dtype=dtype, scale=1.5 * lim)
    else:
        x = g.values(shape, regime, dtype=dtype, scale=4.0)
    if meta.get("nan"):
        x = g.inject_nan(x)
    bad = meta.get("invalid")
    if bad == "int_dtype":
        x = x.to(torch.int32)
    elif bad == "odd_last_dim":
        x = x[..., :-1]
    elif bad == "zero_dim":
        x = x.reshape(-1)[0] if x.numel() else torch.zeros((), dtype=dtype, device=device)
    elif bad == "float64":
        x = x.to(torch.float64)
    elif bad == "bad_layout":
        opts["layout"] = "split"
    elif bad == "bad_clamp_mode":
        opts["clamp_mode"] = "both"
    elif bad == "negative_limit":
        opts["limit"] = -1.0
    return Case("swiglu", (x,), opts, meta, str(device))


def _oracle_and_tol(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle (overflowing values as the output dtype's +-inf) and the tolerance
    (inf where an element is ill-conditioned and not compared)."""
    (x,) = case.args
    with ref.precision("float64", round_output=False):
        want = ref.swiglu(x, **case.kwargs)
    rounded = want.to(x.dtype).to(torch.float64)
    want = torch.where(torch.isinf(rounded), rounded, want)
    u32 = eps_of(torch.float32)
    cond, under = _conditioning(case)
    return want, ulp(want, x.dtype) + (16 * u32 + 4 * u32 * cond) * want.abs() + under


def _close_except_free(name, got, want, tol) -> Verdict:
    free = torch.isinf(tol)  # an infinite input met a float32 underflow: ill-conditioned
    if free.any():
        got = torch.where(free, torch.zeros_like(got), got)
        want = torch.where(free, torch.zeros_like(want), want)
        tol = torch.where(free, torch.ones_like(tol), tol)
    return close(name, got, want, tol)


def compare(case: Case, outs: tuple) -> Verdict:
    (x,) = case.args
    want, tol = _oracle_and_tol(case)
    if len(outs) != 1:
        return Verdict(False, f"expected one output, got {len(outs)}")
    meta = check_meta("y", outs[0], torch.empty(want.shape, dtype=x.dtype, device=x.device))
    if not meta:
        return meta
    return _close_except_free("y", outs[0], want, tol)


def compare_pair(case: Case, a: tuple, b: tuple) -> Verdict:
    """Two outputs of one implementation on the same input (a relation): each may be off the
    oracle by the tolerance, so they may differ by twice it (vectorised and scalar tails of one
    library already differ in the last bit)."""
    _, tol = _oracle_and_tol(case)
    meta = check_meta("y", a[0], b[0])
    if not meta:
        return meta
    return _close_except_free("y", a[0], b[0].to(torch.float64), 2 * tol)


def _conditioning(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """(|z| (1 - sigmoid z), tiny32 |gate| |up + beta|) per output element, z = alpha * gate:
    the condition number of sigmoid, and the absolute error of a float32 sigmoid that
    underflowed."""
    (x,) = case.args
    o = case.kwargs
    n = x.shape[-1] // 2
    x64 = x.to(torch.float64)
    if o.get("layout", "concat") == "concat":
        gate, up = x64[..., :n], x64[..., n:]
    else:
        gate, up = x64[..., 0::2], x64[..., 1::2]
    if o.get("limit") is not None:
        gate, up = gate.clamp(max=o["limit"]), up.clamp(-o["limit"], o["limit"])
    z = o.get("alpha", 1.0) * gate
    cond = torch.nan_to_num((z.abs() * torch.sigmoid(-z)), nan=0.0)
    under = torch.finfo(torch.float32).tiny * gate.abs() * (up + o.get("beta", 0.0)).abs()
    return cond, under


# --- named variants (docs/contract-notes.md, "Named variants") ---------------------------------

ROUNDED_ACT = Variant(
    "rounded_act",
    "vLLM's C++ silu_and_mul and SiluAndMul.forward_native (F.silu(gate) * up): the activation "
    "rounded to x.dtype before the multiply by up, then the product rounded (double rounding)",
    "vllm csrc/activation_kernels.cu (act_and_mul_kernel); model_executor/layers/activation.py",
)
DTYPE_MATH = Variant(
    "dtype_math",
    "forward_native of SwigluOAI-style layers (vLLM, SGLang): gate * sigmoid(alpha * gate) * "
    "(up + beta) as torch ops on x.dtype (bfloat16) tensors, every op rounded to x.dtype",
    "vllm model_executor/layers/activation.py SwigluOAIAndMul.forward_native; sglang activation",
)
CLAMP_DROPS_NAN = Variant(
    "clamp_drops_nan",
    "vLLM SwigluStepAndMul and SGLang silu_and_mul_clamp clamp with tl.minimum/tl.maximum, "
    "which drop NaN: with a limit, a NaN gate acts as +inf (clamped), a NaN up as -inf (-limit)",
    "vllm SwigluStepAndMul Triton kernel; sglang silu_and_mul_clamp (research notes, 2026-12)",
)
FAST_MATH = Variant(
    "fast_math",
    "FlashInfer's silu_and_mul, built with --use_fast_math: silu as g / (1 + __expf(-g)) with "
    "the approximate division (0 once the divisor reaches 2**126: g below -87.3365, so 0 * inf "
    "= NaN where up is infinite) and float32 subnormals flushed to zero (subnormal inputs, silu "
    "and product are 0: a bfloat16 output below 2**-126 is 0)",
    "flashinfer csrc/activation.cu (silu: val / (1.0f + __expf(-val))), JIT nvcc flags "
    "(-use_fast_math); seen on the H100, 2026-12-06 (docs/contract-notes.md)",
)
VARIANTS = (ROUNDED_ACT, DTYPE_MATH, CLAMP_DROPS_NAN, FAST_MATH)
# fast_math: where 1 + exp(-z) reaches 2**126 in float32 (div.approx gives 0 above it):
# -126 ln 2 = -87.33654; __expf's error (the rounded z log2(e), ex2.approx) moves the edge by
# about 1e-5, so within _FM_BAND of it a silu of 0 and the true one are both allowed
_FM_EDGE, _FM_BAND = -87.33654475, 1e-4
_NAMES = [v.name for v in VARIANTS]


def _nan_dropped_case(case: Case) -> Case:
    """The case with NaN gates as +inf and NaN ups as -inf: what a NaN-dropping clamp sees
    (min(NaN, limit) = limit, max(NaN, -limit) = -limit). Without a limit nothing is clamped."""
    (x,) = case.args
    if case.kwargs.get("limit") is None or not torch.isnan(x).any():
        return case
    n = x.shape[-1] // 2
    is_gate = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    if case.kwargs.get("layout", "concat") == "concat":
        is_gate[:n] = True
    else:
        is_gate[0::2] = True
    fill = torch.where(is_gate, float("inf"), float("-inf")).to(x.dtype)
    y = torch.where(torch.isnan(x), fill, x)
    return Case(case.op, (y,), dict(case.kwargs), case.meta, case.device)


def _imul(a_lo, a_hi, b_lo, b_hi):
    """Interval product (NaN propagates)."""
    ps = [a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi]
    lo, hi = ps[0], ps[0]
    for p in ps[1:]:  # fmin/fmax: an end product 0 * inf is NaN, the others still bound
        lo, hi = torch.fmin(lo, p), torch.fmax(hi, p)
    nan = torch.isnan(a_lo) | torch.isnan(a_hi) | torch.isnan(b_lo) | torch.isnan(b_hi)
    return torch.where(nan, float("nan"), lo), torch.where(nan, float("nan"), hi)


def _ftz(lo, hi, tiny):
    """The bracket after a float32 flush-to-zero: 0 where every value is subnormal, 0 added
    where some are."""
    under_lo, under_hi = lo.abs() < tiny, hi.abs() < tiny
    both = under_lo & under_hi & (torch.sign(lo) * torch.sign(hi) >= 0)
    lo = torch.where(both, 0.0, torch.where(under_lo | under_hi, torch.fmin(lo, 0.0 * lo), lo))
    hi = torch.where(both, 0.0, torch.where(under_lo | under_hi, torch.fmax(hi, 0.0 * hi), hi))
    return lo, hi


def _variant_bounds(case: Case, names) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 [lo, hi] per element that the output (in x.dtype) must lie in, under rounded_act,
    dtype_math or fast_math. Each float32 elementary step is a bracket (the op's 16 u32 for
    sigmoid, u32 per product or sum, tiny32 where sigmoid underflows); each rounding to x.dtype
    rounds both ends (monotone, so the rounded ends bound every value a kernel can produce).
    fast_math: the inputs, silu and product flushed where subnormal in float32, silu 0 below
    the approximate division's edge, __expf's error (2 + 2|z| u32) on top of sigmoid's."""
    (x,) = case.args
    o = case.kwargs
    dt, f64 = x.dtype, torch.float64
    u32, tiny = eps_of(torch.float32), torch.finfo(torch.float32).tiny
    fast = "fast_math" in names
    round_act = bool(names & {"rounded_act", "dtype_math"})

    def rnd(t):
        return t.to(dt).to(f64)

    def widen(lo, hi, rel):
        if not rel:
            return lo, hi
        lo = torch.where(torch.isfinite(lo), lo - rel * lo.abs(), lo)
        return lo, torch.where(torch.isfinite(hi), hi + rel * hi.abs(), hi)

    native = "dtype_math" in names
    n = x.shape[-1] // 2
    x64 = x.to(f64)
    if o.get("layout", "concat") == "concat":
        g, u = x64[..., :n], x64[..., n:]
    else:
        g, u = x64[..., 0::2], x64[..., 1::2]
    if fast:  # FTZ: a subnormal input reads as zero (sign kept)
        g = torch.where(g.abs() < tiny, 0.0 * g, g)
        u = torch.where(u.abs() < tiny, 0.0 * u, u)
    limit, mode = o.get("limit"), o.get("clamp_mode", "pre")
    alpha, beta = float(o.get("alpha", 1.0)), float(o.get("beta", 0.0))
    if limit is not None:
        lim = float(rnd(torch.tensor(float(limit), dtype=f64))) if native else float(limit)
        u = u.clamp(-lim, lim)
        if mode == "pre":
            g = g.clamp(max=lim)
    z_lo, z_hi = (g, g) if alpha == 1.0 else widen(alpha * g, alpha * g, 2 * u32)
    if native:
        z_lo, z_hi = rnd(z_lo), rnd(z_hi)
    rel = 16 * u32 + (2 * u32 + 2 * u32 * torch.fmax(z_lo.abs(), z_hi.abs()) if fast else 0.0)
    s_lo = (torch.sigmoid(z_lo) * (1 - rel) - tiny).clamp(min=0.0)
    s_hi = (torch.sigmoid(z_hi) * (1 + rel) + tiny).clamp(max=1.0)
    # at z = +-inf the float32 sigmoid is exact (exp gives inf or 0, 1/(1+inf) = 0): no
    # bracket, so silu(-inf) = -inf * 0 is NaN as in every kernel (and the float64 oracle)
    s_lo = torch.where(torch.isinf(z_lo), torch.sigmoid(z_lo), s_lo)
    s_hi = torch.where(torch.isinf(z_hi), torch.sigmoid(z_hi), s_hi)
    if native:
        s_lo, s_hi = rnd(s_lo), rnd(s_hi)
    a_lo, a_hi = _imul(g, g, s_lo, s_hi)
    if not native:
        a_lo, a_hi = widen(a_lo, a_hi, u32)
    if fast:  # silu 0 past the division's edge (a finite g; -inf gives NaN as before)
        past = torch.isfinite(g) & (z_hi < _FM_EDGE - _FM_BAND)
        near = torch.isfinite(g) & ~past & (z_lo < _FM_EDGE + _FM_BAND)
        a_lo = torch.where(past, 0.0, torch.where(near, torch.fmin(a_lo, 0.0 * a_lo), a_lo))
        a_hi = torch.where(past, 0.0, torch.where(near, torch.fmax(a_hi, 0.0 * a_hi), a_hi))
        a_lo, a_hi = _ftz(a_lo, a_hi, tiny)
    if round_act:  # rounded_act and dtype_math alike
        a_lo, a_hi = rnd(a_lo), rnd(a_hi)
    if limit is not None and mode == "post":
        a_lo, a_hi = a_lo.clamp(max=lim), a_hi.clamp(max=lim)
    ub = u + beta  # exact in float64 for the strategy's values
    b_lo, b_hi = (rnd(ub), rnd(ub)) if native else widen(ub, ub, u32 if beta else 0.0)
    p_lo, p_hi = _imul(a_lo, a_hi, b_lo, b_hi)
    if not round_act:  # the product in float32, rounded once to x.dtype
        p_lo, p_hi = widen(p_lo, p_hi, u32)
    if fast:
        p_lo, p_hi = _ftz(p_lo, p_hi, tiny)
    return rnd(p_lo), rnd(p_hi)


def compare_variants(case: Case, outs: tuple, names: frozenset) -> Verdict:
    """`compare` with the reference computed under the variants `names`: clamp_drops_nan
    rewrites the NaN inputs; rounded_act, dtype_math and fast_math bound the output by
    intervals."""
    names = check_variant_names(names)
    if not names:
        return compare(case, outs)
    if "clamp_drops_nan" in names:
        case = _nan_dropped_case(case)
    if not names & {"rounded_act", "dtype_math", "fast_math"}:
        return compare(case, outs)
    (x,) = case.args
    if len(outs) != 1:
        return Verdict(False, f"expected one output, got {len(outs)}")
    y = outs[0]
    lo, hi = _variant_bounds(case, names)
    meta = check_meta("y", y, torch.empty(lo.shape, dtype=x.dtype, device=x.device))
    if not meta:
        return meta
    g = y.to(torch.float64)
    nan_want = torch.isnan(lo) | torch.isnan(hi)
    bad = torch.where(nan_want, ~torch.isnan(g), ~((g >= lo) & (g <= hi)))
    # the strict compare's conditioning rule (`_close_except_free`): where an infinite input
    # meets a float32 sigmoid underflow the element is ill-conditioned under any rounding
    # (NaN from 0 * inf or +-inf), so it is not compared under a variant either
    _, tol = _oracle_and_tol(case)
    bad &= ~torch.isinf(tol)
    if not bad.any():
        return Verdict.passed()
    i = tuple(bad.nonzero()[0].tolist())
    under = " + ".join(sorted(names))
    msg = (
        f"y: {int(bad.sum())} of {g.numel()} elements outside the bounds under {under}, first "
        f"at {list(i)}: got {float(g[i]):.9g}, want [{float(lo[i]):.9g}, {float(hi[i]):.9g}]"
    )
    return Verdict(False, msg, float(bad.sum()), [("y", i, float(g[i]), float(lo[i]), 0.0)])


def reference_under(case: Case, names: frozenset) -> tuple:
    """The output under `names` (an end of the bounds; NaN where the variant gives NaN)."""
    names = check_variant_names(names)
    if "clamp_drops_nan" in names:
        case = _nan_dropped_case(case)
    (x,) = case.args
    if not names & {"rounded_act", "dtype_math", "fast_math"}:
        return (ref.swiglu(*case.clone().args, **case.kwargs),)
    lo, hi = _variant_bounds(case, names)
    return (torch.where(torch.isnan(hi), hi, lo).to(x.dtype),)


def check_variant_names(names) -> frozenset:
    bad = sorted(set(names) - set(_NAMES))
    if bad:
        raise ValueError(f"swiglu: unknown variants {bad}; variants: {_NAMES}")
    return frozenset(names)


MUTATIONS = [
    "int_dtype",
    "odd_last_dim",
    "zero_dim",
    "float64",
    "bad_layout",
    "bad_clamp_mode",
    "negative_limit",
]


def bench(T: int) -> dict:
    """T tokens of the expert intermediate size, DeepSeek-V4's clamped SwiGLU."""
    return {
        "T": T,
        "lead": [],
        "N": S.BENCH_N,
        "dtype": "bfloat16",
        "regime": "normal",
        "options": dict(S.BENCH_SWIGLU),
    }


SPEC = add_spec(
    OpSpec(
        name="swiglu",
        reference=ref.swiglu,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        compare_pair=compare_pair,
        relations=(
            Relation("token_permutation", S.permute_tokens(), exact=False),
            Relation("batch_split", S.split_tokens(), exact=False),
        ),
        bench=bench,
        memory_bound=True,
        variants=VARIANTS,
        compare_variants=compare_variants,
        reference_under=reference_under,
    )
)
