"""The op registry: the types (`OpSpec`, `Impl`, ...) and the tables they are registered in.

An `OpSpec` is the single place where an op's reference, input strategy, tolerance model and
properties meet (in the spirit of PyTorch's OpInfo). A fast path registers with `@register`,
stating its op, name, backend, devices, dtypes and requirements; a missing requirement makes it
"unavailable" with a reason, never an import error.

This module imports no spec and no backend: `parity.catalog` loads them all and answers the
questions (`get_spec`, `impls`, `get_impl`, `listing`). Tools ask the catalog.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

OP_NAMES = (
    "swiglu",
    "fp8_quant",
    "fp8_block_quant",
    "silu_mul_fp8_quant",
    "mxfp4_quant",
    "mxfp4_dequant",
    "route",
    "moe_align",
    "fused_moe",
    "sinkhorn",
    "mhc_pre",
    "mhc_post",
    "mhc_fused_post_pre",
    "mhc_head",
    "decoder_stack",
)


@dataclass(frozen=True)
class Relation:
    """A metamorphic relation: `transform(case, rng)` returns `(cases, combine)`, or None where
    it does not apply; the property checks `combine([impl(c) for c in cases]) == impl(case)`."""

    name: str
    transform: Callable
    exact: bool = True  # bitwise after `canonical`; else the spec's `compare_pair`


@dataclass(frozen=True)
class Variant:
    """A deliberate, documented difference of real kernels from the contract (a named variant):
    `--accept NAME` judges a kernel against the reference computed under it, and a failing case
    is re-checked under each variant to explain the mismatch (`parity.properties.variants`)."""

    name: str  # short snake_case, unique within the op
    description: str  # one line: what differs, naming the library that does it
    source: str  # where: file, function or issue
    breaks: tuple[str, ...] = ()  # the op's relations that do not hold under it (not run)


def has_tokens(meta: dict) -> bool:
    """The default filter of derived cases: at least one token (T = 0 has nothing to mutate or
    poison)."""
    return meta["T"] > 0


@dataclass(frozen=True)
class OpSpec:
    """Everything the harness knows about one op of the contract.

    strategy(size=, dtypes=) -> Hypothesis strategy of case descriptions (JSON-able dicts);
    build(meta, device) -> Case (tensors generated from meta["seed"] on `device`; a bad input
    where meta["invalid"] names one of `mutations`, NaN-injected where meta["nan"]);
    compare(case, outputs) -> Verdict: the tolerance model against the reference;
    canonical(case, outputs) -> outputs in a canonical form (free orders sorted, unspecified
    tails cut), applied before every bitwise comparison;
    bench(T) -> a representative description with T tokens, without seed (`parity bench`).
    variants: the named variants (`Variant`); compare_variants(case, outputs, names) -> Verdict
    judges outputs against the reference computed under a set of variant names (quantizer codes
    and scales still exactly, floats with the op's own error model around the variant's oracle),
    reference_under(case, names) -> the reference outputs under them (their NaN masks are the
    NaN policy under the variants). Both take the empty set as the contract itself.

    The invalid-input and NaN strategies are derived (`invalid`, `nan_strategy`): error_parity
    runs only where `mutations` exist, nan_policy only where `nan` is declared.
    """

    name: str
    reference: Callable
    strategy: Callable
    build: Callable
    compare: Callable
    tolerance: str  # one line: what the tolerance is and why
    mutations: tuple[str, ...] = ()  # the bad inputs `build` makes under meta["invalid"]
    invalid_when: Callable[[dict], bool] | None = has_tokens  # base cases to mutate; None: all
    nan: bool = True  # a NaN policy exists (build poisons inputs under meta["nan"])
    nan_when: Callable[[dict], bool] | None = has_tokens  # base cases to poison; None: all
    canonical: Callable | None = None
    relations: tuple[Relation, ...] = ()
    properties: tuple[str, ...] = (
        "matches_reference",
        "writes_all_outputs",
        "inputs_unchanged",
        "deterministic",
        "nan_policy",
        "error_parity",
    )
    compare_pair: Callable | None = None  # (case, a, b) -> Verdict, for inexact relations
    bench: Callable[[int], dict] | None = None  # T -> representative meta (no seed)
    memory_bound: bool = False  # bandwidth-bound: bench reports bytes moved per second
    variants: tuple[Variant, ...] = ()
    compare_variants: Callable | None = None  # (case, outs, frozenset[str]) -> Verdict
    reference_under: Callable | None = None  # (case, frozenset[str]) -> outputs

    def __post_init__(self):
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: variant names repeat: {names}")
        if self.variants and (self.compare_variants is None or self.reference_under is None):
            raise ValueError(f"{self.name}: variants need compare_variants and reference_under")
        object.__setattr__(self, "variants", tuple(self.variants))
        keep = {"error_parity": bool(self.mutations), "nan_policy": self.nan}
        props = tuple(p for p in self.properties if keep.get(p, True))
        object.__setattr__(self, "mutations", tuple(self.mutations))
        object.__setattr__(self, "properties", props)

    def invalid(self, *, size: str = "small"):
        """Valid descriptions plus the name of one mutation that `build` applies to make them
        bad."""
        from hypothesis import strategies as st

        if not self.mutations:
            raise ValueError(f"{self.name}: declares no mutations (no error_parity)")
        base = self.strategy(size=size)
        if self.invalid_when is not None:
            base = base.filter(self.invalid_when)
        pairs = st.tuples(base, st.sampled_from(list(self.mutations)))
        return pairs.map(lambda p: {**p[0], "invalid": p[1]})

    def nan_strategy(self, *, size: str = "small", dtypes=None):
        """Descriptions whose inputs `build` poisons with NaN."""
        if not self.nan:
            raise ValueError(f"{self.name}: declares no NaN policy")
        base = self.strategy(size=size, dtypes=dtypes)
        if self.nan_when is not None:
            base = base.filter(self.nan_when)
        return base.map(lambda m: {**m, "nan": True})

    def all_properties(self) -> tuple[str, ...]:
        return self.properties + tuple(r.name for r in self.relations)


@dataclass(frozen=True)
class Impl:
    op: str
    name: str
    backend: str
    fn: Callable
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] | None = None
    requires: tuple[str, ...] = ()  # importable modules
    min_cc: tuple[int, int] | None = None
    reference: bool = False
    note: str = ""
    # prepare(args, kwargs) -> (args, kwargs): re-lays out inputs once (weights shuffled at load
    # time), outside the kernel's timing; every property calls it before the kernel. Default:
    # the function's `parity_prepare` attribute, if any (how `--impl module:function` finds it).
    prepare: Callable | None = None
    # named variants of the op (`OpSpec.variants`) this implementation follows on purpose: every
    # property judges it under them (as `--accept` does) and reports say so
    accept: tuple[str, ...] = ()
    # supports(meta) -> why not, or None: what the implementation leaves out, read from the op's
    # case description alone, so the harness skips those draws without building a case or
    # calling a worker (FlashInfer's swiglu: 94% of the nightly's draws). Only for valid cases;
    # the implementation's own Unsupported still decides every case it is asked.
    supports: Callable[[dict], str | None] | None = None

    def __post_init__(self):
        if self.prepare is None:
            object.__setattr__(self, "prepare", getattr(self.fn, "parity_prepare", None))
        if self.prepare is not None and not callable(self.prepare):
            raise ValueError(f"{self.op}:{self.name}: prepare must be callable")

    @property
    def key(self) -> str:
        return f"{self.op}:{self.name}"

    def availability(self, device: str | None = None) -> tuple[bool, str]:
        """(available, reason) on this machine, for `device` or for any of the impl's devices."""
        for mod in self.requires:
            if not _has_module(mod):
                return False, f"module {mod!r} is not installed"
        devices = [device] if device else list(self.devices)
        reasons = []
        for dev in devices:
            ok, why = _device_ok(self, dev)
            if ok:
                return True, f"runs on {dev}" + (f" ({why})" if why else "")
            reasons.append(why)
        return False, "; ".join(reasons)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module blocked via sys.modules[name] = None
        return False


