"""OpSpec of mhc_pre: RMS-normalized mixes, sinkhorn and the layer input of the hyper-connection
prologue, against float64 with format-derived bounds (see specs/_mhc.py).
"""

from __future__ import annotations

import torch

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen
from parity.properties.specs._mhc import (
    PRE_OPTION_MUTATIONS,
    apply_mutation,
    case_dtypes,
    check_metas,
    n_outputs,
    pair,
    pre_tol,
    pre_weight_mutations,
    pre_weights,
    round_tol,
    stream_meta,
    stream_values,
)
from parity.properties.tolerance import Verdict, close, combine
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = (
    "float32 error bounds: fn GEMM gamma(hc*H+1) rsqrt(ms) sum|r||fn| (0 in the exact_gemm "
    "regime), rsqrt, sigmoid (<=1/4 slope + (7+3|x|)u), sinkhorn via its Jacobian, layer_input "
    "gamma(hc) sum pre|r| + 1/2 ulp(residual.dtype)"
)


PRE_NAMES = ("post_mix", "comb_res_mix", "layer_input")


def compare(case: Case, outs: tuple) -> Verdict:
    residual, fn, hc_scale, hc_base = case.args
    bad = n_outputs(outs, 3, ", ".join(PRE_NAMES))
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.mhc_pre(*case.args, **case.kwargs)
    dts = (torch.float32, torch.float32, residual.dtype)
    v = check_metas(PRE_NAMES, outs, want, dts)
    if not v:
        return v
    exact_dot = case.meta.get("regime") == "exact_gemm"
    dpost, dcomb, dli = pre_tol(residual, fn, hc_scale, hc_base, case.kwargs, exact_dot=exact_dot)
    tols = (dpost, dcomb, round_tol(want[2], dli, residual.dtype))
    return combine(close(n, o, w, t) for n, o, w, t in zip(PRE_NAMES, outs, want, tols))


def strategy(*, size: str = "small", dtypes=None):
    return stream_meta("pre", size, dtypes)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype, _ = case_dtypes(meta)
    t, h, hc = meta["T"], meta["H"], meta["hc"]
    residual = stream_values(g, (t, hc, h), meta["regime"], dtype)
    fn, hs, hb = pre_weights(g, hc, h, meta["regime"], hc * (2 + hc))
    if meta.get("nan"):
        residual = g.inject_nan(residual, p=0.002)
    args = [residual, fn, hs, hb]
    kw = dict(meta["options"])
    apply_mutation(meta.get("invalid"), args, kw, MUTATIONS)
    return Case("mhc_pre", tuple(args), kw, meta, str(device))


MUTATIONS = {**pre_weight_mutations(0), **PRE_OPTION_MUTATIONS}


compare_pair = pair(compare)


def bench(T: int) -> dict:
    """T tokens, 4 streams of the hidden size."""
    return {
        "T": T,
        "H": S.BENCH_H,
        "hc": S.BENCH_HC,
        "dtype": "bfloat16",
        "regime": "normal",
        "options": dict(S.BENCH_MHC_PRE),
    }


SPEC = add_spec(
    OpSpec(
        name="mhc_pre",
        reference=ref.mhc_pre,
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
