"""OpSpec of sinkhorn: the doubly-stochastic projection of the hyper-connection mixes, against
its float64 value with a bound propagated through the iterations (see specs/_mhc.py).
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen
from parity.properties.specs._mhc import (
    apply_mutation,
    empty_like_spec,
    extra_col,
    n_outputs,
    pair,
    pick_from,
    set_arg,
    set_option,
    sinkhorn_tol,
    stream_tokens,
)
from parity.properties.tolerance import Verdict, check_meta, close
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = (
    "first-order rounding-error bound of a float32 Sinkhorn through its float64 Jacobian: "
    "exp (4+3(|x|+|max|))u, sums m u, divisions 2u, +eps u"
)


def compare(case: Case, outs: tuple) -> Verdict:
    (logits,) = case.args
    bad = n_outputs(outs, 1, "p")
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.sinkhorn(logits, **case.kwargs)
    v = check_meta("p", outs[0], empty_like_spec(want.shape, torch.float32, logits.device))
    if not v:
        return v
    o = {"iters": 20, "eps": 1e-6, **case.kwargs}
    tol = sinkhorn_tol(logits, None, int(o["iters"]), float(o["eps"]))
    return close("p", outs[0], want, tol)


SINKHORN_REGIMES = ["normal", "large", "one_hot", "near_uniform"]

# Strategies are composites of flat draws: Hypothesis shrinks and explains them in a third of
# the test calls that nested fixed_dictionaries need.


@st.composite
def _sinkhorn_meta(draw, size: str) -> dict:
    return {
        "T": draw(stream_tokens(size)),
        "lead": pick_from(draw, ["T", "T", "none", "T2"]),  # [T], [], [T, 2] before [n, n]
        "n": pick_from(draw, [4, 4, 1, 2, 3, 8]),
        "iters": pick_from(draw, [20, 1, 2, 3, 7, 50]),
        "eps": pick_from(draw, [1e-6, 1e-3, 0.1, 1e-9]),
        "regime": pick_from(draw, SINKHORN_REGIMES),
        "seed": draw(S.seeds()),
    }


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _sinkhorn_meta(size)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    n = meta["n"]
    lead = {"T": [meta["T"]], "none": [], "T2": [meta["T"], 2]}[meta["lead"]]
    shape = [*lead, n, n]
    regime = meta["regime"]
    if regime == "large":  # |logits| up to 80: saturated softmax, still finite unshifted exp
        x = g.uniform(shape, -80.0, 80.0)
    elif regime == "one_hot":  # one dominant entry per row
        x = g.normal(shape)
        x = x + 40.0 * (
            g.uniform(shape).argmax(-1, keepdim=True) == torch.arange(n, device=x.device)
        )
    elif regime == "near_uniform":
        x = g.normal(shape, std=1e-3)
    else:
        x = g.normal(shape, std=2.0)
    if meta.get("nan"):
        x = g.inject_nan(x)
    kw = {"iters": meta["iters"], "eps": meta["eps"]}
    args = [x]
    apply_mutation(meta.get("invalid"), args, kw, MUTATIONS)
    return Case("sinkhorn", tuple(args), kw, meta, str(device))


MUTATIONS = {
    "int_dtype": set_arg(0, lambda x: x.to(torch.int32)),
    "bfloat16": set_arg(0, lambda x: x.to(torch.bfloat16)),
    "float64": set_arg(0, lambda x: x.to(torch.float64)),
    "one_dim": set_arg(0, lambda x: x.reshape(-1)),
    "not_square": set_arg(0, extra_col),
    "iters_zero": set_option("iters", 0),
    "iters_float": set_option("iters", 2.0),
    "eps_zero": set_option("eps", 0.0),
    "eps_negative": set_option("eps", -1e-6),
    "eps_inf": set_option("eps", math.inf),
}


def _batched(transform):
    """Token relations of sinkhorn apply only when logits have a batch dim before [n, n]."""

    def wrapped(case: Case, rng):
        return transform(case, rng) if case.args[0].dim() >= 3 else None

    return wrapped


def stream_permutation(case: Case, rng):
    """sinkhorn: permuting the streams (rows and columns alike) permutes the output alike."""
    (x,) = case.args
    n = x.shape[-1]
    if n < 2:
        return None
    perm = list(range(n))
    while perm == sorted(perm):
        rng.shuffle(perm)
    p = torch.tensor(perm, dtype=torch.long, device=x.device)
    inv = torch.argsort(p)
    xp = x.index_select(-2, p).index_select(-1, p).contiguous()
    derived = Case(case.op, (xp,), dict(case.kwargs), {**case.meta, "streams": perm}, case.device)

    def combine_(results):
        ((out,),) = results
        return (out.index_select(-2, inv).index_select(-1, inv),)

    return [derived], combine_


compare_pair = pair(compare)


def bench(T: int) -> dict:
    """T matrices of the 4 hyper-connection streams, 20 iterations."""
    return {"T": T, "lead": "T", "n": S.BENCH_HC, "iters": 20, "eps": 1e-6, "regime": "normal"}


SPEC = add_spec(
    OpSpec(
        name="sinkhorn",
        reference=ref.sinkhorn,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=tuple(sorted(MUTATIONS)),
        relations=(
            Relation("token_permutation", _batched(S.permute_tokens())),
            Relation("batch_split", _batched(S.split_tokens())),
            Relation("stream_permutation", stream_permutation, exact=False),
        ),
        compare_pair=compare_pair,
        bench=bench,
        memory_bound=True,
    )
)
