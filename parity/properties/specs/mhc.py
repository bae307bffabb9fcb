"""OpSpecs of the hyper-connection ops: sinkhorn, mhc_pre, mhc_post, mhc_fused_post_pre, mhc_head.

Every output is compared with the float64 oracle (`precision("float64", round_output=False)`)
under an error bound of a float32 implementation, derived operation by operation (running error
analysis, first order in u = 2**-24; `gamma(n) = n u / (1 - n u)` for an n-term sum or dot
product in ANY order, so split-k, tiles and tensor-core accumulation trees are all covered):

- rounding to an output dtype: a float32 value within `d` of the exact value `y` rounds to
  within `0.5 ulp(|y| + d) + d` of it (`_round_tol`).
- mhc_post: hc + 1 products summed: `gamma(hc+1) * (|x post_j| + sum_i |comb_ij r_i|)`.
- mhc_pre / mhc_head: the fn GEMM over K = hc*H: `gamma(K+1) * rsqrt(ms) * sum_k |r_k fn_mk|`
  (the +1 covers a kernel that normalizes r before the GEMM, as mhc_head's formula reads), the
  mean square `gamma(K) + 2u` relative, halved by the rsqrt (+4u: rsqrtf is within 2 ulp);
  then `scale * mix + base`; sigmoid with derivative <= 1/4 plus its own `(7 + 3|x|) u`
  relative error (CUDA `__expf` is within 2 + 1.173|x| ulp); layer_input / out:
  `sum_i d_pre_i |r_i| + gamma(hc) sum_i pre_i |r_i|`, then the rounding to residual.dtype.
- sinkhorn: linearized (first-order) propagation by a hand-written reverse pass over the float64
  iteration, vectorized over all n*n outputs (`_sinkhorn_tol`): every exp carries
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
from parity.properties.tolerance import Verdict, check_meta, close, combine
from parity.reference.mhc import mhc_fused_post_pre_f32
from parity.registry import OpSpec, Relation, add_spec

U = 2.0**-24  # float32 unit roundoff
F64 = torch.float64

TOL_SINKHORN = (
    "first-order rounding-error bound of a float32 Sinkhorn through its float64 Jacobian: "
    "exp (4+3(|x|+|max|))u, sums m u, divisions 2u, +eps u"
)
TOL_PRE = (
    "float32 error bounds: fn GEMM gamma(hc*H+1) rsqrt(ms) sum|r||fn| (0 in the exact_gemm "
    "regime), rsqrt, sigmoid (<=1/4 slope + (7+3|x|)u), sinkhorn via its Jacobian, layer_input "
    "gamma(hc) sum pre|r| + 1/2 ulp(residual.dtype)"
)
TOL_POST = "gamma(hc+1) (|x post_j| + sum_i |comb_ij r_i|) + 1/2 ulp(residual.dtype) rounding"
TOL_FUSED = (
    "new_residual as mhc_post; per token the pre outputs within the mhc_pre bounds of either the "
    "chain on the returned (rounded) new_residual or the float32 one (input error propagated)"
)
TOL_HEAD = (
    "float32 error bounds: fn GEMM gamma(hc*H+1) rsqrt(ms) sum|r||fn|, sigmoid, "
    "gamma(hc) sum pre|r| + 1/2 ulp(residual.dtype)"
)

PRE_DEFAULTS = dict(rms_eps=1e-6, pre_eps=1e-6, sinkhorn_eps=1e-6, post_mult=1.0, sinkhorn_iters=20)


def _gamma(n: int) -> float:
    """Bound of the relative error of an n-term float32 sum of positive terms (any order)."""
    return n * U / (1 - n * U)


def _round_tol(want: torch.Tensor, d, dtype: torch.dtype) -> torch.Tensor:
    """A float32 value within `d` of `want`, rounded once to `dtype`: within this of `want`."""
    d = torch.as_tensor(d, dtype=F64, device=want.device)
    return 0.5 * ulp(want.abs() + d, dtype) + d


# --- error models (all in float64, on the exact inputs) ---------------------------------------


def _sinkhorn_tol(logits: torch.Tensor, dl: torch.Tensor | None, iters: int, eps: float):
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
        out.append(_sinkhorn_tol_chunk(L[sl], None if dlf is None else dlf[sl], iters, eps))
    return torch.cat(out, 0).reshape(shape)


def _sinkhorn_tol_chunk(L, dl, iters, eps):
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


def _sigmoid_err(x: torch.Tensor, dx: torch.Tensor):
    """(sigmoid(x), bound of |sigmoid32(x~) - sigmoid(x)|) for |x~ - x| <= dx."""
    sg = torch.sigmoid(x)
    return sg, dx / 4 + (7 + 3 * x.abs()) * U * sg


def _rms_gemm(r: torch.Tensor, fn: torch.Tensor, rms_eps: float, dr, exact_dot: bool):
    """raw = (r @ fn.T) * rsqrt(mean(r**2) + eps) and its float32 error bound, `r [T, K]`."""
    k = r.shape[1]
    f = fn.to(F64)
    den = r.square().mean(-1, keepdim=True) + rms_eps
    rs = den.rsqrt()
    raw = (r @ f.T) * rs
    g = 0.0 if exact_dot else _gamma(k + 1)
    ddot = g * (r.abs() @ f.abs().T)
    rel_den = (0.0 if exact_dot else _gamma(k)) + 2 * U  # sum of squares; / K and + eps
    if dr is not None:  # an error on r itself (the float32 new_residual of the fused op)
        ddot = ddot + dr @ f.abs().T
        rel_den = rel_den + 2 * (r.abs() * dr).sum(-1, keepdim=True) / k / den
    rel_rs = rel_den / 2 + 4 * U  # rsqrt halves the relative error; rsqrtf within 2 ulp
    draw = rs * ddot + raw.abs() * (rel_rs + U)
    return raw, draw


def _pre_tol(r3, fn, hc_scale, hc_base, kw, *, dr=None, exact_dot=False):
    """Float32 error bounds of mhc_pre on the exact streams `r3` (float64): (post_mix [T,hc,1],
    comb_res_mix [T,hc,hc], layer_input [T,H] before its rounding). `dr`: an error bound on r3."""
    o = {**PRE_DEFAULTS, **kw}
    t, hc, h = r3.shape
    r3 = r3.to(F64)
    drf = None if dr is None else dr.to(F64).reshape(t, hc * h)
    raw, draw = _rms_gemm(r3.reshape(t, hc * h), fn, float(o["rms_eps"]), drf, exact_dot)
    s = hc_scale.to(F64)
    scale = torch.cat([s[0].expand(hc), s[1].expand(hc), s[2].expand(hc * hc)])
    sr = raw * scale
    mix = sr + hc_base.to(F64)
    dmix = scale.abs() * draw + U * (sr.abs() + mix.abs())
    sp, dsp = _sigmoid_err(mix[:, :hc], dmix[:, :hc])
    pre = sp + o["pre_eps"]
    dpre = dsp + U * pre
    sq, dsq = _sigmoid_err(mix[:, hc : 2 * hc], dmix[:, hc : 2 * hc])
    pm = abs(float(o["post_mult"]))
    dpost = (pm * dsq + U * pm * sq).unsqueeze(-1)
    comb_l = mix[:, 2 * hc :].reshape(t, hc, hc)
    dcomb = _sinkhorn_tol(
        comb_l,
        dmix[:, 2 * hc :].reshape(t, hc, hc),
        int(o["sinkhorn_iters"]),
        float(o["sinkhorn_eps"]),
    )
    ra = r3.abs()
    dli = (dpre.unsqueeze(-1) * ra).sum(1) + _gamma(hc) * (pre.unsqueeze(-1) * ra).sum(1)
    if dr is not None:
        dli = dli + (pre.unsqueeze(-1) * dr.to(F64)).sum(1)
    return dpost, dcomb, dli


def _post_err(x, residual, post_mix, comb):
    """Float32 error bound of mhc_post before its rounding: gamma(hc+1) * sum of |terms|."""
    t, hc, _ = residual.shape
    pm = post_mix.to(F64).reshape(t, hc, 1).abs()
    terms = x.to(F64).abs().unsqueeze(1) * pm
    terms = terms + torch.einsum("tij,tih->tjh", comb.to(F64).abs(), residual.to(F64).abs())
    return _gamma(hc + 1) * terms


def _head_tol(r3, fn, hc_scale, hc_base, kw):
    """Float32 error bound of mhc_head's out [T, H] before its rounding."""
    t, hc, h = r3.shape
    r3 = r3.to(F64)
    raw, draw = _rms_gemm(r3.reshape(t, hc * h), fn, float(kw.get("rms_eps", 1e-6)), None, False)
    hs = hc_scale.to(F64)
    sr = raw * hs
    z = sr + hc_base.to(F64)
    dz = hs.abs() * draw + U * (sr.abs() + z.abs())
    sg, dsg = _sigmoid_err(z, dz)
    pre = sg + kw.get("hc_eps", 1e-6)
    dpre = dsg + U * pre
    ra = r3.abs()
    return (dpre.unsqueeze(-1) * ra).sum(1) + _gamma(hc) * (pre.unsqueeze(-1) * ra).sum(1)


