"""Compatibility alias: the shared plumbing is the public `parity.reference.common`."""

from parity.reference.common import *  # noqa: F403
from parity.reference.common import (  # noqa: F401  (names `import *` skips)
    _dtype_name,
    _get,
    _state,
)
