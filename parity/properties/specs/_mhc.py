"""Helpers shared by the hyper-connection specs (sinkhorn, mhc_pre, mhc_post,
mhc_fused_post_pre, mhc_head): error bounds, case generators, mutation tables.

Every output is compared with the float64 oracle (`precision("float64", round_output=False)`)
under an error bound of a float32 implementation, derived operation by operation (running error
analysis, first order in u = 2**-24; `gamma(n) = n u / (1 - n u)` for an n-term sum or dot
product in ANY order, so split-k, tiles and tensor-core accumulation trees are all covered):

- rounding to an output dtype: a float32 value within `d` of the exact value `y` rounds to
  within `0.5 ulp(|y| + d) + d` of it (`round_tol`).
- mhc_post: hc + 1 products summed: `gamma(hc+1) * (|x post_j| + sum_i |comb_ij r_i|)`.
- mhc_pre / mhc_head: the fn GEMM over K = hc*H: `gamma(K+1) * rsqrt(ms) * sum_k |r_k fn_mk|`
  (the +1 covers a kernel that normalizes r before the GEMM, as mhc_head's formula reads), the
  mean square `gamma(K) + 2u` relative, halved by the rsqrt (+4u: rsqrtf is within 2 ulp);
  then `scale * mix + base`; sigmoid with derivative <= 1/4 plus its own `(7 + 3|x|) u`
  relative error (CUDA `__expf` is within 2 + 1.173|x| ulp); layer_input / out:
  `sum_i d_pre_i |r_i| + gamma(hc) sum_i pre_i |r_i|`, then the rounding to residual.dtype.
- sinkhorn: linearized (first-order) propagation by a hand-written reverse pass over the float64
  iteration, vectorized over all n*n outputs (`sinkhorn_tol`): every exp carries
  `(4 + 3(|x| + |max|)) u` (safe, unsafe and exp2-based softmax, fast exp), every positive sum
  of m terms (+eps) `m u`, every division `2u` (a multiply by the reciprocal, as the TileLang
  kernel does), every +eps `u`. The Jacobian sees that a rounding error early in the iteration
  is mostly normalized away later, which a worst-case bound (doubling per step) cannot. An
  error `dl` on the logits (mhc_pre's mixes) enters through the same Jacobian, doubled to cover
  the linearization remainder.

TF32 / bf16 GEMMs. The contract computes the fn GEMM in float32 (FMA). A TF32 GEMM rounds fn
(and float32 r) to 11 significant bits: about 2**-12 relative per product, random in sign, so
its error on a mix is about 2**-12 * sqrt(K) * |r fn|, while the worst-case float32 bound is
K u * K |r fn|: for K >= ~2**8 the sound bound is above the TF32 error and cannot reject it.
So the strategies keep small K (H in {1, 7}, hc in {1..4}) at every T (a TF32 path chosen for
large T is still met), and mhc_pre has an `exact_gemm` regime: r = small integers / 8, fn on a
2**-12-relative grid with at most 256 nonzeros per row, so that every partial sum of every
dot-first float32 accumulation order is exact (fewer than 2**24 grid steps). There the GEMM
term of the tolerance is 0 (the contract's formula order, `(r @ fn.T) * rsqrt(...)`): a TF32 or
bf16-input GEMM is caught at any K, while the bf16 hi+lo split of fn (TileLang's tensor-core
path) stays exact. mhc_head's formula normalizes first (no exact grid), so it relies on small K.

Relations: mhc_post and sinkhorn are elementwise per token (one matrix per thread), so
token_permutation and batch_split are bitwise for them. mhc_pre, mhc_fused_post_pre and mhc_head
contain a GEMM: a GEMM library picks its micro-kernel by a row's position in the tile (the
reference's CPU sgemm does: a permuted row can round differently), and a change of T may select
another kernel (vLLM's fused post+pre only below a T threshold, split-k counts chosen from T), so
both relations are inexact there: the outputs re-assembled from the derived calls must pass the
same tolerance model as one call. sinkhorn's stream_permutation (rows and columns of every
matrix permuted alike) reorders the row and column sums, so it is inexact too.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of, ulp
from parity.properties.tolerance import Verdict, check_meta, combine

U = 2.0**-24  # float32 unit roundoff
F64 = torch.float64

PRE_DEFAULTS = dict(rms_eps=1e-6, pre_eps=1e-6, sinkhorn_eps=1e-6, post_mult=1.0, sinkhorn_iters=20)


def gamma_n(n: int) -> float:
    """Bound of the relative error of an n-term float32 sum of positive terms (any order)."""
    return n * U / (1 - n * U)


def round_tol(want: torch.Tensor, d, dtype: torch.dtype) -> torch.Tensor:
    """A float32 value within `d` of `want`, rounded once to `dtype`: within this of `want`."""
    d = torch.as_tensor(d, dtype=F64, device=want.device)
    return 0.5 * ulp(want.abs() + d, dtype) + d


def sinkhorn_tol(logits: torch.Tensor, dl: torch.Tensor | None, iters: int, eps: float):
    """First-order bound of |sinkhorn32(logits) - sinkhorn(logits)| per output element.

    A hand-written reverse pass of the float64 iteration with the adjoints of all n*n outputs
    at once (`[n*n, B, n, n]`): each rounding point contributes |d out / d theta| * its bound,
    theta being the relative error of that intermediate. `dl`: an absolute error bound on the
    logits themselves (doubled: the remainder of the linearization).
    """
    shape = logits.shape
    n = shape[-1]
    L = logits.to(F64).reshape(-1, n, n)
    b = L.shape[0]
    if b == 0:
        return torch.zeros(shape, dtype=F64, device=logits.device)
    dlf = None if dl is None else dl.to(F64).reshape(-1, n, n)
    out = []
    for lo in range(0, b, 2048):  # the adjoints are n*n times the batch: bounded memory
        sl = slice(lo, min(b, lo + 2048))
        out.append(sinkhorn_tol_chunk(L[sl], None if dlf is None else dlf[sl], iters, eps))
    return torch.cat(out, 0).reshape(shape)


def sinkhorn_tol_chunk(L, dl, iters, eps):
    b, n, _ = L.shape
    m = L.amax(-1, keepdim=True)
    e = torch.exp(L - m)
    s = e.sum(-1, keepdim=True)
    p0 = e / s
    p = p0 + eps
    p1 = p
    steps = []  # (dim, divisor, quotient) of every normalization
    for dim in [-2] + [-1, -2] * (iters - 1):
        c = p.sum(dim, keepdim=True) + eps
        p = p / c
        steps.append((dim - 1, c.unsqueeze(-1), p.unsqueeze(-1)))
    # Adjoints d out_k / d (intermediate) for all k at once, laid out [B, n, n, k]: the k index
    # last keeps every reduction over (i, j) contiguous.
    k = n * n
    A = torch.eye(k, dtype=F64, device=L.device).view(1, n, n, k).expand(b, n, n, k)
    acc = torch.zeros(b, k, dtype=F64, device=L.device)

    def tot(t):
        return t.abs().sum((1, 2))

    for dim, c, q in reversed(steps):
        aq = A * q
        sq = aq.sum(dim, keepdim=True)  # = -(d out / d c) * c
        acc += 2 * U * tot(aq) + n * U * tot(sq)  # the division; the n-term sum and its + eps
        A = (A - sq) / c
    acc += U * tot(A * p1.unsqueeze(-1))  # + eps after the softmax
    ap = A * p0.unsqueeze(-1)
    sp = ap.sum(-2, keepdim=True)
    acc += 2 * U * tot(ap) + (n - 1) * U * tot(sp)  # the softmax division and its sum
    A = (A - sp) / s.unsqueeze(-1)
    ae = A * e.unsqueeze(-1)  # d out / d logits (the max shift cancels exactly)
    acc += tot(ae * ((4 + 3 * (L.abs() + m.abs())) * U).unsqueeze(-1))
    if dl is not None:
        acc += 2 * tot(ae * dl.unsqueeze(-1))
    return acc.reshape(b, n, n)


def sigmoid_err(x: torch.Tensor, dx: torch.Tensor):
    """(sigmoid(x), bound of |sigmoid32(x~) - sigmoid(x)|) for |x~ - x| <= dx."""
    sg = torch.sigmoid(x)
    return sg, dx / 4 + (7 + 3 * x.abs()) * U * sg


def rms_gemm(r: torch.Tensor, fn: torch.Tensor, rms_eps: float, dr, exact_dot: bool):
    """raw = (r @ fn.T) * rsqrt(mean(r**2) + eps) and its float32 error bound, `r [T, K]`."""
    k = r.shape[1]
    f = fn.to(F64)
    den = r.square().mean(-1, keepdim=True) + rms_eps
    rs = den.rsqrt()
    raw = (r @ f.T) * rs
    g = 0.0 if exact_dot else gamma_n(k + 1)
    ddot = g * (r.abs() @ f.abs().T)
    rel_den = (0.0 if exact_dot else gamma_n(k)) + 2 * U  # sum of squares; / K and + eps
    if dr is not None:  # an error on r itself (the float32 new_residual of the fused op)
        ddot = ddot + dr @ f.abs().T
        rel_den = rel_den + 2 * (r.abs() * dr).sum(-1, keepdim=True) / k / den
    rel_rs = rel_den / 2 + 4 * U  # rsqrt halves the relative error; rsqrtf within 2 ulp
    draw = rs * ddot + raw.abs() * (rel_rs + U)
    return raw, draw


def pre_tol(r3, fn, hc_scale, hc_base, kw, *, dr=None, exact_dot=False):
    """Float32 error bounds of mhc_pre on the exact streams `r3` (float64): (post_mix [T,hc,1],
    comb_res_mix [T,hc,hc], layer_input [T,H] before its rounding). `dr`: an error bound on r3."""
    o = {**PRE_DEFAULTS, **kw}
    t, hc, h = r3.shape
    r3 = r3.to(F64)
    drf = None if dr is None else dr.to(F64).reshape(t, hc * h)
    raw, draw = rms_gemm(r3.reshape(t, hc * h), fn, float(o["rms_eps"]), drf, exact_dot)
    s = hc_scale.to(F64)
    scale = torch.cat([s[0].expand(hc), s[1].expand(hc), s[2].expand(hc * hc)])
    sr = raw * scale
    mix = sr + hc_base.to(F64)
    dmix = scale.abs() * draw + U * (sr.abs() + mix.abs())
    sp, dsp = sigmoid_err(mix[:, :hc], dmix[:, :hc])
    pre = sp + o["pre_eps"]
    dpre = dsp + U * pre
    sq, dsq = sigmoid_err(mix[:, hc : 2 * hc], dmix[:, hc : 2 * hc])
    pm = abs(float(o["post_mult"]))
    dpost = (pm * dsq + U * pm * sq).unsqueeze(-1)
    comb_l = mix[:, 2 * hc :].reshape(t, hc, hc)
    dcomb = sinkhorn_tol(
        comb_l,
        dmix[:, 2 * hc :].reshape(t, hc, hc),
        int(o["sinkhorn_iters"]),
        float(o["sinkhorn_eps"]),
    )
    ra = r3.abs()
    dli = (dpre.unsqueeze(-1) * ra).sum(1) + gamma_n(hc) * (pre.unsqueeze(-1) * ra).sum(1)
    if dr is not None:
        dli = dli + (pre.unsqueeze(-1) * dr.to(F64)).sum(1)
    return dpost, dcomb, dli


def post_err(x, residual, post_mix, comb):
    """Float32 error bound of mhc_post before its rounding: gamma(hc+1) * sum of |terms|."""
    t, hc, _ = residual.shape
    pm = post_mix.to(F64).reshape(t, hc, 1).abs()
    terms = x.to(F64).abs().unsqueeze(1) * pm
    terms = terms + torch.einsum("tij,tih->tjh", comb.to(F64).abs(), residual.to(F64).abs())
    return gamma_n(hc + 1) * terms


def n_outputs(outs, n: int, names: str) -> Verdict | None:
    if len(outs) != n:
        return Verdict(False, f"expected {n} outputs ({names}), got {len(outs)}")
    return None


def empty_like_spec(shape, dtype, device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def check_metas(names, outs, wants, dtypes) -> Verdict:
    return combine(
        check_meta(n, o, empty_like_spec(w.shape, d, w.device))
        for n, o, w, d in zip(names, outs, wants, dtypes)
    )


def pair(compare):
    """Inexact relations: the re-assembled outputs must pass the op's tolerance model."""

    def compare_pair(case: Case, derived: tuple, base: tuple) -> Verdict:
        v = compare(case, derived)
        if v:
            return v
        return Verdict(False, "re-assembled outputs: " + v.message, v.ratio, v.worst)

    return compare_pair


