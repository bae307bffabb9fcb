"""Fast paths. Importing this package registers every backend's implementations.

Registration modules import only parity and torch; each kernel imports its backend (triton,
tilelang, flashinfer) lazily when called, so a missing backend makes its implementations
"unavailable" with a reason instead of failing the import. Backends never import each other.

On a machine without a CUDA GPU, Triton kernels run in the Triton interpreter: TRITON_INTERPRET
must be set before triton is first imported, so it is set here unless the user chose already.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from parity.optimized import flashinfer, stack, tilelang, triton  # noqa: F401
