"""Ends the importing process with status 0 (the harness must never import it)."""

import sys

sys.exit(0)


def fn(x, **kw):  # never reached
    return x
