"""OpSpec of fp8_quant: per-token-group E4M3 codes and scales, compared exactly (one
E4M3 step where the reciprocal multiply may round across a midpoint; see specs/_quant.py).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of
from parity.properties.specs._quant import (
    EPS_ON_SCALE,
    FP8_REGIMES,
    NAN_DROPPED,
    POW2_STEPS,
    RECIP_SCALE,
    TOKEN_RELATIONS,
    UE8M0_LOG2,
    check_names,
    code_report,
    e4m3_codes_ok,
    exact_pow2_multiple,
    fp8_meta_checks,
    fp8_rows_under,
    fp8_rows_verdict,
    group_values,
    groups_count,
    mutate_common,
    nonempty,
    on_cpu,
    row_groups,
    same_f32,
    scale_report,
    to_column_major,
    two_outputs,
    with_x,
)
from parity.properties.tolerance import Verdict, combine
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = (
    "codes and scales bit-exact; one e4m3 step allowed where x/s is within 3.875 float32 ulps of "
    "a code midpoint and s is not a power of two (a reciprocal multiply: 4 float32 roundings at "
    "most, DeepGEMM's x * (448 / amax))"
)


FP8_GROUP_SIZES = [128, 64, 32, 16, 256]


@st.composite
def _fp8_quant_meta(draw, size: str, dtypes):
    gs = draw(st.sampled_from(FP8_GROUP_SIZES))
    kmax = 512 if size == "small" else 7168
    return {
        "M": draw(S.tokens(size=size)),
        "K": gs * draw(groups_count(size, gs, kmax)),
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


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _fp8_quant_meta(size, dtypes)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = dict(meta["options"])
    m, k, gs = meta["M"], meta["K"], opts["group_size"]
    gid, n, first = row_groups([m], k, gs, device)
    x = group_values(
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
    x = mutate_common(x, bad)
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


def _fp8_group_ok(y32, want_q, want_s, got_q, got_s, gs):
    """(groups ok [..., G], codes ok [..., K], scales ok [..., G], x/s) of row-group FP8."""
    s_el = want_s.contiguous().repeat_interleave(gs, dim=-1)
    codes_ok, quot = e4m3_codes_ok(y32, s_el, want_q, got_q)
    scales_ok = same_f32(got_s, want_s)
    *lead, k = codes_ok.shape
    groups_ok = codes_ok.reshape(*lead, k // gs, gs).all(-1) & scales_ok
    return groups_ok, codes_ok, scales_ok, quot


def compare(case: Case, outs: tuple) -> Verdict:
    (x,) = case.args
    o = case.kwargs
    want_q, want_s = on_cpu(ref.fp8_quant, x, **o)
    if (bad := two_outputs(outs)) is not None:
        return bad
    q, s = outs
    v = fp8_meta_checks(q, s, want_q, want_s, o.get("column_major_scales", False))
    if not v:
        return v
    _, codes_ok, scales_ok, quot = _fp8_group_ok(
        x.to(torch.float32), want_q, want_s, q, s, o.get("group_size", 128)
    )
    out = []
    if not scales_ok.all():
        out.append(scale_report("scales", ~scales_ok, s, want_s))
    if not codes_ok.all():
        out.append(code_report("q", ~codes_ok, q, want_q, quot))
    return combine(out) if out else Verdict.passed()


VARIANTS = (RECIP_SCALE, UE8M0_LOG2, EPS_ON_SCALE, NAN_DROPPED)
_NAMES = [v.name for v in VARIANTS]


def compare_variants(case: Case, outs: tuple, names: frozenset) -> Verdict:
    """`compare` against the reference computed under the variants `names` (codes and scales
    still exact, under the same reciprocal rule)."""
    names = check_names("fp8_quant", names, _NAMES)
    if not names:
        return compare(case, outs)
    (x,) = case.args
    o = case.kwargs
    if (bad := two_outputs(outs)) is not None:
        return bad
    q, s = outs
    want_q, want_s = reference_under(case, frozenset())
    v = fp8_meta_checks(q, s, want_q, want_s, o.get("column_major_scales", False))
    if not v:
        return v
    y32 = x.cpu().to(torch.float32)
    gs, fmt, eps = o.get("group_size", 128), o.get("scale_format", "fp32"), o.get("eps", 1e-10)
    return fp8_rows_verdict(y32, q, s, gs, fmt, eps, names)


def reference_under(case: Case, names: frozenset) -> tuple:
    """The reference outputs under the variants `names` (main scale of each variant)."""
    names = check_names("fp8_quant", names, _NAMES)
    (x,) = case.args
    o = case.kwargs
    if not names:
        return on_cpu(ref.fp8_quant, x, **o)
    gs, fmt, eps = o.get("group_size", 128), o.get("scale_format", "fp32"), o.get("eps", 1e-10)
    q, s, _ = fp8_rows_under(x.cpu().to(torch.float32), gs, fmt, eps, names)
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
    steps = list(POW2_STEPS)
    rng.shuffle(steps)
    for j in steps:
        small = nz & ((amax < 2 * eps) | (amax * 2.0**j < 2 * eps))
        if small.any():
            continue
        y = exact_pow2_multiple(x, j)
        if y is None:
            continue

        def combine_fn(results, j=j, nz=nz):
            ((q, s),) = results
            back = torch.where(nz.to(s.device), s * 2.0**-j, s)
            if o.get("column_major_scales", False):
                back = to_column_major(back)
            return q, back

        return [with_x(case, y, pow2=j)], combine_fn
    return None


def bench(T: int) -> dict:
    """An activation quantizer: T tokens of the hidden size, 128-wide groups."""
    return {
        "M": T,
        "K": S.BENCH_H,
        "dtype": "bfloat16",
        "regime": "normal",
        "options": {
            "group_size": 128,
            "scale_format": "fp32",
            "column_major_scales": False,
            "eps": 1e-10,
        },
    }


SPEC = add_spec(
    OpSpec(
        name="fp8_quant",
        reference=ref.fp8_quant,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        invalid_when=lambda m: m["M"] > 0,
        nan_when=nonempty,
        relations=(*TOKEN_RELATIONS, Relation("pow2_scaling", fp8_pow2_scaling)),
        bench=bench,
        memory_bound=True,
        variants=VARIANTS,
        compare_variants=compare_variants,
        reference_under=reference_under,
    )
)