# --- comparisons ------------------------------------------------------------------------------


def _n_outputs(outs, n: int, names: str) -> Verdict | None:
    if len(outs) != n:
        return Verdict(False, f"expected {n} outputs ({names}), got {len(outs)}")
    return None


def _like(shape, dtype, device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def _metas(names, outs, wants, dtypes) -> Verdict:
    return combine(
        check_meta(n, o, _like(w.shape, d, w.device))
        for n, o, w, d in zip(names, outs, wants, dtypes)
    )


def compare_sinkhorn(case: Case, outs: tuple) -> Verdict:
    (logits,) = case.args
    bad = _n_outputs(outs, 1, "p")
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.sinkhorn(logits, **case.kwargs)
    v = check_meta("p", outs[0], _like(want.shape, torch.float32, logits.device))
    if not v:
        return v
    o = {"iters": 20, "eps": 1e-6, **case.kwargs}
    tol = _sinkhorn_tol(logits, None, int(o["iters"]), float(o["eps"]))
    return close("p", outs[0], want, tol)


PRE_NAMES = ("post_mix", "comb_res_mix", "layer_input")


def compare_pre(case: Case, outs: tuple) -> Verdict:
    residual, fn, hc_scale, hc_base = case.args
    bad = _n_outputs(outs, 3, ", ".join(PRE_NAMES))
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.mhc_pre(*case.args, **case.kwargs)
    dts = (torch.float32, torch.float32, residual.dtype)
    v = _metas(PRE_NAMES, outs, want, dts)
    if not v:
        return v
    exact_dot = case.meta.get("regime") == "exact_gemm"
    dpost, dcomb, dli = _pre_tol(residual, fn, hc_scale, hc_base, case.kwargs, exact_dot=exact_dot)
    tols = (dpost, dcomb, _round_tol(want[2], dli, residual.dtype))
    return combine(close(n, o, w, t) for n, o, w, t in zip(PRE_NAMES, outs, want, tols))


def compare_post(case: Case, outs: tuple) -> Verdict:
    x, residual, post_mix, comb = case.args
    bad = _n_outputs(outs, 1, "new_residual")
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.mhc_post(*case.args)
    v = check_meta("new_residual", outs[0], _like(want.shape, residual.dtype, residual.device))
    if not v:
        return v
    tol = _round_tol(want, _post_err(x, residual, post_mix, comb), residual.dtype)
    return close("new_residual", outs[0], want, tol)


def compare_head(case: Case, outs: tuple) -> Verdict:
    residual, fn, hc_scale, hc_base = case.args
    bad = _n_outputs(outs, 1, "out")
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want = ref.mhc_head(*case.args, **case.kwargs)
    v = check_meta("out", outs[0], _like(want.shape, residual.dtype, residual.device))
    if not v:
        return v
    d = _head_tol(residual, fn, hc_scale, hc_base, case.kwargs)
    return close("out", outs[0], want, _round_tol(want, d, residual.dtype))


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


def compare_fused(case: Case, outs: tuple) -> Verdict:
    """new_residual under the mhc_post model; then, per token, the three pre outputs must all
    be within the mhc_pre bounds of one of the two accepted chains: (A) the pre of the returned
    new_residual (the unfused chain reads the rounded streams; using the kernel's own rounding
    makes a one-ulp rounding difference of new_residual harmless), or (B) the pre of the exact
    new_residual with the float32 post's error bound carried into it (a fused kernel that keeps
    the streams in float32)."""
    x, residual, post_mix, comb, fn, hc_scale, hc_base = case.args
    kw = case.kwargs
    bad = _n_outputs(outs, 4, ", ".join(FUSED_NAMES))
    if bad:
        return bad
    with ref.precision("float64", round_output=False):
        want_b = mhc_fused_post_pre_f32(*case.args, **kw)
    dts = (residual.dtype, torch.float32, torch.float32, residual.dtype)
    v = _metas(FUSED_NAMES, outs, want_b, dts)
    if not v:
        return v
    dnew = _post_err(x, residual, post_mix, comb)
    v_new = close("new_residual", outs[0], want_b[0], _round_tol(want_b[0], dnew, residual.dtype))
    if not v_new:
        return v_new
    new_a = outs[0]
    with ref.precision("float64", round_output=False):
        want_a = ref.mhc_pre(new_a, fn, hc_scale, hc_base, **kw)
    ta = _pre_tol(new_a, fn, hc_scale, hc_base, kw)
    tb = _pre_tol(want_b[0], fn, hc_scale, hc_base, kw, dr=dnew)
    tol_a = (ta[0], ta[1], _round_tol(want_a[2], ta[2], residual.dtype))
    tol_b = (tb[0], tb[1], _round_tol(want_b[3], tb[2], residual.dtype))
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


def _pair(compare):
    """Inexact relations: the re-assembled outputs must pass the op's tolerance model."""

    def compare_pair(case: Case, derived: tuple, base: tuple) -> Verdict:
        v = compare(case, derived)
        if v:
            return v
        return Verdict(False, "re-assembled outputs: " + v.message, v.ratio, v.worst)

    return compare_pair


# --- strategies ---------------------------------------------------------------------------------

TOKENS_SMALL = [0, 1, 2, 3, 5, 7, 16, 17, 31, 33, 40]
TOKENS_FULL = [63, 64, 65, 127, 128, 129, 255, 256, 257, 1024, 4096, 8191, 8192]


def _tokens(size: str):
    return S.sizes(small=TOKENS_SMALL, full=TOKENS_FULL, size=size)


def _hidden(size: str):
    # 1 and 7 keep K = hc*H small: there a TF32 GEMM is outside the float32 bound.
    return S.sizes(small=[1, 7, 32, 64, 128, 129], full=S.around(4096, 7168), size=size, lo=1)


def _pick(draw, values):
    return draw(st.sampled_from(values))


def _pre_options(draw) -> dict:
    return {
        "rms_eps": _pick(draw, [1e-6, 1e-4, 0.1]),
        "pre_eps": _pick(draw, [1e-6, 0.0, 0.01]),
        "sinkhorn_eps": _pick(draw, [1e-6, 1e-3, 0.1]),
        "post_mult": _pick(draw, [2.0, 1.0]),
        "sinkhorn_iters": _pick(draw, [20, 1, 2, 3, 7]),
    }


SINKHORN_REGIMES = ["normal", "large", "one_hot", "near_uniform"]
PRE_REGIMES = ["normal", "wide", "near_zero", "one_hot", "large_mix", "exact_gemm"]
POST_REGIMES = ["normal", "wide", "near_zero", "one_hot", "free"]
FUSED_REGIMES = ["normal", "wide", "near_zero", "one_hot", "large_mix"]
HEAD_REGIMES = ["normal", "wide", "near_zero", "one_hot"]

# Strategies are composites of flat draws: Hypothesis shrinks and explains them in a third of
# the test calls that nested fixed_dictionaries need.


@st.composite
def _sinkhorn_meta(draw, size: str) -> dict:
    return {
        "T": draw(_tokens(size)),
        "lead": _pick(draw, ["T", "T", "none", "T2"]),  # [T], [], [T, 2] before [n, n]
        "n": _pick(draw, [4, 4, 1, 2, 3, 8]),
        "iters": _pick(draw, [20, 1, 2, 3, 7, 50]),
        "eps": _pick(draw, [1e-6, 1e-3, 0.1, 1e-9]),
        "regime": _pick(draw, SINKHORN_REGIMES),
        "seed": draw(S.seeds()),
    }


def sinkhorn_strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _sinkhorn_meta(size)


@st.composite
def _stream_meta(draw, op: str, size: str, dtypes) -> dict:
    meta = {
        "T": draw(_tokens(size)),
        "H": draw(_hidden(size)),
        "hc": _pick(draw, [4, 4, 4, 1, 2, 3]),
        "dtype": draw(S.float_dtypes(dtypes)),
    }
    if op in ("post", "fused"):
        meta["x_dtype"] = _pick(draw, ["same", "same", "bfloat16", "float32"])
        meta["post_shape"] = _pick(draw, ["3d", "2d"])
    if op in ("pre", "fused"):
        meta["options"] = _pre_options(draw)
    if op == "head":
        meta["options"] = {
            "rms_eps": _pick(draw, [1e-6, 1e-4, 0.1]),
            "hc_eps": _pick(draw, [1e-6, 0.0, 0.1]),
        }
    regimes = {"pre": PRE_REGIMES, "post": POST_REGIMES, "fused": FUSED_REGIMES}
    meta["regime"] = _pick(draw, regimes.get(op, HEAD_REGIMES))
    meta["seed"] = draw(S.seeds())
    return meta


def pre_strategy(*, size: str = "small", dtypes=None):
    return _stream_meta("pre", size, dtypes)


def post_strategy(*, size: str = "small", dtypes=None):
    return _stream_meta("post", size, dtypes)


def fused_strategy(*, size: str = "small", dtypes=None):
    return _stream_meta("fused", size, dtypes)


def head_strategy(*, size: str = "small", dtypes=None):
    return _stream_meta("head", size, dtypes)


# --- builders -----------------------------------------------------------------------------------


def _streams(g: Gen, shape, regime: str, dtype) -> torch.Tensor:
    """Residual streams `[T, hc, H]` in a value regime."""
    t, hc, _ = shape
    if regime == "wide":  # 24 binades within a token, finite in float16 after mixing
        e = g.uniform(shape, -12.0, 12.0)
        r = torch.where(g.mask(shape, 0.5), -1.0, 1.0) * torch.exp2(e)
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


def _pre_weights(g: Gen, hc: int, h: int, regime: str, n_mix: int):
    """(fn [n_mix, hc*H], hc_scale [3], hc_base [n_mix]) float32, mixes of order one."""
    k = hc * h
    if regime == "exact_gemm":
        # 12 significant bits, at most 256 nonzeros per row: |partial sums| < 2**23 grid steps.
        nnz = min(k, 256)
        pos = g.uniform((n_mix, k)).argsort(-1)[:, :nnz]
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


def _post_mixes(g: Gen, t: int, hc: int, regime: str, shape: str):
    """(post_mix [T, hc, 1] or [T, hc], comb_res_mix [T, hc, hc]) float32, comb non-symmetric."""
    if regime == "free":  # any real weights: the op is defined for them too
        post = g.normal((t, hc, 1))
        comb = g.normal((t, hc, hc))
    else:
        post = torch.sigmoid(g.normal((t, hc, 1))) * 2.0
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
            comb = ref.sinkhorn(g.normal((t, hc, hc), std=2.0), iters=20)
    if shape == "2d":
        post = post.reshape(t, hc)
    return post.contiguous(), comb


def _dtypes(meta):
    dtype = dtype_of(meta["dtype"])
    xd = meta.get("x_dtype", "same")
    return dtype, (dtype if xd == "same" else dtype_of(xd))


def build_sinkhorn(meta: dict, device) -> Case:
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
    _mutate(meta.get("invalid"), args, kw, SINKHORN_MUTATIONS)
    return Case("sinkhorn", tuple(args), kw, meta, str(device))


def build_pre(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype, _ = _dtypes(meta)
    t, h, hc = meta["T"], meta["H"], meta["hc"]
    residual = _streams(g, (t, hc, h), meta["regime"], dtype)
    fn, hs, hb = _pre_weights(g, hc, h, meta["regime"], hc * (2 + hc))
    if meta.get("nan"):
        residual = g.inject_nan(residual, p=0.002)
    args = [residual, fn, hs, hb]
    kw = dict(meta["options"])
    _mutate(meta.get("invalid"), args, kw, PRE_MUTATIONS)
    return Case("mhc_pre", tuple(args), kw, meta, str(device))


def build_post(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype, xdt = _dtypes(meta)
    t, h, hc = meta["T"], meta["H"], meta["hc"]
    regime = meta["regime"]
    residual = _streams(g, (t, hc, h), regime, dtype)
    x = _streams(g, (t, 1, h), "wide" if regime == "wide" else "normal", xdt).reshape(t, h)
    post, comb = _post_mixes(g, t, hc, regime, meta["post_shape"])
    if meta.get("nan"):
        x, residual = g.inject_nan(x, p=0.01), g.inject_nan(residual, p=0.002)
    args = [x, residual, post, comb]
    kw: dict = {}
    _mutate(meta.get("invalid"), args, kw, POST_MUTATIONS)
    return Case("mhc_post", tuple(args), kw, meta, str(device))


def build_fused(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype, xdt = _dtypes(meta)
    t, h, hc = meta["T"], meta["H"], meta["hc"]
    regime = meta["regime"]
    residual = _streams(g, (t, hc, h), regime, dtype)
    x = _streams(g, (t, 1, h), "wide" if regime == "wide" else "normal", xdt).reshape(t, h)
    post, comb = _post_mixes(g, t, hc, regime, meta["post_shape"])
    fn, hs, hb = _pre_weights(g, hc, h, regime, hc * (2 + hc))
    if meta.get("nan"):
        x, residual = g.inject_nan(x, p=0.01), g.inject_nan(residual, p=0.002)
    args = [x, residual, post, comb, fn, hs, hb]
    kw = dict(meta["options"])
    _mutate(meta.get("invalid"), args, kw, FUSED_MUTATIONS)
    return Case("mhc_fused_post_pre", tuple(args), kw, meta, str(device))


def build_head(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype, _ = _dtypes(meta)
    t, h, hc = meta["T"], meta["H"], meta["hc"]
    residual = _streams(g, (t, hc, h), meta["regime"], dtype)
    fn, hs, hb = _pre_weights(g, hc, h, meta["regime"], hc)
    if meta.get("nan"):
        residual = g.inject_nan(residual, p=0.002)
    args = [residual, fn, hs[:1].contiguous(), hb]
    kw = dict(meta["options"])
    _mutate(meta.get("invalid"), args, kw, HEAD_MUTATIONS)
    return Case("mhc_head", tuple(args), kw, meta, str(device))


# --- bad inputs ---------------------------------------------------------------------------------


def _mutate(name, args: list, kw: dict, table: dict) -> None:
    if name is not None:
        table[name](args, kw)


def _set(i, f):
    def m(args, kw):
        args[i] = f(args[i])

    return m


def _opt(key, value):
    def m(args, kw):
        kw[key] = value

    return m


def _extra_col(t):
    return torch.cat([t, t[..., :1]], -1)


def _extra_row(t):
    return torch.cat([t, t[:1]], 0)


SINKHORN_MUTATIONS = {
    "int_dtype": _set(0, lambda x: x.to(torch.int32)),
    "bfloat16": _set(0, lambda x: x.to(torch.bfloat16)),
    "float64": _set(0, lambda x: x.to(torch.float64)),
    "one_dim": _set(0, lambda x: x.reshape(-1)),
    "not_square": _set(0, _extra_col),
    "iters_zero": _opt("iters", 0),
    "iters_float": _opt("iters", 2.0),
    "eps_zero": _opt("eps", 0.0),
    "eps_negative": _opt("eps", -1e-6),
    "eps_inf": _opt("eps", math.inf),
}

_PRE_OPTION_MUTATIONS = {
    "rms_eps_zero": _opt("rms_eps", 0.0),
    "pre_eps_negative": _opt("pre_eps", -1e-3),
    "sinkhorn_eps_zero": _opt("sinkhorn_eps", 0.0),
    "post_mult_inf": _opt("post_mult", math.inf),
    "post_mult_nan": _opt("post_mult", math.nan),
    "iters_zero": _opt("sinkhorn_iters", 0),
    "iters_float": _opt("sinkhorn_iters", 20.0),
}


def _pre_weight_mutations(o: int) -> dict:
    """Mutations of (residual, fn, hc_scale, hc_base) at args offset `o`."""
    return {
        "residual_2d": _set(o, lambda r: r.reshape(r.shape[0], -1)),
        "residual_int": _set(o, lambda r: r.to(torch.int32)),
        "residual_float64": _set(o, lambda r: r.to(torch.float64)),
        "fn_extra_row": _set(o + 1, _extra_row),
        "fn_extra_col": _set(o + 1, _extra_col),
        "fn_bfloat16": _set(o + 1, lambda f: f.to(torch.bfloat16)),
        "hc_scale_len": _set(o + 2, lambda s: s[:2].contiguous()),
        "hc_base_len": _set(o + 3, _extra_row),
        "hc_base_float16": _set(o + 3, lambda b: b.to(torch.float16)),
    }


PRE_MUTATIONS = {**_pre_weight_mutations(0), **_PRE_OPTION_MUTATIONS}

_POST_ONLY_MUTATIONS = {
    "x_wrong_H": _set(0, _extra_col),
    "x_int": _set(0, lambda x: x.to(torch.int32)),
    "residual_2d": _set(1, lambda r: r.reshape(r.shape[0], -1)),
    "residual_float64": _set(1, lambda r: r.to(torch.float64)),
    "post_mix_extra_stream": _set(2, lambda p: torch.cat([p, p[:, :1]], 1)),
    "post_mix_bfloat16": _set(2, lambda p: p.to(torch.bfloat16)),
    "post_mix_1d": _set(2, lambda p: p.reshape(-1)),
    "comb_not_square": _set(3, _extra_col),
    "comb_bfloat16": _set(3, lambda c: c.to(torch.bfloat16)),
    "comb_extra_token": _set(3, _extra_row),
}
POST_MUTATIONS = _POST_ONLY_MUTATIONS
FUSED_MUTATIONS = {
    **_POST_ONLY_MUTATIONS,
    **{k: v for k, v in _pre_weight_mutations(3).items() if not k.startswith("residual")},
    **_PRE_OPTION_MUTATIONS,
}
HEAD_MUTATIONS = {
    "residual_2d": _set(0, lambda r: r.reshape(r.shape[0], -1)),
    "residual_int": _set(0, lambda r: r.to(torch.int32)),
    "fn_pre_shape": _set(1, lambda f: torch.cat([f, f, f], 0)),  # [3hc, hc*H]: not [hc, hc*H]
    "fn_extra_col": _set(1, _extra_col),
    "fn_float16": _set(1, lambda f: f.to(torch.float16)),
    "hc_scale_three": _set(2, lambda s: torch.cat([s, s, s])),
    "hc_base_len": _set(3, _extra_row),
    "rms_eps_zero": _opt("rms_eps", 0.0),
    "rms_eps_inf": _opt("rms_eps", math.inf),
    "hc_eps_negative": _opt("hc_eps", -1e-6),
}


def _invalid(strategy, table):
    def invalid(*, size: str = "small") -> st.SearchStrategy[dict]:
        return S.invalid_cases(sorted(table), strategy(size=size).filter(lambda m: m["T"] > 0))

    return invalid


def _nan(strategy):
    def nan_strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
        return S.with_nan(strategy(size=size, dtypes=dtypes).filter(lambda m: m["T"] > 0))

    return nan_strategy


# --- relations ----------------------------------------------------------------------------------


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


# --- the specs ----------------------------------------------------------------------------------

SINKHORN = add_spec(
    OpSpec(
        name="sinkhorn",
        reference=ref.sinkhorn,
        strategy=sinkhorn_strategy,
        build=build_sinkhorn,
        compare=compare_sinkhorn,
        tolerance=TOL_SINKHORN,
        invalid=_invalid(sinkhorn_strategy, SINKHORN_MUTATIONS),
        nan_strategy=_nan(sinkhorn_strategy),
        relations=(
            Relation("token_permutation", _batched(S.permute_tokens())),
            Relation("batch_split", _batched(S.split_tokens())),
            Relation("stream_permutation", stream_permutation, exact=False),
        ),
        compare_pair=_pair(compare_sinkhorn),
    )
)

MHC_PRE = add_spec(
    OpSpec(
        name="mhc_pre",
        reference=ref.mhc_pre,
        strategy=pre_strategy,
        build=build_pre,
        compare=compare_pre,
        tolerance=TOL_PRE,
        invalid=_invalid(pre_strategy, PRE_MUTATIONS),
        nan_strategy=_nan(pre_strategy),
        relations=(
            Relation("token_permutation", S.permute_tokens(), exact=False),
            Relation("batch_split", S.split_tokens(), exact=False),
        ),
        compare_pair=_pair(compare_pre),
    )
)

MHC_POST = add_spec(
    OpSpec(
        name="mhc_post",
        reference=ref.mhc_post,
        strategy=post_strategy,
        build=build_post,
        compare=compare_post,
        tolerance=TOL_POST,
        invalid=_invalid(post_strategy, POST_MUTATIONS),
        nan_strategy=_nan(post_strategy),
        relations=(
            Relation("token_permutation", S.permute_tokens(args=(0, 1, 2, 3))),
            Relation("batch_split", S.split_tokens(args=(0, 1, 2, 3))),
        ),
    )
)

MHC_FUSED_POST_PRE = add_spec(
    OpSpec(
        name="mhc_fused_post_pre",
        reference=ref.mhc_fused_post_pre,
        strategy=fused_strategy,
        build=build_fused,
        compare=compare_fused,
        tolerance=TOL_FUSED,
        invalid=_invalid(fused_strategy, FUSED_MUTATIONS),
        nan_strategy=_nan(fused_strategy),
        relations=(
            Relation("token_permutation", S.permute_tokens(args=(0, 1, 2, 3)), exact=False),
            Relation("batch_split", S.split_tokens(args=(0, 1, 2, 3)), exact=False),
        ),
        compare_pair=_pair(compare_fused),
    )
)

MHC_HEAD = add_spec(
    OpSpec(
        name="mhc_head",
        reference=ref.mhc_head,
        strategy=head_strategy,
        build=build_head,
        compare=compare_head,
        tolerance=TOL_HEAD,
        invalid=_invalid(head_strategy, HEAD_MUTATIONS),
        nan_strategy=_nan(head_strategy),
        relations=(
            Relation("token_permutation", S.permute_tokens(), exact=False),
            Relation("batch_split", S.split_tokens(), exact=False),
        ),
        compare_pair=_pair(compare_head),
    )
)