TOKENS_SMALL = [0, 1, 2, 3, 5, 7, 16, 17, 31, 33, 40]
TOKENS_FULL = [63, 64, 65, 127, 128, 129, 255, 256, 257, 1024, 4096, 8191, 8192]


def stream_tokens(size: str):
    return S.sizes(small=TOKENS_SMALL, full=TOKENS_FULL, size=size)


def hidden(size: str):
    # 1 and 7 keep K = hc*H small: there a TF32 GEMM is outside the float32 bound.
    return S.sizes(small=[1, 7, 32, 64, 128, 129], full=S.around(4096, 7168), size=size, lo=1)


def pick_from(draw, values):
    return draw(st.sampled_from(values))


def pre_options(draw) -> dict:
    return {
        "rms_eps": pick_from(draw, [1e-6, 1e-4, 0.1]),
        "pre_eps": pick_from(draw, [1e-6, 0.0, 0.01]),
        "sinkhorn_eps": pick_from(draw, [1e-6, 1e-3, 0.1]),
        "post_mult": pick_from(draw, [2.0, 1.0]),
        "sinkhorn_iters": pick_from(draw, [20, 1, 2, 3, 7]),
    }


PRE_REGIMES = ["normal", "wide", "near_zero", "one_hot", "large_mix", "exact_gemm"]
POST_REGIMES = ["normal", "wide", "near_zero", "one_hot", "free"]
FUSED_REGIMES = ["normal", "wide", "near_zero", "one_hot", "large_mix"]
HEAD_REGIMES = ["normal", "wide", "near_zero", "one_hot"]


