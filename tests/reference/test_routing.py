"""Known answers of the routing references: route, check_route_selection, moe_align."""

from __future__ import annotations

import math

import pytest
import torch

from parity.reference.common import precision
from parity.reference.routing import check_route_selection, moe_align, route


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def as_set(ids: torch.Tensor) -> list[set[int]]:
    return [set(row.tolist()) for row in ids]


def weights_by_id(w: torch.Tensor, ids: torch.Tensor) -> list[dict[int, float]]:
    return [dict(zip(i.tolist(), v.tolist())) for i, v in zip(ids, w)]


def ssp(v: float) -> float:
    """DeepSeek-V4's score sqrt(softplus(v)) = sqrt(log(1 + e**v))."""
    return math.sqrt(math.log1p(math.exp(v)))


# --- route: sqrtsoftplus (DeepSeek-V4) ------------------------------------------------------------


def test_sqrtsoftplus_bias_changes_choice_weights_are_unbiased():
    logits = torch.tensor([[3.0, 1.0, 0.0, -2.0]])
    # s = sqrt(log1p(exp(l))) = [1.74602, 1.14598, 0.83256, 0.35627]; with the bias the keys are
    # [1.74602, 1.14598, 1.33256, 0.35627]: expert 2 displaces expert 1.
    bias = torch.tensor([0.0, 0.0, 0.5, 0.0])
    w, ids = route(logits, k=2, method="sqrtsoftplus", bias=bias, routed_scaling_factor=2.5)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    assert ids.tolist() == [[0, 2]]  # by decreasing key
    s0, s2 = ssp(3.0), ssp(0.0)
    assert (s0, s2) == (pytest.approx(1.746020, abs=1e-6), pytest.approx(0.832555, abs=1e-6))
    got = weights_by_id(w, ids)[0]  # the unbiased scores, renormalized, times the factor
    assert got[0] == pytest.approx(2.5 * s0 / (s0 + s2), rel=1e-6)  # 1.69282
    assert got[2] == pytest.approx(2.5 * s2 / (s0 + s2), rel=1e-6)  # 0.80718
    assert got[0] == pytest.approx(1.692815, abs=1e-5)
    # Without the bias the plain top-2 of the scores wins; no renormalization keeps s itself.
    w0, ids0 = route(logits, k=2, method="sqrtsoftplus", bias=torch.zeros(4), renormalize=False)
    assert ids0.tolist() == [[0, 1]]
    assert w0[0].tolist() == pytest.approx([s0, ssp(1.0)], rel=1e-6)


def test_sqrtsoftplus_is_the_exact_softplus_and_v4_biases():
    # softplus is log1p(exp(l)) exactly, also above F.softplus's threshold 20 and far below 0.
    # (F.softplus gives 25.0 at 25: a relative 5.6e-13 off, visible in the float64 oracle.)
    logits = torch.tensor([[25.0, -30.0, 0.0]])
    with precision("float64", round_output=False):
        w, ids = route(logits, k=3, method="sqrtsoftplus", bias=torch.zeros(3), renormalize=False)
    want = {0: math.sqrt(25.0 + math.log1p(math.exp(-25.0))), 1: ssp(-30.0), 2: ssp(0.0)}
    assert want[1] == pytest.approx(math.exp(-15.0), rel=1e-6)
    for i, v in weights_by_id(w, ids)[0].items():
        assert v == pytest.approx(want[i], rel=1e-14)
    # DeepSeek-V4-Flash-like biases near 8.08 shift the choice between close experts.
    bias = torch.tensor([8.08, 8.08, 8.081])  # +1e-3 beats s(0.001) - s(-0.001) ~ 6e-4
    _, ids = route(torch.tensor([[0.0, 0.001, -0.001]]), k=1, method="sqrtsoftplus", bias=bias)
    assert ids.tolist() == [[2]]


