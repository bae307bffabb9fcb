"""TileLang kernels for the hyper-connection ops (imported lazily: this module needs tilelang).

Each builder returns a `T.prim_func` for one static specialisation (hc, H, dtypes, split
counts); the token count `N` is dynamic. `get(name, **spec)` compiles a builder once per
specialisation and caches the kernel (TileLang also keeps a disk cache under ~/.tilelang).

Kernels:

- `post`: new[t, j, h] = x[t, h] * post[t, j] + sum_i comb[t, i, j] * res[t, i, h], float32
  math, one rounding. Elementwise and memory bound: one CTA covers one token and a tile of
  `threads * vec` hidden elements of all streams, 16-byte vector loads and stores.
- `fma_partials`: split-k partial dot products `part[s, t, m] = sum_k r[t, k] * fn[m, k]` and
  `sq[s, t] = sum_k r[t, k]^2` over the k range of split `s` (one stream, 512 hidden elements),
  with CUDA-core FMAs (float32, no tensor cores): the small-T path. With `fused=True` the CTA
  first computes its stream of the post of the previous sublayer, writes it as the new residual
  and feeds the rounded values straight into the dot products (vLLM's fused post+pre design).
- `tc_partials`: the same partials on tensor cores for large T (bfloat16 streams only): `fn`
  is split per tile into three bfloat16 parts (`fn = hi + mid + lo + O(2^-25 fn)`), and the
  three bf16 GEMMs accumulate in float32: every product is exact (bf16 x bf16), so the result
  keeps float32-level accuracy (TF32 would lose 13 bits of fn and is not used). Each k-tile is
  accumulated on the tensor cores (small parts first) and then added to the running float32
  sum with an ordinary add, since the tensor cores' internal accumulation truncates.
- `finalize`: per token, reduces the split partials, applies the RMS scale, the sigmoids and
  the Sinkhorn normalisation (mode "pre"), or the head's sigmoid (mode "head"), and forms
  `sum_i pre[i] * res[t, i]`.
- `sinkhorn`: batched Sinkhorn of n x n matrices, one thread per matrix.

Divisions by a row or column sum are done as a multiply by the IEEE reciprocal (one rounding
more than the reference's division: a relative difference of at most about 1 ulp per step).
"""

import threading

import tilelang
import tilelang.language as T

from parity.optimized.tilelang._shapes import ceildiv as _ceildiv
from parity.optimized.tilelang._shapes import vec_for as _vec_for

F32 = "float32"
MAX_HC = 8  # Sinkhorn of hc x hc mixes lives in one thread's registers
MAX_SINKHORN_N = 8


# --- mhc_post -----------------------------------------------------------------------------------


@T.macro
def _load_mixes(post, comb, pl, cl, t, hc: int):
    """Token t's post_mix and comb_res_mix into the locals pl [hc], cl [hc, hc]."""
    for i in T.unroll(hc):
        pl[i] = post[t, i]
        for j in T.unroll(hc):
            cl[i, j] = comb[t, i, j]


@T.macro
def _new_stream(ol, xl, rl, pl, cl, j, hc: int, vec: int):
    """ol = new stream j over a thread's vec elements: x * post[j] + sum_i comb[i, j] res[i],
    float32, in this order (the one rounding is the caller's store)."""
    for v in T.unroll(vec):
        ol[v] = xl[v] * pl[j]
        for i in T.unroll(hc):
            ol[v] = ol[v] + cl[i, j] * rl[i, v]


