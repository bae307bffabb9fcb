"""Broken hyper-connection implementations (sinkhorn, mhc_pre, mhc_post, mhc_fused_post_pre,
mhc_head), one or more per property."""

import torch

from parity.reference import mhc_fused_post_pre, mhc_head, mhc_post, mhc_pre, sinkhorn
from tests.witnesses import witness

# --- generic breakages (wrap a correct implementation) -----------------------------------------


def _outs(out):
    return (list(out), True) if isinstance(out, tuple) else ([out], False)


def _back(outs, was_tuple):
    return tuple(outs) if was_tuple else outs[0]


def _skip_last_row(fn):
    """Every output's last token row is left as torch.empty memory."""

    def impl(*args, **kw):
        outs, tup = _outs(fn(*args, **kw))
        fresh = []
        for o in outs:
            e = torch.empty_like(o)
            if o.shape[0] > 1:
                e[:-1] = o[:-1]
            elif o.shape[0] == 1:
                e.copy_(o)
            fresh.append(e)
        return _back(fresh, tup)

    return impl


def _flaky(fn):
    calls = [0]

    def impl(*args, **kw):
        outs, tup = _outs(fn(*args, **kw))
        calls[0] += 1
        o = outs[-1]
        if calls[0] % 2 and o.numel():
            o.view(-1)[-1] = o.view(-1)[-1] * 2 + 1
        return _back(outs, tup)

    return impl


def _row0_from_last(fn):
    """Token 0 of every output is a copy of the last token's (a tile-indexing bug)."""

    def impl(*args, **kw):
        outs, tup = _outs(fn(*args, **kw))
        for o in outs:
            if o.dim() >= 1 and o.shape[0] > 1:
                o[0] = o[-1]
        return _back(outs, tup)

    return impl


# --- sinkhorn -----------------------------------------------------------------------------------


def _sinkhorn_math(x, iters, eps, *, bug=None):
    p = x.float().softmax(-1)
    if bug != "no_softmax_eps":
        p = p + eps
    p = p / (p.sum(-2, keepdim=True) + eps)
    loops = iters - 2 if bug == "one_fewer" else iters - 1
    for _ in range(max(loops, 0)):
        p = p / (p.sum(-1, keepdim=True) + eps)
        if bug == "col0_sum":
            p = p / (p[..., :, :1].sum(-2, keepdim=True) + eps)
        else:
            p = p / (p.sum(-2, keepdim=True) + eps)
    if bug == "ends_on_rows":
        p = p / (p.sum(-1, keepdim=True) + eps)
    return p


@witness("sinkhorn", "matches_reference", why="one more row step at the end: ends on rows")
def sinkhorn_ends_on_rows(logits, *, iters=20, eps=1e-6):
    return _sinkhorn_math(logits, iters, eps, bug="ends_on_rows")


@witness("sinkhorn", "matches_reference", why="one iteration fewer")
def sinkhorn_one_fewer(logits, *, iters=20, eps=1e-6):
    return _sinkhorn_math(logits, iters, eps, bug="one_fewer")


@witness("sinkhorn", "matches_reference", why="no + eps after the softmax")
def sinkhorn_eps_misplaced(logits, *, iters=20, eps=1e-6):
    return _sinkhorn_math(logits, iters, eps, bug="no_softmax_eps")


@witness("sinkhorn", "stream_permutation", why="column steps divide by column 0's sum")
def sinkhorn_col0_sum(logits, *, iters=20, eps=1e-6):
    return _sinkhorn_math(logits, iters, eps, bug="col0_sum")


witness("sinkhorn", "writes_all_outputs", why="last matrix never written")(_skip_last_row(sinkhorn))
witness("sinkhorn", "deterministic", why="perturbs one element every other call")(_flaky(sinkhorn))
witness(
    "sinkhorn",
    "token_permutation",
    "batch_split",
    why="matrix 0 is computed from the last matrix",
)(_row0_from_last(sinkhorn))


@witness("sinkhorn", "inputs_unchanged", why="subtracts the row max from its input in place")
def sinkhorn_shifts_in_place(logits, *, iters=20, eps=1e-6):
    if logits.numel():
        logits.sub_(logits.amax(-1, keepdim=True))
    return sinkhorn(logits, iters=iters, eps=eps)


