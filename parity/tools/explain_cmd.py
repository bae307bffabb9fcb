"""`parity explain OP [--dtype bfloat16] [--size N | --size NAME=N ...] [--markdown]`.

What parity checks for one op: the contract (the op's signature block and first paragraph in
docs/ops.md), its properties (which are exact, which are relations), its named variants, and its
tolerance model: the spec's one-line TOLERANCE, how each term is derived from the formats, and
the numbers for a dtype and the sizes that enter it (an accumulation length, a group size).
`parity explain --all --markdown` writes docs/tolerances.md. Exit 0, 2 usage (unknown op).

The derivations restate what each spec file (parity/properties/specs/<op>.py) computes, with
its constants read from the spec where it exports them; a spec may instead provide
`tolerance_model(dtype, sizes) -> [(quantity, value, note)]`, which is then used as is.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

DTYPES = ("bfloat16", "float16", "float32")
U32 = 2.0**-24  # float32 unit roundoff
TINY32 = 2.0**-126  # smallest normal float32
MANT = {"bfloat16": 7, "float16": 10, "float32": 23}
MAX_ZSIG = 0.27846454276107  # max over z of |z| (1 - sigmoid z), at z = 1.2785


def add_parser(sub):
    p = sub.add_parser("explain", help="an op's contract, properties and tolerance model")
    p.add_argument("op", nargs="?", help="the op (see `parity list`)")
    p.add_argument("--all", action="store_true", help="every op")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="input dtype")
    p.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="N|NAME=N",
        help="a size of the tolerance model (repeatable): N sets the op's main size (e.g. the "
        "accumulation length K of fused_moe), NAME=N any other (see the op's sizes)",
    )
    p.add_argument("--markdown", action="store_true", help="Markdown (docs/tolerances.md)")
    return p


# --- numbers -------------------------------------------------------------------------------


def ulp1(dtype: str) -> float:
    """Spacing of `dtype` at 1.0 (twice the unit roundoff)."""
    return 2.0 ** -MANT[dtype]


def num(x: float) -> str:
    """A number, as a power of two where it is one."""
    if x == 0:
        return "0"
    m, e = math.frexp(abs(x))
    if m == 0.5:
        p = f"2^{e - 1}"
        return p if abs(e - 1) > 40 else f"{p} = {x:.6g}"
    return f"{x:.4g}"


def gamma(n: int) -> float:
    """Relative error bound of an n-term float32 sum of non-negative terms."""
    return n * U32 / (1 - n * U32)


# e4m3: 3 mantissa bits, smallest normal 2^-6, largest 448; a reciprocal multiply may move x/s
# by RECIP_MID_ULPS float32 ulps of the midpoint between two codes (specs/_quant.py)
def _recip_ulps() -> float:
    from parity.catalog import get_spec

    get_spec("fp8_quant")  # only the catalog loads the specs; read the constant it loaded
    quant = sys.modules.get("parity.properties.specs._quant")
    if quant is None or not hasattr(quant, "RECIP_MID_ULPS"):  # moved: its documented value
        return 3.875 * (1 + 2.0**-20)
    return float(quant.RECIP_MID_ULPS)


def e4m3_rows() -> list:
    r = _recip_ulps()
    return [
        ("e4m3 code spacing at 1.0 (3 mantissa bits)", num(2.0**-3), "relative step 2^-3 to 2^-4"),
        ("e4m3 code spacing at 448 (the largest code)", num(32.0), "binade [256, 448]"),
        ("e4m3 subnormal spacing (below 2^-6)", num(2.0**-9), ""),
        (
            "reciprocal rule: window around a code midpoint",
            f"{r:.6g} ulp32(m)",
            "4 float32 roundings of x * (448 / amax): 4u|m| <= 3.875 ulp32(m); "
            "2 roundings (x * fl(1/s)) give 1.9375, ops.md's 2",
        ),
        (
            "  at the midpoint m = 1.0625 (between codes 1 and 1.125)",
            num(r * 2.0**-23),
            f"absolute in x/s, {r * 2.0**-23 / 0.125:.3g} of the code step",
        ),
        ("  where s is a power of two", "0", "the reciprocal is exact: the RNE code only"),
        ("scales (float32)", "bit-exact", "s = max(amax, eps) / 448 is one float32 division"),
    ]


# --- the models ------------------------------------------------------------------------------


@dataclass
class Model:
    """How an op's tolerance is derived, and its numbers for (dtype, sizes)."""

    derivation: list[str]
    sizes: dict = field(default_factory=dict)  # name -> (default, meaning); first is the main
    numbers: object = None  # (dtype, sizes) -> [(quantity, value, note)]
    exact: bool = False  # matches_reference compares bits (codes, indices), no float tolerance