def _device_ok(impl: Impl, device: str) -> tuple[bool, str]:
    if device not in impl.devices:
        return False, f"does not run on {device} (devices: {', '.join(impl.devices)})"
    if device == "cuda":
        if not torch.cuda.is_available():
            return False, "needs a CUDA GPU, none visible"
        if impl.min_cc is not None:
            cc = torch.cuda.get_device_capability()
            if cc < impl.min_cc:
                return False, f"needs compute capability >= {impl.min_cc}, device has {cc}"
        return True, ""
    if device == "cpu" and "triton" in impl.requires:
        if os.environ.get("TRITON_INTERPRET") != "1":
            return False, "Triton on the CPU needs TRITON_INTERPRET=1 set before triton loads"
        return True, "Triton interpreter"
    return True, ""


_SPECS: dict[str, OpSpec] = {}
_IMPLS: dict[str, Impl] = {}


def add_spec(spec: OpSpec) -> OpSpec:
    if spec.name not in OP_NAMES:
        raise ValueError(f"add_spec: name: expected an op of the contract, got {spec.name!r}")
    _SPECS[spec.name] = spec
    return spec


def register(
    op: str,
    *,
    name: str,
    backend: str,
    devices: Iterable[str] = ("cuda",),
    dtypes: Iterable[torch.dtype] | None = None,
    requires: Iterable[str] = (),
    min_cc: tuple[int, int] | None = None,
    note: str = "",
    prepare: Callable | None = None,
    accept: Iterable[str] = (),
    supports: Callable[[dict], str | None] | None = None,
) -> Callable:
    """Register a fast path for `op`. Importing the decorated module must not need `requires`:
    kernels import their backend lazily, inside the function. `prepare(args, kwargs) -> (args,
    kwargs)`: a step run once on a case's inputs before the kernel (weights re-laid out at load
    time); it becomes the function's `parity_prepare` too, so a worker importing the function by
    name finds it. `accept`: the op's named variants the implementation follows on purpose (a
    library's convention, docs/contract-notes.md): it is judged under them everywhere.
    `supports(meta) -> str | None`: why a case description is left out (None: it is run), the
    same decision as the implementation's own `Unsupported` on the built case
    (tests/test_declared_support.py holds them equal on drawn cases)."""
    if op not in OP_NAMES:
        raise ValueError(f"register: op: expected one of {', '.join(OP_NAMES)}, got {op!r}")

    def deco(fn: Callable) -> Callable:
        impl = Impl(
            op=op,
            name=name,
            backend=backend,
            fn=fn,
            devices=tuple(devices),
            dtypes=tuple(dtypes) if dtypes is not None else None,
            requires=tuple(requires),
            min_cc=min_cc,
            note=note,
            prepare=prepare,
            accept=tuple(accept),
            supports=supports,
        )
        if impl.key in _IMPLS and _IMPLS[impl.key].fn is not fn:
            raise ValueError(f"register: {impl.key} is registered twice")
        _IMPLS[impl.key] = impl
        fn.parity_impl = impl
        if prepare is not None:
            fn.parity_prepare = prepare
        return fn

    return deco


def registered_spec(op: str) -> OpSpec | None:
    """The spec registered for `op` so far (no loading: see `parity.catalog`)."""
    return _SPECS.get(op)


def registered_impl(op: str, name: str) -> Impl | None:
    """The implementation registered as `op:name` so far (no loading: see `parity.catalog`)."""
    return _IMPLS.get(f"{op}:{name}")


def declared_support_of(fn, op: str):
    """The `supports` predicate of `fn`'s own registration for `op` (`register(supports=)`),
    whatever name it is checked under; None where `fn` is not registered for `op`."""
    reg = getattr(fn, "parity_impl", None)
    return reg.supports if isinstance(reg, Impl) and reg.op == op else None


def registered_impls() -> list[Impl]:
    return list(_IMPLS.values())


def registered_specs() -> dict[str, OpSpec]:
    return dict(_SPECS)