@witness("sinkhorn", "nan_policy", why="nan_to_num on the logits: NaN is dropped")
def sinkhorn_drops_nan(logits, *, iters=20, eps=1e-6):
    return sinkhorn(torch.nan_to_num(logits), iters=iters, eps=eps)


@witness("sinkhorn", "error_parity", why="no input validation")
def sinkhorn_no_validation(logits, *, iters=20, eps=1e-6):
    return _sinkhorn_math(logits, int(iters), eps)


# --- mhc_pre --------------------------------------------------------------------------------------


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 explicit mantissa bits, nearest-even), kept as float32."""
    b = x.float().contiguous().view(torch.int32)
    b = (b + 0xFFF + ((b >> 13) & 1)) & ~0x1FFF
    return b.view(torch.float32)


def _pre_math(
    residual,
    fn,
    hc_scale,
    hc_base,
    *,
    rms_eps=1e-6,
    pre_eps=1e-6,
    sinkhorn_eps=1e-6,
    post_mult=1.0,
    sinkhorn_iters=20,
    bug=None,
):
    t, hc, h = residual.shape
    r3 = residual.float()
    r = r3.reshape(t, hc * h)
    if bug == "mean_over_H":  # sum of all hc*H squares divided by H
        ms = r.square().sum(-1, keepdim=True) / h
    else:
        ms = r.square().mean(-1, keepdim=True)
    eps = 0.0 if bug == "no_rms_eps" else rms_eps
    a, f = (_tf32(r), _tf32(fn)) if bug == "tf32" else (r, fn)
    mixes = (a @ f.T) * torch.rsqrt(ms + eps)
    s = hc_scale
    order = (s[1], s[0], s[2]) if bug == "scale_order" else (s[0], s[1], s[2])
    scale = torch.cat([order[0].expand(hc), order[1].expand(hc), order[2].expand(hc * hc)])
    mixes = mixes * scale + hc_base
    pre = torch.sigmoid(mixes[:, :hc]) + pre_eps
    post = (torch.sigmoid(mixes[:, hc : 2 * hc]) * post_mult).unsqueeze(-1)
    comb = sinkhorn(mixes[:, 2 * hc :].reshape(t, hc, hc), iters=sinkhorn_iters, eps=sinkhorn_eps)
    if bug == "comb_transposed":
        comb = comb.transpose(-1, -2).contiguous()
    li = (pre.unsqueeze(-1) * r3).sum(1).to(residual.dtype)
    return post.contiguous(), comb, li


@witness("mhc_pre", "matches_reference", why="RMS mean over H, not over hc*H")
def pre_mean_over_h(*args, **kw):
    return _pre_math(*args, **kw, bug="mean_over_H")


@witness("mhc_pre", "matches_reference", why="rsqrt(mean(r**2)) without rms_eps")
def pre_no_rms_eps(*args, **kw):
    return _pre_math(*args, **kw, bug="no_rms_eps")


@witness("mhc_pre", "matches_reference", why="hc_scale[0] and [1] swapped in the repeat")
def pre_scale_order(*args, **kw):
    return _pre_math(*args, **kw, bug="scale_order")


@witness("mhc_pre", "matches_reference", why="TF32 GEMM: r and fn rounded to 10 mantissa bits")
def pre_tf32_gemm(*args, **kw):
    return _pre_math(*args, **kw, bug="tf32")


@witness("mhc_pre", "matches_reference", why="comb_res_mix transposed ([new, old])")
def pre_comb_transposed(*args, **kw):
    return _pre_math(*args, **kw, bug="comb_transposed")


witness("mhc_pre", "writes_all_outputs", why="last token row never written")(
    _skip_last_row(mhc_pre)
)
witness("mhc_pre", "deterministic", why="perturbs one element every other call")(_flaky(mhc_pre))
witness("mhc_pre", "token_permutation", "batch_split", why="token 0 copies the last token")(
    _row0_from_last(mhc_pre)
)


@witness("mhc_pre", "inputs_unchanged", why="negates the residual in place after use")
def pre_modifies_residual(residual, *args, **kw):
    out = mhc_pre(residual, *args, **kw)
    residual.neg_()
    return out


@witness("mhc_pre", "nan_policy", why="nan_to_num on the residual: NaN is dropped")
def pre_drops_nan(residual, *args, **kw):
    return mhc_pre(torch.nan_to_num(residual), *args, **kw)


@witness("mhc_pre", "error_parity", why="no input validation")
def pre_no_validation(residual, fn, hc_scale, hc_base, **kw):
    kw = dict(kw)
    kw["sinkhorn_iters"] = int(kw.get("sinkhorn_iters", 20))
    return _pre_math(residual.float(), fn.float(), hc_scale.float(), hc_base.float(), **kw)


# --- mhc_post -------------------------------------------------------------------------------------


def _post_math(x, residual, post_mix, comb, *, bug=None):
    t, hc, _ = residual.shape
    if bug == "post_2d_stream0" and post_mix.dim() == 2:
        post = post_mix[:, :1].unsqueeze(-1)  # stream 0's weight broadcast to every stream
    else:
        post = post_mix.reshape(t, hc, 1)
    c = comb.transpose(-1, -2) if bug == "liger" else comb
    mixed = torch.einsum("tij,tih->tjh", c.float(), residual.float())
    xp = x.float().unsqueeze(1) * post
    if bug == "round_twice":
        return (xp.to(residual.dtype).float() + mixed.to(residual.dtype).float()).to(residual.dtype)
    if bug == "no_round":
        return xp + mixed
    if bug == "sparse":  # skips zero weights: 0 * NaN is dropped
        mixed = torch.einsum(
            "tij,tih->tjh", c.float(), torch.nan_to_num(residual.float())
        ) + torch.where(
            (c != 0).unsqueeze(-1) & residual.float().isnan().unsqueeze(2),
            float("nan"),
            0.0,
        ).sum(1)
    return (xp + mixed).to(residual.dtype)


@witness("mhc_post", "matches_reference", why="Liger's transposed comb convention [new, old]")
def post_liger_convention(x, residual, post_mix, comb):
    return _post_math(x, residual, post_mix, comb, bug="liger")


@witness("mhc_post", "matches_reference", why="a [T, hc] post_mix broadcast as stream 0's")
def post_bad_broadcast(x, residual, post_mix, comb):
    return _post_math(x, residual, post_mix, comb, bug="post_2d_stream0")


@witness("mhc_post", "matches_reference", why="new_residual not rounded (float32 out)")
def post_not_rounded(x, residual, post_mix, comb):
    return _post_math(x, residual, post_mix, comb, bug="no_round")


@witness("mhc_post", "matches_reference", why="rounds both halves, then the sum: twice")
def post_rounded_twice(x, residual, post_mix, comb):
    return _post_math(x, residual, post_mix, comb, bug="round_twice")


witness("mhc_post", "writes_all_outputs", why="last token row never written")(
    _skip_last_row(mhc_post)
)
witness("mhc_post", "deterministic", why="perturbs one element every other call")(_flaky(mhc_post))
witness("mhc_post", "token_permutation", "batch_split", why="token 0 copies the last token")(
    _row0_from_last(mhc_post)
)


@witness("mhc_post", "inputs_unchanged", why="writes new_residual into residual in place")
def post_in_place(x, residual, post_mix, comb):
    return residual.copy_(mhc_post(x, residual, post_mix, comb))


@witness("mhc_post", "nan_policy", why="skips zero comb weights, so 0 * NaN never happens")
def post_sparse_drops_nan(x, residual, post_mix, comb):
    return _post_math(x, residual, post_mix, comb, bug="sparse")


@witness("mhc_post", "error_parity", why="no input validation")
def post_no_validation(x, residual, post_mix, comb):
    return _post_math(x, residual.float(), post_mix.float(), comb.float())


# --- mhc_fused_post_pre ---------------------------------------------------------------------------


@witness("mhc_fused_post_pre", "matches_reference", why="the pre reads the stale residual")
def fused_stale_residual(x, residual, post_mix, comb, fn, hc_scale, hc_base, **kw):
    new = mhc_post(x, residual, post_mix, comb)
    return (new, *mhc_pre(residual, fn, hc_scale, hc_base, **kw))


@witness("mhc_fused_post_pre", "matches_reference", why="new_residual in the Liger convention")
def fused_liger(x, residual, post_mix, comb, fn, hc_scale, hc_base, **kw):
    c = comb.transpose(-1, -2).contiguous()
    return mhc_fused_post_pre(x, residual, post_mix, c, fn, hc_scale, hc_base, **kw)


@witness("mhc_fused_post_pre", "matches_reference", why="TF32 GEMM in the pre")
def fused_tf32(x, residual, post_mix, comb, fn, hc_scale, hc_base, **kw):
    new = mhc_post(x, residual, post_mix, comb)
    return (new, *_pre_math(new, fn, hc_scale, hc_base, **kw, bug="tf32"))


witness("mhc_fused_post_pre", "writes_all_outputs", why="last token row never written")(
    _skip_last_row(mhc_fused_post_pre)
)
witness("mhc_fused_post_pre", "deterministic", why="perturbs one element every other call")(
    _flaky(mhc_fused_post_pre)
)
witness(
    "mhc_fused_post_pre",
    "token_permutation",
    "batch_split",
    why="token 0 copies the last token",
)(_row0_from_last(mhc_fused_post_pre))


@witness("mhc_fused_post_pre", "inputs_unchanged", why="updates residual in place")
def fused_in_place(x, residual, post_mix, comb, *rest, **kw):
    out = mhc_fused_post_pre(x, residual, post_mix, comb, *rest, **kw)
    residual.copy_(out[0])
    return out


@witness("mhc_fused_post_pre", "nan_policy", why="nan_to_num on x: NaN is dropped")
def fused_drops_nan(x, *rest, **kw):
    return mhc_fused_post_pre(torch.nan_to_num(x), *rest, **kw)


@witness("mhc_fused_post_pre", "error_parity", why="no input validation")
def fused_no_validation(x, residual, post_mix, comb, fn, hc_scale, hc_base, **kw):
    new = _post_math(x, residual.float(), post_mix.float(), comb.float())
    kw["sinkhorn_iters"] = int(kw.get("sinkhorn_iters", 20))
    return (new, *_pre_math(new, fn.float(), hc_scale.float(), hc_base.float(), **kw))


# --- mhc_head -------------------------------------------------------------------------------------


def _head_math(residual, fn, hc_scale, hc_base, *, rms_eps=1e-6, hc_eps=1e-6, bug=None):
    t, hc, h = residual.shape
    r3 = residual.float()
    r = r3.reshape(t, hc * h)
    rn = r * torch.rsqrt(r.square().mean(-1, keepdim=True) + rms_eps)
    pre = torch.sigmoid((rn @ fn.float().T) * hc_scale.float() + hc_base.float())
    if bug != "no_hc_eps":
        pre = pre + hc_eps
    return (pre.unsqueeze(-1) * r3).sum(1).to(residual.dtype)


@witness("mhc_head", "matches_reference", why="sigmoid without + hc_eps")
def head_no_hc_eps(*args, **kw):
    return _head_math(*args, **kw, bug="no_hc_eps")


witness("mhc_head", "writes_all_outputs", why="last token row never written")(
    _skip_last_row(mhc_head)
)
witness("mhc_head", "deterministic", why="perturbs one element every other call")(_flaky(mhc_head))
witness("mhc_head", "token_permutation", "batch_split", why="token 0 copies the last token")(
    _row0_from_last(mhc_head)
)


@witness("mhc_head", "inputs_unchanged", why="normalizes the residual in place")
def head_in_place(residual, *args, **kw):
    out = mhc_head(residual, *args, **kw)
    residual.neg_()
    return out


@witness("mhc_head", "nan_policy", why="nan_to_num on the residual: NaN is dropped")
def head_drops_nan(residual, *args, **kw):
    return mhc_head(torch.nan_to_num(residual), *args, **kw)


@witness("mhc_head", "error_parity", why="no input validation")
def head_no_validation(residual, fn, hc_scale, hc_base, **kw):
    return _head_math(residual, fn, hc_scale, hc_base, **kw)
