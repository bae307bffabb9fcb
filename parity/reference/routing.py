"""Reference router top-k and token alignment (`docs/ops.md`: route, moe_align).

Selection is deterministic: the reference ranks by (-key, index), so among equal keys the lowest
expert (group) index wins, as vLLM's stable warp sort does. The contract accepts any tie-break
and any choice within the rounding of the logit dtype; `check_route_selection` (a helper of the
tolerance checks, not a contract op) decides that for an implementation's ids.

Choices where the contract is silent:

- `bias` is required for "dsv3" and "sqrtsoftplus" (DeepSeek's noaux_tc gate always has
  `e_score_correction_bias`) and must be None for "softmax"; it may be bf16, fp16 or fp32,
  upcast exactly.
- "sqrtsoftplus" (not in the contract's text; DeepSeek-V4, see docs/contract-notes.md item 1) is
  "dsv3" with the score `s = sqrt(softplus(logits))` in place of `sigmoid(logits)`. softplus is
  the exact `log(1 + exp(l))`, computed as `logaddexp(l, 0)` (torch's `F.softplus` returns `l`
  itself above its threshold 20, an error below float32 rounding but not float64's).
- Grouping is defined for "dsv3" and "sqrtsoftplus" (the grouped top-k of the key, as dsv3;
  vLLM's V4 router has no groups, i.e. `n_group == 1`): "softmax" requires `n_group == 1`
  (vLLM's DeepSeek-V2 softmax-with-groups scores a group by its max instead; the contract does
  not define that).
- A group of one expert scores that expert's key ("the two largest" of one). vLLM's torch
  `grouped_topk` raises there (`topk(2)` on a size-1 dim) and its CUDA `topk_with_k2` returns
  -inf for every group, so neither defines it.
- NaN: a token with a NaN key (NaN logit, or NaN bias) gets all-NaN weights, since every choice
  depends on every key; its ids are those of ranking NaN keys last, and the checker accepts any
  distinct in-range ids for it. Renormalization is an unguarded division (0/0 gives NaN, as in
  vLLM), reached only when every selected score underflows to 0.
"""

from __future__ import annotations

import torch

from parity.reference.common import (
    FLOAT_DTYPES,
    check_choice,
    check_float,
    check_int,
    check_tensor,
    compute_dtype,
    fail,
    finish,
)

METHODS = ("softmax", "dsv3", "sqrtsoftplus")
_U32 = 2.0**-24  # float32 unit roundoff


# --- shared pieces --------------------------------------------------------------------------------


def _check_route_args(op: str, logits, k, method, bias, n_group, topk_group) -> None:
    check_tensor(op, "logits", logits, dtypes=FLOAT_DTYPES, ndim=2)
    e = logits.shape[1]
    check_choice(op, "method", method, METHODS)
    check_int(op, "n_group", n_group, lo=1)
    check_int(op, "topk_group", topk_group, lo=1, hi=n_group)
    if method == "softmax":
        if bias is not None:
            fail(op, "bias", "None with method='softmax'", type(bias).__name__)
        if n_group != 1:
            fail(op, "n_group", "1 with method='softmax' (groups need a biased method)", n_group)
        most = e
    else:
        check_tensor(op, "bias", bias, dtypes=FLOAT_DTYPES, shape=(e,), device=logits.device)
        if e % n_group != 0:
            fail(op, "n_group", f"a divisor of E={e} (logits dim 1)", n_group)
        most = topk_group * (e // n_group)
    check_int(op, "k", k, lo=1)
    if k > most:
        fail(op, "k", f"at most {most} (the experts the kept groups hold)", k)


def _keys(logits, method: str, bias, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(selection key, weight score) per expert in `dtype`."""
    x = logits.to(dtype)
    if method == "softmax":
        # softmax is increasing in the logit, so the exact logit ranks as the exact p does
        # (a rounded p could tie two different logits).
        return x, torch.softmax(x, dim=-1)
    s = _sqrt_softplus(x) if method == "sqrtsoftplus" else torch.sigmoid(x)
    return s + bias.to(dtype), s


def _sqrt_softplus(x: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V4's score `sqrt(softplus(x))`, softplus the exact `log1p(exp(x))` (no linear
    regime above a threshold as in `F.softplus`); 0 at -inf, inf at inf, NaN at NaN."""
    return torch.sqrt(torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device)))


def _group_scores(key: torch.Tensor, n_group: int) -> torch.Tensor:
    """Sum of the two largest keys of each group (the one key of a one-expert group)."""
    t, e = key.shape
    groups = key.reshape(t, n_group, e // n_group)  # explicit size: T may be 0
    return groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)


