"""Shared plumbing of the references: compute precision, output rounding, input validation.
Public: the fast paths and the specs use the same checks, so their errors match.

Every reference validates its whole input before doing any work and raises `TypeError` (wrong
type or dtype) or `ValueError` (rank, shape, divisibility, device, option range) with a message
`"<op>: <argument>: expected <what>, got <what>"`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Iterator, Sequence

import torch

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP8 = torch.float8_e4m3fn

_state = threading.local()


def _get(name: str, default):
    return getattr(_state, name, default)


@contextlib.contextmanager
def precision(name: str = "float32", *, round_output: bool = True) -> Iterator[None]:
    """Select the references' compute precision: "float32" (default) or "float64" (oracle mode).

    `round_output=False` (float64 only) returns float outputs unrounded in float64: the exact
    value a kernel's rounded output is measured against by the tolerance models. Quantizer
    references are defined in float32 by the formats and ignore this setting.
    """
    if name not in ("float32", "float64"):
        raise ValueError(f"precision: name: expected 'float32' or 'float64', got {name!r}")
    if not round_output and name != "float64":
        raise ValueError("precision: round_output=False needs name='float64'")
    old = (_get("dtype", torch.float32), _get("round", True))
    _state.dtype = torch.float64 if name == "float64" else torch.float32
    _state.round = round_output
    try:
        yield
    finally:
        _state.dtype, _state.round = old


def compute_dtype() -> torch.dtype:
    """The dtype references compute in: float32, or float64 inside `precision("float64")`."""
    return _get("dtype", torch.float32)


def finish(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round once to the output dtype (not inside `precision("float64", round_output=False)`)."""
    if not _get("round", True) and t.is_floating_point() and dtype.is_floating_point:
        return t.to(torch.float64).contiguous()
    return t.to(dtype).contiguous()


def _dtype_name(d) -> str:
    return str(d).replace("torch.", "")


def fail(op: str, arg: str, expected: str, got, *, kind: type[Exception] = ValueError):
    raise kind(f"{op}: {arg}: expected {expected}, got {got}")


def check_tensor(
    op: str,
    name: str,
    t,
    *,
    dtypes: Iterable[torch.dtype] | None = None,
    ndim: int | None = None,
    min_ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Validate one tensor argument; `shape` entries of None are free."""
    if not isinstance(t, torch.Tensor):
        fail(op, name, "a torch.Tensor", type(t).__name__, kind=TypeError)
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            want = ", ".join(_dtype_name(d) for d in dtypes)
            fail(op, name, f"dtype in ({want})", _dtype_name(t.dtype), kind=TypeError)
    if ndim is not None and t.dim() != ndim:
        fail(op, name, f"{ndim} dimensions", f"{t.dim()} (shape {tuple(t.shape)})")
    if min_ndim is not None and t.dim() < min_ndim:
        fail(op, name, f"at least {min_ndim} dimensions", f"{t.dim()} (shape {tuple(t.shape)})")
    if shape is not None:
        if t.dim() != len(shape) or any(
            want is not None and want != got for want, got in zip(shape, t.shape)
        ):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            fail(op, name, f"shape {want}", list(t.shape))
    if device is not None and t.device != device:
        fail(op, name, f"device {device}", t.device)
    return t


def check_choice(op: str, name: str, value, choices: Sequence):
    if value not in choices:
        fail(op, name, "one of " + ", ".join(repr(c) for c in choices), repr(value))
    return value


def check_int(op: str, name: str, value, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(op, name, "an int", type(value).__name__, kind=TypeError)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        fail(op, name, f"an int in {rng}", value)
    return value


def check_float(
    op: str, name: str, value, *, lo: float | None = None, positive: bool = False
) -> float:
    """A finite float option: every float option of the contract (an epsilon, a limit, a
    scale, a multiplier) is a finite number; inf or NaN there turns outputs into inf/NaN
    without any NaN input, which the NaN policy does not allow."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(op, name, "a float", type(value).__name__, kind=TypeError)
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        fail(op, name, "a finite float", value)
    if value != value:
        fail(op, name, "a number", "nan")
    if value in (math.inf, -math.inf):
        fail(op, name, "a finite float", value)
    if positive and not value > 0:
        fail(op, name, "a positive float", value)
    if lo is not None and value < lo:
        fail(op, name, f"a float >= {lo}", value)
    return value
