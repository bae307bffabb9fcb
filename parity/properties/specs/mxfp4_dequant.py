"""OpSpec of mxfp4_dequant: E2M1 codes times E8M0 scales, bit-exact (each product is exact
in float32 and rounded once).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of
from parity.properties.specs._quant import (
    contiguous_ok,
    fmt_idx,
    min_rank,
    mx_blocks,
    mx_lead,
    nonempty,
)
from parity.properties.tolerance import Verdict, check_meta
from parity.reference.numerics import (
    E8M0_NAN,
)
from parity.reference.quant import (
    MX_BLOCK,
)
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = "bit-exact: each value * 2**(code-127) is exact in float32, rounded once to dtype"


SCALE_REGIMES = ["typical", "uniform", "extreme", "nan_some", "no_nan_wide"]


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "lead": mx_lead(size),
            "K": mx_blocks(size).map(lambda b: b * MX_BLOCK),
            "dtype": S.float_dtypes(dtypes),
            "scale_regime": st.sampled_from(SCALE_REGIMES),
            "seed": S.seeds(),
        }
    )


def build(meta: dict, device) -> Case:
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


def compare(case: Case, outs: tuple) -> Verdict:
    want = ref.mxfp4_dequant(*case.args, **case.kwargs)
    if len(outs) != 1:
        return Verdict(False, f"expected one output, got {len(outs)}")
    (x,) = outs
    v = check_meta("x", x, want)
    if not v:
        return v
    v = contiguous_ok("x", x)
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
    i = tuple(fmt_idx(bad))
    n = int(bad.sum())
    return Verdict(
        False,
        f"x: {n} of {bad.numel()} elements differ (exact), first at {list(i)}: got "
        f"{float(g32[i])!r}, want {float(w32[i])!r}",
        float(n),
        [("x", i, float(g32[i]), float(w32[i]), 0.0)],
    )


MUTATIONS = [
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


def bench(T: int) -> dict:
    """T rows of the hidden size."""
    return {"lead": [T], "K": S.BENCH_H, "dtype": "bfloat16", "scale_regime": "typical"}


SPEC = add_spec(
    OpSpec(
        name="mxfp4_dequant",
        reference=ref.mxfp4_dequant,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        invalid_when=nonempty,
        nan_when=nonempty,
        relations=(
            Relation("token_permutation", min_rank(S.permute_tokens(args=(0, 1)), 2)),
            Relation("batch_split", min_rank(S.split_tokens(args=(0, 1)), 2)),
        ),
        bench=bench,
        memory_bound=True,
    )
)
