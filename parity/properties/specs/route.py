"""OpSpec of route (router top-k).

The selection is checked with the reference's `check_route_selection` (any choice within the
rounding of the logit dtype is accepted, ties included), and the weights against the weights
the contract gives FOR THE IMPLEMENTATION'S OWN SELECTION, recomputed in float64, so a valid
tie choice is never punished.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, dtype_of, eps_of
from parity.properties.tolerance import Verdict, check_meta, close, combine
from parity.reference.routing import (
    check_route_selection,
    route_key_bounds,
    route_selection_within,
)
from parity.registry import OpSpec, Relation, Variant, add_spec

_U32 = eps_of(torch.float32)


# Weights against the float64 contract value for the impl's own ids, per element:
#   (16 + 2k + A_j + max_sel A + [softmax, no renormalize] (E + max A)) u32 |w_j| + 4 f tiny32
# A is the float32 error of one score in units of u32: sigmoid through a fast exp (ex2.approx:
# 2 ulps plus the rounding of l * log2(e), |l| ulps) 4 (1 + |l|); softmax exp(l - m) the same
# with |l - m| <= |l| + max|l| (a kernel may subtract a float32 log-sum-exp instead of the max);
# sqrtsoftplus 4 (1 + |l|) as sigmoid: log1p(exp(l)) keeps the fast exp's relative error (2 + |l|)
# (log1p(y)'s condition in y is <= 1), the sqrt halves it and adds one rounding.
# 2k covers the k-term sum and 16 the divisions, the scaling factor and the final rounding; a
# softmax without renormalization keeps the (E - 1)-term normalizer's error. The absolute term is
# the subnormal floor of float32 (scores that underflow).
TOLERANCE = (
    "ids: check_route_selection (any choice within the logit dtype's rounding); weights vs the "
    "float64 contract weights of the impl's own ids: (16 + 2k + A_j + max A [+ E]) u32 |w| + "
    "4 f tiny32, A = float32 score error in u32 (4 (1 + |l|) sigmoid and sqrtsoftplus, "
    "4 (1 + |l| + max|l|) softmax)"
)

_E_SMALL = [4, 8, 16, 32, 64]
_E_FULL = [128, 256]
_LOGIT_REGIMES = ("normal", "negative", "ties", "hot", "wide")
_BIAS_REGIMES = ("zero", "dsv4", "random", "negative")


def _groupings(e: int) -> list[int]:
    """n_group values dividing E with groups of at least two experts (the contract's group score
    is the sum of the two largest keys; a one-expert group is a reference choice, not contract)."""
    return [g for g in (1, 2, 4, 8) if e % g == 0 and e // g >= 2]


@st.composite
def _route_config(draw, size: str) -> dict:
    if size == "full" and draw(st.booleans()):
        # The DeepSeek-V3 router (256 experts, 8 groups, top-8) or V4-Flash's (256, no groups,
        # top-6, sqrt(softplus) scores).
        return draw(
            st.sampled_from(
                [
                    {"E": 256, "method": "dsv3", "n_group": 8, "topk_group": 4, "k": 8},
                    {"E": 256, "method": "sqrtsoftplus", "n_group": 1, "topk_group": 1, "k": 6},
                ]
            )
        )
    e = draw(st.sampled_from(_E_SMALL + (_E_FULL if size == "full" else [])))
    method = draw(st.sampled_from(["dsv3", "softmax", "sqrtsoftplus"]))
    if method == "sqrtsoftplus":  # DeepSeek-V4: no groups, top-6 or top-8 (all of E=4)
        k = min(draw(st.sampled_from([6, 8])), e)
        return {"E": e, "method": method, "n_group": 1, "topk_group": 1, "k": k}
    if method == "dsv3":
        n_group = draw(st.sampled_from(_groupings(e)))
        topk_group = draw(st.integers(1, n_group))
        most = topk_group * (e // n_group)
    else:
        n_group, topk_group, most = 1, 1, e
    k = draw(st.integers(1, min(8, most)))
    return {"E": e, "method": method, "n_group": n_group, "topk_group": topk_group, "k": k}


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "T": S.tokens(size=size),
            "config": _route_config(size),
            "renormalize": st.booleans(),
            "routed_scaling_factor": st.sampled_from([1.0, 2.5]),
            "dtype": S.float_dtypes(dtypes),
            "bias_dtype": st.sampled_from(["float32", "bfloat16"]),
            "regime": st.sampled_from(_LOGIT_REGIMES),
            "bias_regime": st.sampled_from(_BIAS_REGIMES),
            "seed": S.seeds(),
        }
    )


def _logits(g: Gen, t: int, e: int, regime: str, dtype) -> torch.Tensor:
    if regime == "normal":
        x = g.normal((t, e), std=2.0)
    elif regime == "negative":  # all logits negative (the masking-with-zero bug class)
        x = g.values((t, e), "negative")
    elif regime == "ties":  # a coarse grid: many exact ties at the k-th key
        x = g.values((t, e), "ties")
    elif regime == "hot":  # one expert far above the rest for every token
        x = g.normal((t, e))
        x[:, int(g.integers((1,), 0, e).item())] += 8.0
    elif regime == "wide":  # |l| in [2**-10, 32]: wide but no float32 underflow of the scores
        sign = torch.where(g.mask((t, e), 0.5), -1.0, 1.0)
        x = sign * g.host(torch.exp2, g.uniform((t, e), -10.0, 5.0))
    else:
        raise ValueError(f"route: regime: unknown {regime!r}")
    return x.to(dtype)


def _bias(g: Gen, e: int, regime: str, dtype) -> torch.Tensor:
    if regime == "zero":
        b = torch.zeros(e, device=g.device)
    elif regime == "dsv4":  # DeepSeek-V4-like correction biases: ~8.08, tiny spread
        b = 8.08 + g.normal((e,), std=1e-3)
    elif regime == "random":
        b = g.normal((e,), std=0.1)
    elif regime == "negative":  # dsv3: every biased key b = s + bias below zero
        b = -g.uniform((e,), 1.1, 2.0)
    else:
        raise ValueError(f"route: bias_regime: unknown {regime!r}")
    return b.to(dtype)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    cfg = dict(meta["config"])
    t, e = meta["T"], cfg["E"]
    logits = _logits(g, t, e, meta["regime"], dtype_of(meta["dtype"]))
    kw = {
        "k": cfg["k"],
        "method": cfg["method"],
        "bias": None,
        "n_group": cfg["n_group"],
        "topk_group": cfg["topk_group"],
        "renormalize": meta["renormalize"],
        "routed_scaling_factor": meta["routed_scaling_factor"],
    }
    if cfg["method"] in ("dsv3", "sqrtsoftplus"):
        kw["bias"] = _bias(g, e, meta["bias_regime"], dtype_of(meta["bias_dtype"]))
    if meta.get("nan"):
        if kw["bias"] is not None and meta["seed"] % 3 == 0:
            # a NaN bias is a NaN key on every row: the rows' weights are NaN (a kernel that
            # looks for NaN in the logits only misses it)
            kw["bias"] = g.inject_nan(kw["bias"], p=0.0)
        else:
            logits = g.inject_nan(logits)
    bad = meta.get("invalid")
    if bad is not None:
        logits, kw = _route_mutate(bad, logits, kw, device)
    return Case("route", (logits,), kw, meta, str(device))


def _route_mutate(bad: str, logits, kw: dict, device):
    e = logits.shape[1]
    kw = dict(kw)
    if bad == "int_logits":
        logits = logits.to(torch.int32)
    elif bad == "float64_logits":
        logits = logits.to(torch.float64)
    elif bad == "logits_1d":
        logits = logits.reshape(-1)
    elif bad == "k_zero":
        kw["k"] = 0
    elif bad == "k_too_big":
        most = kw["topk_group"] * (e // kw["n_group"]) if kw["method"] != "softmax" else e
        kw["k"] = most + 1
    elif bad == "k_float":
        kw["k"] = float(kw["k"])
    elif bad == "bad_method":
        kw["method"] = "sigmoid"
    elif bad == "softmax_with_bias":
        kw.update(method="softmax", bias=torch.zeros(e, device=device), n_group=1, topk_group=1)
    elif bad == "dsv3_without_bias":
        kw.update(method="dsv3", bias=None)
    elif bad == "sqrtsoftplus_without_bias":
        kw.update(method="sqrtsoftplus", bias=None, n_group=1, topk_group=1)
    elif bad == "bias_wrong_shape":
        kw.update(method="dsv3", bias=torch.zeros(e + 1, device=device))
    elif bad == "int_bias":
        kw.update(method="dsv3", bias=torch.zeros(e, dtype=torch.int32, device=device))
    elif bad == "group_not_divisor":  # E is a power of two
        kw.update(method="dsv3", bias=torch.zeros(e, device=device), n_group=3, topk_group=1)
    elif bad == "topk_group_too_big":
        kw["topk_group"] = kw["n_group"] + 1
    elif bad == "softmax_groups":
        kw.update(method="softmax", bias=None, n_group=2, topk_group=1)
    elif bad == "nonpositive_factor":
        kw["routed_scaling_factor"] = 0.0
    elif bad == "renormalize_int":
        kw["renormalize"] = 1
    else:
        raise ValueError(f"route: invalid: unknown mutation {bad!r}")
    return logits, kw


MUTATIONS = [
    "int_logits",
    "float64_logits",
    "logits_1d",
    "k_zero",
    "k_too_big",
    "k_float",
    "bad_method",
    "softmax_with_bias",
    "dsv3_without_bias",
    "sqrtsoftplus_without_bias",
    "bias_wrong_shape",
    "int_bias",
    "group_not_divisor",
    "topk_group_too_big",
    "softmax_groups",
    "nonpositive_factor",
    "renormalize_int",
]


def _nan_rows(case: Case) -> torch.Tensor:
    logits = case.args[0]
    rows = torch.isnan(logits).any(-1)
    bias = case.kwargs.get("bias")
    if bias is not None and bool(torch.isnan(bias).any()):
        rows = torch.ones_like(rows)
    return rows


def expected_route_weights(case: Case, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract's weights for the selection `ids [T, k]` (any valid ids), in float64, and
    their tolerance (see TOLERANCE). Rows with a NaN key are NaN."""
    logits = case.args[0]
    kw = case.kwargs
    t, e = logits.shape
    k = ids.shape[1]
    f = float(kw.get("routed_scaling_factor", 1.0))
    x = logits.to(torch.float64)
    ids = ids.long().clamp(0, max(e - 1, 0))
    method = kw.get("method", "softmax")
    softmax = method == "softmax"
    if softmax:
        score = torch.softmax(x, dim=-1)
        big = torch.nan_to_num(x.abs(), nan=0.0).amax(-1, keepdim=True) if e else x[:, :0]
        a = 4 * (1 + x.abs() + big)
    else:
        # sqrt(softplus) exactly (logaddexp, as the reference); its A is sigmoid's (see above).
        if method == "sqrtsoftplus":
            score = torch.sqrt(torch.logaddexp(x, x.new_zeros(())))
        else:
            score = torch.sigmoid(x)
        a = 4 * (1 + x.abs())
    a = torch.nan_to_num(a, nan=0.0)
    v = score.gather(1, ids) if t else score[:, :k]
    a_sel = a.gather(1, ids) if t else a[:, :k]
    if kw.get("renormalize", True):
        v = v / v.sum(-1, keepdim=True)
    w = v * f
    units = 16 + 2 * k + a_sel + a_sel.amax(-1, keepdim=True) if k else a_sel
    if softmax and not kw.get("renormalize", True):
        units = units + e + a.amax(-1, keepdim=True)
    tol = units * _U32 * w.abs() + 4 * f * torch.finfo(torch.float32).tiny
    w = torch.where(_nan_rows(case).unsqueeze(-1), float("nan"), w)
    return w, tol


