"""OpSpec of mxfp4_quant: E2M1 codes (two per byte) and E8M0 block scales, compared exactly."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of
from parity.properties.specs._quant import (
    POW2_STEPS,
    contiguous_ok,
    exact_pow2_multiple,
    fmt_idx,
    group_values,
    min_rank,
    mutate_common,
    mx_blocks,
    mx_lead,
    nonempty,
    row_groups,
    with_x,
)
from parity.properties.tolerance import Verdict, check_meta, combine, exact
from parity.reference.numerics import (
    E8M0_BIAS,
    E8M0_NAN,
    e8m0_decode,
    unpack_nibbles,
)
from parity.reference.quant import (
    MX_BLOCK,
)
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = (
    "packed codes and scale codes bit-exact (power-of-two scales make the division exact); "
    "element codes of a NaN block (scale 255) are free"
)
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


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "lead": mx_lead(size),
            "K": mx_blocks(size).map(lambda b: b * MX_BLOCK),
            "dtype": S.float_dtypes(dtypes),
            "options": st.fixed_dictionaries(
                {"scale_rounding": st.sampled_from(["floor", "ceil"])}
            ),
            "regime": st.sampled_from(MX_REGIMES),
            "seed": S.seeds(),
        }
    )


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = dict(meta["options"])
    lead, k = list(meta["lead"]), meta["K"]
    gid, n, first = row_groups(lead, k, MX_BLOCK, device)
    x = group_values(g, [*lead, k], gid, n, first, meta["regime"], dtype, kind="mx")
    if meta.get("nan"):
        x = g.inject_nan(x)
    bad = meta.get("invalid")
    x = mutate_common(x, bad)
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


def compare(case: Case, outs: tuple) -> Verdict:
    (x,) = case.args
    want_p, want_s = ref.mxfp4_quant(x, **case.kwargs)
    if len(outs) != 2:
        return Verdict(False, f"expected two outputs (packed, scales), got {len(outs)}")
    p, s = outs
    v = combine([check_meta("packed", p, want_p), check_meta("scales", s, want_s)])
    if not v:
        return v
    v = combine([contiguous_ok("packed", p), contiguous_ok("scales", s)])
    if not v:
        return v
    out = [exact("scales", s, want_s)]
    got_c, want_c = unpack_nibbles(p), unpack_nibbles(want_p)
    free = _nan_blocks(want_s)
    bad = (got_c != want_c) & ~free
    if bad.any():
        i = tuple(fmt_idx(bad))
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


def canonical(case: Case, outs: tuple) -> tuple:
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


MUTATIONS = [
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
    steps = list(POW2_STEPS)
    rng.shuffle(steps)
    for j in steps:
        inside = (e >= -E8M0_BIAS) & (e <= E8M0_BIAS) & (e + j >= -E8M0_BIAS) & (e + j <= E8M0_BIAS)
        if (nz & ~inside).any():
            continue
        y = exact_pow2_multiple(x, j)
        if y is None:
            continue

        def combine_fn(results, j=j, nz=nz):
            ((p, s),) = results
            shifted = ((s.to(torch.int32) - j) % 256).to(torch.uint8)
            return p, torch.where(nz.to(s.device), shifted, s)

        return [with_x(case, y, pow2=j)], combine_fn
    return None


def bench(T: int) -> dict:
    """T tokens of the hidden size."""
    return {
        "lead": [T],
        "K": S.BENCH_H,
        "dtype": "bfloat16",
        "regime": "normal",
        "options": {"scale_rounding": "floor"},
    }


SPEC = add_spec(
    OpSpec(
        name="mxfp4_quant",
        reference=ref.mxfp4_quant,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        invalid_when=nonempty,
        nan_when=nonempty,
        canonical=canonical,
        relations=(
            Relation("token_permutation", min_rank(S.permute_tokens(), 2)),
            Relation("batch_split", min_rank(S.split_tokens(), 2)),
            Relation("pow2_scaling", mxfp4_pow2_scaling),
        ),
        bench=bench,
        memory_bound=True,
    )
)
