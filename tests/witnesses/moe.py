"""Broken fused_moe implementations, one per property."""

import torch

from parity.reference import fused_moe as ref_moe
from parity.reference.quant import _fp8_quant_f32
from parity.reference.swiglu import swiglu_math
from tests.witnesses import witness


@witness("fused_moe", "matches_reference", why="no -1 masking: -1 indexes the last expert")
def moe_minus_one_is_last(x, w13, w2, topk_weights, topk_ids, **kw):
    ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)  # validation
    ids = torch.where(topk_ids < 0, w13.shape[0] - 1, topk_ids)
    return ref_moe(x, w13, w2, topk_weights, ids, **kw)


@witness("fused_moe", "matches_reference", why="applies the router weights twice")
def moe_weights_twice(x, w13, w2, topk_weights, topk_ids, **kw):
    return ref_moe(x, w13, w2, topk_weights * topk_weights, topk_ids, **kw)


def _swap_halves(t, layout, quant):
    """w13 (or its row scales) with gate and up rows exchanged."""
    rows = t.shape[1]
    if layout == "concat":
        return torch.cat([t[:, rows // 2 :], t[:, : rows // 2]], 1)
    return t.view(t.shape[0], rows // 2, 2, *t.shape[2:]).flip(2).reshape(t.shape)


@witness("fused_moe", "matches_reference", why="swaps gate and up")
def moe_swaps_gate_up(x, w13, w2, topk_weights, topk_ids, *, quant="none", **kw):
    layout = kw.get("layout", "concat")
    if quant == "fp8_block":
        raise NotImplementedError  # block scales span both halves
    w13 = _swap_halves(w13, layout, quant)
    if quant == "mxfp4":
        kw["w13_scale"] = _swap_halves(kw["w13_scale"], layout, quant)
    return ref_moe(x, w13, w2, topk_weights, topk_ids, quant=quant, **kw)


@witness("fused_moe", "matches_reference", why="ignores swiglu_limit")
def moe_ignores_limit(x, w13, w2, topk_weights, topk_ids, *, swiglu_limit=None, **kw):
    ref_moe(x, w13, w2, topk_weights, topk_ids, swiglu_limit=swiglu_limit, **kw)
    return ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)


def _transposed_index(s):
    """Block scales read as s[c, r] (wrapped into range) instead of s[r, c]."""
    _, nr, nc = s.shape
    r = torch.arange(nr).view(nr, 1).expand(nr, nc)
    c = torch.arange(nc).view(1, nc).expand(nr, nc)
    return s[:, c % nr, r % nc].contiguous()


@witness("fused_moe", "matches_reference", why="fp8 block scales indexed transposed")
def moe_transposed_scales(x, w13, w2, topk_weights, topk_ids, *, quant="none", **kw):
    if quant != "fp8_block":
        raise NotImplementedError
    ref_moe(x, w13, w2, topk_weights, topk_ids, quant=quant, **kw)
    kw["w13_scale"] = _transposed_index(kw["w13_scale"])
    kw["w2_scale"] = _transposed_index(kw["w2_scale"])
    return ref_moe(x, w13, w2, topk_weights, topk_ids, quant=quant, **kw)


@witness("fused_moe", "matches_reference", why="rounds the SwiGLU output to fp8 without a scale")
def moe_fp8_no_scale(x, w13, w2, topk_weights, topk_ids, *, quant="none", **kw):
    if quant != "fp8_block":
        raise NotImplementedError
    ref_moe(x, w13, w2, topk_weights, topk_ids, quant=quant, **kw)
    br, bc = tuple(kw.get("block_shape", (128, 128)))
    ids = topk_ids.long()
    valid = ids >= 0
    w = torch.where(valid, topk_weights, 0.0)
    xin = x.float()
    if kw.get("apply_router_weight_on_input", False):
        xin, w = xin * w, valid.float()
    q, s = _fp8_quant_f32(xin, bc, "fp32", 1e-10)
    xin = q * s.repeat_interleave(bc, -1)

    def deq(qw, sw):
        full = sw.repeat_interleave(br, -2).repeat_interleave(bc, -1)
        return qw.float() * full[..., : qw.shape[-2], : qw.shape[-1]]

    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
    for i in torch.unique(ids[valid]).tolist():
        rows, slots = (ids == i).nonzero(as_tuple=True)
        h1 = xin[rows] @ deq(w13[i], kw["w13_scale"][i]).T
        act = swiglu_math(
            h1,
            limit=kw.get("swiglu_limit"),
            alpha=kw.get("swiglu_alpha", 1.0),
            beta=kw.get("swiglu_beta", 0.0),
            layout=kw.get("layout", "concat"),
            clamp_mode=kw.get("swiglu_clamp_mode", "pre"),
            dtype=torch.float32,
        )
        act = act.clamp(-448, 448).to(torch.float8_e4m3fn).float()  # the bug: no scale
        y = act @ deq(w2[i], kw["w2_scale"][i]).T
        out.index_add_(0, rows, w[rows, slots].unsqueeze(-1) * y)
    return out.to(x.dtype)


@witness("fused_moe", "writes_all_outputs", why="rows whose experts are all -1 left unwritten")
def moe_skips_empty_rows(x, w13, w2, topk_weights, topk_ids, **kw):
    out = ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)
    res = torch.empty_like(out)
    used = (topk_ids >= 0).any(-1)
    res[used] = out[used]
    return res


@witness("fused_moe", "inputs_unchanged", why="normalizes topk_weights in place")
def moe_normalizes_in_place(x, w13, w2, topk_weights, topk_ids, **kw):
    out = ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)
    topk_weights.div_(topk_weights.sum(-1, keepdim=True) + 1)
    return out


_calls = [0]


@witness("fused_moe", "deterministic", why="every other call perturbs one element")
def moe_flaky(x, w13, w2, topk_weights, topk_ids, **kw):
    out = ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)
    _calls[0] += 1
    if _calls[0] % 2 and out.numel():
        out.view(-1)[0] = out.view(-1)[0] * 2 + 1
    return out