def _selection_ok(case: Case, ids: torch.Tensor) -> torch.Tensor:
    """bool [T]: an acceptable selection (rows with a NaN key: any distinct in-range ids)."""
    kw = case.kwargs
    return check_route_selection(
        case.args[0],
        ids,
        k=kw["k"],
        method=kw.get("method", "softmax"),
        bias=kw.get("bias"),
        n_group=kw.get("n_group", 1),
        topk_group=kw.get("topk_group", 1),
    )


def _route_meta(case: Case, outs: tuple) -> Verdict:
    if len(outs) != 2:
        return Verdict(False, f"expected (weights, ids), got {len(outs)} outputs")
    t = case.args[0].shape[0]
    k = case.kwargs["k"]
    dev = case.args[0].device
    return combine(
        [
            check_meta("weights", outs[0], torch.empty((t, k), dtype=torch.float32, device=dev)),
            check_meta("ids", outs[1], torch.empty((t, k), dtype=torch.int32, device=dev)),
        ]
    )


def _bad_rows(case: Case, ids: torch.Tensor) -> Verdict:
    ok = _selection_ok(case, ids)
    if bool(ok.all()):
        return Verdict.passed()
    row = int((~ok).nonzero()[0])
    _, want = ref.route(*case.clone().args, **case.clone().kwargs)
    return Verdict(
        False,
        f"ids: {int((~ok).sum())} of {ok.numel()} rows are not an acceptable top-k, e.g. row "
        f"{row}: {sorted(ids[row].tolist())} (reference {sorted(want[row].tolist())})",
        float("inf"),
    )