def _post(hc: int, xdt: str, rdt: str, threads: int, name: str, H=None, vec=None):
    """new[t, j] = post[t, j] * x[t] + sum_i comb[t, i, j] * res[t, i], one thread `vec`
    elements of every stream.

    Per H (`H` given): [.., H] tensors, vec `_vec_for(H, 8)`, one flat grid axis (x: up to
    2**31 - 1 blocks) in the old order, bh fastest: with T on grid y, T > 65535 failed to launch
    (the scale regime, H100, 2026-12-05). Dynamic (`H` None, `vec` given; the default,
    PARITY_TILELANG_DYN_H=0 turns it off): one compile per (hc, vector width, dtypes) instead of
    per H (issue 11, section 4). The tensors come as views [.., H / vec, vec] with `vec` (H's
    largest power-of-two divisor up to 8) static, so the 16-byte accesses stay provably aligned:
    declared `(N, H)` with H dynamic, TileLang 0.1.15 lowered every access to a scalar load
    behind a bounds check (offline, `scripts/tilelang_lower.py`). Grid (tokens, hidden tiles):
    the token index on x (up to 2**31 - 1 blocks), no division to recover it."""
    N = T.dynamic("N")
    if H is None:
        HV = T.dynamic("HV")  # H / vec
        lim, stream, exact = HV, (HV, vec), False
        grid = (N, T.ceildiv(HV, threads))

        def place(ids, tx):  # (token, the thread's first vector in the views)
            return ids[0], ids[1] * threads + tx

        def at(*idx):  # element v of the vector at p: [.., p, v]
            return idx
    else:
        vec = _vec_for(H, 8)
        blk = threads * vec
        nb = _ceildiv(H, blk)
        lim, stream, exact = H, (H,), H % blk == 0
        grid = (nb * N,)

        def place(bid, tx):  # (token, the thread's first element)
            return bid // nb, bid % nb * blk + tx * vec

        def at(*idx):  # [.., p + v]
            return (*idx[:-2], idx[-2] + idx[-1])

    @T.prim_func
    def mhc_post(
        x: T.Tensor((N, *stream), xdt),
        res: T.Tensor((N, hc, *stream), rdt),
        post: T.Tensor((N, hc), F32),
        comb: T.Tensor((N, hc, hc), F32),
        out: T.Tensor((N, hc, *stream), rdt),
    ):
        with T.Kernel(*grid, threads=threads) as ids:
            tx = T.get_thread_binding()
            t, p = place(ids, tx)
            xl = T.alloc_local((vec,), F32)
            rl = T.alloc_local((hc, vec), F32)
            ol = T.alloc_local((vec,), F32)
            pl = T.alloc_local((hc,), F32)
            cl = T.alloc_local((hc, hc), F32)
            _load_mixes(post, comb, pl, cl, t, hc)
            if exact or p < lim:
                for v in T.vectorized(vec):
                    xl[v] = T.cast(x[at(t, p, v)], F32)
                for i in T.unroll(hc):
                    for v in T.vectorized(vec):
                        rl[i, v] = T.cast(res[at(t, i, p, v)], F32)
                for j in T.unroll(hc):
                    _new_stream(ol, xl, rl, pl, cl, j, hc, vec)
                    for v in T.vectorized(vec):
                        out[at(t, j, p, v)] = T.cast(ol[v], rdt)

    return mhc_post.with_attr("global_symbol", name)


def post_kernel(hc: int, H: int, xdt: str, rdt: str, threads: int = 128):
    return _post(hc, xdt, rdt, threads, "mhc_post", H=H)


def post_dyn_kernel(hc: int, vec: int, xdt: str, rdt: str, threads: int = 128):
    """`post` with the hidden size dynamic (see `_post`)."""
    return _post(hc, xdt, rdt, threads, "mhc_post_dyn", vec=vec)


# --- split-k partial dot products (CUDA cores) ----------------------------------------------------