def _swiglu_rows(dt, sz):
    ulp = ulp1(dt)
    tot = ulp + 16 * U32 + 4 * U32 * MAX_ZSIG
    return [
        (f"1 ulp({dt}) at |y| = 1", num(ulp), "the output's one rounding (+ the oracle across it)"),
        ("16 u32 |y| at |y| = 1", num(16 * U32), "exp, the sigmoid's reciprocal, three products"),
        (
            "4 u32 |z|(1-sigmoid z) |y|, its maximum",
            num(4 * U32 * MAX_ZSIG),
            "sigmoid's condition number (max 0.2785 at z = 1.28) x the rounding of alpha * gate",
        ),
        ("tiny32 |gate||up+beta|", num(TINY32), "per unit |gate||up+beta|: float32 underflow"),
        ("total at |y| = 1", f"{tot:.6g}", f"{tot / ulp:.4f} ulp({dt})"),
        ("relations (token_permutation, batch_split)", "2 x the above", "two outputs, each off"),
    ]


def _fp8_rows(group_name):
    def rows(dt, sz):
        g = sz[group_name]
        return [
            *e4m3_rows(),
            (
                f"{group_name} = {g}",
                "no size term",
                "each code depends on its own x and the group's amax, no accumulation",
            ),
        ]

    return rows


def _silu_fp8_rows(dt, sz):
    return [
        ("float32 SwiGLU intermediate", num(16 * U32) + " |y|", "16 u32, the swiglu spec's bound"),
        ("  where gate >= 20", "0", "float32 sigmoid rounds to 1: act = gate exactly"),
        (f"x.dtype path: y rounded to {dt}", num(ulp1(dt) / 2) + " |y|", "1/2 ulp at |y| = 1"),
        *e4m3_rows(),
        (f"group_size = {sz['group_size']}", "no size term", "amax of the group, no accumulation"),
    ]


def _mx_rows(dt, sz):
    return [
        ("E2M1 magnitudes", "0 0.5 1 1.5 2 3 4 6", "spacing 0.5 below 2, 1 to 4, 2 to 6"),
        ("scale", "2^(code - 127)", "e8m0: x / 2^e is exact, so codes are exact"),
        (f"block = {sz['block']}", "no size term", ""),
        ("packed codes, scale codes", "bit-exact", "NaN block (scale 255): element codes free"),
    ]


def _dequant_rows(dt, sz):
    return [
        ("value * 2^(code - 127) in float32", "exact", "a 2-bit significand times a power of two"),
        (f"rounding to {dt}", "once, RNE", "compared bit-exactly with the reference's rounding"),
    ]


