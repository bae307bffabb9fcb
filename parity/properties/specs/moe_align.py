"""OpSpec of moe_align (token sort for the grouped GEMM): the specified prefix exactly, up to
the free order within each expert's segment (`canonical` sorts it).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen
from parity.properties.tolerance import Verdict, check_meta, combine, exact
from parity.registry import OpSpec, Relation, add_spec

TOLERANCE = (
    "exact: num_post_padded, the expert_ids prefix and each expert's multiset of flat indices "
    "and pads in the sorted_ids prefix (order within an expert free); tails unspecified"
)

_ALIGN_REGIMES = ("uniform", "hot", "sparse", "some_neg", "all_neg")


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "T": S.tokens(size=size),
            "k": S.sizes(small=[1, 2, 3, 4, 8], size=size, lo=1, hi=8),
            "E": S.sizes(small=[1, 2, 3, 4, 8, 16, 64], full=[128, 256], size=size, lo=1),
            "block_size": st.sampled_from([16, 32, 64, 128, 1, 3, 5]),
            "regime": st.sampled_from(_ALIGN_REGIMES),
            "seed": S.seeds(),
        }
    )


def _align_ids(g: Gen, t: int, k: int, e: int, regime: str) -> torch.Tensor:
    shape = (t, k)
    ids = g.integers(shape, 0, e)
    if regime == "hot":  # most slots on one expert
        hot = g.integers((1,), 0, e)
        ids = torch.where(g.mask(shape, 0.7), hot, ids)
    elif regime == "sparse":  # only a few experts get tokens: the rest are empty
        used = g.perm(e)[: min(e, 3)]
        ids = used[g.integers(shape, 0, used.numel())]
    elif regime == "some_neg":
        ids = torch.where(g.mask(shape, 0.3), -1, ids)
    elif regime == "all_neg":
        ids = torch.full(shape, -1, dtype=torch.int64, device=g.device)
    elif regime != "uniform":
        raise ValueError(f"moe_align: regime: unknown {regime!r}")
    return ids.to(torch.int32)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    e = meta["E"]
    ids = _align_ids(g, meta["T"], meta["k"], e, meta["regime"])
    kw = {"num_experts": e, "block_size": meta["block_size"]}
    bad = meta.get("invalid")
    if bad == "int64_ids":
        ids = ids.to(torch.int64)
    elif bad == "float_ids":
        ids = ids.to(torch.float32)
    elif bad == "ids_1d":
        ids = ids.reshape(-1)
    elif bad == "id_too_large":
        ids = ids.clone()
        ids.view(-1)[-1] = e
    elif bad == "id_below_minus_one":
        ids = ids.clone()
        ids.view(-1)[0] = -2
    elif bad == "zero_experts":
        kw["num_experts"] = 0
    elif bad == "zero_block":
        kw["block_size"] = 0
    elif bad == "float_block":
        kw["block_size"] = float(kw["block_size"])
    elif bad is not None:
        raise ValueError(f"moe_align: invalid: unknown mutation {bad!r}")
    return Case("moe_align", (ids,), kw, meta, str(device))


def canonical(case: Case, outs: tuple) -> tuple:
    """Cut to the specified prefix (num_post_padded entries of sorted_ids, num_post_padded //
    block_size of expert_ids) and sort within each expert's segment (a run of blocks with the
    same expert id): the order within an expert is free."""
    if len(outs) != 3 or not all(isinstance(o, torch.Tensor) for o in outs):
        return outs
    sids, eids, num = outs
    if sids.dim() != 1 or eids.dim() != 1 or num.numel() != 1 or sids.is_floating_point():
        return outs
    bs = case.kwargs["block_size"]
    p = min(max(int(num.reshape(-1)[0]), 0), sids.numel())
    nb = min(p // bs, eids.numel())
    eids = eids[:nb]
    vals = sids[:p].long()
    if nb:
        seg = torch.cumsum(torch.cat([eids.new_ones(1), (eids[1:] != eids[:-1]).int()]), 0)
        seg = seg.repeat_interleave(bs)[: vals.numel()].long()
        seg = torch.cat([seg, seg.new_full((vals.numel() - seg.numel(),), nb + 1)])
        order = torch.sort(vals, stable=True).indices
        order = order[torch.sort(seg[order], stable=True).indices]
        vals = vals[order]
    return vals.to(sids.dtype), eids, num


def compare(case: Case, outs: tuple) -> Verdict:
    want = ref.moe_align(*case.clone().args, **case.kwargs)
    if len(outs) != 3:
        return Verdict(
            False, f"expected (sorted_ids, expert_ids, num_post_padded), got {len(outs)}"
        )
    names = ("sorted_ids", "expert_ids", "num_post_padded")
    v = combine([check_meta(n, o, w) for n, o, w in zip(names, outs, want)])
    if not v:
        return v
    v = exact("num_post_padded", outs[2], want[2])
    if not v:
        return v
    got_c, want_c = canonical(case, outs), canonical(case, want)
    v = exact("expert_ids (prefix)", got_c[1], want_c[1])
    if not v:
        return v
    v = _block_contents(case, outs)
    if not v:
        return v
    return exact("sorted_ids (prefix, sorted within each expert)", got_c[0], want_c[0])


def _block_contents(case: Case, outs: tuple) -> Verdict:
    """Every entry of a block is the pad value or a flat index routed to the block's expert."""
    (ids,) = case.args
    bs = case.kwargs["block_size"]
    flat = ids.reshape(-1).long()
    n = flat.numel()
    sids, eids, num = outs
    p = int(num[0])
    nb = p // bs
    vals = sids[:p].long()
    expert = eids[:nb].long().repeat_interleave(bs)
    real = vals != n
    inr = (vals >= 0) & (vals < n)
    owner = torch.where(inr, flat[vals.clamp(0, max(n - 1, 0))] if n else vals, -2)
    bad = real & (~inr | (owner != expert))
    if not bool(bad.any()):
        return Verdict.passed()
    i = int(bad.nonzero()[0])
    return Verdict(
        False,
        f"sorted_ids: {int(bad.sum())} entries of the prefix are neither the pad {n} nor a flat "
        f"index of their block's expert, e.g. position {i}: {int(vals[i])} in a block of expert "
        f"{int(expert[i])}",
        float(bad.sum()),
    )