def _stable_topk(v: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest per row; equal values in index order (lowest first)."""
    return torch.sort(v, dim=-1, descending=True, stable=True).indices[:, :k]


def _select(key: torch.Tensor, k: int, n_group: int, topk_group: int) -> torch.Tensor:
    """Grouped top-k of `key [T, E]` (NaN ranks last): expert ids int64 [T, k]."""
    t, e = key.shape
    key = torch.where(key.isnan(), float("-inf"), key)
    size = e // n_group
    if n_group == 1:  # the only group is always kept
        cand = torch.arange(e, device=key.device).expand(t, e)
    else:
        # Candidates in ascending expert order, so the stable sort below breaks ties by index.
        groups = _stable_topk(_group_scores(key, n_group), topk_group).sort(-1).values
        cand = groups.unsqueeze(-1) * size + torch.arange(size, device=key.device)
        cand = cand.reshape(t, topk_group * size)
    return cand.gather(1, _stable_topk(key.gather(1, cand), k))


# --- route ----------------------------------------------------------------------------------------


def validate_route(
    logits,
    *,
    k,
    method="softmax",
    bias=None,
    n_group=1,
    topk_group=1,
    renormalize=True,
    routed_scaling_factor=1.0,
) -> float:
    """Every check of route's input, before any work (shared with the fast paths so their
    errors match): returns routed_scaling_factor as a float."""
    op = "route"
    _check_route_args(op, logits, k, method, bias, n_group, topk_group)
    if not isinstance(renormalize, bool):
        fail(op, "renormalize", "a bool", type(renormalize).__name__, kind=TypeError)
    return check_float(op, "routed_scaling_factor", routed_scaling_factor, positive=True)


def route(
    logits: torch.Tensor,
    *,
    k: int,
    method: str = "softmax",
    bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    renormalize: bool = True,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router top-k: `logits [T, E]` -> (weights float32 [T, k], ids int32 [T, k]).

    "softmax": top-k of `p = softmax(logits)`, weights the selected p. "dsv3": `s =
    sigmoid(logits)`, `b = s + bias`; keep the `topk_group` groups (of `n_group` equal groups)
    with the largest sum of their two largest b, take the top-k of b among their experts;
    weights the selected s. "sqrtsoftplus" (DeepSeek-V4): as "dsv3" with `s =
    sqrt(softplus(logits))`, softplus exactly `log(1 + exp(l))`. Then divide by the sum of the
    k weights if `renormalize`, and multiply by `routed_scaling_factor`. Computed in
    `compute_dtype()`; ties go to the lowest index. The order of the k entries is by decreasing
    key.
    """
    scale = validate_route(
        logits,
        k=k,
        method=method,
        bias=bias,
        n_group=n_group,
        topk_group=topk_group,
        renormalize=renormalize,
        routed_scaling_factor=routed_scaling_factor,
    )
    key, score = _keys(logits, method, bias, compute_dtype())
    ids = _select(key, k, n_group, topk_group)
    w = score.gather(1, ids)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    w = w * scale
    w = torch.where(key.isnan().any(-1, keepdim=True), float("nan"), w)
    return finish(w, torch.float32), ids.to(torch.int32).contiguous()


# --- selection tolerance (helper of the tolerance checks, not a contract op) ----------------------


def _finite_or_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, 0.0)