@T.macro
def _block_reduce_store(acc, red, part, sq, s, t, tx, M: int, R: int, nwarps: int):
    """Sum each of the R per-thread values over the CTA (warp shuffles, then one value per
    warp through shared memory, fixed order: deterministic) and store them."""
    for m in T.unroll(R):
        acc[m] = T.warp_reduce_sum(acc[m])
    if tx % 32 == 0:
        for m in T.unroll(R):
            red[tx // 32, m] = acc[m]
    T.sync_threads()
    if tx < R:
        total = T.alloc_var(F32, init=0.0)
        for w in T.unroll(nwarps):
            total = total + red[w, tx]
        if tx < M:
            part[s, t, tx] = total
        else:
            sq[s, t] = total


def _fma_partials(hc, M, rdt, fused, xdt, threads, name, H=None, vec=None):
    """Grid NH * hc * N (flat, hb fastest): CTA (hb, j, t) covers stream j, hidden tile hb of
    token t (split s = j*NH + hb): each CTA reads an M x (threads * vec) slice of fn, so a
    single token already spreads fn over hc*NH CTAs. With `fused`, the CTA first forms new
    stream j (which needs all hc old streams at its h), stores it and dots its rounded value.

    Per H (`H` given): hidden-size tensors [.., H], fn [M, hc * H], vec `_vec_for(H, 4)`, S and
    NH literals. Dynamic (`H` None, `vec` given): every hidden-size tensor a view [.., H / vec,
    vec] (fn [M, hc, H / vec, vec]), so a CTA covers the same elements as the per-H kernel's
    and sums them in the same order; S = hc * ceil(H / (threads * vec)) is bound from `part`
    (the wrapper allocates it by `fma_splits`)."""
    N = T.dynamic("N")
    if H is None:
        HV = T.dynamic("HV")  # H / vec
        S = T.dynamic("S")
        NH = T.ceildiv(HV, threads)  # hidden tiles of `threads` vectors
        lim, stream, fn_shape = HV, (HV, vec), (M, hc, HV, vec)

        def first(hb, tx):  # the thread's first vector: its index in the views
            return hb * threads + tx

        def at(*idx):  # element v of the vector at p: [.., p, v]
            return idx

        def fn_at(m, j, p, v):
            return (m, j, p, v)
    else:
        vec = _vec_for(H, 4)
        HS = threads * vec
        NH = _ceildiv(H, HS)
        S = hc * NH
        lim, stream, fn_shape = H, (H,), (M, hc * H)

        def first(hb, tx):  # the thread's first element
            return hb * HS + tx * vec

        def at(*idx):  # [.., p + v]
            return (*idx[:-2], idx[-2] + idx[-1])

        def fn_at(m, j, p, v):
            return (m, j * H + p + v)

    R = M + 1  # M dot products and the square sum
    NW = threads // 32

    if fused:

        @T.prim_func
        def fused_partials(
            x: T.Tensor((N, *stream), xdt),
            res: T.Tensor((N, hc, *stream), rdt),
            post: T.Tensor((N, hc), F32),
            comb: T.Tensor((N, hc, hc), F32),
            fn: T.Tensor(fn_shape, F32),
            out: T.Tensor((N, hc, *stream), rdt),
            part: T.Tensor((S, N, M), F32),
            sq: T.Tensor((S, N), F32),
        ):
            # flat grid (x) in the order of (NH, hc, N): N on grid z stopped at 65535 tokens
            with T.Kernel(NH * hc * N, threads=threads) as bid:
                hb = bid % NH
                j = (bid // NH) % hc
                t = bid // (NH * hc)
                tx = T.get_thread_binding()
                p = first(hb, tx)
                acc = T.alloc_local((R,), F32)
                xl = T.alloc_local((vec,), F32)
                rl = T.alloc_local((hc, vec), F32)
                nl = T.alloc_local((vec,), F32)
                fl = T.alloc_local((vec,), F32)
                cl = T.alloc_local((hc,), F32)
                red = T.alloc_shared((NW, R), F32)
                for m in T.unroll(R):
                    acc[m] = 0.0
                pj = post[t, j]
                for i in T.unroll(hc):
                    cl[i] = comb[t, i, j]
                if p < lim:
                    for v in T.vectorized(vec):
                        xl[v] = T.cast(x[at(t, p, v)], F32)
                    for i in T.unroll(hc):
                        for v in T.vectorized(vec):
                            rl[i, v] = T.cast(res[at(t, i, p, v)], F32)
                    for v in T.unroll(vec):
                        nl[v] = xl[v] * pj
                        for i in T.unroll(hc):
                            nl[v] = nl[v] + cl[i] * rl[i, v]
                    for v in T.vectorized(vec):
                        out[at(t, j, p, v)] = T.cast(nl[v], rdt)
                    for v in T.unroll(vec):
                        # the pre reads the stored (rounded) stream, as the unfused chain
                        nl[v] = T.cast(T.cast(nl[v], rdt), F32)
                        acc[M] = acc[M] + nl[v] * nl[v]
                    for m in T.unroll(M):
                        for v in T.vectorized(vec):
                            fl[v] = fn[fn_at(m, j, p, v)]
                        for v in T.unroll(vec):
                            acc[m] = acc[m] + nl[v] * fl[v]
                _block_reduce_store(acc, red, part, sq, j * NH + hb, t, tx, M, R, NW)

        return fused_partials.with_attr("global_symbol", f"fused_{name}")

    @T.prim_func
    def partials(
        res: T.Tensor((N, hc, *stream), rdt),
        fn: T.Tensor(fn_shape, F32),
        part: T.Tensor((S, N, M), F32),
        sq: T.Tensor((S, N), F32),
    ):
        with T.Kernel(NH * hc * N, threads=threads) as bid:  # flat, as fused_partials
            hb = bid % NH
            j = (bid // NH) % hc
            t = bid // (NH * hc)
            tx = T.get_thread_binding()
            p = first(hb, tx)
            acc = T.alloc_local((R,), F32)
            rl = T.alloc_local((vec,), F32)
            fl = T.alloc_local((vec,), F32)
            red = T.alloc_shared((NW, R), F32)
            for m in T.unroll(R):
                acc[m] = 0.0
            if p < lim:
                for v in T.vectorized(vec):
                    rl[v] = T.cast(res[at(t, j, p, v)], F32)
                for v in T.unroll(vec):
                    acc[M] = acc[M] + rl[v] * rl[v]
                for m in T.unroll(M):
                    for v in T.vectorized(vec):
                        fl[v] = fn[fn_at(m, j, p, v)]
                    for v in T.unroll(vec):
                        acc[m] = acc[m] + rl[v] * fl[v]
            _block_reduce_store(acc, red, part, sq, j * NH + hb, t, tx, M, R, NW)

    return partials.with_attr("global_symbol", name)


def fma_partials_kernel(
    hc: int, M: int, H: int, rdt: str, fused: bool, xdt: str = F32, threads: int = 128
):
    """Split-K partial dot products on CUDA cores, one compile a hidden size."""
    return _fma_partials(hc, M, rdt, fused, xdt, threads, "partials", H=H)


def fma_partials_dyn_kernel(
    hc: int, M: int, vec: int, rdt: str, fused: bool, xdt: str = F32, threads: int = 128
):
    """`fma_partials` with the hidden size dynamic (issue 11, section 4: one compile a (hc, M,
    vector width, dtypes) instead of one a hidden size; the default, PARITY_TILELANG_DYN_H_PRE=0
    turns it off); `vec` = `_vec_for(H, 4)` of the per-H kernel."""
    return _fma_partials(hc, M, rdt, fused, xdt, threads, "partials_dyn", vec=vec)


# --- split-k partial dot products (tensor cores, bf16 3-way split of fn) --------------------------


def tc_partials_kernel(
    hc: int, M: int, H: int, S: int, BT: int = 64, BK: int = 64, threads: int = 128, stages: int = 2
):
    """Grid (S, ceil(N / BT)); requires (hc * H) % (S * BK) == 0 and bfloat16 streams."""
    K = hc * H
    KS = K // S
    assert K % (S * BK) == 0 and M <= 32
    NB = 32
    N = T.dynamic("N")
    BF = "bfloat16"

    @T.prim_func
    def tc_partials(
        res: T.Tensor((N, K), BF),
        fn: T.Tensor((M, K), F32),
        part: T.Tensor((S, N, M), F32),
        sq: T.Tensor((S, N), F32),
    ):
        with T.Kernel(S, T.ceildiv(N, BT), threads=threads) as (s, bt):
            r_s = T.alloc_shared((BT, BK), BF)
            fh_s = T.alloc_shared((NB, BK), BF)
            fm_s = T.alloc_shared((NB, BK), BF)
            fl_s = T.alloc_shared((NB, BK), BF)
            acc = T.alloc_fragment((BT, NB), F32)
            acc_t = T.alloc_fragment((BT, NB), F32)
            r_f = T.alloc_fragment((BT, BK), F32)
            sq_l = T.alloc_fragment((BT,), F32)
            T.clear(acc)
            T.clear(sq_l)
            for kk in T.Pipelined(KS // BK, num_stages=stages):
                k0 = s * KS + kk * BK
                T.copy(res[bt * BT, k0], r_s)
                for i, k in T.Parallel(NB, BK):
                    f = T.if_then_else(i < M, fn[T.min(i, M - 1), k0 + k], T.float32(0))
                    hi = T.cast(f, BF)
                    r1 = f - T.cast(hi, F32)
                    mid = T.cast(r1, BF)
                    fh_s[i, k] = hi
                    fm_s[i, k] = mid
                    fl_s[i, k] = T.cast(r1 - T.cast(mid, F32), BF)
                # small parts first into a per-tile accumulator, then one float32 add per
                # tile on CUDA cores (the tensor cores' own accumulation truncates)
                T.gemm(r_s, fl_s, acc_t, transpose_B=True, clear_accum=True)
                T.gemm(r_s, fm_s, acc_t, transpose_B=True)
                T.gemm(r_s, fh_s, acc_t, transpose_B=True)
                for i, j in T.Parallel(BT, NB):
                    acc[i, j] = acc[i, j] + acc_t[i, j]
                for i, k in T.Parallel(BT, BK):
                    r_f[i, k] = T.cast(r_s[i, k], F32) * T.cast(r_s[i, k], F32)
                T.reduce_sum(r_f, sq_l, dim=1, clear=False)
            for i, j in T.Parallel(BT, NB):
                if j < M and bt * BT + i < N:
                    part[s, bt * BT + i, j] = acc[i, j]
            for i in T.Parallel(BT):
                if bt * BT + i < N:
                    sq[s, bt * BT + i] = sq_l[i]

    return tc_partials


# --- per-token finalisation ---------------------------------------------------------------------


@T.macro
def _sinkhorn_inplace(cm, n: int, iters, eps, rs):
    """Emit Sinkhorn on local `cm [n, n]` (softmax rows + eps, columns, then iters-1 x
    rows-then-columns); `rs` is a local scratch of n floats."""
    for i in T.unroll(n):
        rs[i] = cm[i, 0]
        for j in T.unroll(n - 1):
            rs[i] = T.max(rs[i], cm[i, j + 1])
    for i in T.unroll(n):
        for j in T.unroll(n):
            cm[i, j] = T.exp(cm[i, j] - rs[i])
    for i in T.unroll(n):
        rs[i] = cm[i, 0]
        for j in T.unroll(n - 1):
            rs[i] = rs[i] + cm[i, j + 1]
        rs[i] = T.float32(1) / rs[i]
    for i in T.unroll(n):
        for j in T.unroll(n):
            cm[i, j] = cm[i, j] * rs[i] + eps
    # columns
    for j in T.unroll(n):
        rs[j] = cm[0, j]
        for i in T.unroll(n - 1):
            rs[j] = rs[j] + cm[i + 1, j]
        rs[j] = T.float32(1) / (rs[j] + eps)
    for i in T.unroll(n):
        for j in T.unroll(n):
            cm[i, j] = cm[i, j] * rs[j]
    for _ in T.serial(iters - 1):
        for i in T.unroll(n):
            rs[i] = cm[i, 0]
            for j in T.unroll(n - 1):
                rs[i] = rs[i] + cm[i, j + 1]
            rs[i] = T.float32(1) / (rs[i] + eps)
        for i in T.unroll(n):
            for j in T.unroll(n):
                cm[i, j] = cm[i, j] * rs[i]
        for j in T.unroll(n):
            rs[j] = cm[0, j]
            for i in T.unroll(n - 1):
                rs[j] = rs[j] + cm[i + 1, j]
            rs[j] = T.float32(1) / (rs[j] + eps)
        for i in T.unroll(n):
            for j in T.unroll(n):
                cm[i, j] = cm[i, j] * rs[j]


@T.macro
def _sum_mixes(part, sq, mix_s, S, t, tx, M: int):
    """mix_s[m] = sum over the S splits of part[:, t, m] (m < M), mix_s[M] = of sq[:, t]; one
    thread each, splits in order."""
    if tx < M + 1:
        total = T.alloc_var(F32, init=0.0)
        if tx < M:
            for s in T.serial(S):
                total = total + part[s, t, tx]
        else:
            for s in T.serial(S):
                total = total + sq[s, t]
        mix_s[tx] = total


@T.macro
def _pre_mixes(
    mix_s, pre_s, cm, rs, hc_scale, hc_base, post_out, comb_out, rstd, t, tx, hc: int, sk_t: int,
    pre_eps, post_mult, sk_eps, iters,
):  # fmt: skip
    """pre (threads < hc), post_mix and the Sinkhorn-normalised comb_res_mix (thread sk_t)."""
    if tx < hc:
        pre_s[tx] = T.sigmoid(mix_s[tx] * rstd * hc_scale[0] + hc_base[tx]) + pre_eps
    if tx == sk_t:
        for i in T.unroll(hc):
            post_out[t, i] = (
                T.sigmoid(mix_s[hc + i] * rstd * hc_scale[1] + hc_base[hc + i]) * post_mult
            )
        for i in T.unroll(hc):
            for j in T.unroll(hc):
                cm[i, j] = (
                    mix_s[2 * hc + i * hc + j] * rstd * hc_scale[2] + hc_base[2 * hc + i * hc + j]
                )
        _sinkhorn_inplace(cm, hc, iters, sk_eps, rs)
        for i in T.unroll(hc):
            for j in T.unroll(hc):
                comb_out[t, i, j] = cm[i, j]


@T.macro
def _weighted_streams(res, pre_s, out, ol, rl, t, tx, H: int, hc: int, vec: int, threads: int):
    """out[t, :] = sum_i pre[i] res[t, i, :] in chunks of `threads` vectors of `vec` (the per-H
    finalisations; `_weighted_streams_dyn` is the same sums on the [.., H / vec, vec] views)."""
    step = threads * vec
    for c in T.serial(_ceildiv(H, step)):
        h0 = c * step + tx * vec
        if h0 < H:
            for v in T.unroll(vec):
                ol[v] = 0.0
            for i in T.unroll(hc):
                for v in T.vectorized(vec):
                    rl[v] = T.cast(res[t, i, h0 + v], F32)
                for v in T.unroll(vec):
                    ol[v] = ol[v] + pre_s[i] * rl[v]
            for v in T.vectorized(vec):
                out[t, h0 + v] = T.cast(ol[v], out.dtype)


@T.macro
def _weighted_streams_dyn(res, pre_s, out, ol, rl, t, tx, HV, hc: int, vec: int, threads: int):
    """out[t, hv, :] = sum_i pre[i] res[t, i, hv, :] over the token's H / vec vectors, in the
    per-H kernels' chunks of `threads` vectors (the same sums in the same order)."""
    for c in T.serial(T.ceildiv(HV, threads)):
        hv = c * threads + tx
        if hv < HV:
            for v in T.unroll(vec):
                ol[v] = 0.0
            for i in T.unroll(hc):
                for v in T.vectorized(vec):
                    rl[v] = T.cast(res[t, i, hv, v], F32)
                for v in T.unroll(vec):
                    ol[v] = ol[v] + pre_s[i] * rl[v]
            for v in T.vectorized(vec):
                out[t, hv, v] = T.cast(ol[v], out.dtype)


def _hidden(hc: int, H: int | None, vec: int | None):
    """How a finalisation sees the hidden size: (is it dynamic, H / vec as a dynamic var or
    None, vec, the shape of one token's stream after its token and stream dims, hc * H as a
    float32). Per H: [H], the vector width `_vec_for(H, 8)`, hc * H a literal. Dynamic (`H`
    None, `vec` given): [H / vec, vec] views, hc * H formed from the run-time H / vec (the
    same float32 value)."""
    if H is None:
        hv = T.dynamic("HV")
        return True, hv, vec, (hv, vec), T.cast(hv * (hc * vec), F32)
    return False, None, _vec_for(H, 8), (H,), T.float32(hc * H)


def _finalize_pre(hc: int, rdt: str, threads: int, name: str, H=None, vec=None):
    """Per token: mixes from the S partials -> post_mix, comb_res_mix (Sinkhorn), layer_input.
    The split count S is a runtime dimension."""
    M = hc * (2 + hc)
    S = T.dynamic("S")
    N = T.dynamic("N")
    dyn, HV, vec, stream, KF = _hidden(hc, H, vec)
    SK_T = 32  # the thread (warp 1) that runs Sinkhorn while warp 0 forms `pre`

    @T.prim_func
    def finalize_pre(
        part: T.Tensor((S, N, M), F32),
        sq: T.Tensor((S, N), F32),
        hc_scale: T.Tensor((3,), F32),
        hc_base: T.Tensor((M,), F32),
        res: T.Tensor((N, hc, *stream), rdt),
        post_out: T.Tensor((N, hc), F32),
        comb_out: T.Tensor((N, hc, hc), F32),
        li: T.Tensor((N, *stream), rdt),
        rms_eps: T.float32,
        pre_eps: T.float32,
        sk_eps: T.float32,
        post_mult: T.float32,
        iters: T.int32,
    ):
        with T.Kernel(N, threads=threads) as t:
            tx = T.get_thread_binding()
            mix_s = T.alloc_shared((M + 1,), F32)
            pre_s = T.alloc_shared((hc,), F32)
            cm = T.alloc_local((hc, hc), F32)
            rs = T.alloc_local((hc,), F32)
            ol = T.alloc_local((vec,), F32)
            rl = T.alloc_local((vec,), F32)
            _sum_mixes(part, sq, mix_s, S, t, tx, M)
            T.sync_threads()
            rstd = T.rsqrt(mix_s[M] / KF + rms_eps)
            _pre_mixes(
                mix_s, pre_s, cm, rs, hc_scale, hc_base, post_out, comb_out, rstd, t, tx, hc, SK_T,
                pre_eps, post_mult, sk_eps, iters,
            )  # fmt: skip
            T.sync_threads()
            if dyn:
                _weighted_streams_dyn(res, pre_s, li, ol, rl, t, tx, HV, hc, vec, threads)
            else:
                _weighted_streams(res, pre_s, li, ol, rl, t, tx, H, hc, vec, threads)

    return finalize_pre.with_attr("global_symbol", name)


def _finalize_head(hc: int, rdt: str, threads: int, name: str, H=None, vec=None):
    """Per token: pre = sigmoid(mix * rstd * scale + base) + eps; out = sum_i pre[i] res[i]."""
    S = T.dynamic("S")
    N = T.dynamic("N")
    dyn, HV, vec, stream, KF = _hidden(hc, H, vec)

    @T.prim_func
    def finalize_head(
        part: T.Tensor((S, N, hc), F32),
        sq: T.Tensor((S, N), F32),
        hc_scale: T.Tensor((1,), F32),
        hc_base: T.Tensor((hc,), F32),
        res: T.Tensor((N, hc, *stream), rdt),
        out: T.Tensor((N, *stream), rdt),
        rms_eps: T.float32,
        hc_eps: T.float32,
    ):
        with T.Kernel(N, threads=threads) as t:
            tx = T.get_thread_binding()
            mix_s = T.alloc_shared((hc + 1,), F32)
            pre_s = T.alloc_shared((hc,), F32)
            ol = T.alloc_local((vec,), F32)
            rl = T.alloc_local((vec,), F32)
            _sum_mixes(part, sq, mix_s, S, t, tx, hc)
            T.sync_threads()
            rstd = T.rsqrt(mix_s[hc] / KF + rms_eps)
            if tx < hc:
                pre_s[tx] = T.sigmoid(mix_s[tx] * rstd * hc_scale[0] + hc_base[tx]) + hc_eps
            T.sync_threads()
            if dyn:
                _weighted_streams_dyn(res, pre_s, out, ol, rl, t, tx, HV, hc, vec, threads)
            else:
                _weighted_streams(res, pre_s, out, ol, rl, t, tx, H, hc, vec, threads)

    return finalize_head.with_attr("global_symbol", name)


def finalize_pre_kernel(hc: int, H: int, rdt: str, threads: int = 128):
    return _finalize_pre(hc, rdt, threads, "finalize_pre", H=H)


def finalize_head_kernel(hc: int, H: int, rdt: str, threads: int = 128):
    return _finalize_head(hc, rdt, threads, "finalize_head", H=H)


def finalize_pre_dyn_kernel(hc: int, vec: int, rdt: str, threads: int = 128):
    """`finalize_pre` with the hidden size dynamic (the default; PARITY_TILELANG_DYN_H_PRE=0
    the per-H kernel): `res` and `li` as views [.., H / vec, vec], vec = `_vec_for(H, 8)`."""
    return _finalize_pre(hc, rdt, threads, "finalize_pre_dyn", vec=vec)


def finalize_head_dyn_kernel(hc: int, vec: int, rdt: str, threads: int = 128):
    """`finalize_head` with the hidden size dynamic (as `finalize_pre_dyn`)."""
    return _finalize_head(hc, rdt, threads, "finalize_head_dyn", vec=vec)


# --- sinkhorn -------------------------------------------------------------------------------------


def sinkhorn_kernel(n: int, threads: int = 128):
    B = T.dynamic("B")

    @T.prim_func
    def sinkhorn(
        logits: T.Tensor((B, n, n), F32),
        out: T.Tensor((B, n, n), F32),
        eps: T.float32,
        iters: T.int32,
    ):
        with T.Kernel(T.ceildiv(B, threads), threads=threads) as bx:
            tx = T.get_thread_binding()
            b = bx * threads + tx
            cm = T.alloc_local((n, n), F32)
            rs = T.alloc_local((n,), F32)
            if b < B:
                for i in T.unroll(n):
                    for j in T.unroll(n):
                        cm[i, j] = logits[b, i, j]
                _sinkhorn_inplace(cm, n, iters, eps, rs)
                for i in T.unroll(n):
                    for j in T.unroll(n):
                        out[b, i, j] = cm[i, j]

    return sinkhorn


# --- compile cache --------------------------------------------------------------------------------

_BUILDERS = {
    "post": post_kernel,
    "post_dyn": post_dyn_kernel,
    "fma_partials": fma_partials_kernel,
    "fma_partials_dyn": fma_partials_dyn_kernel,
    "tc_partials": tc_partials_kernel,
    "finalize_pre": finalize_pre_kernel,
    "finalize_head": finalize_head_kernel,
    "finalize_pre_dyn": finalize_pre_dyn_kernel,
    "finalize_head_dyn": finalize_head_dyn_kernel,
    "sinkhorn": sinkhorn_kernel,
}
_CACHE = {}
_LOCKS: dict = {}
_LOCK = threading.Lock()
PASS_CONFIGS = {
    tilelang.PassConfigKey.TL_DISABLE_WARP_SPECIALIZED: True,
}


def build(name: str, **spec):
    """The prim_func of one specialisation."""
    return _BUILDERS[name](**spec)


def get(name: str, **spec):
    """Compiled kernel for one specialisation, compiled on first use and cached."""
    key = (name, tuple(sorted(spec.items())))
    kern = _CACHE.get(key)
    if kern is None:
        with _LOCK:
            lock = _LOCKS.setdefault(key, threading.Lock())
        with lock:  # one compile per specialisation; different ones compile concurrently
            kern = _CACHE.get(key)
            if kern is None:
                func = build(name, **spec)
                kern = tilelang.compile(func, target="cuda", pass_configs=PASS_CONFIGS)
                _CACHE[key] = kern
    return kern


def cache_size() -> int:
    return len(_CACHE)
