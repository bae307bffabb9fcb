"""OpSpec of fp8_block_quant: 2-D block E4M3 codes and scales of a weight, compared exactly
(one E4M3 step where the reciprocal multiply may round across a midpoint).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of
from parity.properties.specs._quant import (
    FP8,
    FP8_REGIMES,
    RECIP_SCALE,
    UE8M0_LOG2,
    amax_under,
    check_names,
    code_report,
    codes_under,
    contiguous_ok,
    e4m3_codes_ok,
    group_values,
    min_rank,
    mutate_common,
    nonempty,
    on_cpu,
    pick_scale,
    same_f32,
    scale_report,
    scales_under,
    two_outputs,
)
from parity.properties.tolerance import Verdict, check_meta, combine
from parity.reference.quant import (
    BLOCK_QUANT_EPS,
    _expand_blocks,
)
from parity.registry import OpSpec, Relation, Variant, add_spec

TOLERANCE = (
    "codes and block scales bit-exact; one e4m3 step allowed where w/s is within 3.875 float32 "
    "ulps of a code midpoint and s is not a power of two (DeepGEMM multiplies by 448 / amax: 4 "
    "float32 roundings)"
)


BLOCK_SHAPES_SMALL = [[128, 128], [32, 32], [16, 64], [64, 16], [1, 32], [8, 8], [32, 1]]
BLOCK_SHAPES_FULL = [[128, 128], [128, 128], [64, 64], [1, 128]]


@st.composite
def _block_meta(draw, size: str, dtypes):
    small = size == "small"
    bs = draw(st.sampled_from(BLOCK_SHAPES_SMALL if small else BLOCK_SHAPES_FULL))
    lead = draw(st.sampled_from([[], [2], [3], [1]] if small else [[], [4], [2], [8]]))
    budget = 48_000 if small else 32_000_000
    e = max(1, lead[0]) if lead else 1
    rmax = 160 if small else 4100
    r = draw(
        S.sizes(
            small=[0, 1, 2, 7, 8, 9, 31, 33, 65, 129],
            full=S.around(128, 1024, 4096),
            size=size,
            lo=0,
            hi=rmax,
        )
    )
    cmax = max(1, min(300 if small else 7200, budget // (e * max(r, 1))))
    c = draw(
        S.sizes(
            small=[1, 2, 3, 15, 16, 17, 31, 33, 63, 65, 127, 129, 255],
            full=S.around(128, 1024, 2048, 7168),
            size=size,
            lo=1,
            hi=cmax,
        )
    )
    return {
        "lead": lead,
        "R": r,
        "C": c,
        "dtype": draw(S.float_dtypes(dtypes)),
        "options": {
            "block_shape": bs,
            "scale_format": draw(st.sampled_from(["fp32", "ue8m0"])),
        },
        "regime": draw(st.sampled_from(FP8_REGIMES)),
        "seed": draw(S.seeds()),
    }


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _block_meta(size, dtypes)


def _block_groups(lead, r: int, c: int, bs, device):
    br, bc = bs
    nr, nc = -(-r // br), -(-c // bc)
    e = 1
    for d in lead:
        e *= d
    ei = torch.arange(e, device=device).view(e, 1, 1)
    ri = torch.arange(r, device=device).view(1, r, 1)
    ci = torch.arange(c, device=device).view(1, 1, c)
    gid = ((ei * nr + ri // br) * nc + ci // bc).reshape(*lead, r, c)
    first = ((ri % br == 0) & (ci % bc == 0)).expand(e, r, c).reshape(*lead, r, c)
    return gid, e * nr * nc, first


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    opts = {
        "block_shape": tuple(meta["options"]["block_shape"]),
        "scale_format": meta["options"]["scale_format"],
    }
    lead, r, c = meta["lead"], meta["R"], meta["C"]
    gid, n, first = _block_groups(lead, r, c, opts["block_shape"], device)
    w = group_values(
        g,
        [*lead, r, c],
        gid,
        n,
        first,
        meta["regime"],
        dtype,
        scale_format=opts["scale_format"],
        eps=BLOCK_QUANT_EPS,
    )
    if meta.get("nan"):
        w = g.inject_nan(w)
    bad = meta.get("invalid")
    w = mutate_common(w, bad)
    if bad == "rank1":
        w = w.reshape(-1)
    elif bad == "block_zero":
        opts["block_shape"] = (0, opts["block_shape"][1])
    elif bad == "block_negative":
        opts["block_shape"] = (opts["block_shape"][0], -128)
    elif bad == "block_len3":
        opts["block_shape"] = (*opts["block_shape"], 1)
    elif bad == "block_not_pair":
        opts["block_shape"] = 128
    elif bad == "block_float":
        opts["block_shape"] = (float(opts["block_shape"][0]), opts["block_shape"][1])
    elif bad == "bad_scale_format":
        opts["scale_format"] = "fp8"
    return Case("fp8_block_quant", (w,), opts, meta, str(device))


def compare(case: Case, outs: tuple) -> Verdict:
    (w,) = case.args
    o = case.kwargs
    want_q, want_s = on_cpu(ref.fp8_block_quant, w, **o)
    if (bad := two_outputs(outs)) is not None:
        return bad
    q, s = outs
    v = combine([check_meta("q", q, want_q), check_meta("scales", s, want_s)])
    if not v:
        return v
    v = combine([contiguous_ok("q", q), contiguous_ok("scales", s)])
    if not v:
        return v
    r, c = w.shape[-2:]
    s_el = _expand_blocks(want_s, tuple(o["block_shape"]), r, c)
    codes_ok, quot = e4m3_codes_ok(w.to(torch.float32), s_el, want_q, q)
    scales_ok = same_f32(s, want_s)
    out = []
    if not scales_ok.all():
        out.append(scale_report("scales", ~scales_ok, s, want_s))
    if not codes_ok.all():
        out.append(code_report("q", ~codes_ok, q, want_q, quot))
    return combine(out) if out else Verdict.passed()


RECIP_SCALE_BLOCK = Variant(
    RECIP_SCALE.name,
    "DeepGEMM per_block_cast_to_fp8 on CUDA: the scale x_amax / 448.0 is torch's reciprocal "
    "multiply, amax * fl(1/448), one float32 ulp off amax / 448 in about half the blocks",
    "deep_gemm/utils/math.py per_block_cast_to_fp8 (torch CUDA division by a Python scalar)",
)
VARIANTS = (RECIP_SCALE_BLOCK, UE8M0_LOG2)
_NAMES = [v.name for v in VARIANTS]


def _blocks_under(w32: torch.Tensor, block_shape, fmt: str, names, got_s=None):
    """Block FP8 of float32 `w32 [..., R, C]` under `names`: (want codes as FP8, the scale each
    block is judged with, scales ok). Without `got_s`: the variant's main scales."""
    *lead, r, c = w32.shape
    br, bc = block_shape
    nr, nc = -(-r // br), -(-c // bc)
    blocks = F.pad(w32, (0, nc * bc - c, 0, nr * br - r)).reshape(*lead, nr, br, nc, bc)
    s, alt, alt_ok = scales_under(amax_under(blocks, (-3, -1), names), fmt, BLOCK_QUANT_EPS, names)
    if got_s is None:
        s_c, s_ok = s, torch.ones_like(s, dtype=torch.bool)
    else:
        s_c, s_ok = pick_scale(got_s.contiguous().to(torch.float32), s, alt, alt_ok)
    q = codes_under(w32 / _expand_blocks(s_c, block_shape, r, c), names)
    return q.to(FP8), s_c, s_ok


def compare_variants(case: Case, outs: tuple, names: frozenset) -> Verdict:
    """`compare` against the reference computed under the variants `names`: a block scale the
    variant allows, exactly; codes as the contract's rule for that scale."""
    names = check_names("fp8_block_quant", names, _NAMES)
    if not names:
        return compare(case, outs)
    (w,) = case.args
    o = case.kwargs
    if (bad := two_outputs(outs)) is not None:
        return bad
    q, s = outs
    want_q, want_s = reference_under(case, frozenset())
    v = combine([check_meta("q", q, want_q), check_meta("scales", s, want_s)])
    if not v:
        return v
    v = combine([contiguous_ok("q", q), contiguous_ok("scales", s)])
    if not v:
        return v
    w32, q, s = w.cpu().to(torch.float32), q.cpu(), s.cpu()
    bs = tuple(o["block_shape"])
    want_q, s_c, s_ok = _blocks_under(w32, bs, o.get("scale_format", "fp32"), names, got_s=s)
    s_el = _expand_blocks(s_c, bs, *w32.shape[-2:])
    codes_ok, quot = e4m3_codes_ok(w32, s_el, want_q, q)
    out = []
    if not s_ok.all():
        out.append(scale_report("scales", ~s_ok, s, s_c))
    if not codes_ok.all():
        out.append(code_report("q", ~codes_ok, q, want_q, quot))
    return combine(out) if out else Verdict.passed()


def reference_under(case: Case, names: frozenset) -> tuple:
    names = check_names("fp8_block_quant", names, _NAMES)
    (w,) = case.args
    o = case.kwargs
    if not names:
        return on_cpu(ref.fp8_block_quant, w, **o)
    bs = tuple(o["block_shape"])
    q, s, _ = _blocks_under(w.cpu().to(torch.float32), bs, o.get("scale_format", "fp32"), names)
    return q.to(w.device), s.to(w.device)


MUTATIONS = [
    "int_dtype",
    "float64",
    "fp8_input",
    "not_a_tensor",
    "rank1",
    "block_zero",
    "block_negative",
    "block_len3",
    "block_not_pair",
    "block_float",
    "bad_scale_format",
]


def bench(T: int) -> dict:
    """A weight quantizer: T rows of a [T, 7168] matrix, 128 x 128 blocks."""
    return {
        "lead": [],
        "R": T,
        "C": S.BENCH_H,
        "dtype": "bfloat16",
        "regime": "normal",
        "options": {"block_shape": [128, 128], "scale_format": "fp32"},
    }


SPEC = add_spec(
    OpSpec(
        name="fp8_block_quant",
        reference=ref.fp8_block_quant,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        invalid_when=None,
        nan_when=nonempty,
        relations=(
            Relation("expert_permutation", min_rank(S.permute_tokens(), 3)),
            Relation("batch_split", min_rank(S.split_tokens(), 3)),
        ),
        bench=bench,
        memory_bound=True,
        variants=VARIANTS,
        compare_variants=compare_variants,
        reference_under=reference_under,
    )
)
