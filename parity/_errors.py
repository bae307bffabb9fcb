class Unsupported(NotImplementedError):
    """Raised by an implementation for an option combination it does not support.

    The harness counts it as "unsupported", never as a pass or a failure. Any
    `NotImplementedError` is treated the same, so external kernels need not import parity.
    """
