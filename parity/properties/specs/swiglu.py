"""OpSpec of swiglu: strategy, builder, tolerance model, bad inputs, relations."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of, eps_of, ulp
from parity.properties.tolerance import Verdict, check_meta, close
from parity.registry import OpSpec, Relation, add_spec

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


def _options() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "limit": st.sampled_from([None, 10.0, 7.0, 0.5]),
            "alpha": st.sampled_from([1.0, 1.702]),
            "beta": st.sampled_from([0.0, 1.0]),
            "layout": st.sampled_from(["concat", "interleaved"]),
            "clamp_mode": st.sampled_from(["pre", "post"]),
        }
    )


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
    )
)