def test_checker_accepts_a_float32_vllm_style_sqrtsoftplus():
    # vLLM's torch fallback: float32 F.softplus (linear above 20), sqrt, + bias, top-k.
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(128, 256, generator=g) * 3).to(torch.bfloat16)
    bias = 8.08 + torch.randn(256, generator=g) * 1e-3
    kw = dict(k=6, method="sqrtsoftplus", bias=bias)
    s = torch.sqrt(torch.nn.functional.softplus(logits.float()))
    ids = (s + bias).topk(6, -1).indices
    assert check_route_selection(logits, ids, **kw).all()
    _, ref_ids = route(logits, **kw)
    assert check_route_selection(logits, ref_ids, **kw).all()
    # Softplus without the sqrt ranks the same, but sigmoid scores do not.
    sig_ids = (torch.sigmoid(logits.float()) + bias).topk(6, -1).indices
    assert not check_route_selection(logits, sig_ids, **kw).all()


# --- route: dsv3 ----------------------------------------------------------------------------------


def test_dsv3_bias_changes_choice_weights_are_unbiased():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    bias = torch.tensor([0.0, 0.0, 0.5, 0.0])  # b = [0.881, 0.731, 1.0, 0.269]: expert 2 enters
    w, ids = route(logits, k=2, method="dsv3", bias=bias, routed_scaling_factor=2.5)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    assert as_set(ids) == [{0, 2}]
    s0, s2 = sig(2.0), sig(0.0)  # the unbiased scores, renormalized, times the factor
    got = weights_by_id(w, ids)[0]
    assert got[0] == pytest.approx(2.5 * s0 / (s0 + s2), rel=1e-6)
    assert got[2] == pytest.approx(2.5 * s2 / (s0 + s2), rel=1e-6)
    # Without the bias the plain top-2 of the scores wins.
    _, ids0 = route(logits, k=2, method="dsv3", bias=torch.zeros(4))
    assert as_set(ids0) == [{0, 1}]


def test_dsv3_no_renormalize():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    w, ids = route(logits, k=2, method="dsv3", bias=torch.zeros(4), renormalize=False)
    assert weights_by_id(w, ids)[0] == pytest.approx({0: sig(2.0), 1: sig(1.0)}, rel=1e-6)


def test_dsv3_group_selection():
    # 4 groups of 2. Group scores (sum of both sigmoids): g0 = s(3) + s(-3) = 1, g1 = 1.442,
    # g2 = 1.268, g3 = s(2) + s(-2) = 1. Groups 1 and 2 are kept, although experts 0 and 6
    # have the largest logits.
    logits = torch.tensor([[3.0, -3.0, 1.0, 0.9, 0.6, 0.5, 2.0, -2.0]])
    kw = dict(method="dsv3", bias=torch.zeros(8), n_group=4, topk_group=2)
    _, ids = route(logits, k=2, **kw)
    assert as_set(ids) == [{2, 3}]
    _, ids = route(logits, k=3, **kw)
    assert as_set(ids) == [{2, 3, 4}]
    _, ids = route(logits, k=2, method="dsv3", bias=torch.zeros(8))  # no grouping
    assert as_set(ids) == [{0, 6}]
    assert check_route_selection(logits, torch.tensor([[3, 2]]), k=2, **kw).tolist() == [True]
    # The plain top-2 ignores the group step: rejected.
    assert check_route_selection(logits, torch.tensor([[0, 6]]), k=2, **kw).tolist() == [False]
    # Both experts from group 1 and group 2's best is weaker: {2, 3} only; {2, 4} is wrong.
    assert check_route_selection(logits, torch.tensor([[2, 4]]), k=2, **kw).tolist() == [False]


def test_dsv3_one_expert_groups_score_that_expert():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    kw = dict(method="dsv3", bias=torch.zeros(4), n_group=4, topk_group=2)
    _, ids = route(logits, k=2, **kw)
    assert as_set(ids) == [{1, 3}]


def test_bias_shifts_groups_too():
    # Group score uses b = s + bias: a bias on group 0 makes it win.
    logits = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bias = torch.tensor([0.6, 0.6, 0.0, 0.0])
    _, ids = route(logits, k=1, method="dsv3", bias=bias, n_group=2, topk_group=1)
    assert ids.tolist() == [[0]]  # tie inside group 0: lowest index


# --- route: softmax -------------------------------------------------------------------------------


