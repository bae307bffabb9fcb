"""What every Triton wrapper needs around a launch (plain Python: no triton import): the launch
context of a tensor's device, the float32 range check of kernel scalars, and whether kernels run
in the Triton interpreter."""

from __future__ import annotations

import contextlib
import os

import torch

from parity._errors import Unsupported

_F32_MAX = torch.finfo(torch.float32).max
_NO_SWITCH = contextlib.nullcontext()  # stateless, so one instance serves every call
_np = None  # numpy, imported on the first interpreter launch


def interpret() -> bool:
    """True when Triton kernels run in the interpreter (TRITON_INTERPRET=1, read on each call:
    the wrappers' choices must follow what triton read when it was imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def launch_context(op: str, t: torch.Tensor):
    """The context a Triton launch for tensor `t` needs: its CUDA device current, or the
    interpreter for a CPU tensor (Unsupported without it: the kernel cannot run there). The
    interpreter runs kernels in numpy, which warns on the overflow to inf and the NaN
    arithmetic the kernels mean to do (a GPU does them silently): those warnings are muted."""
    device = t.device
    if device.type == "cuda":
        if device.index == torch.cuda.current_device():
            return _NO_SWITCH  # already current: skip the two device exchanges
        return torch.cuda.device(device)
    if device.type == "cpu" and interpret():
        global _np
        if _np is None:
            import numpy

            _np = numpy
        return _np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore")
    raise Unsupported(f"{op}: Triton runs on CUDA, or on the CPU with TRITON_INTERPRET=1")


def check_f32_scalar(op: str, name: str, value: float) -> float:
    """Kernel float arguments are float32: a finite option beyond its range is not supported."""
    if abs(value) > _F32_MAX:
        raise Unsupported(f"{op}: {name}={value} does not fit a float32 kernel argument")
    return value