@st.composite
def stream_meta(draw, op: str, size: str, dtypes) -> dict:
    meta = {
        "T": draw(stream_tokens(size)),
        "H": draw(hidden(size)),
        "hc": pick_from(draw, [4, 4, 4, 1, 2, 3]),
        "dtype": draw(S.float_dtypes(dtypes)),
    }
    if op in ("post", "fused"):
        meta["x_dtype"] = pick_from(draw, ["same", "same", "bfloat16", "float32"])
        meta["post_shape"] = pick_from(draw, ["3d", "2d"])
    if op in ("pre", "fused"):
        meta["options"] = pre_options(draw)
    if op == "head":
        meta["options"] = {
            "rms_eps": pick_from(draw, [1e-6, 1e-4, 0.1]),
            "hc_eps": pick_from(draw, [1e-6, 0.0, 0.1]),
        }
    regimes = {"pre": PRE_REGIMES, "post": POST_REGIMES, "fused": FUSED_REGIMES}
    meta["regime"] = pick_from(draw, regimes.get(op, HEAD_REGIMES))
    meta["seed"] = draw(S.seeds())
    return meta


def stream_values(g: Gen, shape, regime: str, dtype) -> torch.Tensor:
    """Residual streams `[T, hc, H]` in a value regime."""
    t, hc, _ = shape
    if regime == "wide":  # 24 binades within a token, finite in float16 after mixing
        e = g.uniform(shape, -12.0, 12.0)
        r = torch.where(g.mask(shape, 0.5), -1.0, 1.0) * g.host(torch.exp2, e)
    elif regime == "near_zero":  # mean(r**2) ~ 1e-6 ~ rms_eps; every third token all zero
        r = g.normal(shape, std=1e-3)
        r[::3] = 0.0
    elif regime == "one_hot":  # one live stream per token
        keep = g.integers((t, 1, 1), 0, hc)
        r = g.normal(shape) * (torch.arange(hc, device=g.device).view(1, hc, 1) == keep)
    elif regime == "exact_gemm":  # small integers / 8: exact in every dtype
        r = g.integers(shape, -8, 9).to(torch.float32) / 8
    else:
        r = g.normal(shape)
    return r.to(dtype)