def test_softmax_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    z = sum(math.exp(v) for v in (1.0, 3.0, 2.0, 0.0))
    w, ids = route(logits, k=2, renormalize=False)
    assert ids.tolist() == [[1, 2]]  # by decreasing key
    assert w[0].tolist() == pytest.approx([math.exp(3) / z, math.exp(2) / z], rel=1e-6)
    w, _ = route(logits, k=2, routed_scaling_factor=2.0)
    e3, e2 = math.exp(3), math.exp(2)
    assert w[0].tolist() == pytest.approx([2 * e3 / (e3 + e2), 2 * e2 / (e3 + e2)], rel=1e-6)


def test_all_negative_logits():
    logits = torch.tensor([[-5.0, -1.0, -3.0, -2.0], [-40.0, -90.0, -30.0, -60.0]])
    _, ids = route(logits, k=2)
    assert as_set(ids) == [{1, 3}, {0, 2}]
    _, ids = route(logits, k=2, method="dsv3", bias=torch.zeros(4))
    assert as_set(ids) == [{1, 3}, {0, 2}]
    w, _ = route(logits, k=2, method="dsv3", bias=torch.zeros(4))
    assert torch.allclose(w.sum(-1), torch.ones(2))


def test_bf16_logits_and_float64_oracle():
    logits = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    bias = torch.linspace(-0.1, 0.1, 16)
    w32, ids32 = route(logits, k=4, method="dsv3", bias=bias, n_group=4, topk_group=2)
    with precision("float64", round_output=False):
        w64, ids64 = route(logits, k=4, method="dsv3", bias=bias, n_group=4, topk_group=2)
    assert w64.dtype == torch.float64 and ids64.dtype == torch.int32
    assert torch.equal(ids32, ids64)
    assert torch.allclose(w32.double(), w64, rtol=1e-6)


# --- ties and the selection checker ---------------------------------------------------------------


def test_exact_ties_lowest_index_and_checker_accepts_any():
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    _, ids = route(logits, k=1)
    assert ids.tolist() == [[0]]
    for choice, ok in ([0], True), ([1], True), ([2], True), ([3], False):
        assert check_route_selection(logits, torch.tensor([choice]), k=1).tolist() == [ok]


def test_checker_margin_is_the_logit_rounding():
    one_up = 1.0 + 2.0**-7  # the next bfloat16 after 1.0
    two_up = 1.0 + 2.0**-6
    for method, bias in ("softmax", None), ("dsv3", torch.zeros(2)):
        near = torch.tensor([[1.0, one_up]], dtype=torch.bfloat16)
        far = torch.tensor([[1.0, two_up]], dtype=torch.bfloat16)
        kw = dict(k=1, method=method, bias=bias)
        assert check_route_selection(near, torch.tensor([[0]]), **kw).tolist() == [True]
        assert check_route_selection(far, torch.tensor([[0]]), **kw).tolist() == [False]
        assert check_route_selection(far, torch.tensor([[1]]), **kw).tolist() == [True]
        # In float32 the same gap is far outside the rounding.
        assert check_route_selection(near.float(), torch.tensor([[0]]), **kw).tolist() == [False]


def test_checker_group_ties():
    # Groups 0 and 1 score the same: either group (with its best expert) is accepted.
    logits = torch.tensor([[1.0, 0.0, 0.0, 1.0, -4.0, -4.0]])
    kw = dict(k=1, method="dsv3", bias=torch.zeros(6), n_group=3, topk_group=1)
    _, ids = route(logits, **kw)
    assert ids.tolist() == [[0]]
    got = [check_route_selection(logits, torch.tensor([[i]]), **kw).item() for i in range(6)]
    assert got == [True, False, False, True, False, False]


def test_checker_rejects_duplicates_and_out_of_range():
    logits = torch.tensor([[3.0, 0.0, 3.0]])
    assert check_route_selection(logits, torch.tensor([[0, 0]]), k=2).tolist() == [False]
    assert check_route_selection(logits, torch.tensor([[0, 3]]), k=2).tolist() == [False]
    assert check_route_selection(logits, torch.tensor([[0, -1]]), k=2).tolist() == [False]
    assert check_route_selection(logits, torch.tensor([[2, 0]]), k=2).tolist() == [True]


