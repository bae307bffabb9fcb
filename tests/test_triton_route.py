"""Tests of parity's Triton `route` kernel layout (one warp a token's experts, picks as int32
max reductions, weights from the reloaded picked logits) beyond tests/test_triton_new_kernels.py:
several tokens a program with a partial last program, group sizes that are not powers of two,
the group score's repeated maximum, the pick order, the per-signature plan cache. Each case is
judged by the route spec's own compare (selection within the contract's key bounds, weights
within its tolerance) or, where the keys are exact (softmax, crafted ties), by the reference's ids
in order.

Without a CUDA GPU the kernel runs in the Triton interpreter (set before triton loads).
"""

import pytest
import torch

pytest.importorskip("triton")

from parity import reference as ref
from parity.optimized.triton import _kernels_route as kr
from parity.optimized.triton import route as rt
from parity.properties.specs import route as spec

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _case(t, cfg, *, dtype="float32", regime="normal", bias_regime="random", seed=0, **meta):
    m = {
        "T": t,
        "config": {"topk_group": 1, "n_group": 1, **cfg},
        "renormalize": True,
        "routed_scaling_factor": 2.5,
        "dtype": dtype,
        "bias_dtype": "float32",
        "regime": regime,
        "bias_regime": bias_regime,
        "seed": seed,
        **meta,
    }
    return spec.build(m, DEV)


def _run(case):
    return rt.route(*case.args, **case.kwargs)


def _check(case):
    w, ids = _run(case)
    v = spec.compare(case, (w, ids))
    assert v, v.message
    return w, ids


CONFIGS = [
    {"E": 256, "method": "dsv3", "n_group": 8, "topk_group": 4, "k": 8},  # DeepSeek-V3
    {"E": 256, "method": "sqrtsoftplus", "k": 6},  # DeepSeek-V4-Flash
    {"E": 256, "method": "softmax", "k": 8},
    {"E": 160, "method": "dsv3", "n_group": 8, "topk_group": 3, "k": 6},  # groups of 20
    {"E": 192, "method": "dsv3", "n_group": 16, "topk_group": 5, "k": 8},  # 16 groups of 12
    {"E": 96, "method": "dsv3", "n_group": 3, "topk_group": 2, "k": 5},  # 3 groups (padded)
    {"E": 384, "method": "dsv3", "k": 8},  # one group, 384 experts
    {"E": 1024, "method": "softmax", "k": 4},  # two warps
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['method']}-{c['E']}")
@pytest.mark.parametrize("wide", [False, True], ids=["one_token", "several_tokens"])
def test_route_configs_pass_the_spec(cfg, wide, monkeypatch):
    # wide: several tokens a program (TILE: from T = 1, more slots a thread) and T = 7, so the
    # last program is partial
    if wide:
        monkeypatch.setitem(kr.TILE, "wide_t", 0)
        monkeypatch.setitem(kr.TILE, "slots", 64)
        assert kr.config(7, cfg["E"], cfg.get("n_group", 1))[2] > 1
    for regime, seed in (("normal", 1), ("ties", 2), ("negative", 3)):
        _check(_case(7, cfg, regime=regime, seed=seed))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_route_half_logits_and_nan_rows(dtype, monkeypatch):
    monkeypatch.setitem(kr.TILE, "wide_t", 0)
    cfg = CONFIGS[0]
    _check(_case(9, cfg, dtype=dtype, seed=5))
    for seed in (3, 4):  # seed 3: a NaN bias (every row NaN); 4: NaN logits
        case = _case(9, cfg, dtype=dtype, seed=seed, nan=True)
        w, _ = _check(case)
        assert torch.equal(w.isnan().all(-1).cpu(), spec._nan_rows(case).cpu())
        assert w.isnan().any()


def test_route_softmax_ids_in_reference_order(monkeypatch):
    # softmax keys are the logits themselves: the ids are the reference's, in its order
    # (decreasing key, equal keys by lower id), on a coarse grid full of ties
    monkeypatch.setitem(kr.TILE, "wide_t", 0)
    for regime, seed in (("ties", 6), ("normal", 7), ("negative", 8)):
        case = _case(11, {"E": 64, "method": "softmax", "k": 8}, regime=regime, seed=seed)
        _, ids = _run(case)
        _, want = ref.route(*case.clone().args, **case.clone().kwargs)
        assert torch.equal(ids.cpu(), want.cpu())


