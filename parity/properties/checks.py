"""The properties: written once, run against every implementation of every op.

A property is split in two, so that a candidate can never judge itself:
- the plan (`make_plan`): the calls the candidate must make on a case (a plain call on a private
  copy of the inputs, a call under poisoned allocations, two calls, the calls on a relation's
  derived cases, the call on bad input). `execute` makes them and returns only what each call
  did (`Outcome`: the outputs, or the exception raised). It runs wherever the candidate runs (in
  the worker when isolated);
- the judgement (`judge`): the outputs' structure against the contract, then the property's
  comparison and verdict, computed from the case (rebuilt from its description by the harness)
  and the outcomes. It runs in the harness, never in the worker.

Properties (an implementation raising `NotImplementedError` makes the case "unsupported"):
- matches_reference: agreement under the op's tolerance model (`OpSpec.compare`).
- writes_all_outputs: two calls with fresh allocations poisoned by two different fills; an
  element holding the fill in both is unwritten.
- inputs_unchanged: every input tensor bitwise equal after the call.
- deterministic: two calls give bitwise equal outputs.
- nan_policy: on NaN-injected input, NaN exactly where the reference puts it.
- error_parity: on bad input the implementation raises ValueError/TypeError, as the reference.
- metamorphic relations (`OpSpec.relations`): token permutation, batch split, expert relabel,
  power-of-two scaling.

An implementation may declare a prepare step (`Impl.prepare`: weights re-laid out at load time).
Every call of every plan goes through `call_kernel`: prepare on the call's private copy of the
inputs, then the kernel on what prepare returned; inputs_unchanged checks the case's own inputs
(prepare must not write them) and the prepared ones (the kernel must not write those either: a
prepared weight is reused by every later call). A prepare that raises is the candidate's failure.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from parity.properties.case import Case, as_tuple
from parity.properties.tolerance import Verdict, bits, check_meta, isnan_any, nan_mask_equal
from parity.registry import OpSpec, Relation

MAX_TEXT = 4000  # kernel text (exception messages) kept in a verdict
# set by the CLI's SIGINT handler: a KeyboardInterrupt then is the user's, not the kernel's
USER_INTERRUPT = False


class UnsupportedCase(Exception):
    """The implementation raised NotImplementedError for this case."""


class ImplRaised(Exception):
    """The implementation raised where it should not have."""

    def __init__(self, exc: BaseException):
        super().__init__(exc_text(exc))
        self.exc = exc


def exc_text(exc: BaseException) -> str:
    """ "Type: message", truncated; an exception whose __str__ raises is still the candidate's."""
    try:
        msg = str(exc)
    except Exception as e:
        msg = f"<str() of the exception raised {type(e).__name__}>"
    if len(msg) > MAX_TEXT:
        msg = msg[:MAX_TEXT] + f"... ({len(msg) - MAX_TEXT} characters cut)"
    return f"{type(exc).__name__}: {msg}"


class PrepareFailed(Exception):
    """An implementation's prepare step raised (`exc`) or returned something other than
    (args, kwargs): the candidate's failure, like the kernel's own."""

    def __init__(self, exc: BaseException):
        super().__init__(exc_text(exc))
        self.exc = exc


