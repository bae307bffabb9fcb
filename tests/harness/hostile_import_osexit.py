"""Ends the importing process with os._exit(0), skipping every handler."""

import os

os._exit(0)


def fn(x, **kw):  # never reached
    return x
