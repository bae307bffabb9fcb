"""OpSpec of fused_moe: strategy, builder, tolerance model, bad inputs, relations.

The target is the reference in float64 (oracle mode, unrounded). The tolerance is a per-element
error bound derived from the formats for the vLLM Triton path (first GEMM output, SwiGLU output
and each expert's weighted output rounded to x.dtype, the k-sum accumulated in x.dtype, float32
accumulation in the GEMMs; for fp8_block the two activation quantizations, where a code may flip
by one step where the kernel's value lies within its own error of a rounding midpoint). The
per-element bound is loose where it has to be sound (worst-case accumulation K * u), so an
aggregate gate backs it: the Frobenius error may not exceed 4 times that of a torch emulation of
the vLLM path (computed here) plus the output rounding and the typical accumulation error.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of, eps_of, ulp
from parity.properties.tolerance import Verdict, check_meta, close
from parity.reference.moe import _fake_quant_fp8
from parity.reference.quant import _expand_blocks, _fp8_quant_f32
from parity.reference.swiglu import swiglu_math
from parity.registry import OpSpec, Relation, add_spec

_U32 = eps_of(torch.float32)
# Hopper FP8 tensor-core accumulation keeps about 14 bits (DeepSeek-V3 report, 3.3.2): each
# K=32 MMA step may lose 2 * 2**-14 of the running sum (<= sum|products|); a block kernel
# promotes to float32 every block_shape[1] products, so a block adds (bc / 32) * 2**-13.
_U_FP8_ACC = 2.0**-14
# The aggregate gate: the impl's Frobenius error against the oracle, at most this many times a
# vLLM-path emulation's (plus the output ulp floor and the typical accumulation error).
GATE_FACTOR = 4.0

TOLERANCE = (
    "float64 oracle; per element ulp(out) + sum_j |w_j| (|W2| @ e_a + K u_acc |a| @ |W2|) + "
    "sum_j ulp(w_j y_j) + (k-1) ulp(sum_j |w_j y_j|), e_a propagated from h1 and SwiGLU rounded "
    "to x.dtype and K u_acc accumulation (u_acc = 2 u32; fp8: (bc/32) 2**-13 a block, Hopper's "
    "~14-bit MMA), fp8: an e4m3 step where within that error of a midpoint; and ||err||_F <= "
    "4 ||vLLM-emulation err||_F + ||ulp(out)||_F + ||typical accumulation||_F"
)

QUANTS = ("none", "fp8_block", "mxfp4")
_ROUTING = ("uniform", "hot", "sparse", "some_neg", "all_neg_rows", "repeat")
_X_SCALE = {"normal": 1.0, "large": 6.0, "tiny": 1e-2}  # large crosses the SwiGLU limits


# --- strategy and builder -------------------------------------------------------------------------


@st.composite
def _dims(draw, size: str) -> dict:
    quant = draw(st.sampled_from(QUANTS))
    block = [128, 128]
    big_h = [256, 512, 1024, 2048] if size == "full" else []
    big_n = [128, 256, 512] if size == "full" else []
    if quant == "fp8_block":
        block = list(draw(st.sampled_from([(128, 128), (64, 64), (32, 32), (128, 32)])))
        bc = block[1]
        hs = [h for h in [32, 64, 96, 128, *big_h] if h % bc == 0]
        ns = [n for n in [32, 64, 96, 128, *big_n] if n % bc == 0]
    elif quant == "mxfp4":  # E2M1 blocks of 32 along both GEMMs' K
        hs, ns = [32, 64, 96, 128, *big_h], [32, 64, 96, *big_n]
    else:  # tails: sizes that are not tile multiples
        hs, ns = [32, 64, 96, 128, 8, 24, *big_h], [32, 64, 96, 8, 24, *big_n]
    return {
        "quant": quant,
        "block_shape": block,
        "H": draw(st.sampled_from(hs)),
        "N": draw(st.sampled_from(ns)),
    }


@st.composite
def _routing(draw, size: str) -> dict:
    e = draw(S.sizes(small=[1, 2, 3, 4, 8, 16], full=[32, 64, 128, 256], size=size, lo=1))
    k = draw(st.integers(1, 8 if size == "full" else 4))
    arwi = draw(st.booleans()) if k == 1 else False  # apply_router_weight_on_input: k == 1 only
    return {"E": e, "k": k, "routing": draw(st.sampled_from(_ROUTING)), "arwi": arwi}


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "T": S.tokens(size=size),
            "dims": _dims(size),
            "route": _routing(size),
            "dtype": S.float_dtypes(dtypes),
            "options": st.fixed_dictionaries(
                {
                    "swiglu_limit": st.sampled_from([None, 10.0, 7.0]),
                    "swiglu_alpha": st.sampled_from([1.0, 1.702]),
                    "swiglu_beta": st.sampled_from([0.0, 1.0]),
                    "layout": st.sampled_from(["concat", "interleaved"]),
                    "swiglu_clamp_mode": st.sampled_from(["pre", "post"]),
                }
            ),
            "x_regime": st.sampled_from(list(_X_SCALE)),
            "seed": S.seeds(),
        }
    )


def _topk_ids(g: Gen, t: int, k: int, e: int, regime: str) -> torch.Tensor:
    shape = (t, k)
    if regime == "repeat" or k > e:  # an expert may repeat within a token
        ids = g.integers(shape, 0, e)
    else:
        scores = g.uniform((t, e))
        if regime == "hot":  # one expert takes (nearly) every token
            scores[:, int(g.integers((1,), 0, e).item())] += 1.0
        elif regime == "sparse":  # only k experts (or a few more) get tokens: the rest are empty
            keep = g.perm(e)[: min(e, k + 1)]
            scores[:, keep] += 2.0
        ids = g.host(lambda sc: torch.topk(sc, k, dim=-1).indices, scores)  # ties: the CPU's order
    if regime == "some_neg":
        ids = torch.where(g.mask(shape, 0.3), -1, ids)
    elif regime == "all_neg_rows":  # tokens with no expert on this rank: zero rows
        ids = torch.where(g.mask((t, 1), 0.4), -1, ids)
    return ids.to(torch.int32)


def _weights(g: Gen, e: int, rows: int, cols: int, quant: str, block) -> torch.Tensor:
    """N(0, 1/sqrt(cols)) (activations stay O(1)); fp8: every weight block scaled by its own
    2**U(-1, 1), so the block scales differ (a wrong scale index shows)."""
    w = g.normal((e, rows, cols), std=1.0 / math.sqrt(cols))
    if quant == "fp8_block":
        br, bc = block
        f = g.host(torch.exp2, g.uniform((e, -(-rows // br), -(-cols // bc)), -1.0, 1.0))
        w = w * _expand_blocks(f, (br, bc), rows, cols)
    return w


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    d, r = meta["dims"], meta["route"]
    t, h, n, e, k = meta["T"], d["H"], d["N"], r["E"], r["k"]
    quant, block = d["quant"], tuple(d["block_shape"])
    x = g.normal((t, h), std=_X_SCALE[meta["x_regime"]]).to(dtype)
    w13f = _weights(g, e, 2 * n, h, quant, block)
    w2f = _weights(g, e, h, n, quant, block)
    kw = dict(meta["options"])
    kw.update(quant=quant, apply_router_weight_on_input=r["arwi"], block_shape=block)
    if quant == "fp8_block":
        w13, kw["w13_scale"] = ref.fp8_block_quant(w13f, block_shape=block)
        w2, kw["w2_scale"] = ref.fp8_block_quant(w2f, block_shape=block)
    elif quant == "mxfp4":
        w13, kw["w13_scale"] = ref.mxfp4_quant(w13f)
        w2, kw["w2_scale"] = ref.mxfp4_quant(w2f)
    else:
        w13, w2 = w13f.to(dtype), w2f.to(dtype)
    ids = _topk_ids(g, t, k, e, r["routing"])
    tw = g.uniform((t, k), 0.05, 1.0)
    if meta.get("nan"):
        x = g.inject_nan(x)
        if bool(g.mask((1,), 0.5).item()):  # NaN weights too, also on skipped (-1) slots
            tw = g.inject_nan(tw, p=0.1)
    args = [x, w13, w2, tw, ids]
    bad = meta.get("invalid")
    if bad is not None:
        args, kw = _mutate(bad, args, kw, e)
    return Case("fused_moe", tuple(args), kw, meta, str(device))


def _mutate(bad: str, args: list, kw: dict, e: int):
    x, w13, w2, tw, ids = args
    kw = dict(kw)
    quant = kw["quant"]
    if bad == "int_x":
        x = x.to(torch.int32)
    elif bad == "x_1d":
        x = x.reshape(-1)
    elif bad == "w13_float64":
        w13 = w13.to(torch.float64)
    elif bad == "w2_extra_column":
        w2 = torch.cat([w2, w2[..., :1]], -1)
    elif bad == "w13_odd_rows":
        w13 = w13[:, :-1]
    elif bad == "ids_int64":
        ids = ids.to(torch.int64)
    elif bad == "weights_bf16":
        tw = tw.to(torch.bfloat16)
    elif bad == "id_out_of_range":
        ids = ids.clone()
        ids[0, 0] = e
    elif bad == "id_below_minus_one":
        ids = ids.clone()
        ids[0, -1] = -2
    elif bad == "ids_extra_column":
        ids = torch.cat([ids, ids[:, :1]], 1)
    elif bad == "weights_extra_row":
        tw = torch.cat([tw, tw[:1]], 0)
    elif bad == "k_zero":
        tw, ids = tw[:, :0], ids[:, :0]
    elif bad == "bad_quant":
        kw["quant"] = "int4"
    elif bad == "scale_mismatch":  # a scale for "none", none for the quantized modes
        if quant == "none":
            kw["w13_scale"] = torch.ones(1, device=x.device)
        else:
            kw["w2_scale"] = None
    elif bad == "scale_shape":
        if quant == "none":
            kw["w2_scale"] = torch.ones(1, device=x.device)
        else:
            s = kw["w13_scale"]
            kw["w13_scale"] = torch.cat([s, s[:, :1]], 1)
    elif bad == "arwi_with_k2":
        if ids.shape[1] == 1:
            ids = torch.cat([ids, torch.full_like(ids, -1)], 1)
            tw = torch.cat([tw, torch.zeros_like(tw)], 1)
        kw["apply_router_weight_on_input"] = True
    elif bad == "arwi_int":
        kw["apply_router_weight_on_input"] = 1
    elif bad == "negative_limit":
        kw["swiglu_limit"] = -1.0
    elif bad == "bad_layout":
        kw["layout"] = "split"
    elif bad == "bad_clamp_mode":
        kw["swiglu_clamp_mode"] = "both"
    elif bad == "block_shape_3":
        kw["block_shape"] = (128, 128, 1)
    else:
        raise ValueError(f"fused_moe: invalid: unknown mutation {bad!r}")
    return [x, w13, w2, tw, ids], kw


MUTATIONS = [
    "int_x",
    "x_1d",
    "w13_float64",
    "w2_extra_column",
    "w13_odd_rows",
    "ids_int64",
    "weights_bf16",
    "id_out_of_range",
    "id_below_minus_one",
    "ids_extra_column",
    "weights_extra_row",
    "k_zero",
    "bad_quant",
    "scale_mismatch",
    "scale_shape",
    "arwi_with_k2",
    "arwi_int",
    "negative_limit",
    "bad_layout",
    "bad_clamp_mode",
    "block_shape_3",
]


# --- the tolerance model --------------------------------------------------------------------------


def dequant_weights(case: Case, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(W13 [E, 2N, H], W2 [E, H, N]) as the values the weights encode, in `dtype` (exact in
    float64; the fp8 product code * scale is rounded in float32)."""
    _, w13, w2, _, _ = case.args
    o = case.kwargs
    quant = o.get("quant", "none")
    if quant == "none":
        return w13.to(dtype), w2.to(dtype)
    s13, s2 = o["w13_scale"], o["w2_scale"]
    if quant == "fp8_block":
        bs = tuple(o.get("block_shape", (128, 128)))

        def deq(q, s):
            return q.to(dtype) * _expand_blocks(s.to(dtype), bs, *q.shape[-2:])

        return deq(w13, s13), deq(w2, s2)
    # E2M1 value times a power of two: exact in float32
    return (
        ref.mxfp4_dequant(w13, s13, dtype=torch.float32).to(dtype),
        ref.mxfp4_dequant(w2, s2, dtype=torch.float32).to(dtype),
    )