def test_route_group_score_counts_a_repeated_maximum():
    # group 0's two largest keys are equal (s(3) + s(3)); group 1 has a larger single key but a
    # smaller second one. With the maximum counted once group 1 would win.
    x = torch.full((1, 8), -6.0)
    x[0, 1] = x[0, 2] = 3.0
    x[0, 4], x[0, 5] = 4.0, 1.0
    b = torch.zeros(8)
    kw = dict(k=2, method="dsv3", n_group=2, topk_group=1)
    w, ids = rt.route(x.to(DEV), bias=b.to(DEV), **kw)
    _, want = ref.route(x, bias=b, **kw)
    assert ids.cpu().tolist() == want.tolist() == [[1, 2]]
    assert torch.allclose(w.cpu(), torch.tensor([[0.5, 0.5]]))


def test_route_equal_keys_in_order_of_id():
    # every key equal: the first k experts, lowest first; dsv3 with equal groups: group 0
    x = torch.zeros(2, 32)
    x[1, ::3] = -0.0  # -0.0 and +0.0 are equal keys
    _, ids = rt.route(x.to(DEV), k=5)
    assert ids.cpu().tolist() == [[0, 1, 2, 3, 4]] * 2
    b = torch.zeros(32)
    _, ids = rt.route(x.to(DEV), k=3, method="dsv3", bias=b.to(DEV), n_group=4, topk_group=2)
    assert ids.cpu().tolist() == [[0, 1, 2]] * 2


def test_route_infinite_and_all_negative_logits():
    x = torch.full((3, 16), -1e4)
    x[1] = float("-inf")
    x[2, 3] = float("inf")
    b = torch.linspace(-0.5, 0.5, 16)
    for method in ("dsv3", "sqrtsoftplus"):
        kw = dict(k=4, method=method, n_group=1, topk_group=1)
        w, ids = rt.route(x.to(DEV), bias=b.to(DEV), **kw)
        w2, ids2 = ref.route(x, bias=b, **kw)
        assert torch.equal(ids.cpu(), ids2)
        assert torch.equal(w.cpu().isnan(), w2.isnan())


def test_route_plan_cache_keeps_validation_and_scale():
    rt._PLANS.clear()
    x = torch.randn(3, 32).to(DEV)
    w1, ids1 = rt.route(x, k=4, routed_scaling_factor=1.0)
    w2, ids2 = rt.route(x, k=4, routed_scaling_factor=2.0)  # its own plan, its own factor
    w3, _ = rt.route(x, k=4, routed_scaling_factor=1.0)  # the cached plan
    assert len(rt._PLANS) == 2
    assert torch.equal(ids1, ids2) and torch.equal(w1, w3)
    assert torch.allclose(w2, 2 * w1, rtol=2.0**-22, atol=0)
    for _ in range(2):  # a bad input is never cached: it raises on every call
        with pytest.raises(ValueError):
            rt.route(x, k=33)
        with pytest.raises(ValueError):
            rt.route(x, k=4, routed_scaling_factor=0.0)
    assert len(rt._PLANS) == 2
    w0, ids0 = rt.route(x[:0], k=4)  # T = 0: outputs only, no launch
    assert w0.shape == ids0.shape == (0, 4)


def test_route_config_one_warp_for_deepseek_sizes():
    # the speed of the kernel rests on this: reductions inside one warp (no shared memory, no
    # barrier) for E = 256, one token a program at small T and a few at large T
    assert kr.config(1, 256, 8) == (8, 32, 1, 1)
    assert kr.config(1024, 256, 8) == (8, 32, 1, 1)
    ng, gs, bt, warps = kr.config(8192, 256, 8)
    assert (ng, gs, warps) == (8, 32, 1) and bt > 1
    assert kr.config(16, 4096, 1)[3] > 1


def test_route_validates_once_per_signature(monkeypatch):
    rt._PLANS.clear()
    calls = []

    def counting(*a, **kw):
        calls.append(1)
        return ref.validate_route(*a, **kw)

    monkeypatch.setattr(rt, "validate_route", counting)
    x = torch.randn(4, 32).to(DEV)
    b = torch.randn(32).to(DEV)
    kw = dict(k=4, method="dsv3", n_group=4, topk_group=2)
    for _ in range(3):
        rt.route(x, bias=b, **kw)
    assert len(calls) == 1
    rt.route(x, bias=b.to(torch.bfloat16), **kw)  # another bias dtype: another signature
    assert len(calls) == 2
    with pytest.raises(ValueError):  # a wrong bias shape after good calls still raises
        rt.route(x, bias=torch.zeros(33).to(DEV), **kw)
    with pytest.raises(TypeError):  # no bias: not the cached signature
        rt.route(x, bias=None, **kw)