@witness("fused_moe", "nan_policy", why="replaces NaN in x by 0")
def moe_drops_nan(x, w13, w2, topk_weights, topk_ids, **kw):
    return ref_moe(torch.nan_to_num(x), w13, w2, topk_weights, topk_ids, **kw)


@witness("fused_moe", "nan_policy", why="a skipped slot's (NaN) weight still multiplies a zero")
def moe_nan_weight_of_skipped_slot(x, w13, w2, topk_weights, topk_ids, **kw):
    out = ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)
    leak = torch.where(topk_ids < 0, topk_weights, 0.0).sum(-1, keepdim=True) * 0.0
    return (out.float() + leak).to(out.dtype)


@witness("fused_moe", "error_parity", why="clamps out-of-range ids instead of raising")
def moe_clamps_ids(x, w13, w2, topk_weights, topk_ids, **kw):
    if isinstance(topk_ids, torch.Tensor) and isinstance(w13, torch.Tensor) and w13.dim() == 3:
        topk_ids = topk_ids.clamp(-1, w13.shape[0] - 1)
    return ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)


@witness("fused_moe", "token_permutation", why="row 0 gets the last row's result")
@witness("fused_moe", "batch_split", why="row 0 gets the last row's result")
def moe_row_mixup(x, w13, w2, topk_weights, topk_ids, **kw):
    out = ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)
    if out.shape[0] > 1:
        out[0] = out[-1]
    return out


@witness("fused_moe", "expert_relabel", why="the last expert reads expert 0's weights")
def moe_last_expert_aliased(x, w13, w2, topk_weights, topk_ids, **kw):
    if w13.shape[0] > 1:
        w13, w2 = w13.clone(), w2.clone()
        w13[-1], w2[-1] = w13[0], w2[0]
        for name in ("w13_scale", "w2_scale"):
            if kw.get(name) is not None:
                kw[name] = kw[name].clone()
                kw[name][-1] = kw[name][0]
    return ref_moe(x, w13, w2, topk_weights, topk_ids, **kw)
