"""The catalog: loads every OpSpec and every backend's registrations, and answers questions.

`parity.registry` holds the types and the tables and imports nothing of parity; the specs and
the backends register into it when imported. This module is the one place that imports them
all, so there is no import circle: tools, the pytest plugin and the public API ask here.
"""

from __future__ import annotations

import importlib
from typing import Any

from parity.registry import (
    OP_NAMES,
    Impl,
    OpSpec,
    registered_impl,
    registered_impls,
    registered_spec,
    registered_specs,
)

_loaded = False


def load_all() -> None:
    """Import every OpSpec and every backend's registrations (idempotent)."""
    global _loaded
    if _loaded:
        return
    importlib.import_module("parity.properties.specs")
    importlib.import_module("parity.optimized")
    _loaded = True  # only once both loaded: a failed first load is retried and raises again


def specs() -> dict[str, OpSpec]:
    load_all()
    return registered_specs()


def get_spec(op: str) -> OpSpec:
    load_all()
    spec = registered_spec(op)
    if spec is None:
        raise KeyError(f"unknown op {op!r}; ops: {', '.join(OP_NAMES)}")
    return spec


def reference_impl(op: str) -> Impl:
    spec = get_spec(op)
    return Impl(
        op=op,
        name="reference",
        backend="torch",
        fn=spec.reference,
        devices=("cpu", "cuda"),
        reference=True,
    )


def impls(op: str | None = None, *, include_reference: bool = False) -> list[Impl]:
    load_all()
    out = [i for i in registered_impls() if op is None or i.op == op]
    if include_reference:
        ops = [op] if op else list(OP_NAMES)
        have = registered_specs()
        out = [reference_impl(o) for o in ops if o in have] + out
    return sorted(out, key=lambda i: (OP_NAMES.index(i.op), not i.reference, i.name))


def resolve_callable(name: str) -> Any:
    """`module:function` (dotted attributes allowed) -> the callable. Imports `module`: call
    this only where running the candidate's code is intended (the worker)."""
    mod_name, _, attr = name.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"expected module:function, got {name!r}")
    mod = importlib.import_module(mod_name)
    fn: Any = mod
    for part in attr.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"{name} is not callable")
    return fn


def get_impl(op: str, name: str) -> Impl:
    """A registered implementation, "reference", or an external `module:function`."""
    if name == "reference":
        return reference_impl(op)
    load_all()
    impl = registered_impl(op, name)
    if impl is not None:
        return impl
    if ":" in name:
        fn = resolve_callable(name)
        return Impl(op=op, name=name, backend="external", fn=fn, devices=("cpu", "cuda"))
    known = ", ".join(i.name for i in impls(op)) or "none"
    raise KeyError(f"no implementation {name!r} for op {op!r} (registered: {known})")


def tuner():
    """The fused_moe tuner (`parity tune` dispatches here: tools reach backends only through the
    catalog). Imports triton's registration modules, not triton itself."""
    return importlib.import_module("parity.optimized.triton.tune")


def listing(device: str | None = None) -> list[dict]:
    """Rows of `parity list --json`."""
    rows = []
    for impl in impls(include_reference=True):
        ok, why = impl.availability(device)
        rows.append(
            {
                "op": impl.op,
                "impl": impl.name,
                "backend": impl.backend,
                "available": ok,
                "reason": why,
                "reference": impl.reference,
                "devices": list(impl.devices),
                "accept": list(impl.accept),  # the named conventions it is judged under
            }
        )
    return rows


__all__ = [
    "OP_NAMES",
    "get_impl",
    "get_spec",
    "impls",
    "listing",
    "load_all",
    "reference_impl",
    "resolve_callable",
    "specs",
    "tuner",
]