def route_key_bounds(logits, *, method: str = "softmax", bias=None) -> tuple[torch.Tensor, ...]:
    """Float64 bounds `(lo, hi)` `[T, E]` on each expert's selection key, unvalidated.

    The margin is the rounding of the logit dtype: every logit may move by half an ulp of its
    dtype (bounded by `u * |l|`, u the unit roundoff, plus the subnormal spacing), pushed
    through the monotone key function; plus 8 float32 unit roundoffs of the magnitudes the key
    is computed from, for a kernel's own float32 evaluation. "dsv3": the key is `sigmoid(l) +
    bias`, slack `8 u32 (|s| + |b|)` (sigmoid's few-ulp error and the rounding of the bias sum,
    which dominates for DeepSeek-V4's biases near 8). "sqrtsoftplus": the key is
    `sqrt(softplus(l)) + bias`, increasing in l (derivative `sigmoid(l) / (2 s)`, at most 0.32,
    near l = 0.92), so the logit margin goes through it exactly as for sigmoid; slack
    `8 u32 ((1 + |l|) s + |s + bias|)`: a float32 softplus through a fast exp has a relative
    error of at most the exp's `(2 + |l|) u32` (`log1p(y)`'s condition in y is at most 1),
    halved by the sqrt, plus the bias sum's rounding. (A kernel that rounds `1 + exp(l)` before
    a plain log loses the whole score below l ~ -16, far beyond this, and is rejected.)
    "softmax": the key is the logit itself (p
    ranks as the logit does), slack `8 u32 (1 + |l| + max|l|)` for the rounding of `l - max` and
    of `exp`. Infinite logits get no margin.
    """
    x = logits.to(torch.float64)
    info = torch.finfo(logits.dtype)
    u = info.eps / 2
    half_ulp = _finite_or_zero(u * x.abs() + info.tiny * info.eps)
    half_ulp = torch.where(torch.isfinite(x), half_ulp, 0.0)
    if method == "softmax":
        biggest = _finite_or_zero(x).abs().amax(-1, keepdim=True)
        slack = _finite_or_zero(8 * _U32 * (1 + x.abs() + biggest))
        return x - half_ulp - slack, x + half_ulp + slack
    b = bias.to(torch.float64)
    if method == "sqrtsoftplus":
        s_lo, s_hi = _sqrt_softplus(x - half_ulp), _sqrt_softplus(x + half_ulp)
        slack = _finite_or_zero(8 * _U32 * ((1 + x.abs()) * s_hi + (s_hi + b).abs()))
        return s_lo + b - slack, s_hi + b + slack
    s_lo, s_hi = torch.sigmoid(x - half_ulp), torch.sigmoid(x + half_ulp)
    slack = _finite_or_zero(8 * _U32 * (s_hi + (s_hi + b).abs()))
    return s_lo + b - slack, s_hi + b + slack


def check_route_selection(
    logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    k: int,
    method: str = "softmax",
    bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
) -> torch.Tensor:
    """Per token, whether `ids [T, k]` is an acceptable selection of `route`: bool [T].

    Each key may lie anywhere in `route_key_bounds`. The ids must be k distinct experts in
    `[0, E)`, and there must be a set G of `topk_group` groups holding them all such that
    (groups) every group in G can score at least as high as every group outside G, and
    (experts) every chosen expert can key at least as high as every unchosen expert of G, each
    at the favourable end of its bounds (group scores: the two-largest sum of the bounds, plus a
    float32 rounding of the sum). The two conditions are checked with independent placements,
    a little looser than one common placement. Rows with a NaN key accept any distinct in-range
    ids. With `n_group == 1` this is: min over chosen of hi >= max over unchosen of lo.
    """
    op = "check_route_selection"
    _check_route_args(op, logits, k, method, bias, n_group, topk_group)
    t = logits.shape[0]
    check_tensor(op, "ids", ids, shape=(t, k), device=logits.device)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        fail(op, "ids", "an integer dtype", ids.dtype, kind=TypeError)

    lo, hi = route_key_bounds(logits, method=method, bias=bias)
    return route_selection_within(ids, lo, hi, k=k, n_group=n_group, topk_group=topk_group)


