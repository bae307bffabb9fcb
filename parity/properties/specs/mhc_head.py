"""OpSpec of mhc_head: the hyper-connection head (the streams reduced to one), against float64
with format-derived bounds.
"""

from __future__ import annotations

import math

import torch

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen
from parity.properties.specs._mhc import (
    F64,
    U,
    apply_mutation,
    case_dtypes,
    empty_like_spec,
    extra_col,
    extra_row,
    gamma_n,
    n_outputs,
    pair,
    pre_weights,
    rms_gemm,
    round_tol,
    set_arg,
    set_option,
    sigmoid_err,
    stream_meta,
    stream_values,
)
from parity.properties.tolerance import Verdict, check_meta, close
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = (
    "float32 error bounds: fn GEMM gamma(hc*H+1) rsqrt(ms) sum|r||fn|, sigmoid, "
    "gamma(hc) sum pre|r| + 1/2 ulp(residual.dtype)"
)


def _head_tol(r3, fn, hc_scale, hc_base, kw):
    """Float32 error bound of mhc_head's out [T, H] before its rounding."""
    t, hc, h = r3.shape
    r3 = r3.to(F64)
    raw, draw = rms_gemm(r3.reshape(t, hc * h), fn, float(kw.get("rms_eps", 1e-6)), None, False)
    hs = hc_scale.to(F64)
    sr = raw * hs
    z = sr + hc_base.to(F64)
    dz = hs.abs() * draw + U * (sr.abs() + z.abs())
    sg, dsg = sigmoid_err(z, dz)
    pre = sg + kw.get("hc_eps", 1e-6)
    dpre = dsg + U * pre
    ra = r3.abs()
    return (dpre.unsqueeze(-1) * ra).sum(1) + gamma_n(hc) * (pre.unsqueeze(-1) * ra).sum(1)


def compare(case: Case, outs: tuple) -> Verdict:
    residual, fn, hc_scale, hc_base = case.args
    bad = n_outputs(outs, 1, "out")
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.mhc_head(*case.args, **case.kwargs)
    v = check_meta("out", outs[0], empty_like_spec(want.shape, residual.dtype, residual.device))
    if not v:
        return v
    d = _head_tol(residual, fn, hc_scale, hc_base, case.kwargs)
    return close("out", outs[0], want, round_tol(want, d, residual.dtype))


def strategy(*, size: str = "small", dtypes=None):
    return stream_meta("head", size, dtypes)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype, _ = case_dtypes(meta)
    t, h, hc = meta["T"], meta["H"], meta["hc"]
    residual = stream_values(g, (t, hc, h), meta["regime"], dtype)
    fn, hs, hb = pre_weights(g, hc, h, meta["regime"], hc)
    if meta.get("nan"):
        residual = g.inject_nan(residual, p=0.002)
    args = [residual, fn, hs[:1].contiguous(), hb]
    kw = dict(meta["options"])
    apply_mutation(meta.get("invalid"), args, kw, MUTATIONS)
    return Case("mhc_head", tuple(args), kw, meta, str(device))


MUTATIONS = {
    "residual_2d": set_arg(0, lambda r: r.reshape(r.shape[0], -1)),
    "residual_int": set_arg(0, lambda r: r.to(torch.int32)),
    "fn_pre_shape": set_arg(1, lambda f: torch.cat([f, f, f], 0)),  # [3hc, hc*H]: not [hc, hc*H]
    "fn_extra_col": set_arg(1, extra_col),
    "fn_float16": set_arg(1, lambda f: f.to(torch.float16)),
    "hc_scale_three": set_arg(2, lambda s: torch.cat([s, s, s])),
    "hc_base_len": set_arg(3, extra_row),
    "rms_eps_zero": set_option("rms_eps", 0.0),
    "rms_eps_inf": set_option("rms_eps", math.inf),
    "hc_eps_negative": set_option("hc_eps", -1e-6),
}


compare_pair = pair(compare)


def bench(T: int) -> dict:
    """T tokens, 4 streams of the hidden size."""
    return {
        "T": T,
        "H": S.BENCH_H,
        "hc": S.BENCH_HC,
        "dtype": "bfloat16",
        "regime": "normal",
        "options": {"rms_eps": 1e-6, "hc_eps": 1e-6},
    }


SPEC = add_spec(
    OpSpec(
        name="mhc_head",
        reference=ref.mhc_head,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=tuple(sorted(MUTATIONS)),
        relations=(
            Relation("token_permutation", S.permute_tokens(), exact=False),
            Relation("batch_split", S.split_tokens(), exact=False),
        ),
        compare_pair=compare_pair,
        bench=bench,
        memory_bound=True,
    )
)
