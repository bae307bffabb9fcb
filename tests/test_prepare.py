"""A prepare step (issue 11 section 1): an implementation whose weights are re-laid out once at
load time declares `prepare(args, kwargs) -> (args, kwargs)`; every property calls it before the
kernel, inputs_unchanged checks the case's own inputs (and the prepared ones), `parity bench`
calls it outside the timed region, and a prepare that raises is the candidate's failure.

The toy kernel: fused_moe that takes w13 as [E, H, 2N] contiguous (the transpose of the
contract's [E, 2N, H]), as FlashInfer's and vLLM's MoE kernels take weights shuffled at load.
"""

from __future__ import annotations

import collections

import pytest
import torch

import parity
from parity import api
from parity.catalog import get_spec
from parity.reference.moe import fused_moe as reference

CALLS = collections.Counter()  # in-process runs: prepare and kernel calls
FEW = dict(max_examples=3, database=None, out_dir=None, progress=False, device="cpu")
IN = dict(FEW, isolate=False)  # the counters count here


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.setattr(api, "SESSION", {})
    monkeypatch.delenv("PARITY_MAX_EXAMPLES", raising=False)
    CALLS.clear()


def _transposed(w13):
    # a bad input of another rank passes through untouched: the kernel rejects it as the contract
    # says (a prepare that fails on it would raise IndexError, not the contract's ValueError)
    if isinstance(w13, torch.Tensor) and w13.dim() == 3:
        return w13.transpose(1, 2).contiguous()
    return w13


def prepare(args, kwargs):
    """w13 [E, 2N, H] -> [E, H, 2N] contiguous, into a new tensor (the case's stays as it was)."""
    CALLS["prepare"] += 1
    x, w13, *rest = args
    return (x, _transposed(w13), *rest), kwargs


def kernel(x, w13_t, w2, topk_weights, topk_ids, **kw):
    """Takes the prepared layout only: w13_t [E, H, 2N] contiguous."""
    CALLS["kernel"] += 1
    if isinstance(w13_t, torch.Tensor) and w13_t.dim() == 3 and not w13_t.is_contiguous():
        raise AssertionError("kernel: w13 must be contiguous [E, H, 2N]")
    w13 = w13_t.transpose(1, 2) if isinstance(w13_t, torch.Tensor) and w13_t.dim() == 3 else w13_t
    return reference(x, w13, w2, topk_weights, topk_ids, **kw)


def prepared_kernel(*args, **kwargs):
    return kernel(*args, **kwargs)


prepared_kernel.parity_prepare = prepare  # the convention a worker finds by importing the name


