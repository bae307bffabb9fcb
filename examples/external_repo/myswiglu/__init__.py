"""Two SwiGLU kernels of a kernel author's own project (no parity import here)."""

from myswiglu.kernels import swiglu, swiglu_fast

__all__ = ["swiglu", "swiglu_fast"]