def _route_rows(dt, sz):
    k, E = sz["k"], sz["E"]
    a_sig = 4 * (1 + 1)  # |l| = 1
    a_soft = 4 * (1 + 1 + 1)  # |l| = max|l| = 1
    base = 16 + 2 * k
    sig = base + 2 * a_sig
    soft = base + 2 * a_soft
    soft_nr = soft + E + a_soft
    return [
        (
            f"ids: logit rounding accepted ({dt} at |l| = 1)",
            num(ulp1(dt)),
            "top-k keys within the logit dtype's rounding of the k-th: either choice",
        ),
        ("16 + 2k", f"{base} u32", f"16: divisions, scaling, final rounding; 2k: the {k}-term sum"),
        ("A, one score's float32 error (sigmoid, |l| = 1)", f"{a_sig} u32", "4 (1 + |l|)"),
        ("A (softmax, |l| = max|l| = 1)", f"{a_soft} u32", "4 (1 + |l| + max|l|)"),
        ("weights, dsv3 / sqrtsoftplus, |l| <= 1", f"{sig} u32 = {sig * U32:.4g}", "x |w_j|"),
        ("weights, softmax renormalized, |l| <= 1", f"{soft} u32 = {soft * U32:.4g}", "x |w_j|"),
        (
            f"weights, softmax not renormalized (E = {E})",
            f"{soft_nr} u32 = {soft_nr * U32:.4g}",
            "+ (E + max A): the (E-1)-term normalizer",
        ),
        ("absolute floor", num(4 * TINY32) + " f", "f = routed_scaling_factor; score underflow"),
    ]


