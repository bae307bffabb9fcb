"""The properties: written once, run against every implementation of every op.

Each property takes the op's `OpSpec`, an implementation and a built `Case`, and returns a
`Verdict`. An implementation raising `NotImplementedError` makes the case "unsupported".

- matches_reference: agreement under the op's tolerance model (`OpSpec.compare`).
- writes_all_outputs: uninitialised memory is NaN/poison during the call; none may survive.
- inputs_unchanged: every input tensor bitwise equal after the call.
- deterministic: two calls give bitwise equal outputs.
- nan_policy: on NaN-injected input, NaN exactly where the reference puts it.
- error_parity: on bad input the implementation raises ValueError/TypeError, as the reference.
- metamorphic relations (`OpSpec.relations`): token permutation, batch split, expert relabel,
  power-of-two scaling.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from parity.properties.case import Case, as_tuple
from parity.properties.tolerance import Verdict, bits, check_meta, isnan_any, nan_mask_equal
from parity.registry import OpSpec


class UnsupportedCase(Exception):
    """The implementation raised NotImplementedError for this case."""


class ImplRaised(Exception):
    """The implementation raised where it should not have."""

    def __init__(self, exc: BaseException):
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.exc = exc


def call_impl(fn: Callable, case: Case):
    """Call on a private copy of the inputs; NotImplementedError means unsupported."""
    c = case.clone()
    try:
        return as_tuple(fn(*c.args, **c.kwargs))
    except NotImplementedError as e:
        raise UnsupportedCase(str(e)) from e
    except Exception as e:
        raise ImplRaised(e) from e


def reference_outputs(spec: OpSpec, case: Case) -> tuple:
    c = case.clone()
    return as_tuple(spec.reference(*c.args, **c.kwargs))


def canonical(spec: OpSpec, case: Case, outs: tuple) -> tuple:
    return as_tuple(spec.canonical(case, outs)) if spec.canonical else outs


@contextlib.contextmanager
def poisoned_allocations():
    """Every torch.empty during the block is filled with NaN (floats, fp8) or the dtype's
    maximum (integers), so an output element a kernel never writes stays recognisable."""
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _poison_mask(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() or t.dtype == torch.float8_e4m3fn:
        return isnan_any(t)
    if t.dtype == torch.bool:
        return torch.zeros_like(t)
    return t == torch.iinfo(t.dtype).max


# --- the properties -------------------------------------------------------------------------


def matches_reference(spec: OpSpec, fn: Callable, case: Case) -> Verdict:
    return spec.compare(case, call_impl(fn, case))


def writes_all_outputs(spec: OpSpec, fn: Callable, case: Case) -> Verdict:
    with poisoned_allocations():
        outs = call_impl(fn, case)
    refs = reference_outputs(spec, case)
    if len(outs) != len(refs):
        return Verdict(False, f"returned {len(outs)} outputs, the contract has {len(refs)}")
    outs, refs = canonical(spec, case, outs), canonical(spec, case, refs)
    for i, (o, r) in enumerate(zip(outs, refs)):
        v = check_meta(f"output {i}", o, r)
        if not v:
            return v
        left = _poison_mask(o) & ~_poison_mask(r)
        if left.any():
            where = left.nonzero()[:5].tolist()
            return Verdict(
                False,
                f"output {i}: {int(left.sum())} of {o.numel()} elements never written "
                f"(still poison), e.g. at {where}",
                float(left.sum()),
            )
    return Verdict.passed()


def inputs_unchanged(spec: OpSpec, fn: Callable, case: Case) -> Verdict:
    c = case.clone()
    try:
        fn(*c.args, **c.kwargs)
    except NotImplementedError as e:
        raise UnsupportedCase(str(e)) from e
    except Exception as e:
        raise ImplRaised(e) from e
    before, after = case.tensors(), c.tensors()
    for name, t in before.items():
        if not torch.equal(bits(t), bits(after[name])):
            n = int((bits(t) != bits(after[name])).sum())
            return Verdict(False, f"input {name} modified: {n} of {t.numel()} elements changed")
    return Verdict.passed()


def deterministic(spec: OpSpec, fn: Callable, case: Case) -> Verdict:
    a = canonical(spec, case, call_impl(fn, case))
    b = canonical(spec, case, call_impl(fn, case))
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or not torch.equal(bits(x), bits(y)):
            n = int((bits(x) != bits(y)).sum()) if x.shape == y.shape else -1
            return Verdict(False, f"output {i}: two calls differ in {n} elements")
    return Verdict.passed()


def nan_policy(spec: OpSpec, fn: Callable, case: Case) -> Verdict:
    outs = canonical(spec, case, call_impl(fn, case))
    refs = canonical(spec, case, reference_outputs(spec, case))
    for i, (o, r) in enumerate(zip(outs, refs)):
        if not isinstance(o, torch.Tensor) or not (r.is_floating_point() or r.dtype.itemsize == 1):
            continue
        if r.dtype in (torch.uint8,):
            continue  # packed codes carry the policy through their scales
        v = nan_mask_equal(f"output {i}", o, r)
        if not v:
            return v
    return Verdict.passed()


def error_parity(spec: OpSpec, fn: Callable, case: Case) -> Verdict:
    what = case.meta.get("invalid", "?")
    try:
        reference_outputs(spec, case)
    except (ValueError, TypeError):
        pass
    else:  # a bug in parity's own invalid-input generator: never a silent pass
        raise AssertionError(f"{spec.name}: invalid case {what!r} was accepted by the reference")
    c = case.clone()
    try:
        fn(*c.args, **c.kwargs)
    except NotImplementedError as e:
        raise UnsupportedCase(str(e)) from e
    except (ValueError, TypeError):
        return Verdict.passed()
    except Exception as e:
        return Verdict(
            False, f"bad input ({what}): raised {type(e).__name__} instead of ValueError/TypeError"
        )
    return Verdict(False, f"bad input ({what}) was accepted; the reference rejects it")


def relation_check(spec: OpSpec, rel, fn: Callable, case: Case) -> Verdict | None:
    """`rel.transform(case, rng)` gives cases derived from `case` and `combine`, which maps the
    implementation's outputs on them back to what it must have returned on `case` itself."""
    rng = random.Random(case.meta.get("seed", 0) ^ 0x5EED)
    got = rel.transform(case, rng)
    if got is None:
        return None
    cases, combine = got
    base = canonical(spec, case, call_impl(fn, case))
    derived = canonical(spec, case, as_tuple(combine([call_impl(fn, c) for c in cases])))
    if not rel.exact:
        return spec.compare_pair(case, derived, base)
    for i, (x, y) in enumerate(zip(derived, base)):
        v = check_meta(f"output {i}", x, y)
        if not v:
            return Verdict(False, f"{rel.name}: {v.message}")
        nx, ny = isnan_any(x), isnan_any(y)
        if not (torch.equal(nx, ny) and torch.equal(bits(x)[~nx], bits(y)[~ny])):
            n = int(((bits(x) != bits(y)) & ~(nx & ny)).sum())
            return Verdict(False, f"{rel.name}: output {i} differs in {n} of {x.numel()} elements")
    return Verdict.passed()


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable
    doc: str


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property("matches_reference", matches_reference, "agrees with the reference"),
        Property("writes_all_outputs", writes_all_outputs, "writes every output element"),
        Property("inputs_unchanged", inputs_unchanged, "leaves its inputs unchanged"),
        Property("deterministic", deterministic, "two calls are bitwise equal"),
        Property("nan_policy", nan_policy, "NaN goes where the reference puts it"),
        Property("error_parity", error_parity, "rejects bad input as the reference does"),
    )
}


def evaluate(spec: OpSpec, prop: str, fn: Callable, case: Case) -> tuple[str, Verdict | None]:
    """Run one property on one case: ("pass"|"fail"|"unsupported"|"n/a", verdict)."""
    try:
        if prop in PROPERTIES:
            v = PROPERTIES[prop].check(spec, fn, case)
        else:
            rel = next(r for r in spec.relations if r.name == prop)
            v = relation_check(spec, rel, fn, case)
            if v is None:
                return "n/a", None
    except UnsupportedCase as e:
        return "unsupported", Verdict(True, str(e))
    except ImplRaised as e:
        return "fail", Verdict(False, f"raised {e}", float("inf"))
    return ("pass" if v.ok else "fail"), v