def compare(case: Case, outs: tuple) -> Verdict:
    v = _route_meta(case, outs)
    if not v:
        return v
    w, ids = outs
    v = _bad_rows(case, ids)
    if not v:
        return v
    want, tol = expected_route_weights(case, ids)
    return close("weights", w, want, tol)


def canonical(case: Case, outs: tuple) -> tuple:
    """Each row's entries sorted by expert id (the order of the k entries is free)."""
    if len(outs) != 2 or not all(isinstance(o, torch.Tensor) for o in outs):
        return outs
    w, ids = outs
    if ids.dim() != 2 or w.shape != ids.shape or ids.is_floating_point():
        return outs
    order = torch.sort(ids.long(), dim=-1, stable=True).indices
    return w.gather(1, order), ids.gather(1, order)


def compare_pair(case: Case, a: tuple, b: tuple) -> Verdict:
    """Derived (a: permuted, split or relabelled, mapped back) against base (b), both canonical:
    each an acceptable selection with the contract's weights for its own ids; where they
    selected the same set the weights agree within twice the tolerance. Not bitwise: a score
    may round differently with the token's position (CPU sigmoid and softplus have vectorised
    bodies and scalar tails), which moves weights by an ulp and can flip a near-tie."""
    checks = []
    for name, out in (("derived", a), ("base", b)):
        v = compare(case, out)
        if not v:
            return Verdict(False, f"{name}: {v.message}", v.ratio, v.worst)
        checks.append(v)
    same = (a[1] == b[1]).all(-1, keepdim=True)
    _, tol = expected_route_weights(case, b[1])
    diff = torch.where(same, a[0].double(), b[0].double())
    checks.append(close("weights (same selection)", diff, b[0].double(), 2 * tol))
    return combine(checks)


