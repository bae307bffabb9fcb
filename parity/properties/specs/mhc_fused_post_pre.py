"""OpSpec of mhc_fused_post_pre: mhc_post of one layer fused with mhc_pre of the next, each
output against its own bound (see specs/_mhc.py).
"""

from __future__ import annotations

import math

import torch

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen
from parity.properties.specs._mhc import (
    F64,
    POST_ONLY_MUTATIONS,
    PRE_OPTION_MUTATIONS,
    apply_mutation,
    check_metas,
    n_outputs,
    pair,
    post_err,
    post_inputs,
    pre_tol,
    pre_weight_mutations,
    pre_weights,
    round_tol,
    stream_meta,
)
from parity.properties.tolerance import Verdict, close, combine
from parity.reference.mhc import mhc_fused_post_pre_f32
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = (
    "new_residual as mhc_post; per token the pre outputs within the mhc_pre bounds of either the "
    "chain on the returned (rounded) new_residual or the float32 one (input error propagated)"
)


def _bad_mask(got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor):
    """Per element: outside tolerance (the rule of `close`), and error / tolerance."""
    g, w = got.to(F64), want.to(F64)
    gn, wn = torch.isnan(g), torch.isnan(w)
    err = (g - w).abs()
    both_inf = torch.isinf(g) & torch.isinf(w) & (torch.sign(g) == torch.sign(w))
    err = torch.where(both_inf, torch.zeros_like(err), err)
    bad = ((err > tol) | (gn != wn)) & ~(gn & wn)
    ratio = torch.where(gn | wn, torch.zeros_like(err), err / tol.clamp_min(1e-300))
    ratio = torch.where(gn != wn, torch.full_like(ratio, math.inf), ratio)
    return bad, torch.nan_to_num(ratio, nan=math.inf)


def _per_token(t: torch.Tensor, reduce) -> torch.Tensor:
    return reduce(t.reshape(t.shape[0], -1), 1) if t.shape[0] else t.reshape(0)


FUSED_NAMES = ("new_residual", "next_post_mix", "next_comb_res_mix", "next_layer_input")


def compare(case: Case, outs: tuple) -> Verdict:
    """new_residual under the mhc_post model; then, per token, the three pre outputs must all
    be within the mhc_pre bounds of one of the two accepted chains: (A) the pre of the returned
    new_residual (the unfused chain reads the rounded streams; using the kernel's own rounding
    makes a one-ulp rounding difference of new_residual harmless), or (B) the pre of the exact
    new_residual with the float32 post's error bound carried into it (a fused kernel that keeps
    the streams in float32)."""
    x, residual, post_mix, comb, fn, hc_scale, hc_base = case.args
    kw = case.kwargs
    bad = n_outputs(outs, 4, ", ".join(FUSED_NAMES))
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want_b = mhc_fused_post_pre_f32(*case.args, **kw)
    dts = (residual.dtype, torch.float32, torch.float32, residual.dtype)
    v = check_metas(FUSED_NAMES, outs, want_b, dts)
    if not v:
        return v
    dnew = post_err(x, residual, post_mix, comb)
    v_new = close("new_residual", outs[0], want_b[0], round_tol(want_b[0], dnew, residual.dtype))
    if not v_new:
        return v_new
    new_a = outs[0]
    with ref.precision("float64", round_output=False):
        want_a = ref.mhc_pre(new_a, fn, hc_scale, hc_base, **kw)
    ta = pre_tol(new_a, fn, hc_scale, hc_base, kw)
    tb = pre_tol(want_b[0], fn, hc_scale, hc_base, kw, dr=dnew)
    tol_a = (ta[0], ta[1], round_tol(want_a[2], ta[2], residual.dtype))
    tol_b = (tb[0], tb[1], round_tol(want_b[3], tb[2], residual.dtype))
    t = residual.shape[0]
    ok_a = torch.ones(t, dtype=torch.bool, device=residual.device)
    ok_b = ok_a.clone()
    ra = torch.zeros(t, dtype=F64, device=residual.device)
    rb = ra.clone()
    for got, wa, wb, tla, tlb in zip(outs[1:], want_a, want_b[1:], tol_a, tol_b):
        ba, qa = _bad_mask(got, wa, tla)
        bb, qb = _bad_mask(got, wb, tlb)
        ok_a &= ~_per_token(ba, torch.any)
        ok_b &= ~_per_token(bb, torch.any)
        ra = torch.maximum(ra, _per_token(qa, torch.amax))
        rb = torch.maximum(rb, _per_token(qb, torch.amax))
    ok = ok_a | ok_b
    ratio = float(torch.minimum(ra, rb).max()) if t else 0.0
    if bool(ok.all()):
        return Verdict(True, "", ratio)
    idx = (~ok).nonzero().view(-1)
    names = FUSED_NAMES[1:]
    va = combine(
        close(n, g.index_select(0, idx), w.index_select(0, idx), tl.index_select(0, idx))
        for n, g, w, tl in zip(names, outs[1:], want_a, tol_a)
    )
    return Verdict(
        False,
        f"{idx.numel()} of {t} tokens (first {int(idx[0])}) match neither the chain on the "
        f"returned new_residual nor the float32 chain; against the first: {va.message}",
        ratio,
        va.worst,
    )


def strategy(*, size: str = "small", dtypes=None):
    return stream_meta("fused", size, dtypes)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    x, residual, post, comb = post_inputs(g, meta)
    hc, h = meta["hc"], meta["H"]
    fn, hs, hb = pre_weights(g, hc, h, meta["regime"], hc * (2 + hc))
    if meta.get("nan"):
        x, residual = g.inject_nan(x, p=0.01), g.inject_nan(residual, p=0.002)
    args = [x, residual, post, comb, fn, hs, hb]
    kw = dict(meta["options"])
    apply_mutation(meta.get("invalid"), args, kw, MUTATIONS)
    return Case("mhc_fused_post_pre", tuple(args), kw, meta, str(device))


MUTATIONS = {
    **POST_ONLY_MUTATIONS,
    **{k: v for k, v in pre_weight_mutations(3).items() if not k.startswith("residual")},
    **PRE_OPTION_MUTATIONS,
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
        "x_dtype": "same",
        "post_shape": "3d",
        "options": dict(S.BENCH_MHC_PRE),
    }


SPEC = add_spec(
    OpSpec(
        name="mhc_fused_post_pre",
        reference=ref.mhc_fused_post_pre,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=tuple(sorted(MUTATIONS)),
        relations=(
            Relation("token_permutation", S.permute_tokens(args=(0, 1, 2, 3)), exact=False),
            Relation("batch_split", S.split_tokens(args=(0, 1, 2, 3)), exact=False),
        ),
        compare_pair=compare_pair,
        bench=bench,
        memory_bound=True,
    )
)