def pre_weights(g: Gen, hc: int, h: int, regime: str, n_mix: int):
    """(fn [n_mix, hc*H], hc_scale [3], hc_base [n_mix]) float32, mixes of order one."""
    k = hc * h
    if regime == "exact_gemm":
        # 12 significant bits, at most 256 nonzeros per row: |partial sums| < 2**23 grid steps.
        nnz = min(k, 256)
        # on the CPU for a small case: ties in the draw (likely at k in the thousands) order as
        # the CPU's sort orders them, a CUDA sort may not
        pos = g.host(lambda u: u.argsort(-1), g.uniform((n_mix, k)))[:, :nnz]
        vals = g.integers((n_mix, nnz), -4095, 4096).to(torch.float32)
        step = 2.0 ** (-12 - math.ceil(math.log2(math.sqrt(nnz))))
        fn = torch.zeros(n_mix, k, device=g.device).scatter_(1, pos, vals * step)
    else:
        fn = g.normal((n_mix, k), std=k**-0.5)
    hc_scale = g.uniform((3,), 0.5, 1.5)
    if regime == "large_mix":  # sigmoids and the Sinkhorn softmax saturate
        hc_scale = hc_scale * 8
    hc_base = g.normal((n_mix,), std=0.5)
    return fn, hc_scale, hc_base