def _acc(kk: int, quant: str, bc: int) -> float:
    if quant == "fp8_block":
        return (bc / 32) * 2 * 2.0**-14 + 2 * U32 * (kk // bc + 4)
    return 2 * U32 * kk


def _moe_rows(dt, sz):
    K, H, N, k, bc = sz["K"], sz["H"], sz["N"], sz["k"], sz["bc"]
    rows = [
        (f"ulp({dt}) at 1", num(ulp1(dt)), "each rounding of h1, the SwiGLU, w_j y_j, the output"),
        ("u_acc (quant none, mxfp4)", num(2 * U32), "2 u32: a tensor-core add may truncate"),
    ]
    ks = [("K", K)] if K else [("H (first GEMM)", H), ("N (second GEMM)", N)]
    for label, kk in ks:
        rows.append(
            (
                f"K u_acc at K = {kk}" + ("" if K else f" ({label})"),
                f"{_acc(kk, 'none', bc):.4g}",
                "x |a| @ |W| (worst case; the typical error is 2 u_acc)",
            )
        )
        rows.append(
            (
                f"fp8_block at K = {kk}, bc = {bc}",
                f"{_acc(kk, 'fp8_block', bc):.4g}",
                "(bc/32) 2^-13 per block + 2 u32 (K/bc + 4): Hopper's ~14-bit MMA, then float32",
            )
        )
    rows += [
        (f"k-sum of k = {k} experts", f"{k - 1} ulp", "(k-1) ulp(sum_j |w_j y_j|), in x.dtype"),
        ("aggregate gate", "4 x", "||err||_F <= 4 ||vLLM-emulation err||_F + ulp + typical acc"),
    ]
    return rows


def _sinkhorn_rows(dt, sz):
    n = sz["n"]
    return [
        ("exp, |x| = |max| = 1", f"{4 + 3 * 2} u = {(4 + 3 * 2) * U32:.4g}", "(4 + 3(|x|+|max|))u"),
        (f"sums of n = {n} terms", f"{n} u = {n * U32:.4g}", "m u, m the row/column length"),
        ("divisions", f"2 u = {2 * U32:.4g}", ""),
        ("+eps", f"u = {U32:.4g}", ""),
        (
            f"iters = {sz['iters']}",
            "through the Jacobian",
            "each rounding point's bound x |d out / d theta| of the float64 iteration, summed",
        ),
    ]


def _mhc_pre_rows(dt, sz, head=False):
    hc, H = sz["hc"], sz["H"]
    n = hc * H + 1
    rows = [
        (f"fn GEMM: gamma(hc*H+1), hc*H+1 = {n}", f"{gamma(n):.4g}", "x rsqrt(ms) sum|r||fn|"),
        ("rsqrt, sigmoid (|x| = 1)", f"{7 + 3} u = {10 * U32:.4g}", "slope <= 1/4 + (7+3|x|)u"),
    ]
    if not head:
        rows.append(("sinkhorn", "see sinkhorn", "its Jacobian bound, input error propagated"))
    rows += [
        (f"layer sum: gamma(hc = {hc})", f"{gamma(hc):.4g}", "x sum pre|r|"),
        (f"1/2 ulp({dt}) at 1", num(ulp1(dt) / 2), "the final rounding to residual.dtype"),
    ]
    return rows


def _mhc_post_rows(dt, sz):
    hc = sz["hc"]
    return [
        (f"gamma(hc+1), hc = {hc}", f"{gamma(hc + 1):.4g}", "x (|x post_j| + sum_i |comb_ij r_i|)"),
        (f"1/2 ulp({dt}) at 1", num(ulp1(dt) / 2), "the rounding to residual.dtype"),
    ]


def _stack_rows(dt, sz):
    return [
        ("each captured op call", "that op's model", "on the candidate's own inputs"),
        ("wiring (weights, residual hand-off)", "bitwise", ""),
        ("end to end (not fp8_block)", "4 x spread + ulp", "Frobenius, over tokens routed alike"),
    ]


MODELS: dict[str, Model] = {
    "swiglu": Model(
        [
            "The reference computes in float32 and rounds once; the oracle is the float64 "
            "reference without the final rounding.",
            "1 ulp(out): the output's rounding (half an ulp) plus the float64 oracle landing on "
            "the other side of a rounding boundary than the float32 value.",
            "16 u32 |y|: float32 exp, the reciprocal in sigmoid and three products, each a "
            "factor (1 + d) with |d| <= u32, with room for a fast exp.",
            "4 u32 |z|(1 - sigmoid z)|y|: the condition number of sigmoid at z = alpha * gate "
            "times the float32 rounding of alpha and of alpha * gate.",
            "tiny32 |gate||up+beta|: float32 sigmoid underflows to 0 below about -88; where up "
            "is infinite the element is ill-conditioned and not compared.",
        ],
        numbers=_swiglu_rows,
    ),
    "fp8_quant": Model(
        [
            "Codes are compared as bits, scales as float32 bits: no float tolerance.",
            "The one freedom (ops.md): x / s computed as x times a reciprocal. Each float32 "
            "rounding is a factor (1 + d); DeepGEMM's x * (448 / amax) makes 4, so the value "
            "moves by < 4u|q|, and a code can differ by one step only where x/s lies within "
            "4u|m| <= 3.875 ulp32(m) of the midpoint m between two codes (an E4M3 midpoint has "
            "5 significant bits).",
            "Where s is a power of two the reciprocal is exact: only the RNE code is accepted.",
        ],
        sizes={"group_size": (128, "quantization group")},
        numbers=_fp8_rows("group_size"),
        exact=True,
    ),
    "fp8_block_quant": Model(
        [
            "Codes and block scales bit-exact; the reciprocal rule of fp8_quant per block "
            "(DeepGEMM's per_block_cast_to_fp8 multiplies by 448 / amax).",
        ],
        sizes={"block": (128, "block side (block_shape 128 x 128)")},
        numbers=_fp8_rows("block"),
        exact=True,
    ),
    "silu_mul_fp8_quant": Model(
        [
            "Per group, either path the contract allows: the float32 SwiGLU (fused) or the "
            "SwiGLU rounded to x.dtype (unfused), each under the fp8_quant rule.",
            "The float32 SwiGLU no two libraries compute alike is bounded by the swiglu spec's "
            "16 u32 |y| (exact where gate >= 20, where float32 sigmoid is 1).",
            "The scale must be the rule's scale for an amax inside the interval that bound "
            "allows; each code must round a value inside its interval.",
        ],
        sizes={"group_size": (128, "quantization group")},
        numbers=_silu_fp8_rows,
        exact=True,
    ),
    "mxfp4_quant": Model(
        [
            "Power-of-two (E8M0) scales make x / 2^e exact, so element and scale codes are "
            "compared as bits; the codes of a NaN block (scale code 255) are free.",
        ],
        sizes={"block": (32, "MX block")},
        numbers=_mx_rows,
        exact=True,
    ),
    "mxfp4_dequant": Model(
        [
            "Each E2M1 value times 2^(code-127) is exact in float32 and rounded once to dtype: "
            "bit-exact.",
        ],
        numbers=_dequant_rows,
        exact=True,
    ),
    "route": Model(
        [
            "ids: check_route_selection accepts any choice within the rounding of the logit "
            "dtype (ties included); weights are judged against the float64 contract weights of "
            "the implementation's own ids, so a valid tie choice is never punished.",
            "A, one score's float32 error in u32: a fast exp (ex2.approx: 2 ulps plus the "
            "rounding of l * log2 e, |l| ulps): 4 (1 + |l|) for sigmoid and sqrtsoftplus, "
            "4 (1 + |l| + max|l|) for softmax (a kernel may subtract a log-sum-exp).",
            "(16 + 2k + A_j + max A) u32 |w_j|: 2k the k-term sum, 16 the divisions, the "
            "scaling factor and the final rounding; softmax without renormalize keeps the "
            "(E - 1)-term normalizer's error (E + max A).",
        ],
        sizes={"k": (8, "experts per token"), "E": (256, "experts")},
        numbers=_route_rows,
    ),
    "moe_align": Model(
        [
            "Integer outputs, compared exactly: num_post_padded, the expert_ids prefix, and "
            "each expert's multiset of flat indices and pads in the sorted_ids prefix (the "
            "order within an expert is free; the tails are unspecified).",
        ],
        numbers=lambda dt, sz: [("all outputs", "exact", "no float output")],
        exact=True,
    ),
    "fused_moe": Model(
        [
            "Against the float64 oracle, per element: ulp(out) + sum_j |w_j| (|W2| @ e_a + "
            "K u_acc |a| @ |W2|) + sum_j ulp(w_j y_j) + (k-1) ulp(sum_j |w_j y_j|).",
            "e_a: the error of the SwiGLU input propagated from the first GEMM (its own K u_acc "
            "|x| @ |W13| and the rounding of h1 to x.dtype), the SwiGLU's float32 error and its "
            "rounding to x.dtype (the vLLM Triton path rounds all three).",
            "u_acc = 2 u32 (a tensor-core add may truncate: 1 ulp); fp8_block: (bc/32) 2^-13 per "
            "block (Hopper's ~14-bit MMA accumulation, promoted to float32 every bc products) "
            "and an e4m3 step where a quantized activation lies within its error of a midpoint.",
            "The per-element bound is the sound worst case (K u, not sqrt K u), so an aggregate "
            "gate backs it: ||err||_F <= 4 ||err of a torch emulation of the vLLM path||_F + "
            "||ulp(out)||_F + ||typical accumulation||_F.",
            "The typical term: the same model with errors of independent terms in quadrature "
            "and K roundings worth 2 u_acc (a random walk); slots of one token on the same "
            "expert add linearly (they compute the same rows); fp8_block's flip margin holds "
            "one ulp of the activation in x.dtype (a kernel may round to the emulation's "
            "neighbour).",
        ],
        sizes={
            "K": (0, "one accumulation length (default: H and N)"),
            "H": (7168, "hidden size (first GEMM's K)"),
            "N": (2048, "expert intermediate size (second GEMM's K)"),
            "k": (8, "experts per token"),
            "bc": (128, "fp8 block_shape[1]"),
        },
        numbers=_moe_rows,
    ),
    "sinkhorn": Model(
        [
            "A first-order bound of a float32 Sinkhorn: each rounding point (exp, the sums, the "
            "divisions, +eps) has its float32 bound, carried to every output through the "
            "float64 iteration's Jacobian (a hand-written reverse pass, specs/_mhc.py).",
        ],
        sizes={"n": (4, "matrix side (hc)"), "iters": (20, "iterations")},
        numbers=_sinkhorn_rows,
    ),
    "mhc_pre": Model(
        [
            "Float32 error bounds per stage: the fn GEMM gamma(hc*H+1) rsqrt(ms) sum|r||fn| (0 "
            "in the exact_gemm regime), rsqrt and sigmoid (slope <= 1/4, (7+3|x|)u), the "
            "sinkhorn bound through its Jacobian with the input error propagated, and the "
            "layer input gamma(hc) sum pre|r| + 1/2 ulp(residual.dtype).",
        ],
        sizes={"H": (7168, "hidden size"), "hc": (4, "streams")},
        numbers=_mhc_pre_rows,
    ),
    "mhc_post": Model(
        [
            "An (hc+1)-term float32 sum: gamma(hc+1) (|x post_j| + sum_i |comb_ij r_i|), then "
            "one rounding to residual.dtype (1/2 ulp).",
        ],
        sizes={"hc": (4, "streams")},
        numbers=_mhc_post_rows,
    ),
    "mhc_fused_post_pre": Model(
        [
            "new_residual as mhc_post; per token the pre outputs within the mhc_pre bounds of "
            "either chain the contract allows: pre on the returned (rounded) new_residual, or "
            "on the float32 one (a fused kernel), with the input error propagated.",
        ],
        sizes={"H": (7168, "hidden size"), "hc": (4, "streams")},
        numbers=lambda dt, sz: _mhc_post_rows(dt, sz) + _mhc_pre_rows(dt, sz),
    ),
    "mhc_head": Model(
        [
            "As mhc_pre without sinkhorn: the fn GEMM gamma(hc*H+1) rsqrt(ms) sum|r||fn|, the "
            "sigmoid, gamma(hc) sum pre|r| + 1/2 ulp(residual.dtype).",
        ],
        sizes={"H": (7168, "hidden size"), "hc": (4, "streams")},
        numbers=lambda dt, sz: _mhc_pre_rows(dt, sz, head=True),
    ),
    "decoder_stack": Model(
        [
            "Two correct stacks can differ hugely end to end (one rounding flips a top-k "
            "choice), so each captured op call is judged by that op's own tolerance model on "
            "the candidate's own inputs; the wiring is compared bitwise and the (op, layer) "
            "sequence must match.",
            "End to end (not fp8_block), over tokens routed alike: ||out - ref32||_F <= 4 x the "
            "spread of the accepted variants (float64-inside ops, float32 fused chain) + ulp.",
        ],
        numbers=_stack_rows,
    ),
}

PROPERTY_TEXT = {
    "matches_reference": "agrees with the reference under the tolerance model below",
    "writes_all_outputs": "exact: no poisoned (uninitialised) element survives the call",
    "inputs_unchanged": "exact: every input bitwise equal after the call",
    "deterministic": "exact: two calls give bitwise equal outputs",
    "nan_policy": "exact: on NaN-injected input, NaN exactly where the reference puts it",
    "error_parity": "exact: bad input raises ValueError/TypeError, as the reference",
}


# --- the contract text -----------------------------------------------------------------------


def ops_md() -> Path | None:
    here = Path(__file__).resolve().parents[2] / "docs" / "ops.md"
    return here if here.is_file() else None


def contract(op: str, text: str | None) -> tuple[str, str]:
    """(signature block, first paragraph) of `op` in docs/ops.md ("" where absent)."""
    if not text:
        return "", ""
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if re.match(rf"^    {re.escape(op)}\(", ln)), None
    )
    if start is None:  # no signature block (decoder_stack): the section's first paragraph
        head = next(
            (i for i, ln in enumerate(lines) if re.match(rf"^## {re.escape(op)}\b", ln)), None
        )
        if head is None:
            return "", ""
        return "", _paragraph(lines, head + 1)
    end = start
    while end + 1 < len(lines) and lines[end + 1].startswith("    "):
        end += 1
    sig = "\n".join(ln[4:] for ln in lines[start : end + 1])
    return sig, _paragraph(lines, end + 1)


