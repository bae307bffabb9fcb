"""Fast paths. Importing this package registers every backend's implementations.

Registration modules import only parity and torch; each kernel imports its backend (triton,
tilelang, flashinfer) lazily when called, so a missing backend makes its implementations
"unavailable" with a reason instead of failing the import. Backends never import each other.

Importing this package changes no environment variable: without a CUDA GPU, Triton kernels run
on CPU tensors only when the entry point chose the interpreter before triton was imported
(`parity._interp.use_triton_interpreter_without_gpu`).
"""

from parity.optimized import flashinfer, stack, tilelang, triton  # noqa: F401
