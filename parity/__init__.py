"""parity: reference-vs-optimized numerical verification for DeepSeek-V4-class MoE kernels."""

from parity._errors import Unsupported

__all__ = ["Unsupported", "__version__"]
__version__ = "0.1.0"