def _paragraph(lines: list[str], i: int) -> str:
    while i < len(lines) and not lines[i].strip():
        i += 1
    out = []
    stop = ("    ", "#", "- ")  # a code block, a heading, a list
    while i < len(lines) and lines[i].strip() and not lines[i].startswith(stop):
        out.append(lines[i].strip())
        i += 1
    return " ".join(out)


# --- the command -----------------------------------------------------------------------------


def parse_sizes(op: str, model: Model, given: list[str]) -> dict | str:
    """{name: value} with the model's defaults, or an error message."""
    sizes = {n: d for n, (d, _) in model.sizes.items()}
    main = next(iter(model.sizes), None)
    for item in given:
        name, _, val = item.rpartition("=")
        name = name or main
        if name is None:
            return f"{op} has no size in its tolerance model (elementwise), got --size {item}"
        if name not in sizes:
            return f"{op}: unknown size {name!r}; sizes: {', '.join(sizes)}"
        try:
            v = int(val)
        except ValueError:
            return f"--size {item}: expected an integer"
        if v < 1:
            return f"--size {item}: must be >= 1"
        sizes[name] = v
    return sizes


def rows_for(spec, model: Model, dtype: str, sizes: dict) -> list:
    custom = getattr(spec, "tolerance_model", None)
    if callable(custom):  # the spec's own numbers win
        return [tuple(r) for r in custom(dtype, sizes)]
    return model.numbers(dtype, sizes) if model.numbers else []