def test_checker_covers_float32_rounding_of_the_biased_key():
    # DeepSeek-V4-like biases near 8: b = s + 8.08 is rounded to ulp(8) = 2**-20 in float32, so
    # scores 1e-7 apart cannot be told apart by a float32 kernel: either expert is accepted.
    bias = torch.tensor([8.08, 8.08])
    kw = dict(k=1, method="dsv3", bias=bias)
    close = torch.tensor([[0.0, 4e-7]])  # s differs by 1e-7
    assert check_route_selection(close, torch.tensor([[0]]), **kw).tolist() == [True]
    assert check_route_selection(close, torch.tensor([[1]]), **kw).tolist() == [True]
    apart = torch.tensor([[0.0, 1e-3]])
    assert check_route_selection(apart, torch.tensor([[0]]), **kw).tolist() == [False]


def test_many_ties_take_the_lowest_indices():
    w, ids = route(torch.zeros(3, 256), k=8, method="dsv3", bias=torch.zeros(256))
    assert ids.tolist() == [list(range(8))] * 3
    assert torch.allclose(w, torch.full((3, 8), 1 / 8))
    kw = dict(method="dsv3", bias=torch.zeros(256), n_group=8, topk_group=4)
    _, ids = route(torch.zeros(2, 256), k=8, **kw)
    assert ids.tolist() == [list(range(8))] * 2  # group 0 first, then its lowest experts


def test_checker_accepts_the_reference_on_random_rows():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 32, generator=g).to(torch.bfloat16)
    bias = torch.randn(32, generator=g) * 0.05
    kw = dict(k=6, method="dsv3", bias=bias, n_group=8, topk_group=3)
    _, ids = route(logits, **kw)
    assert check_route_selection(logits, ids, **kw).all()
    _, ids = route(logits, k=6)
    assert check_route_selection(logits, ids, k=6).all()
    shifted = ids.clone()
    shifted[:, 0] = torch.argsort(logits.float(), dim=-1)[:, 0]  # the worst expert instead
    assert not check_route_selection(logits, shifted, k=6).any()


def test_nan_row():
    logits = torch.tensor([[1.0, float("nan"), 0.0], [1.0, 2.0, 0.0]])
    w, ids = route(logits, k=1, method="dsv3", bias=torch.zeros(3))
    assert torch.isnan(w[0]).all() and not torch.isnan(w[1]).any()
    assert ids[1].tolist() == [1]
    ok = check_route_selection(
        logits, torch.tensor([[2], [1]]), k=1, method="dsv3", bias=torch.zeros(3)
    )
    assert ok.tolist() == [True, True]


def test_route_empty():
    w, ids = route(
        torch.zeros(0, 8, dtype=torch.bfloat16),
        k=2,
        method="dsv3",
        bias=torch.zeros(8),
        n_group=4,
        topk_group=2,
    )
    assert w.shape == (0, 2) and w.dtype == torch.float32
    assert ids.shape == (0, 2) and ids.dtype == torch.int32
    assert check_route_selection(torch.zeros(0, 8), ids, k=2).shape == (0,)


def test_route_inputs_unchanged():
    logits = torch.randn(3, 8)
    bias = torch.randn(8)
    before = (logits.clone(), bias.clone())
    route(logits, k=2, method="dsv3", bias=bias, n_group=2, topk_group=1)
    assert torch.equal(logits, before[0]) and torch.equal(bias, before[1])


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(k=2, method="dsv3"), TypeError, "bias"),  # bias is required for dsv3
        (dict(k=2, bias=torch.zeros(8)), ValueError, "bias"),  # and not allowed for softmax
        (dict(k=2, n_group=2), ValueError, "n_group"),
        (dict(k=2, method="dsv3", bias=torch.zeros(8), n_group=3), ValueError, "n_group"),
        (
            dict(k=2, method="dsv3", bias=torch.zeros(8), n_group=2, topk_group=3),
            ValueError,
            "topk_group",
        ),
        (dict(k=5, method="dsv3", bias=torch.zeros(8), n_group=4, topk_group=2), ValueError, "k"),
        (dict(k=9), ValueError, "k"),
        (dict(k=0), ValueError, "k"),
        (dict(k=2, method="sigmoid"), ValueError, "method"),
        (dict(k=2, method="dsv3", bias=torch.zeros(7)), ValueError, "bias"),
        (dict(k=2, method="dsv3", bias=torch.zeros(8, dtype=torch.int32)), TypeError, "bias"),
        (dict(k=2, method="sqrtsoftplus"), TypeError, "bias"),  # required as for dsv3
        (dict(k=2, method="sqrtsoftplus", bias=torch.zeros(8), n_group=3), ValueError, "n_group"),
        (dict(k=2, renormalize=1), TypeError, "renormalize"),
        (dict(k=2, routed_scaling_factor=0.0), ValueError, "routed_scaling_factor"),
    ],
)
def test_route_validation(kwargs, exc, name):
    with pytest.raises(exc, match=f"route: {name}"):
        route(torch.zeros(2, 8), **kwargs)


