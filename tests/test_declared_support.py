"""`register(supports=)`: an implementation's declared support, read from the case description
alone, is the same decision as its own `Unsupported` on the built case, and the harness skips
what it declares without building the case or asking a worker (H100 nightly, 2026-12-06:
FlashInfer's swiglu spent most of its 480 s on 57242 unsupported draws, each built twice).

The FlashInfer adapters check support before they touch CUDA or FlashInfer, so on the CPU a
supported case raises their "runs on CUDA tensors" Unsupported and an unsupported one its
reason: the decision of the adapter itself, compared with its predicate on drawn cases."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as seed_
from hypothesis import strategies as st

from parity import Unsupported
from parity.campaign import drive, engine
from parity.catalog import get_spec, impls
from parity.properties.tolerance import Verdict

DECLARED = sorted((i for i in impls() if i.supports is not None), key=lambda i: i.key)
ON_GPU = "runs on CUDA tensors"


def _metas(spec, n: int, seed: int) -> list[dict]:
    """n valid case descriptions of both sizes (T cut to 3: support never follows T)."""
    out: list[dict] = []

    @seed_(seed)
    @settings(max_examples=n, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data):
        size = data.draw(st.sampled_from(["small", "full"]))
        meta = data.draw(spec.strategy(size=size))
        out.append({**meta, "T": min(meta["T"], 3)})

    collect()
    return out


def _adapter_says(impl, meta) -> str | None:
    """What the adapter itself decides on the case built on the CPU: None (it would run it)."""
    case = get_spec(impl.op).build(meta, "cpu")
    try:
        impl.fn(*case.args, **case.kwargs)
    except Unsupported as e:
        return None if ON_GPU in str(e) else str(e)
    raise AssertionError(f"{impl.key} ran on the CPU: {meta}")


def disagreements(impl, predicate, metas) -> list:
    bad = []
    for meta in metas:
        said, did = predicate(meta), _adapter_says(impl, meta)
        if (said is None) != (did is None) or (said and said not in did):
            bad.append((meta, said, did))
    return bad


def test_the_flashinfer_adapters_declare_their_support():
    assert {i.key for i in DECLARED} >= {
        "swiglu:flashinfer", "route:flashinfer", "mhc_pre:flashinfer", "mhc_post:flashinfer",
    }  # fmt: skip


@pytest.mark.parametrize("impl", DECLARED, ids=[i.key for i in DECLARED])
def test_declared_support_is_the_adapters_own_decision(impl):
    metas = _metas(get_spec(impl.op), 150, seed=1)
    bad = disagreements(impl, impl.supports, metas)
    assert not bad, bad[:3]
    said = [impl.supports(m) for m in metas]  # both answers occur: the comparison can fail
    assert any(w is None for w in said) and any(w for w in said), impl.key


def test_a_wrong_declaration_is_caught():
    """Witness: mhc_pre's predicate without its H % 8 rule disagrees with the adapter."""
    impl = next(i for i in DECLARED if i.key == "mhc_pre:flashinfer")

    def forgets_h(meta):
        return impl.supports({**meta, "H": 8})

    metas = _metas(get_spec("mhc_pre"), 150, seed=2)
    assert disagreements(impl, forgets_h, metas)


class Counting:
    def __init__(self):
        self.metas: list[dict] = []

    def evaluate(self, prop, meta):
        self.metas.append(meta)
        return "pass", Verdict(True, "", 0.0)


def test_the_harness_skips_declared_draws_and_still_runs_bad_inputs(monkeypatch):
    spec = get_spec("swiglu")
    plain = lambda m: None if m["options"]["limit"] is None else "limits left out"  # noqa: E731
    monkeypatch.setattr(engine, "declared_supports", lambda op, name: plain)
    ev = Counting()
    st_ = drive(spec, "matches_reference", ev, impl_name="x", max_examples=40, seed=1)
    assert ev.metas and all(m["options"]["limit"] is None for m in ev.metas)
    assert st_.unsupported > 0 and st_.last_unsupported == "declared: limits left out"
    ev = Counting()  # error_parity: a bad input's error is checked whatever the options
    drive(spec, "error_parity", ev, impl_name="x", max_examples=40, seed=1)
    assert any(m["options"]["limit"] is not None for m in ev.metas)


def test_a_predicate_that_raises_leaves_the_case_to_the_implementation(monkeypatch):
    def broken(meta):
        raise KeyError("options")

    monkeypatch.setattr(engine, "declared_supports", lambda op, name: broken)
    ev = Counting()
    st_ = drive(get_spec("swiglu"), "matches_reference", ev, impl_name="x", max_examples=10)
    assert len(ev.metas) == st_.run > 0 and st_.unsupported == 0


CALLS: list = []


def _swiglu_no_limits(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    """The reference, leaving limits out by its own NotImplementedError too."""
    from parity.reference import swiglu

    CALLS.append(limit)
    if limit is not None:
        raise NotImplementedError("no limits")
    return swiglu(x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode)


def test_parity_check_reads_a_registered_functions_own_declaration():
    """The API goes by the function's registration, not by a name (which might be another's)."""
    import parity

    fn = parity.register(
        "swiglu", name="declared_no_limits", backend="torch", devices=("cpu",),
        supports=lambda m: "no limits" if m["options"]["limit"] is not None else None,
    )(_swiglu_no_limits)  # fmt: skip
    CALLS.clear()
    report = parity.check(
        "swiglu", fn, device="cpu", properties=["matches_reference"], max_examples=30,
        isolate=False,
    )  # fmt: skip
    st = report["matches_reference"]
    assert st.passed == st.run > 0 and st.unsupported > 0, st
    assert CALLS and all(lim is None for lim in CALLS)  # the declared draws never reached it
    assert st.last_unsupported == "declared: no limits"