def explain(spec, dtype: str, sizes: dict, *, markdown: bool, ops_text: str | None) -> str:
    model = MODELS.get(spec.name) or Model([spec.tolerance])
    sig, para = contract(spec.name, ops_text)
    rows = rows_for(spec, model, dtype, sizes)
    props = list(spec.properties)
    rels = list(spec.relations)
    variants = list(getattr(spec, "variants", ()) or ())
    size_txt = ", ".join(f"{n} = {v}" for n, v in sizes.items() if v) or "no size term"
    mr = "exact (bits)" if model.exact else "the tolerance model"
    prop_rows = [
        (
            p,
            PROPERTY_TEXT.get(p, "")
            if p != "matches_reference"
            else f"agrees with the reference: {mr}",
        )
        for p in props
    ]
    for r in rels:
        how = "exact: bitwise after canonical" if r.exact else "within the spec's compare_pair"
        if spec.name == "swiglu" and not r.exact:
            how += " (twice the tolerance: each output may be off the oracle)"
        prop_rows.append((r.name, f"relation, {how}"))
    if markdown:
        return _markdown(spec, model, sig, para, prop_rows, variants, rows, dtype, size_txt)
    out = [f"{spec.name}: contract (docs/ops.md)"]
    if sig:
        out += ["    " + ln for ln in sig.splitlines()]
    if para:
        out += _wrap(para, "  ")
    if not sig and not para:
        out.append("  (docs/ops.md not found: see the op's reference docstring)")
    out += ["", "properties"]
    w = max(len(p) for p, _ in prop_rows)
    out += [f"  {p:<{w}}  {t}" for p, t in prop_rows]
    if variants:
        out += ["", "named variants (--accept NAME)"]
        for v in variants:
            out += _wrap(f"{v.name}: {v.description} [{v.source}]", "  ", "      ")
    out += ["", "tolerance model", *_wrap(spec.tolerance, "  "), "", "derivation"]
    for d in model.derivation:
        out += _wrap(d, "  - ", "    ")
    if model.sizes:
        out += ["", "sizes: " + "; ".join(f"{n}: {m}" for n, (_, m) in model.sizes.items())]
    out += ["", f"numbers for {dtype} ({size_txt}); u32 = 2^-24 = {U32:.4g}"]
    if rows:
        w = max(len(str(r[0])) for r in rows)
        wv = max(len(str(r[1])) for r in rows)
        lines = [f"  {q:<{w}}  {v:<{wv}}  {note}".rstrip() for q, v, note in rows]
        if max(len(ln) for ln in lines) > 100:  # the notes on their own lines
            lines = ["\n".join([f"  {q:<{w}}  {v}", *_wrap(note, "      ")]) for q, v, note in rows]
        out += lines
    return "\n".join(out) + "\n"