def _expert_relabel(case: Case, rng):
    """Permute experts within groups and groups among themselves (the group structure stays),
    with the logits' columns and the bias; the ids map back through the permutation."""
    logits = case.args[0]
    t, e = logits.shape
    if t == 0 or e < 2:
        return None
    n_group = case.kwargs.get("n_group", 1)
    size = e // n_group
    groups = list(range(n_group))
    rng.shuffle(groups)
    perm = []
    for grp in groups:
        inner = list(range(size))
        rng.shuffle(inner)
        perm += [grp * size + i for i in inner]
    p = torch.tensor(perm, dtype=torch.long, device=logits.device)
    kw = dict(case.kwargs)
    if kw.get("bias") is not None:
        kw["bias"] = kw["bias"][p].contiguous()
    new = Case(
        case.op, (logits[:, p].contiguous(),), kw, {**case.meta, "relabel": perm}, case.device
    )

    def combine_(results):
        ((w, ids),) = results
        i = ids.long()
        inr = (i >= 0) & (i < e)
        old = torch.where(inr, p[i.clamp(0, e - 1)], -1)
        return w, old.to(ids.dtype)

    return [new], combine_


def bench(T: int) -> dict:
    """The DeepSeek-V3 router: 256 experts in 8 groups, top-4 groups, top-8."""
    return {
        "T": T,
        "dtype": "float32",
        "bias_dtype": "float32",
        "bias_regime": "random",
        "regime": "normal",
        "renormalize": True,
        "routed_scaling_factor": 2.5,
        "config": {"E": S.BENCH_E, "method": "dsv3", "n_group": 8, "topk_group": 4, "k": S.BENCH_K},
    }


