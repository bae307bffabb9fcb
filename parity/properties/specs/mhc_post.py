"""OpSpec of mhc_post: the hyper-connection epilogue (residual mix plus post-weighted layer
output), against float64 with a gamma(hc+1) bound.
"""

from __future__ import annotations

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen
from parity.properties.specs._mhc import (
    POST_ONLY_MUTATIONS,
    apply_mutation,
    empty_like_spec,
    n_outputs,
    post_err,
    post_inputs,
    round_tol,
    stream_meta,
)
from parity.properties.tolerance import Verdict, check_meta, close
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = "gamma(hc+1) (|x post_j| + sum_i |comb_ij r_i|) + 1/2 ulp(residual.dtype) rounding"


def compare(case: Case, outs: tuple) -> Verdict:
    x, residual, post_mix, comb = case.args
    bad = n_outputs(outs, 1, "new_residual")
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.mhc_post(*case.args)
    v = check_meta(
        "new_residual", outs[0], empty_like_spec(want.shape, residual.dtype, residual.device)
    )
    if not v:
        return v
    tol = round_tol(want, post_err(x, residual, post_mix, comb), residual.dtype)
    return close("new_residual", outs[0], want, tol)


def strategy(*, size: str = "small", dtypes=None):
    return stream_meta("post", size, dtypes)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    x, residual, post, comb = post_inputs(g, meta)
    if meta.get("nan"):
        x, residual = g.inject_nan(x, p=0.01), g.inject_nan(residual, p=0.002)
    args = [x, residual, post, comb]
    kw: dict = {}
    apply_mutation(meta.get("invalid"), args, kw, MUTATIONS)
    return Case("mhc_post", tuple(args), kw, meta, str(device))


MUTATIONS = POST_ONLY_MUTATIONS


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
    }


SPEC = add_spec(
    OpSpec(
        name="mhc_post",
        reference=ref.mhc_post,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=tuple(sorted(MUTATIONS)),
        relations=(
            Relation("token_permutation", S.permute_tokens(args=(0, 1, 2, 3))),
            Relation("batch_split", S.split_tokens(args=(0, 1, 2, 3))),
        ),
        bench=bench,
        memory_bound=True,
    )
)