def _wrap(text: str, first: str, rest: str | None = None) -> list[str]:
    import textwrap

    return textwrap.wrap(
        text, 100, initial_indent=first, subsequent_indent=rest if rest is not None else first
    )


def _markdown(spec, model, sig, para, prop_rows, variants, rows, dtype, size_txt) -> str:
    def cell(s) -> str:
        return str(s).replace("|", "\\|")

    out = [f"## {spec.name}", ""]
    if sig:
        out += ["    " + ln for ln in sig.splitlines()] + [""]
    out += [f"Tolerance: {spec.tolerance}", ""]
    out += [f"- {d}" for d in model.derivation] + [""]
    out += ["Properties: " + "; ".join(f"`{p}` ({t})" for p, t in prop_rows) + ".", ""]
    if variants:
        out += ["Named variants: " + ", ".join(f"`{v.name}`" for v in variants) + ".", ""]
    if model.sizes:
        out += [
            "Sizes: " + "; ".join(f"`{n}` {m}" for n, (_, m) in model.sizes.items()) + ".",
            "",
        ]
    out += [f"Numbers for {dtype} ({size_txt}):", "", "| quantity | value | why |", "|---|---|---|"]
    out += [f"| {cell(q)} | {cell(v)} | {cell(n)} |" for q, v, n in rows]
    return "\n".join(out) + "\n"