def prepared(prepare: Callable | None, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The inputs the kernel is called with: `prepare(args, kwargs)` where the implementation
    declares one (its failure raised as `PrepareFailed`, NotImplementedError passing through as
    unsupported), else the inputs themselves."""
    if prepare is None:
        return args, kwargs
    try:
        got = prepare(args, kwargs)
    except NotImplementedError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt) and USER_INTERRUPT:
            raise
        raise PrepareFailed(e) from e
    ok = isinstance(got, tuple) and len(got) == 2
    if not (ok and isinstance(got[0], (tuple, list)) and isinstance(got[1], dict)):
        what = type(got).__name__
        raise PrepareFailed(TypeError(f"prepare returned a {what}, expected (args, kwargs)"))
    return tuple(got[0]), dict(got[1])


def prepare_of(fn: Callable, prepare: Callable | None = None) -> Callable | None:
    """The prepare step of `fn`: the one given, else its `parity_prepare` attribute (set by
    `register(prepare=)`), so a caller holding only the function still prepares."""
    return prepare if prepare is not None else getattr(fn, "parity_prepare", None)


def call_kernel(fn: Callable, args: tuple, kwargs: dict, prepare: Callable | None = None):
    """The one way parity calls an implementation: prepare (if any), then the kernel."""
    args, kwargs = prepared(prepare_of(fn, prepare), args, kwargs)
    return fn(*args, **kwargs)


def call_impl(fn: Callable, case: Case, prepare: Callable | None = None):
    """Call on a private copy of the inputs; NotImplementedError means unsupported (for the
    tools that look at outputs without a property: report, localize)."""
    c = case.clone()
    try:
        return as_tuple(call_kernel(fn, c.args, c.kwargs, prepare))
    except NotImplementedError as e:
        raise UnsupportedCase(str(e)) from e
    except Exception as e:
        raise ImplRaised(e) from e


def reference_outputs(spec: OpSpec, case: Case) -> tuple:
    c = case.clone()
    return as_tuple(spec.reference(*c.args, **c.kwargs))


def canonical(spec: OpSpec, case: Case, outs: tuple) -> tuple:
    return as_tuple(spec.canonical(case, outs)) if spec.canonical else outs


# Two poison fills for writes_all_outputs (issue 9 section 7): every fresh allocation of the
# call holds POISON[1] in the first call and POISON[2] in the second. Both are NaNs with payloads
# no arithmetic produces (integers: 0xFF.. and 0x7F.. patterns); an element is unwritten only if
# it holds the first fill after the first call AND the second after the second, so a computed
# NaN, a packed byte 0xFF or a scale code 255 is never mistaken for one.
POISON = {
    1: {1: 0xFF, 2: -1, 4: -1, 8: -1},
    2: {1: 0x7F, 2: 0x7FA5, 4: 0x7FA5A5A5, 8: 0x7FFA5A5A5A5A5A5A},
}
_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_FACTORIES = (
    "aten::empty.memory_format",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::new_empty",
    "aten::new_empty_strided",
    "aten::empty_permuted",
)


def raw(t: torch.Tensor) -> torch.Tensor:
    """The elements' bits as integers of the element's size (bool as its byte)."""
    t = t.contiguous()
    return t.view(_RAW[t.element_size()])


def fill_bytes(t: torch.Tensor, which: int) -> None:
    """Fill the whole storage of a fresh allocation with poison `which`."""
    size = t.element_size()
    if size not in _RAW or t.device.type == "meta":
        return
    st = t.untyped_storage()
    n = st.nbytes() // size
    if n:
        view = torch.empty(0, dtype=_RAW[size], device=t.device)
        view.set_(st, 0, (n,), (1,)).fill_(POISON[which][size])


def _poison_mode(which: int):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Poison(TorchDispatchMode):
        """Fills what the call allocates with `which` (the factories called from Python and
        the allocations ops make from the candidate's call)."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.name()
            if isinstance(out, torch.Tensor) and any(name.startswith(f) for f in _FACTORIES):
                fill_bytes(out, which)
            return out

    return Poison()


@contextlib.contextmanager
def poisoned_allocations(which: int = 1):
    """Every allocation during the block is filled with poison `which`; allocations made inside
    compiled code (a C++ op's own at::empty) get torch's fill (NaN, integer maximum)."""
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings(), _poison_mode(which):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _torch_fill(t: torch.Tensor) -> torch.Tensor:
    """Elements holding torch's own fill of uninitialised memory (NaN, integer maximum)."""
    if t.dtype == torch.bool:
        return torch.zeros_like(t)
    if t.is_floating_point():
        return raw(t) == raw(torch.full((1,), math.nan, dtype=t.dtype, device=t.device))
    return t == torch.iinfo(t.dtype).max


# --- the plan: what the candidate is asked to do -------------------------------------------


@dataclass(frozen=True)
class Call:
    case: int = 0  # 0: the case; i > 0: the relation's (i-1)-th derived case
    poison: int = 0  # under poisoned allocations, fill 1 or 2 (writes_all_outputs)
    inputs: bool = False  # send the inputs back after the call (inputs_unchanged)


@dataclass
class Plan:
    prop: str
    cases: list  # [case, *derived cases]
    calls: tuple
    relation: Relation | None = None
    combine: Callable | None = None


_CALLS = {
    "matches_reference": (Call(),),
    "writes_all_outputs": (Call(poison=1), Call(poison=2)),
    "inputs_unchanged": (Call(inputs=True),),
    "deterministic": (Call(), Call()),
    "nan_policy": (Call(),),
    "error_parity": (Call(),),
}


def make_plan(spec: OpSpec, prop: str, case: Case) -> Plan | None:
    """The calls `prop` needs on `case`; None where it does not apply (a relation that has no
    derived case here). Deterministic: harness and worker make the same plan from one case."""
    if prop in _CALLS:
        return Plan(prop, [case], _CALLS[prop])
    rel = next((r for r in spec.relations if r.name == prop), None)
    if rel is None:
        raise KeyError(f"{prop!r} is not a property of {spec.name}")
    rng = random.Random(case.meta.get("seed", 0) ^ 0x5EED)
    got = rel.transform(case, rng)
    if got is None:
        return None
    cases, combine = got
    calls = (Call(), *(Call(case=i + 1) for i in range(len(cases))))
    return Plan(prop, [case, *cases], calls, rel, combine)


# --- execution: the candidate's side --------------------------------------------------------


@dataclass
class Outcome:
    """What one call did, and nothing else: no verdict travels from the candidate's process."""

    kind: str  # "returned" | "raised" | "unsupported"
    container: str = ""  # "tensor", "tuple", or the type returned ("list", "NoneType", ...)
    items: tuple = ()  # dense torch.Tensor outputs; a str describes an item that is not one
    error: str = ""  # "Type: message" of the exception
    rejects: bool = False  # the exception was a ValueError/TypeError
    inputs: dict | None = None  # the call's inputs afterwards (Call.inputs)


def _item(x):
    if isinstance(x, torch.Tensor):
        if type(x) is not torch.Tensor:
            return f"a tensor subclass {type(x).__name__}"
        if x.layout != torch.strided:
            return f"a {str(x.layout).replace('torch.', '')} tensor"
        return x
    return f"a {type(x).__name__}"


def outcome_of(ret) -> Outcome:
    if isinstance(ret, torch.Tensor):
        return Outcome("returned", "tensor", (_item(ret),))
    if isinstance(ret, tuple):
        return Outcome("returned", "tuple", tuple(_item(x) for x in ret))
    if isinstance(ret, list):
        return Outcome("returned", "list", tuple(_item(x) for x in ret))
    return Outcome("returned", type(ret).__name__, ())


PREPARED = "prepared:"  # Outcome.inputs keys of the prepared inputs (before/after the kernel)


def run_call(fn: Callable, case: Case, call: Call, prepare: Callable | None = None) -> Outcome:
    prepare = prepare_of(fn, prepare)
    c = case.clone()
    kept = {}
    try:
        # prepare under the same poisoned allocations as the kernel: what it leaves unwritten
        # and the kernel reads shows up as poison
        with poisoned_allocations(call.poison) if call.poison else contextlib.nullcontext():
            args, kwargs = prepared(prepare, c.args, c.kwargs)
            if call.inputs and prepare is not None:
                now = Case(c.op, args, kwargs, {}, c.device).tensors()
                kept = {f"{PREPARED}before:{k}": v.clone() for k, v in now.items()}
            ret = fn(*args, **kwargs)
    except NotImplementedError as e:
        return Outcome("unsupported", error=exc_text(e))
    except PrepareFailed as e:  # the candidate's prepare step: its failure as the kernel's
        err, exc = exc_text(e.exc) + " (in prepare)", e.exc
        return Outcome("raised", error=err, rejects=isinstance(exc, (ValueError, TypeError)))
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # a kernel's exit is its failure
        if isinstance(e, KeyboardInterrupt) and USER_INTERRUPT:
            raise  # the user's Ctrl-C, not the kernel's
        return Outcome("raised", error=exc_text(e), rejects=isinstance(e, (ValueError, TypeError)))
    out = outcome_of(ret)
    if call.inputs:
        out.inputs = c.tensors()
        if kept:
            now = Case(c.op, args, kwargs, {}, c.device).tensors()
            out.inputs.update(kept)
            out.inputs.update({f"{PREPARED}after:{k}": v for k, v in now.items()})
    return out


def execute(
    fn: Callable, plan: Plan, after: Callable | None = None, *, prepare: Callable | None = None
) -> list[Outcome]:
    """Make the plan's calls (each through `prepare`, where the implementation declares one);
    stop at the first that does not return. `after()` runs after each call (a CUDA
    synchronisation: an asynchronous error surfaces at its own call)."""
    outs = []
    for call in plan.calls:
        o = run_call(fn, plan.cases[call.case], call, prepare)
        if after is not None:
            after()
        outs.append(o)
        if o.kind != "returned":
            break
    return outs


# --- the judgement: the harness's side ------------------------------------------------------

_CONTRACT: dict = {}


def _flags(meta, path=""):
    """The description's flags (bool, str, None, at any depth): options decide the outputs'
    structure, never the values of shapes or seeds."""
    if isinstance(meta, dict):
        for k, v in meta.items():
            yield from _flags(v, f"{path}.{k}")
    elif isinstance(meta, (list, tuple)):
        for i, v in enumerate(meta):
            yield from _flags(v, f"{path}.{i}")
    elif isinstance(meta, (bool, str)) or meta is None:
        yield path, meta


def _contract_key(spec: OpSpec, case: Case):
    return spec.name, tuple(sorted(_flags(case.meta), key=repr))


def contract(spec: OpSpec, case: Case) -> tuple[str, int] | None:
    """("tensor", 1) or ("tuple", n): the structure the reference returns on such a case
    (None: the reference rejects it)."""
    key = _contract_key(spec, case)
    if key not in _CONTRACT:
        # a copy without Case.clone, and plain lists for list options: a spec may keep track
        # of the lists its case's clones make (decoder_stack's capture, whose latest clone is
        # the candidate's call)
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in case.args)
        kwargs = {
            k: list(v) if isinstance(v, list) else v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in case.kwargs.items()
        }
        try:
            ref = spec.reference(*args, **kwargs)
        except Exception:
            return None
        _CONTRACT[key] = ("tensor", 1) if isinstance(ref, torch.Tensor) else ("tuple", len(ref))
    return _CONTRACT[key]


def structure(spec: OpSpec, case: Case, o: Outcome) -> Verdict:
    """Exactly the contract's number of outputs, each a dense torch.Tensor on the input's
    device; a single output may come bare or as a 1-tuple."""
    want = contract(spec, case)
    if want is None:
        return Verdict.passed()
    kind, n = want
    wants = "a tensor" if kind == "tensor" else f"a tuple of {n} tensors"
    ok_container = o.container == "tuple" or (kind == "tensor" and o.container == "tensor")
    if not ok_container or len(o.items) != n:
        what = o.container
        if o.container in ("tuple", "list"):
            what = f"a {o.container} of {len(o.items)}"
        elif o.container == "tensor":
            what = "a tensor"
        return Verdict(False, f"returned {what}, the contract wants {wants}", math.inf)
    for i, x in enumerate(o.items):
        if isinstance(x, str):
            return Verdict(
                False,
                f"output {i} is {x}, the contract wants a dense torch.Tensor on {case.device}",
            )
        if x.device.type != torch.device(case.device).type:
            return Verdict(False, f"output {i} is on {x.device}, the inputs are on {case.device}")
    return Verdict.passed()


def _outs(o: Outcome) -> tuple:
    return tuple(o.items)


def judge(spec: OpSpec, plan: Plan, outcomes: list[Outcome], accept=()) -> tuple[str, Verdict]:
    """("pass"|"fail"|"unsupported"|"n/a", verdict) of the plan's property from what the calls
    did. `accept`: named variants of the op (`parity.properties.variants`) under which
    matches_reference, nan_policy and the inexact relations are judged; a relation that does not
    hold under one is "n/a". Raises on parity's own bugs (a reference accepting its invalid
    case)."""
    prop, case = plan.prop, plan.cases[0]
    if accept:
        from parity.properties import variants

        voided = variants.relations_voided(spec, accept)
        if prop in voided:
            return "n/a", Verdict(True, f"{prop} does not hold under variant {voided[prop]}")
    if prop == "error_parity":
        return _judge_error_parity(spec, case, outcomes[0])
    if len(outcomes) != len(plan.calls) and outcomes[-1].kind == "returned":
        return "fail", Verdict(False, "the worker returned fewer outcomes than calls", math.inf)
    for o in outcomes:
        if o.kind == "unsupported":
            return "unsupported", Verdict(True, o.error.split(": ", 1)[-1])
        if o.kind == "raised":
            return "fail", Verdict(False, f"raised {o.error}", math.inf)
    for call, o in zip(plan.calls, outcomes):
        v = structure(spec, plan.cases[call.case], o)
        if not v:
            return "fail", v
    if accept and prop in ("matches_reference", "nan_policy"):
        from parity.properties.variants import judge_under

        v = judge_under(spec, case, _outs(outcomes[0]), accept, prop=prop)
    elif prop in _JUDGES:
        v = _JUDGES[prop](spec, plan, outcomes)
    else:
        v = _relation(spec, plan, outcomes, accept)
    return ("pass" if v.ok else "fail"), v


def _matches_reference(spec, plan, outcomes) -> Verdict:
    return spec.compare(plan.cases[0], _outs(outcomes[0]))


def _writes_all_outputs(spec, plan, outcomes) -> Verdict:
    """Unwritten: the first fill after the first call and the second after the second (where
    the op has a canonical form, only elements that survive it count: e.g. padding the
    contract leaves free); or torch's own fill in both calls where the reference has no NaN
    (an allocation made inside compiled code, which only torch fills: there a written NaN
    cannot be told from the fill, so a NaN counts as written where the reference has one)."""
    case = plan.cases[0]
    first, second, refs = _outs(outcomes[0]), _outs(outcomes[1]), reference_outputs(spec, case)
    unwritten = []
    for i, (a, b, r) in enumerate(zip(first, second, refs)):
        v = check_meta(f"output {i}", a, r)
        if not v:
            return v
        if a.shape != b.shape or a.dtype != b.dtype:
            return Verdict(False, f"output {i}: two calls returned different shapes or dtypes")
        size = a.element_size()
        left = (raw(a) == POISON[1][size]) & (raw(b) == POISON[2][size])
        if spec.canonical is None:
            r = r.to(a.device)
            ref_fill = isnan_any(r) if r.is_floating_point() else _torch_fill(r)
            left |= _torch_fill(a) & _torch_fill(b) & ~ref_fill & (raw(a) == raw(b))
        unwritten.append(left)
    if spec.canonical is not None:  # only what survives the canonical form counts
        x = tuple(first)
        y = tuple(torch.where(m, b, a) for m, a, b in zip(unwritten, first, second))
        cx, cy = canonical(spec, case, x), canonical(spec, case, y)
        for i, (p, q) in enumerate(zip(cx, cy)):
            if p.shape != q.shape or not torch.equal(raw(p), raw(q)):
                continue
            unwritten[i] = torch.zeros_like(unwritten[i])
    for i, left in enumerate(unwritten):
        if left.any():
            where = left.nonzero()[:5].tolist()
            return Verdict(
                False,
                f"output {i}: {int(left.sum())} of {left.numel()} elements never written "
                f"(they hold the poison fill in both calls), e.g. at {where}",
                float(left.sum()),
            )
    return Verdict.passed()


def _inputs_unchanged(spec, plan, outcomes) -> Verdict:
    before, after = plan.cases[0].tensors(), outcomes[0].inputs or {}
    for name, t in before.items():
        a = after.get(name)
        if not isinstance(a, torch.Tensor) or a.shape != t.shape or a.dtype != t.dtype:
            return Verdict(False, f"input {name} was not returned intact by the call")
        if not torch.equal(bits(t), bits(a.to(t.device))):
            n = int((bits(t) != bits(a.to(t.device))).sum())
            return Verdict(False, f"input {name} modified: {n} of {t.numel()} elements changed")
    # with a prepare step: the kernel leaves the prepared inputs as prepare made them
    for key, t in after.items():
        if not key.startswith(f"{PREPARED}before:"):
            continue
        name = key.removeprefix(f"{PREPARED}before:")
        a = after.get(f"{PREPARED}after:{name}")
        if not isinstance(t, torch.Tensor):
            continue  # a prepared tensor on another device than the case's: not compared
        if not isinstance(a, torch.Tensor) or a.shape != t.shape or a.dtype != t.dtype:
            return Verdict(False, f"prepared input {name} was not returned intact by the call")
        if not torch.equal(bits(t), bits(a)):
            n = int((bits(t) != bits(a)).sum())
            return Verdict(
                False,
                f"prepared input {name} modified by the kernel: {n} of {t.numel()} elements "
                "changed (a prepared weight is reused by every later call)",
            )
    return Verdict.passed()


def _deterministic(spec, plan, outcomes) -> Verdict:
    case = plan.cases[0]
    a = canonical(spec, case, _outs(outcomes[0]))
    b = canonical(spec, case, _outs(outcomes[1]))
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or not torch.equal(bits(x), bits(y)):
            n = int((bits(x) != bits(y)).sum()) if x.shape == y.shape else -1
            return Verdict(False, f"output {i}: two calls differ in {n} elements")
    return Verdict.passed()


def _nan_policy(spec, plan, outcomes) -> Verdict:
    case = plan.cases[0]
    outs = canonical(spec, case, _outs(outcomes[0]))
    refs = canonical(spec, case, reference_outputs(spec, case))
    for i, (o, r) in enumerate(zip(outs, refs)):
        if not (r.is_floating_point() or r.dtype.itemsize == 1):
            continue
        if r.dtype in (torch.uint8,):
            continue  # packed codes carry the policy through their scales
        v = nan_mask_equal(f"output {i}", o, r)
        if not v:
            return v
    return Verdict.passed()


def _judge_error_parity(spec, case, o: Outcome) -> tuple[str, Verdict]:
    what = case.meta.get("invalid", "?")
    try:
        reference_outputs(spec, case)
    except (ValueError, TypeError):
        pass
    else:  # a bug in parity's own invalid-input generator: never a silent pass
        raise AssertionError(f"{spec.name}: invalid case {what!r} was accepted by the reference")
    if o.kind == "unsupported":
        return "unsupported", Verdict(True, o.error.split(": ", 1)[-1])
    if o.kind == "raised":
        if o.rejects:
            return "pass", Verdict.passed()
        kind = o.error.split(":", 1)[0]
        return "fail", Verdict(
            False, f"bad input ({what}): raised {kind} instead of ValueError/TypeError"
        )
    return "fail", Verdict(False, f"bad input ({what}) was accepted; the reference rejects it")


def relation_outputs(spec, plan, outcomes) -> tuple[tuple, tuple]:
    """(derived, base): the outputs on the derived cases mapped back by `combine` to what the
    implementation must have returned on the case itself, and its outputs on the case, both in
    the op's canonical form."""
    case = plan.cases[0]
    base = canonical(spec, case, _outs(outcomes[0]))
    derived = canonical(spec, case, as_tuple(plan.combine([_outs(o) for o in outcomes[1:]])))
    return derived, base


def _relation(spec, plan, outcomes, accept=()) -> Verdict:
    case, rel = plan.cases[0], plan.relation
    derived, base = relation_outputs(spec, plan, outcomes)
    if not rel.exact:
        if accept:
            from parity.properties.variants import compare_pair_under

            return compare_pair_under(spec, case, derived, base, accept)
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


_JUDGES = {
    "matches_reference": _matches_reference,
    "writes_all_outputs": _writes_all_outputs,
    "inputs_unchanged": _inputs_unchanged,
    "deterministic": _deterministic,
    "nan_policy": _nan_policy,
}


@dataclass(frozen=True)
class Property:
    name: str
    doc: str


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property("matches_reference", "agrees with the reference"),
        Property("writes_all_outputs", "writes every output element"),
        Property("inputs_unchanged", "leaves its inputs unchanged"),
        Property("deterministic", "two calls are bitwise equal"),
        Property("nan_policy", "NaN goes where the reference puts it"),
        Property("error_parity", "rejects bad input as the reference does"),
    )
}


def evaluate(
    spec: OpSpec,
    prop: str,
    fn: Callable,
    case: Case,
    *,
    prepare: Callable | None = None,
    accept=(),
) -> tuple[str, Verdict | None]:
    """One property on one case in this process (plan, execute, judge under the named variants
    `accept`): ("pass"|"fail"|"unsupported"|"n/a", verdict)."""
    plan = make_plan(spec, prop, case)
    if plan is None:
        return "n/a", None
    return judge(spec, plan, execute(fn, plan, prepare=prepare), accept)