def route_selection_within(
    ids: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *, k: int, n_group: int, topk_group: int
) -> torch.Tensor:
    """`check_route_selection`'s rule with the key bounds `lo, hi [T, E]` given (it derives
    them from the logits; a named variant widens them): bool [T]."""
    t, e = lo.shape
    ids = ids.long()
    valid = ((ids >= 0) & (ids < e)).all(-1)
    chosen = torch.zeros(t, e, dtype=torch.bool, device=ids.device)
    chosen.scatter_(1, ids.clamp(0, max(e - 1, 0)), True)
    valid &= chosen.sum(-1) == k  # distinct

    nan_row = (lo.isnan() | hi.isnan()).any(-1)
    # The weakest chosen expert at its best, against each group's strongest unchosen at its worst.
    floor = torch.where(chosen, hi, float("inf")).amin(-1, keepdim=True)
    rival = torch.where(chosen, float("-inf"), lo).reshape(t, n_group, e // n_group).amax(-1)
    allowed = rival <= floor  # the group may be in G as far as the expert step goes
    used = chosen.reshape(t, n_group, e // n_group).any(-1)  # groups that must be in G

    g_lo, g_hi = _group_scores(lo, n_group), _group_scores(hi, n_group)
    g_lo = g_lo - _finite_or_zero(2 * _U32 * g_lo.abs())
    g_hi = g_hi + _finite_or_zero(2 * _U32 * g_hi.abs())
    # Try every value c could take as the best outside score at its worst (or -inf: no group is
    # outside): groups above c must be in G, G's groups must reach c at their best.
    c = torch.cat([g_lo, torch.full_like(g_lo[:, :1], float("-inf"))], -1).unsqueeze(-1)
    forced = used.unsqueeze(1) | (g_lo.unsqueeze(1) > c)  # [T, candidates, groups]
    eligible = allowed.unsqueeze(1) & (g_hi.unsqueeze(1) >= c)
    fits = (
        (forced <= eligible).all(-1)
        & (forced.sum(-1) <= topk_group)
        & (eligible.sum(-1) >= topk_group)
    ).any(-1)
    return valid & (fits | nan_row)


# --- moe_align ------------------------------------------------------------------------------------


# Every output is int32 and indexed by int32 offsets (vLLM's kernels and ours): the length of
# sorted_ids, T*k + E*(block_size - 1), must stay below 2**31. Experts get a per-expert table
# (counts, offsets) and the largest MoE models have a few hundred per layer: 2**20 keeps such a
# table at 8 MiB; a larger num_experts is a mistaken argument, not a model.
MAX_EXPERTS = 1 << 20
_INT32_LIMIT = 2**31


def validate_moe_align(topk_ids, *, num_experts, block_size) -> None:
    """Every check of moe_align's input, before any work (shared with the fast paths so their
    errors match). One reduction and one host sync for the id range."""
    op = "moe_align"
    check_tensor(op, "topk_ids", topk_ids, dtypes=(torch.int32,), ndim=2)
    check_int(op, "num_experts", num_experts, lo=1, hi=MAX_EXPERTS)
    check_int(op, "block_size", block_size, lo=1, hi=_INT32_LIMIT - 1)
    n = topk_ids.numel()
    size = n + num_experts * (block_size - 1)
    if size >= _INT32_LIMIT:
        want = f"T*k + num_experts*(block_size-1) < 2**31 (int32 offsets; T*k={n})"
        fail(op, "num_experts, block_size", want, f"{num_experts}, {block_size}")
    if n:
        flat = topk_ids.reshape(-1)
        lo, hi = torch.stack(torch.aminmax(flat)).tolist()
        if lo < -1 or hi >= num_experts:
            bad = (flat < -1) | (flat >= num_experts)
            fail(op, "topk_ids", f"values in [0, {num_experts}) or -1", int(flat[bad][0]))


def moe_align(
    topk_ids: torch.Tensor, *, num_experts: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the flat indices `t * k + j` of `topk_ids [T, k]` by expert for a grouped GEMM.

    Returns `sorted_ids` int32 `[T*k + E*(block_size-1)]`: for each expert in ascending order its
    flat indices (ascending here; the contract allows any order within an expert), padded with
    `T*k` to a multiple of `block_size`; `expert_ids` int32 `[len(sorted_ids) // block_size + 1]`:
    the expert of each block; `num_post_padded` int32 `[1]`. Ids of -1 are skipped; experts
    without tokens get no block. Past the specified prefix the reference fills `sorted_ids` with
    `T*k` and `expert_ids` with -1 (vLLM's torch golden does the same); checks ignore that tail.
    """
    validate_moe_align(topk_ids, num_experts=num_experts, block_size=block_size)
    flat = topk_ids.reshape(-1).long()
    dev, n = topk_ids.device, flat.numel()
    sorted_ids = torch.full((n + num_experts * (block_size - 1),), n, dtype=torch.int32, device=dev)
    expert_ids = torch.full(
        (sorted_ids.numel() // block_size + 1,), -1, dtype=torch.int32, device=dev
    )

    kept = (flat >= 0).nonzero().squeeze(1)  # ascending flat indices; -1 entries skipped
    experts, order = torch.sort(flat[kept], stable=True)  # by expert, flat order within
    kept = kept[order]
    counts = torch.bincount(experts, minlength=num_experts)
    blocks = (counts + block_size - 1) // block_size
    start = torch.cumsum(blocks * block_size, 0) - blocks * block_size  # padded run of each expert
    first = torch.cumsum(counts, 0) - counts  # run of each expert in `kept`
    rank = torch.arange(kept.numel(), device=dev) - first[experts]
    sorted_ids[start[experts] + rank] = kept.to(torch.int32)
    total = int(blocks.sum())
    expert_ids[:total] = torch.repeat_interleave(torch.arange(num_experts, device=dev), blocks).to(
        torch.int32
    )
    num_post_padded = torch.tensor([total * block_size], dtype=torch.int32, device=dev)
    return sorted_ids, expert_ids, num_post_padded