HEADER = """# Tolerance models

Generated by `parity explain --all --markdown` from the OpSpecs (parity/properties/specs/) and
docs/ops.md; `tests/tools/test_explain.py` fails when it is out of date. `parity explain OP
--dtype D --size N` prints the same for another dtype and size.

Every tolerance is derived from the formats, never tuned: `u32 = 2^-24` is the float32 unit
roundoff, `ulp(dtype)` the spacing of the output dtype at the value (at 1.0: `2^-7` for
bfloat16, `2^-10` for float16, `2^-23` for float32), `gamma(n) = n u32 / (1 - n u32)` the
bound of an n-term float32 sum, e4m3 codes have 3 mantissa bits (spacing `2^-3` at 1.0, 32 at
448). Quantizer codes and scales are compared exactly (or one code step where a reciprocal
multiply may round across a midpoint), never with allclose.
"""


def run(args) -> int:
    from parity.registry import OP_NAMES
    from parity.tools.common import usage_error

    if args.all == bool(args.op):
        return usage_error("explain", "give one OP or --all")
    if args.op and args.op not in OP_NAMES:
        return usage_error("explain", f"unknown op {args.op!r}; ops: {', '.join(OP_NAMES)}")
    from parity.catalog import get_spec

    path = ops_md()
    text = path.read_text(encoding="utf-8") if path else None
    names = list(OP_NAMES) if args.all else [args.op]
    parts = [HEADER] if args.all and args.markdown else []
    for op in names:
        model = MODELS.get(op) or Model([])
        sizes = parse_sizes(op, model, args.size)
        if isinstance(sizes, str):
            if args.all:  # --size applies to the ops that have that size
                sizes = parse_sizes(op, model, [])
            else:
                return usage_error("explain", sizes)
        parts.append(
            explain(get_spec(op), args.dtype, sizes, markdown=args.markdown, ops_text=text)
        )
    sys.stdout.write(("\n" if args.markdown else "\n\n").join(parts))
    return 0