def post_mixes(g: Gen, t: int, hc: int, regime: str, shape: str):
    """(post_mix [T, hc, 1] or [T, hc], comb_res_mix [T, hc, hc]) float32, comb non-symmetric."""
    if regime == "free":  # any real weights: the op is defined for them too
        post = g.normal((t, hc, 1))
        comb = g.normal((t, hc, hc))
    else:
        post = g.host(torch.sigmoid, g.normal((t, hc, 1))) * 2.0
        if regime == "one_hot":
            # old stream i -> new stream (i + 1) % hc (hc = 2: both -> 1): never symmetric
            j = (
                (torch.arange(hc, device=g.device) + 1) % hc
                if hc > 2
                else torch.full((hc,), hc - 1)
            )
            one = torch.zeros(hc, hc, device=g.device)
            one[torch.arange(hc), j.to(g.device)] = 1.0
            comb = one.expand(t, hc, hc).contiguous()
        else:
            # on the CPU for a small case (exp and sums: the device's last bits differ)
            comb = g.host(lambda lg: ref.sinkhorn(lg, iters=20), g.normal((t, hc, hc), std=2.0))
    if shape == "2d":
        post = post.reshape(t, hc)
    return post.contiguous(), comb


def case_dtypes(meta):
    dtype = dtype_of(meta["dtype"])
    xd = meta.get("x_dtype", "same")
    return dtype, (dtype if xd == "same" else dtype_of(xd))


def post_inputs(g: Gen, meta: dict):
    """(x, residual, post_mix, comb_res_mix) of an mhc_post-shaped case, drawn from `g` in
    this order (mhc_post and mhc_fused_post_pre share it)."""
    dtype, xdt = case_dtypes(meta)
    t, h, hc = meta["T"], meta["H"], meta["hc"]
    regime = meta["regime"]
    residual = stream_values(g, (t, hc, h), regime, dtype)
    x = stream_values(g, (t, 1, h), "wide" if regime == "wide" else "normal", xdt).reshape(t, h)
    post, comb = post_mixes(g, t, hc, regime, meta["post_shape"])
    return x, residual, post, comb


def apply_mutation(name, args: list, kw: dict, table: dict) -> None:
    if name is not None:
        table[name](args, kw)


def set_arg(i, f):
    def m(args, kw):
        args[i] = f(args[i])

    return m


def set_option(key, value):
    def m(args, kw):
        kw[key] = value

    return m


def extra_col(t):
    return torch.cat([t, t[..., :1]], -1)


def extra_row(t):
    return torch.cat([t, t[:1]], 0)


PRE_OPTION_MUTATIONS = {
    "rms_eps_zero": set_option("rms_eps", 0.0),
    "pre_eps_negative": set_option("pre_eps", -1e-3),
    "sinkhorn_eps_zero": set_option("sinkhorn_eps", 0.0),
    "post_mult_inf": set_option("post_mult", math.inf),
    "post_mult_nan": set_option("post_mult", math.nan),
    "iters_zero": set_option("sinkhorn_iters", 0),
    "iters_float": set_option("sinkhorn_iters", 20.0),
}


def pre_weight_mutations(o: int) -> dict:
    """Mutations of (residual, fn, hc_scale, hc_base) at args offset `o`."""
    return {
        "residual_2d": set_arg(o, lambda r: r.reshape(r.shape[0], -1)),
        "residual_int": set_arg(o, lambda r: r.to(torch.int32)),
        "residual_float64": set_arg(o, lambda r: r.to(torch.float64)),
        "fn_extra_row": set_arg(o + 1, extra_row),
        "fn_extra_col": set_arg(o + 1, extra_col),
        "fn_bfloat16": set_arg(o + 1, lambda f: f.to(torch.bfloat16)),
        "hc_scale_len": set_arg(o + 2, lambda s: s[:2].contiguous()),
        "hc_base_len": set_arg(o + 3, extra_row),
        "hc_base_float16": set_arg(o + 3, lambda b: b.to(torch.float16)),
    }


POST_ONLY_MUTATIONS = {
    "x_wrong_H": set_arg(0, extra_col),
    "x_int": set_arg(0, lambda x: x.to(torch.int32)),
    "residual_2d": set_arg(1, lambda r: r.reshape(r.shape[0], -1)),
    "residual_float64": set_arg(1, lambda r: r.to(torch.float64)),
    "post_mix_extra_stream": set_arg(2, lambda p: torch.cat([p, p[:, :1]], 1)),
    "post_mix_bfloat16": set_arg(2, lambda p: p.to(torch.bfloat16)),
    "post_mix_1d": set_arg(2, lambda p: p.reshape(-1)),
    "comb_not_square": set_arg(3, extra_col),
    "comb_bfloat16": set_arg(3, lambda c: c.to(torch.bfloat16)),
    "comb_extra_token": set_arg(3, extra_row),
}