# --- named variants (docs/contract-notes.md, "Named variants") ---------------------------------

# FlashInfer's dsv3 router scores with 0.5 tanh(x/2) + 0.5, and its JIT build (-use_fast_math)
# turns the tanh into tanh.approx.f32, whose PTX guarantee is a 2**-11 RELATIVE error of t: the
# score then carries an ABSOLUTE error 2**-12 |t| (plus 2**-25 for the fma's rounding) instead
# of sigmoid's relative one, and is exactly 0 where t rounds to -1 (x below about -17).
_TANH_REL = 2.0**-11
APPROX_TANH_SIGMOID = Variant(
    "approx_tanh_sigmoid",
    "FlashInfer fused_topk_deepseek (TensorRT-LLM noAuxTc): dsv3 score 0.5 * tanh(x/2) + 0.5 "
    "with tanh.approx.f32 (-use_fast_math): absolute score error 2**-12 |t|, 0 below x ~ -17",
    "flashinfer csrc/fused_moe/noAuxTcKernels.cu (sigmoid_accurate, deepseek_v3_topk_kernel); "
    "jit/core.py gen_jit_spec(use_fast_math=True); PTX ISA tanh.approx.f32",
)
VARIANTS = (APPROX_TANH_SIGMOID,)
_NAMES = tuple(v.name for v in VARIANTS)


def check_variant_names(names) -> frozenset:
    bad = sorted(set(names) - set(_NAMES))
    if bad:
        raise ValueError(f"route: unknown variants {bad}; variants: {list(_NAMES)}")
    return frozenset(names)


def _variant_applies(case: Case, names: frozenset) -> bool:
    """The variant changes sigmoid scores only: method "dsv3"."""
    return "approx_tanh_sigmoid" in names and case.kwargs.get("method") == "dsv3"


def _score_slack(case: Case) -> torch.Tensor:
    """float64 [T, E]: the variant's absolute score error, 2**-12 |tanh(x/2)| + 2**-25."""
    x = case.args[0].to(torch.float64)
    return torch.nan_to_num(_TANH_REL / 2 * torch.tanh(x / 2).abs() + 2.0**-25, nan=0.0)


def _variant_weight_bounds(case: Case, ids: torch.Tensor):
    """float64 (lo, hi) [T, k] of the weights under approx_tanh_sigmoid for the ids: each score
    anywhere in [s - d, s + d] (clamped to [0, 1]), the weight monotone in its own score and
    antitone in the others'; `+ 1e-20` as the kernel adds to the sum (all-zero scores: 0)."""
    kw = case.kwargs
    f = float(kw.get("routed_scaling_factor", 1.0))
    x = case.args[0].to(torch.float64)
    s, d = torch.sigmoid(x), _score_slack(case)
    i = ids.long().clamp(0, max(x.shape[1] - 1, 0))
    s_lo = (s - d).clamp(0.0, 1.0).gather(1, i)
    s_hi = (s + d).clamp(0.0, 1.0).gather(1, i)
    if not kw.get("renormalize", True):
        return f * s_lo, f * s_hi
    rest_hi = s_hi.sum(-1, keepdim=True) - s_hi
    rest_lo = s_lo.sum(-1, keepdim=True) - s_lo
    lo = f * s_lo / (s_lo + rest_hi + 1e-20)
    hi = f * s_hi / (s_hi + rest_lo + 1e-20)
    return lo, hi