def _align_permute(case: Case, rng):
    """Permuting the tokens permutes the flat indices: mapped back, the canonical form is equal."""
    (ids,) = case.args
    t, k = ids.shape
    if t < 2:
        return None
    perm = list(range(t))
    rng.shuffle(perm)
    p = torch.tensor(perm, dtype=torch.long, device=ids.device)
    meta = {**case.meta, "permuted": True}
    new = Case(case.op, (ids[p].contiguous(),), dict(case.kwargs), meta, case.device)
    n = t * k

    def combine_(results):
        ((sids, eids, num),) = results
        v = sids.long()
        inr = (v >= 0) & (v < n)
        c = v.clamp(0, n - 1)
        back = torch.where(inr, p[c // k] * k + c % k, v)
        return back.to(sids.dtype), eids, num

    return [new], combine_


MUTATIONS = [
    "int64_ids",
    "float_ids",
    "ids_1d",
    "id_too_large",
    "id_below_minus_one",
    "zero_experts",
    "zero_block",
    "float_block",
]


def bench(T: int) -> dict:
    """T tokens routed top-8 over 256 experts, 64-row blocks."""
    return {"T": T, "k": S.BENCH_K, "E": S.BENCH_E, "block_size": 64, "regime": "uniform"}


SPEC = add_spec(
    OpSpec(
        name="moe_align",
        reference=ref.moe_align,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        nan=False,  # integer outputs: no NaN policy
        canonical=canonical,
        relations=(Relation("token_permutation", _align_permute),),
        bench=bench,
        memory_bound=True,
    )
)
