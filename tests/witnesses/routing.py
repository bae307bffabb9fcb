"""Broken route and moe_align implementations, one per property."""

import torch

from parity.reference import moe_align as ref_align
from parity.reference import route as ref_route
from tests.witnesses import witness

# --- route ----------------------------------------------------------------------------------------


def _route(
    logits,
    *,
    k,
    method="softmax",
    bias=None,
    n_group=1,
    topk_group=1,
    renormalize=True,
    routed_scaling_factor=1.0,
    weights_from_key=False,
    group_by_max=False,
    mask_value=float("-inf"),
    skip_renormalize=False,
    zero_init_topk=False,
    never_last=False,
    softplus_no_sqrt=False,
):
    """A float32 torch router with switchable bugs (no validation: callers validate)."""
    x = logits.float()
    if method == "softmax":
        key, score = x, torch.softmax(x, -1)
    else:
        if method == "sqrtsoftplus":  # as vLLM's torch fallback: F.softplus, then sqrt
            score = torch.nn.functional.softplus(x)
            score = score if softplus_no_sqrt else score.sqrt()
        else:
            score = torch.sigmoid(x)
        key = score + bias.float()
    t, e = key.shape
    if n_group > 1:
        groups = key.view(t, n_group, e // n_group)
        gs = groups.amax(-1) if group_by_max else groups.topk(2, -1).values.sum(-1)
        keep = torch.zeros_like(gs, dtype=torch.bool)
        keep.scatter_(1, gs.topk(topk_group, -1).indices, True)
        keep = keep.repeat_interleave(e // n_group, 1)
        key = torch.where(keep, key, torch.full_like(key, mask_value))
    if never_last:
        key = key.clone()
        key[:, -1] = float("-inf")
    if zero_init_topk:  # a running max that starts at 0 with index 0, not at -inf
        ids = torch.zeros(t, k, dtype=torch.long)
        left = key.clone()
        for j in range(k):
            best, arg = left.max(-1)
            ids[:, j] = torch.where(best > 0, arg, torch.zeros_like(arg))
            left.scatter_(1, ids[:, j : j + 1], float("-inf"))
    else:
        ids = key.topk(k, -1).indices
    w = (key if weights_from_key else score).gather(1, ids)
    if renormalize and not skip_renormalize:
        w = w / w.sum(-1, keepdim=True)
    return (w * routed_scaling_factor).float(), ids.to(torch.int32)


def _valid(logits, **kw):
    ref_route(logits, **kw)  # the reference's validation (and nothing else)


@witness("route", "matches_reference", why="dsv3 weights taken from the biased key b, not s")
def route_weights_from_bias(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, weights_from_key=kw.get("method") == "dsv3", **kw)


@witness(
    "route",
    "matches_reference",
    why="sqrtsoftplus scores with softplus, no sqrt (ranks the same, wrong weights)",
)
def route_softplus_no_sqrt(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, softplus_no_sqrt=kw.get("method") == "sqrtsoftplus", **kw)


@witness("route", "matches_reference", why="sqrtsoftplus weights taken from the biased key")
def route_sqrtsoftplus_weights_from_bias(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, weights_from_key=kw.get("method") == "sqrtsoftplus", **kw)


@witness("route", "matches_reference", why="forgets to renormalize")
def route_no_renormalize(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, skip_renormalize=True, **kw)


@witness("route", "matches_reference", why="group score is the max, not the top-2 sum")
def route_group_max(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, group_by_max=True, **kw)


@witness(
    "route",
    "matches_reference",
    why="masks dropped groups with 0, not -inf: wrong with negative keys (FlashInfer #2822 class)",
)
def route_mask_zero(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, mask_value=0.0, **kw)


@witness(
    "route",
    "matches_reference",
    why="top-k with a running max initialised to 0: all-negative logits pick expert 0",
)
def route_zero_init_topk(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, zero_init_topk=True, **kw)


@witness("route", "matches_reference", why="returns int64 ids")
def route_int64_ids(logits, **kw):
    w, ids = ref_route(logits, **kw)
    return w, ids.long()


@witness("route", "writes_all_outputs", why="torch.empty outputs, the last row never written")
def route_skips_last_row(logits, **kw):
    w, ids = ref_route(logits, **kw)
    ow, oi = torch.empty_like(w), torch.empty_like(ids)
    if w.shape[0] > 1:
        ow[:-1], oi[:-1] = w[:-1], ids[:-1]
    elif w.shape[0] == 1:
        ow.copy_(w)
        oi.copy_(ids)
    return ow, oi


@witness("route", "inputs_unchanged", why="subtracts the row max from the logits in place")
def route_in_place(logits, **kw):
    if logits.numel():
        logits.sub_(logits.amax(-1, keepdim=True) + 1)
    return ref_route(logits, **kw)


_calls = [0]


@witness("route", "deterministic", why="every other call perturbs one weight")
def route_flaky(logits, **kw):
    w, ids = ref_route(logits, **kw)
    _calls[0] += 1
    if _calls[0] % 2 and w.numel():
        w.view(-1)[0] += 0.25
    return w, ids


@witness("route", "nan_policy", why="replaces NaN logits by 0")
def route_drops_nan(logits, **kw):
    return ref_route(torch.nan_to_num(logits), **kw)


@witness("route", "nan_policy", why="NaN rows from NaN logits only (a NaN bias: finite weights)")
def route_nan_from_logits_only(logits, *, bias=None, **kw):
    clean = None if bias is None else torch.nan_to_num(bias)
    w, ids = ref_route(logits, bias=clean, **kw)
    return w, ids


@witness("route", "error_parity", why="accepts a bias with method='softmax' (ignores it)")
def route_ignores_bias(logits, *, method="softmax", bias=None, **kw):
    if method == "softmax":
        bias = None
    return ref_route(logits, method=method, bias=bias, **kw)


@witness("route", "token_permutation", why="row 0 gets the last row's result")
@witness("route", "batch_split", why="row 0 gets the last row's result")
def route_row_mixup(logits, **kw):
    w, ids = ref_route(logits, **kw)
    if w.shape[0] > 1:
        w[0], ids[0] = w[-1], ids[-1]
    return w, ids


@witness("route", "expert_relabel", why="never selects the last expert (loop bound off by one)")
def route_never_last(logits, **kw):
    _valid(logits, **kw)
    return _route(logits, never_last=True, **kw)


# --- moe_align ------------------------------------------------------------------------------------


def _align(
    topk_ids,
    *,
    num_experts,
    block_size,
    pad_off_by_one=False,
    descending=False,
    minus_one_is_last=False,
    label_shift=False,
    empty_pads=False,
    drop_first=False,
):
    """A torch moe_align with switchable bugs (no validation)."""
    flat = topk_ids.reshape(-1).long()
    n = flat.numel()
    e = num_experts
    size = n + e * (block_size - 1)
    if minus_one_is_last:  # python indexing: counts[-1] is expert E-1's counter
        flat = torch.where(flat < 0, e - 1, flat)
    if drop_first and n:
        flat = flat.clone()
        flat[0] = -1
    if empty_pads:
        sorted_ids = torch.empty(size, dtype=torch.int32)
    else:
        sorted_ids = torch.full((size,), n, dtype=torch.int32)
    expert_ids = torch.full((size // block_size + 1,), -1, dtype=torch.int32)
    order = range(e - 1, -1, -1) if descending else range(e)
    pos = blk = 0
    for ex in order:
        idx = (flat == ex).nonzero().view(-1)
        if idx.numel() == 0:
            continue
        nblk = idx.numel() // block_size + 1 if pad_off_by_one else -(-idx.numel() // block_size)
        sorted_ids[pos : pos + idx.numel()] = idx.to(torch.int32)
        if empty_pads:
            pass  # the pads of this segment stay unwritten
        label = ex + 1 if label_shift else ex
        expert_ids[blk : blk + nblk] = label
        pos += nblk * block_size
        blk += nblk
    return sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32)


def _checked(topk_ids, **kw):
    ref_align(topk_ids, **kw)


@witness("moe_align", "matches_reference", why="pads a full segment with one extra block")
def align_pad_off_by_one(topk_ids, **kw):
    _checked(topk_ids, **kw)
    return _align(topk_ids, pad_off_by_one=True, **kw)


@witness("moe_align", "matches_reference", why="experts in descending order")
def align_descending(topk_ids, **kw):
    _checked(topk_ids, **kw)
    return _align(topk_ids, descending=True, **kw)


@witness("moe_align", "matches_reference", why="-1 counted as expert E-1 (negative indexing)")
def align_minus_one_is_last(topk_ids, **kw):
    _checked(topk_ids, **kw)
    return _align(topk_ids, minus_one_is_last=True, **kw)


@witness("moe_align", "matches_reference", why="expert_ids labels off by one")
def align_label_shift(topk_ids, **kw):
    _checked(topk_ids, **kw)
    return _align(topk_ids, label_shift=True, **kw)


@witness("moe_align", "writes_all_outputs", why="torch.empty sorted_ids: pads never written")
def align_unwritten_pads(topk_ids, **kw):
    _checked(topk_ids, **kw)
    return _align(topk_ids, empty_pads=True, **kw)


@witness("moe_align", "inputs_unchanged", why="sorts topk_ids in place")
def align_sorts_in_place(topk_ids, **kw):
    out = ref_align(topk_ids, **kw)
    topk_ids.copy_(torch.sort(topk_ids, dim=-1, descending=True).values)
    return out


_align_calls = [0]


@witness("moe_align", "deterministic", why="every other call drops the first sorted id")
def align_flaky(topk_ids, **kw):
    s, e, n = ref_align(topk_ids, **kw)
    _align_calls[0] += 1
    if _align_calls[0] % 2 and int(n[0]) > 0:
        s[0] = topk_ids.numel()
    return s, e, n


@witness("moe_align", "error_parity", why="no validation: out-of-range ids are skipped")
def align_no_validation(topk_ids, *, num_experts, block_size):
    if topk_ids.dim() != 2 or topk_ids.is_floating_point():
        raise TypeError("moe_align: topk_ids: bad")
    ids = torch.where(topk_ids < num_experts, topk_ids, -1).clamp(min=-1)
    return ref_align(ids.to(torch.int32), num_experts=num_experts, block_size=block_size)


@witness("moe_align", "token_permutation", why="treats flat index 0 as padding")
def align_drops_first(topk_ids, **kw):
    _checked(topk_ids, **kw)
    return _align(topk_ids, drop_first=True, **kw)