def _halves(t: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = t.shape[-1] // 2
    if layout == "concat":
        return t[..., :n], t[..., n:]
    return t[..., 0::2], t[..., 1::2]


def _e4m3_flip(v: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Code steps (in units of the scale) an e4m3 rounding of v can move when v moves by up to
    `margin`: 0 away from every midpoint, else the step of v's binade per midpoint reachable."""
    a = v.abs().clamp(max=448.0)
    _, e = torch.frexp(torch.where(a > 0, a, torch.ones_like(a)))
    b = (e - 1).clamp(min=-6)  # binade of a (subnormals share the first one)
    step = torch.ldexp(torch.ones_like(a), (b - 3).to(torch.int32))
    lo = torch.floor(a / step) * step  # the grid point at or below a
    # midpoints around a: above lo, and below lo (a quarter step below a binade's first point)
    first = (lo == torch.ldexp(torch.ones_like(a), b.to(torch.int32))) & (b > -6)
    below = lo - torch.where(first, step / 4, step / 2)
    dist = torch.minimum((a - (lo + step / 2)).abs(), (a - below).abs())
    near = dist <= margin
    nsteps = 1 + torch.floor(margin / (step / 2))
    return torch.where(near, nsteps * step, torch.zeros_like(a))


def _model(case: Case, *, typical: bool = False) -> dict:
    """The float64 forward and its error bound per output element.

    typical=False: the worst-case bound (the per-element tolerance). typical=True: the typical
    error of what the emulation does not model (accumulation, scale rounding, code flips): no
    x.dtype roundings, errors of independent terms added in quadrature, and K float32 roundings
    of a running sum worth 2 u_acc sum|products| (a random walk), not K u_acc.
    """
    x, _, _, tw, tid = case.args
    o = case.kwargs
    dt = x.dtype
    f64 = torch.float64
    quant = o.get("quant", "none")
    bc = tuple(o.get("block_shape", (128, 128)))[1]
    t, h = x.shape
    k = tid.shape[1]
    arwi = o.get("apply_router_weight_on_input", False)
    opts = dict(
        limit=o.get("swiglu_limit"),
        alpha=o.get("swiglu_alpha", 1.0),
        beta=o.get("swiglu_beta", 0.0),
        layout=o.get("layout", "concat"),
        clamp_mode=o.get("swiglu_clamp_mode", "pre"),
    )
    W13, W2 = dequant_weights(case, f64)
    n = W2.shape[-1]
    R = 0.0 if typical else 1.0
    ux = eps_of(dt)

    def prop(err, wt):  # an error vector through a matrix: |W| @ err, typical: in quadrature
        if typical:
            return ((err * err) @ (wt * wt).T).sqrt()
        return err @ wt.abs().T

    def rnd(v):  # one rounding to x.dtype: 1 ulp (RNE gives half; a binade crossing doubles it)
        return R * ulp(v, dt)

    def acc(kk: int) -> float:  # worst-case float32 accumulation of kk products, per |product|
        if quant == "fp8_block":  # bc / 32 MMA steps per block, then float32 partial sums
            if typical:
                return 2 * _U_FP8_ACC + 2 * _U32
            return (bc / 32) * 2 * _U_FP8_ACC + 2 * _U32 * (kk // bc + 4)
        return 2 * _U32 * (1 if typical else kk)  # tensor-core adds may truncate: 1 ulp

    ids = tid.long()
    valid = ids >= 0
    w = torch.where(valid, tw.to(f64), 0.0)
    xin = x.to(f64)
    if arwi:
        xin = xin * w
        w = valid.to(f64)
    Y = torch.zeros(t, k, h, dtype=f64, device=x.device)
    DY = torch.zeros_like(Y)
    for i in torch.unique(ids[valid]).tolist():
        rows, slots = (ids == i).nonzero(as_tuple=True)
        up_w, dn_w = W13[i], W2[i]
        xr = xin[rows]
        if quant == "fp8_block":
            q, s = _fp8_quant_f32(xr.to(torch.float32), bc, "fp32", 1e-10)
            se = s.to(f64).repeat_interleave(bc, -1)
            xq = q.to(f64) * se
            # the kernel's scale may differ by its own rounding (2 u32) and, with the router
            # weight on the input, by the rounding of x * w to x.dtype (2 ux): every code's value
            # moves by that much, and codes within that (plus a reciprocal multiply) of a
            # midpoint may flip
            ds = 2 * _U32 + (2 * ux * R if arwi else 0.0)
            v = xr.to(torch.float32).to(f64) / se
            dxq = xq.abs() * ds + _e4m3_flip(v, (ds + 4 * _U32) * v.abs()) * se
            dh1_in = prop(dxq, up_w)
            xr = xq
        else:
            dh1_in = prop(rnd(xr), up_w) if arwi else 0.0
        h1 = xr @ up_w.T
        p1 = xr.abs() @ up_w.abs().T
        dh1 = rnd(h1) + acc(h) * p1 + dh1_in
        gate, upv = _halves(h1, opts["layout"])
        dg, du = _halves(dh1, opts["layout"])
        act = swiglu_math(h1, dtype=f64, **opts)
        mg, mu = gate.abs(), upv.abs() + abs(opts["beta"])
        # |d(g sigmoid(a g))/dg| <= 1.0998 for every a; clamps are 1-Lipschitz. Float32
        # evaluation: exp (2 + |a g| ulps) and a few roundings.
        dact = (
            rnd(act)
            + (8 + 2 * abs(opts["alpha"]) * mg) * _U32 * act.abs()
            + 1.1 * mu * dg
            + mg * du
            + 1.1 * dg * du
        )
        if quant == "fp8_block":
            a32 = act.to(torch.float32)
            q2, s2 = _fp8_quant_f32(a32, bc, "fp32", 1e-10)
            s2e = s2.to(f64).repeat_interleave(bc, -1)
            a = q2.to(f64) * s2e
            m = act.shape[0]
            groups = a32.to(f64).abs().reshape(m, n // bc, bc)
            amax, at = groups.max(-1)
            # typical: the emulation rounds act to x.dtype as the kernel does, but a kernel whose
            # sum differs from the emulation's by its accumulation error can round to the
            # neighbouring x.dtype value: one ulp of act moves the amax and the codes (in float16's
            # subnormal range, a tenth of a code step; worst case: rnd(act) is in dact already)
            dq = dact + ulp(act, dt) if typical else dact
            dgroups = dq.reshape(m, n // bc, bc)
            # the kernel's amax: down by at most the amax element's error, up by at most
            # max(|a| + dact) - amax; its scale moves by that and by its own rounding
            dmax = torch.maximum(
                dgroups.gather(-1, at.unsqueeze(-1)).squeeze(-1),
                (groups + dgroups).amax(-1) - amax,
            )
            ds2 = (dmax / amax.clamp_min(1e-300) + 2 * _U32).repeat_interleave(bc, -1)
            degenerate = ds2 > 2.0**-5  # scale not pinned down: bound by both magnitudes
            v2 = a32.to(f64) / s2e
            margin = dq / s2e + (ds2 + 4 * _U32) * v2.abs()
            steps = _e4m3_flip(v2, margin)
            e_a = a.abs() * ds2 + steps * s2e * (1 + ds2)
            loose = a.abs() + 1.07 * (act.abs() + dact) + s2e * 2.0**-9
            e_a = torch.where(degenerate, loose, e_a)
        else:
            a, e_a = act, dact
        y = a @ dn_w.T
        dy = prop(e_a, dn_w) + acc(n) * (a.abs() @ dn_w.abs().T)
        Y[rows, slots] = y
        DY[rows, slots] = dy
    wy = w.unsqueeze(-1) * Y
    sabs = wy.abs().sum(1)
    wd = w.abs().unsqueeze(-1) * DY
    if typical:
        # independent experts add in quadrature; slots of one token on the same expert compute
        # the same rows, so their errors add linearly (sum onto the expert's first slot)
        first = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(torch.int64).argmax(2)  # [T, k]
        wd = torch.zeros_like(wd).scatter_add_(1, first.unsqueeze(-1).expand_as(wd), wd)
    tol = (wd * wd).sum(1).sqrt() if typical else wd.sum(1)
    tol = tol + 2 * _U32 * sabs
    tol = tol + rnd(wy).sum(1) + (k - 1) * rnd(sabs)
    return {"y": wy.sum(1), "tol": tol}


def emulate_vllm(case: Case, *, fp8_gemm=None) -> torch.Tensor:
    """The vLLM Triton path in torch: float32 GEMMs, the first GEMM output, the SwiGLU output and
    each expert's weighted output rounded to x.dtype, the k-sum accumulated in x.dtype (moe_sum);
    fp8: activations quantized per group (float32 scales) from the x.dtype values.

    fp8_gemm(a_codes, a_scales, w_codes, w_scales, block_shape) -> float32 [M, N]: the block-FP8
    GEMM to use instead of the dequantized operands' float32 product (a hardware emulation:
    scripts/hopper_fp8_emul.py)."""
    x, w13, w2, tw, tid = case.args
    o = case.kwargs
    dt, f32 = x.dtype, torch.float32
    quant = o.get("quant", "none")
    bs = tuple(o.get("block_shape", (128, 128)))
    bc = bs[1]
    t, h = x.shape
    k = tid.shape[1]
    W13, W2 = dequant_weights(case, f32)
    ids = tid.long()
    valid = ids >= 0
    w = torch.where(valid, tw, 0.0)
    xin = x.to(f32)
    if o.get("apply_router_weight_on_input", False):
        xin = (xin * w).to(dt).to(f32)
        w = valid.to(f32)

    def gemm(a, i, W, q, scales):  # float32 a [M, K] (x.dtype values) times expert i's weights
        if quant != "fp8_block":
            return a @ W[i].T
        if fp8_gemm is None:
            return _fake_quant_fp8(a, bc, f32) @ W[i].T
        a_codes, a_scales = _fp8_quant_f32(a, bc, "fp32", 1e-10)
        return fp8_gemm(a_codes, a_scales, q[i], scales[i], bs)

    s13, s2 = o.get("w13_scale"), o.get("w2_scale")
    Y = torch.zeros(t, k, h, dtype=f32, device=x.device)
    for i in torch.unique(ids[valid]).tolist():
        rows, slots = (ids == i).nonzero(as_tuple=True)
        h1 = gemm(xin[rows], i, W13, w13, s13).to(dt).to(f32)
        act = swiglu_math(
            h1,
            limit=o.get("swiglu_limit"),
            alpha=o.get("swiglu_alpha", 1.0),
            beta=o.get("swiglu_beta", 0.0),
            layout=o.get("layout", "concat"),
            clamp_mode=o.get("swiglu_clamp_mode", "pre"),
            dtype=f32,
        ).to(dt)
        Y[rows, slots] = gemm(act.to(f32), i, W2, w2, s2)
    wy = (w.unsqueeze(-1) * Y).to(dt)
    out = wy[:, 0]
    for j in range(1, k):
        out = (out.to(f32) + wy[:, j].to(f32)).to(dt)
    return out


def _oracle(case: Case) -> torch.Tensor:
    c = case.clone()
    with ref.precision("float64", round_output=False):
        return ref.fused_moe(*c.args, **c.kwargs)


def _gate(case: Case, got: torch.Tensor, want: torch.Tensor) -> Verdict:
    x = case.args[0]
    g = got.to(torch.float64)
    if not bool(torch.isfinite(g).all()) or g.numel() == 0:
        return Verdict.passed()  # NaN/inf are judged elementwise
    err = float(torch.linalg.vector_norm(g - want))
    emul = float(torch.linalg.vector_norm(emulate_vllm(case).to(torch.float64) - want))
    floor = float(torch.linalg.vector_norm(ulp(want, x.dtype)))
    typ = float(torch.linalg.vector_norm(_model(case, typical=True)["tol"]))
    allow = GATE_FACTOR * emul + floor + typ
    ratio = err / allow if allow > 0 else (0.0 if err == 0 else float("inf"))
    if err <= allow:
        return Verdict(True, "", ratio)
    scale = float(torch.linalg.vector_norm(want)) or 1.0
    return Verdict(
        False,
        f"out: aggregate error {err / scale:.3g} (relative Frobenius) exceeds {GATE_FACTOR:g}x the "
        f"vLLM-path emulation's {emul / scale:.3g} + ulp floor {floor / scale:.3g} + typical "
        f"accumulation {typ / scale:.3g}",
        ratio,
    )


def _zero_rows(case: Case, out: torch.Tensor) -> Verdict:
    empty = ~(case.args[4] >= 0).any(-1)
    bad = empty & (out != 0).any(-1)
    if not bool(bad.any()):
        return Verdict.passed()
    rows = bad.nonzero().view(-1)[:5].tolist()
    return Verdict(
        False,
        f"out: {int(bad.sum())} rows of tokens whose experts are all -1 are not zero, e.g. {rows}",
        float("inf"),
    )


def compare(case: Case, outs: tuple) -> Verdict:
    x = case.args[0]
    if len(outs) != 1:
        return Verdict(False, f"expected one output, got {len(outs)}")
    out = outs[0]
    v = check_meta("out", out, torch.empty(x.shape, dtype=x.dtype, device=x.device))
    if not v:
        return v
    v = _zero_rows(case, out)
    if not v:
        return v
    want = _oracle(case)
    v = close("out", out, want, _model(case)["tol"])
    if not v:
        return v
    g = _gate(case, out, want)
    return g if not g else Verdict(True, "", max(v.ratio, g.ratio))


def compare_pair(case: Case, a: tuple, b: tuple) -> Verdict:
    """A relation's result (a) against the base call (b): each within the tolerance of the
    oracle, so within twice the tolerance of each other (bitwise is not required)."""
    x = case.args[0]
    if len(a) != 1 or len(b) != 1:
        return Verdict(False, f"expected one output, got {len(a)} and {len(b)}")
    v = check_meta("out", a[0], torch.empty(x.shape, dtype=x.dtype, device=x.device))
    if not v:
        return v
    tol = _model(case)["tol"]
    return close("out (relation vs base)", a[0], b[0].to(torch.float64), 2 * tol)


def _expert_relabel(case: Case, rng):
    """Permute the experts (w13, w2 and their scales) and map the ids; the output is the same."""
    x, w13, w2, tw, ids = case.args
    e = w13.shape[0]
    if x.shape[0] == 0 or e < 2:
        return None
    perm = list(range(e))
    rng.shuffle(perm)
    p = torch.tensor(perm, dtype=torch.long, device=w13.device)  # new expert i is old p[i]
    inv = torch.argsort(p)
    new_ids = torch.where(ids >= 0, inv[ids.long().clamp(min=0)], -1).to(ids.dtype)
    kw = dict(case.kwargs)
    for name in ("w13_scale", "w2_scale"):
        if kw.get(name) is not None:
            kw[name] = kw[name][p].contiguous()
    args = (x, w13[p].contiguous(), w2[p].contiguous(), tw, new_ids)
    new = Case(case.op, args, kw, {**case.meta, "relabel": perm}, case.device)
    return [new], lambda results: results[0]


def bench(T: int) -> dict:
    """One expert-parallel rank (32 of 256 experts, top-8) at the DeepSeek-V3/V4 sizes, fp8
    128 x 128 blocks."""
    return {
        "T": T,
        "dtype": "bfloat16",
        "x_regime": "normal",
        "dims": {"quant": "fp8_block", "block_shape": [128, 128], "H": S.BENCH_H, "N": S.BENCH_N},
        "route": {"E": 32, "k": S.BENCH_K, "routing": "uniform", "arwi": False},
        "options": {
            "swiglu_limit": 10.0,
            "swiglu_alpha": 1.0,
            "swiglu_beta": 0.0,
            "layout": "concat",
            "swiglu_clamp_mode": "pre",
        },
    }


SPEC = add_spec(
    OpSpec(
        name="fused_moe",
        reference=ref.fused_moe,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        compare_pair=compare_pair,
        relations=(
            Relation("token_permutation", S.permute_tokens(args=(0, 3, 4)), exact=False),
            Relation("batch_split", S.split_tokens(args=(0, 3, 4)), exact=False),
            Relation("expert_relabel", _expert_relabel, exact=False),
        ),
        bench=bench,
    )
)