def mangles_one_expert(args, kwargs):
    """Silently drops the last expert's up rows: a layout bug only the outputs show."""
    x, w13, *rest = args
    w = _transposed(w13)
    if isinstance(w, torch.Tensor) and w.dim() == 3 and w.shape[0] > 0:
        w = w.clone()
        w[-1, :, w.shape[2] // 2 :] = 0
    return (x, w, *rest), kwargs


def transposes_in_place(args, kwargs):
    """Right layout for the kernel, but it writes the case's own w13 on the way."""
    x, w13, *rest = args
    w = _transposed(w13)
    if isinstance(w13, torch.Tensor) and w13.dim() == 3 and w13.numel():
        w13.mul_(2)
    return (x, w, *rest), kwargs


def raises(args, kwargs):
    raise RuntimeError("prepare: no layout for this expert count")


def kernel_writes_prepared(x, w13_t, w2, topk_weights, topk_ids, **kw):
    out = kernel(x, w13_t, w2, topk_weights, topk_ids, **kw)
    if isinstance(w13_t, torch.Tensor) and w13_t.numel():
        w13_t.zero_()  # its prepared weights, reused by every later call in a real model
    return out


def _failing(report) -> dict:
    return {st.prop: st.verdict() for st in report.properties if st.verdict() == "FAIL"}


def test_the_kernel_with_its_prepare_passes_every_property_in_process():
    spec = get_spec("fused_moe")
    seen = {}
    for prop in spec.all_properties():
        CALLS.clear()
        r = parity.check("fused_moe", kernel, prepare=prepare, properties=[prop], **IN)
        assert r.ok, r.text()
        assert r[prop].run > 0, r.text()
        seen[prop] = (CALLS["prepare"], CALLS["kernel"])
    # every property went through prepare: one prepare per kernel call
    for prop, (p, k) in seen.items():
        assert p > 0 and p == k, (prop, p, k)


def test_the_kernel_without_its_prepare_fails_matches_reference():
    r = parity.check("fused_moe", kernel, properties=["matches_reference"], **IN)
    assert not r.ok and "matches_reference" in _failing(r)
    assert CALLS["prepare"] == 0


def test_a_prepare_that_mangles_one_expert_is_caught():
    r = parity.check(
        "fused_moe", kernel, prepare=mangles_one_expert, properties=["matches_reference"], **FEW
    )
    assert not r.ok and r["matches_reference"].failure is not None, r.text()


def test_a_prepare_writing_the_case_inputs_is_caught_by_inputs_unchanged():
    r = parity.check(
        "fused_moe", kernel, prepare=transposes_in_place, properties=["inputs_unchanged"], **FEW
    )
    assert not r.ok, r.text()
    assert "input arg1 modified" in r["inputs_unchanged"].failure["message"]


def test_a_kernel_writing_its_prepared_inputs_is_caught_by_inputs_unchanged():
    r = parity.check(
        "fused_moe",
        kernel_writes_prepared,
        prepare=prepare,
        properties=["inputs_unchanged"],
        **IN,
    )
    assert not r.ok, r.text()
    assert "prepared input arg1 modified by the kernel" in r["inputs_unchanged"].failure["message"]


def test_a_prepare_that_raises_is_the_candidates_failure():
    r = parity.check("fused_moe", kernel, prepare=raises, properties=["matches_reference"], **IN)
    st = r["matches_reference"]
    assert st.verdict().startswith("FAIL"), r.text()  # the case's failure, not parity's error
    assert "RuntimeError: prepare: no layout" in st.failure["message"]
    assert "(in prepare)" in st.failure["message"]


def test_isolated_worker_runs_the_prepare_found_on_the_function():
    # the worker imports tests.test_prepare:prepared_kernel and finds its parity_prepare;
    # nothing of the candidate runs here (CALLS stays 0 in this process)
    name = f"{__name__}:prepared_kernel"
    props = ["matches_reference", "inputs_unchanged"]
    r = parity.check("fused_moe", name, properties=props, **FEW)
    assert "run in-process" not in " ".join(r.notes)
    assert r.ok and all(r[p].run > 0 for p in props), r.text()
    bare = parity.check("fused_moe", f"{__name__}:kernel", properties=props[:1], **FEW)
    assert not bare.ok
    # prepare= given by name goes to the worker too; a raising one fails the case there
    bad = parity.check(
        "fused_moe",
        f"{__name__}:kernel",
        prepare=f"{__name__}:raises",
        properties=props[:1],
        **FEW,
    )
    assert "(in prepare)" in bad["matches_reference"].failure["message"], bad.text()
    assert CALLS["prepare"] == CALLS["kernel"] == 0


def test_register_declares_prepare_and_bench_prepares_outside_the_timing(monkeypatch):
    from parity import registry
    from parity.registry import Impl, register

    monkeypatch.setattr(registry, "_IMPLS", dict(registry._IMPLS))  # the toy leaves no trace
    from parity.tools.bench_cmd import prepared_cases, time_calls

    def fn(*a, **k):
        return kernel(*a, **k)

    register("fused_moe", name="test_prepare_toy", backend="external", prepare=prepare)(fn)
    assert fn.parity_impl.prepare is prepare and fn.parity_prepare is prepare
    assert Impl(op="fused_moe", name="x", backend="external", fn=prepared_kernel).prepare is prepare
    with pytest.raises(ValueError, match="prepare must be callable"):
        Impl(op="fused_moe", name="x", backend="external", fn=kernel, prepare=3)
    spec = get_spec("fused_moe")
    meta = spec.bench(4)  # DeepSeek sizes, cut to a CPU's
    meta["dims"].update(H=256, N=128)
    meta["route"]["E"] = 4
    cases = [spec.build({**meta, "seed": s}, "cpu") for s in (1, 2)]
    runs = prepared_cases(fn.parity_impl, cases)
    assert CALLS["prepare"] == 2  # once per input set
    time_calls(fn, runs, "cpu", warmup_ms=0, rep_ms=1)
    assert CALLS["prepare"] == 2 and CALLS["kernel"] > 2  # none inside the timed calls


def test_callers_holding_only_the_function_prepare_through_its_attribute():
    # report/localize (call_impl), suite (run_property) and golden (evaluate) get the function
    from parity.campaign.engine import run_property
    from parity.properties.checks import call_impl, evaluate, reference_outputs

    spec = get_spec("fused_moe")
    meta = spec.bench(2)
    meta["dims"].update(H=128, N=128)
    meta["route"]["E"] = 3
    case = spec.build({**meta, "seed": 5}, "cpu")
    assert torch.equal(call_impl(prepared_kernel, case)[0], reference_outputs(spec, case)[0])
    assert evaluate(spec, "inputs_unchanged", prepared_kernel, case)[0] == "pass"
    st = run_property(spec, "matches_reference", prepared_kernel, impl_name="t", max_examples=2)
    assert st.verdict() == "pass" and CALLS["prepare"] == CALLS["kernel"] > 2


def test_the_decoder_stack_refuses_an_op_with_a_prepare_step(monkeypatch):
    """The stack calls each op's function on the layer's weights as they are: an implementation
    that declares a prepare step would run without it there, so the stack says so instead."""
    from parity import registry
    from parity.optimized import stack
    from parity.registry import register

    monkeypatch.setattr(registry, "_IMPLS", dict(registry._IMPLS))
    register("fused_moe", name="test_prepare_stack", backend="external", prepare=prepare)(kernel)
    stack._table.cache_clear()
    try:
        with pytest.raises(NotImplementedError, match="prepare step"):
            stack._table((("fused_moe", "test_prepare_stack"),))
        from parity.catalog import get_impl

        triton = get_impl("fused_moe", "triton")  # loads the catalog; no prepare: accepted
        assert stack._table((("fused_moe", "triton"),))["fused_moe"] is triton.fn
    finally:
        stack._table.cache_clear()
