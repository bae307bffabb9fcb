"""The public API: test a kernel from Python (and so from one's own pytest suite).

    import parity
    parity.check("swiglu", my_swiglu).raise_for_failure()

`check` runs the same campaign as `parity fuzz` (`parity.campaign`), isolated in a worker
process when the kernel can be imported there by name, and returns a `Report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from parity.campaign.engine import Report


def _importable_name(fn: Callable) -> str | None:
    """`module:qualname` that imports back to `fn` itself in another process, else None."""
    from parity.catalog import resolve_callable

    mod, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not mod or mod == "__main__" or not qual or "<" in qual:
        return None
    name = f"{mod}:{qual}"
    try:
        return name if resolve_callable(name) is fn else None
    except Exception:
        return None


def check(
    op: str,
    fn: Callable | str,
    *,
    device: str | None = None,
    properties: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    max_examples: int | None = None,
    max_time: float | None = None,
    profile: str = "pr",
    accept: Iterable[str] = (),
    seed: int | None = None,
    isolate: bool | None = None,
    timeout: float = 60.0,
    out_dir: str | None = "parity-repros",
) -> Report:
    """Run every property of `op` (or `properties`, less `skip`) against `fn` (a callable or
    "module:function") and return the `Report`. `isolate` (default: whenever `fn` can be
    imported by name) runs the kernel in a worker process; the verdict is always computed here.
    Unknown op, property or variant names raise ValueError."""
    from parity.campaign.engine import PROFILES, InProcess, Isolated, run_campaign
    from parity.catalog import get_impl, get_spec
    from parity.registry import OP_NAMES, Impl

    if op not in OP_NAMES:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(OP_NAMES)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    spec = get_spec(op)
    known = spec.all_properties()
    props, skip = list(properties or known), list(skip)
    unknown = [p for p in props + skip if p not in known]
    if unknown:
        raise ValueError(f"unknown properties {unknown} for {op}; properties: {', '.join(known)}")
    variants = [getattr(v, "name", v) for v in getattr(spec, "variants", ())]
    bad = [a for a in accept if a not in variants]
    if bad:
        raise ValueError(f"{op} declares no variant {bad}; variants: {variants or 'none'}")
    if isinstance(fn, str):
        name, impl = fn, get_impl(op, fn)
    else:
        name = _importable_name(fn)
        label = name or getattr(fn, "__qualname__", type(fn).__name__)
        impl = Impl(op=op, name=label, backend="external", fn=fn, devices=("cpu", "cuda"))
    from parity._gpu import default_device

    device = default_device(device)
    report = Report(op, impl.name, device, [], skipped=skip, accepted=list(accept))
    ok, why = impl.availability(device)
    if not ok:
        report.notes.append(f"NOT RUN: {impl.key} on {device}: {why}")
        return report
    if isolate is None:
        isolate = name is not None
    elif isolate and name is None:
        raise ValueError(f"{fn!r} cannot be imported by name in a worker: pass isolate=False")
    if not isolate and name is None:
        report.notes.append("run in-process: the kernel cannot be imported by name")
    evaluator = (
        Isolated(spec, name, device, timeout=timeout) if isolate else InProcess(spec, impl, device)
    )
    max_ex = max_examples
    if max_ex is None and max_time is not None:
        max_ex = 1_000_000  # the clock is the limit
    t0 = time.monotonic()
    try:
        evaluator.start()
        report.properties = run_campaign(
            spec,
            [p for p in props if p not in skip],
            evaluator,
            max_time=max_time,
            impl_name=impl.name,
            device=device,
            profile=profile,
            max_examples=max_ex,
            seed=seed,
            out_dir=out_dir,
            dtypes=impl.dtypes,
        )
    finally:
        evaluator.close()
    report.seconds = time.monotonic() - t0
    return report


def strategies(op: str, prop: str = "matches_reference", *, size: str = "small", dtypes=None):
    """(strategy, build): the Hypothesis strategy of `op`'s case descriptions for `prop`, and
    `build(meta, device="cpu") -> Case` (call the kernel with `case.args`, `case.kwargs`), for
    writing one's own `@given` tests."""
    from parity.campaign.engine import strategy_for
    from parity.catalog import get_spec

    spec = get_spec(op)
    strat = strategy_for(spec, prop, size=size, dtypes=dtypes)
    if strat is None:
        raise ValueError(f"{op} has no cases for {prop!r}; properties: {spec.all_properties()}")
    return strat, lambda meta, device="cpu": spec.build(meta, device)


def ops() -> list[str]:
    """The ops of the contract."""
    from parity.registry import OP_NAMES

    return list(OP_NAMES)


def register(op: str, **kw) -> Callable:
    """Register a fast path for `op` (`parity.registry.register`)."""
    from parity.registry import register as _register

    return _register(op, **kw)