def compare_variants(case: Case, outs: tuple, names: frozenset) -> Verdict:
    """`compare` with the scores of the variants `names`: the selection within the key bounds
    widened by the score error, the weights within the interval of every score in its error
    (plus the contract's float32 slack for the sum, division and scaling)."""
    names = check_variant_names(names)
    if not _variant_applies(case, names):
        return compare(case, outs)
    v = _route_meta(case, outs)
    if not v:
        return v
    w, ids = outs
    lo, hi = route_key_bounds(case.args[0], method="dsv3", bias=case.kwargs["bias"])
    d = _score_slack(case)
    kw = case.kwargs
    ok = route_selection_within(
        ids, lo - d, hi + d, k=kw["k"], n_group=kw.get("n_group", 1),
        topk_group=kw.get("topk_group", 1),
    )  # fmt: skip
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0])
        return Verdict(
            False,
            f"ids: {int((~ok).sum())} of {ok.numel()} rows are not an acceptable top-k under "
            f"{' + '.join(sorted(names))}, e.g. row {row}: {sorted(ids[row].tolist())}",
            float("inf"),
        )
    w_lo, w_hi = _variant_weight_bounds(case, ids)
    k = ids.shape[1]
    f = float(case.kwargs.get("routed_scaling_factor", 1.0))
    slack = (16 + 2 * k) * _U32 * w_hi + 4 * f * torch.finfo(torch.float32).tiny
    want = (w_lo + w_hi) / 2
    want = torch.where(_nan_rows(case).unsqueeze(-1), float("nan"), want)
    return close("weights", w, want, (w_hi - w_lo) / 2 + slack)


def reference_under(case: Case, names: frozenset) -> tuple:
    """The outputs under `names`: approx_tanh_sigmoid's arithmetic with a correctly rounded
    float32 tanh (the score 0.5 t + 0.5, the keys and their sum in float32, the weight as the
    kernel's double division with + 1e-20); NaN rows as the contract's."""
    names = check_variant_names(names)
    c = case.clone()
    if not _variant_applies(case, names):
        return ref.route(*c.args, **c.kwargs)
    kw = c.kwargs
    x = c.args[0].to(torch.float32)
    t = torch.tanh((0.5 * x).double()).float()
    s = 0.5 * t + 0.5
    key = s + kw["bias"].to(torch.float32)
    ids = _select_f32(key, kw["k"], kw.get("n_group", 1), kw.get("topk_group", 1))
    v = s.gather(1, ids)
    f = float(kw.get("routed_scaling_factor", 1.0))
    if kw.get("renormalize", True):
        w = (v.double() * f / (v.sum(-1, keepdim=True).double() + 1e-20)).float()
    else:
        w = (v.double() * f).float()
    w = torch.where(_nan_rows(case).unsqueeze(-1), float("nan"), w)
    return w, ids.to(torch.int32)


def _select_f32(key: torch.Tensor, k: int, n_group: int, topk_group: int) -> torch.Tensor:
    """Grouped top-k of float32 keys as the reference ranks them (NaN last, ties low id)."""
    t, e = key.shape
    key = torch.where(key.isnan(), float("-inf"), key)
    size = e // n_group
    if n_group == 1:
        cand = torch.arange(e, device=key.device).expand(t, e)
    else:
        g = key.reshape(t, n_group, size).topk(min(2, size), -1).values.sum(-1)
        top = torch.sort(g, dim=-1, descending=True, stable=True).indices[:, :topk_group]
        cand = top.sort(-1).values.unsqueeze(-1) * size + torch.arange(size, device=key.device)
        cand = cand.reshape(t, topk_group * size)
    order = torch.sort(key.gather(1, cand), dim=-1, descending=True, stable=True).indices
    return cand.gather(1, order[:, :k])


SPEC = add_spec(
    OpSpec(
        name="route",
        reference=ref.route,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        invalid_when=None,
        canonical=canonical,
        compare_pair=compare_pair,
        relations=(
            Relation("token_permutation", S.permute_tokens(), exact=False),
            Relation("batch_split", S.split_tokens(), exact=False),
            Relation("expert_relabel", _expert_relabel, exact=False),
        ),
        bench=bench,
        variants=VARIANTS,
        compare_variants=compare_variants,
        reference_under=reference_under,
    )
)
