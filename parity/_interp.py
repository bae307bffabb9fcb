"""The Triton interpreter switch, for the entry points (CLI, pytest plugin, conftest) to call;
importing parity changes no environment variable.

Triton reads TRITON_INTERPRET when it is first imported, so the choice must be made before
anything imports triton. Imports nothing of parity (only torch, to ask for a GPU).
"""

from __future__ import annotations

import os
import sys

ENV = "TRITON_INTERPRET"


def use_triton_interpreter_without_gpu() -> bool:
    """Run Triton kernels in the interpreter when no CUDA GPU is available; True when the
    interpreter is (or, once triton loads, will be) used.

    Sets TRITON_INTERPRET=1 only when it is unset, no CUDA GPU is visible and triton is not yet
    imported (later, triton would not see it). A value the user set is kept: "1" means the
    interpreter, anything else not. Call it after CUDA_VISIBLE_DEVICES is final: asking torch
    for a GPU initialises the driver, which reads that variable once.
    """
    value = os.environ.get(ENV)
    if value is not None:
        return value == "1"
    if "triton" in sys.modules:
        return False  # triton has read the environment already: too late to switch
    import torch

    if torch.cuda.is_available():
        return False
    os.environ[ENV] = "1"
    return True