def test_route_validation_logits():
    with pytest.raises(TypeError, match="route: logits"):
        route(torch.zeros(2, 8, dtype=torch.int32), k=1)
    with pytest.raises(ValueError, match="route: logits"):
        route(torch.zeros(8), k=1)


# --- moe_align ------------------------------------------------------------------------------------


def test_moe_align_by_hand():
    # flat: 0->2, 1->0, 2->2, 3->-1 (skipped), 4->0, 5->2; expert 1 and 3 empty; pad value 6.
    ids = torch.tensor([[2, 0], [2, -1], [0, 2]], dtype=torch.int32)
    sorted_ids, expert_ids, npp = moe_align(ids, num_experts=4, block_size=4)
    assert sorted_ids.dtype == expert_ids.dtype == npp.dtype == torch.int32
    assert sorted_ids.tolist() == [1, 4, 6, 6, 0, 2, 5, 6] + [6] * 10  # 6 + 4 * 3 entries
    assert expert_ids.tolist() == [0, 2, -1, -1, -1]  # 18 // 4 + 1 entries
    assert npp.tolist() == [8]


def test_moe_align_block_one_and_full_blocks():
    ids = torch.tensor([[1, 0], [0, 1]], dtype=torch.int32)
    s, e, n = moe_align(ids, num_experts=2, block_size=1)
    assert s.tolist() == [1, 2, 0, 3] and e.tolist() == [0, 0, 1, 1, -1] and n.tolist() == [4]
    s, e, n = moe_align(ids, num_experts=2, block_size=2)
    assert s.tolist() == [1, 2, 0, 3, 4, 4] and e.tolist() == [0, 1, -1, -1] and n.tolist() == [4]


def test_moe_align_empty():
    s, e, n = moe_align(torch.zeros(0, 2, dtype=torch.int32), num_experts=3, block_size=4)
    assert s.tolist() == [0] * 9 and e.tolist() == [-1] * 3 and n.tolist() == [0]
    s, e, n = moe_align(torch.full((2, 2), -1, dtype=torch.int32), num_experts=3, block_size=4)
    assert s.tolist() == [4] * 13 and e.tolist() == [-1] * 4 and n.tolist() == [0]


def test_moe_align_random_consistent():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(-1, 6, (37, 3), generator=g, dtype=torch.int32)
    s, e, n = moe_align(ids, num_experts=6, block_size=8)
    total = int(n)
    flat = ids.reshape(-1)
    for b in range(total // 8):
        block = s[b * 8 : (b + 1) * 8]
        real = block[block < flat.numel()].long()
        assert (flat[real] == e[b]).all()
    assert (
        sorted(s[:total][s[:total] < flat.numel()].tolist())
        == (flat >= 0).nonzero().view(-1).tolist()
    )


@pytest.mark.parametrize(
    "ids, kwargs, exc, name",
    [
        (torch.zeros(2, 2, dtype=torch.int64), {}, TypeError, "topk_ids"),
        (torch.zeros(4, dtype=torch.int32), {}, ValueError, "topk_ids"),
        (torch.tensor([[0, 4]], dtype=torch.int32), {}, ValueError, "topk_ids"),
        (torch.tensor([[0, -2]], dtype=torch.int32), {}, ValueError, "topk_ids"),
        (torch.zeros(1, 2, dtype=torch.int32), dict(num_experts=0), ValueError, "num_experts"),
        (torch.zeros(1, 2, dtype=torch.int32), dict(block_size=0), ValueError, "block_size"),
    ],
)
def test_moe_align_validation(ids, kwargs, exc, name):
    kw = dict(num_experts=4, block_size=4) | kwargs
    with pytest.raises(exc, match=f"moe_align: {name}"):
        moe_align(ids, **kw)
