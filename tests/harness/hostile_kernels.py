"""Kernels that try to pass without being right (imported by name in the worker as
`hostile_kernels:NAME`, with this folder on sys.path). Each is wrong on every case."""

import gc

import numpy as np
import torch

from parity.reference import swiglu as _ref


def _wrong(x, **kw):
    return _ref(x, **kw) + 1.0


def as_list(x, **kw):
    return [_ref(x, **kw)]


def empty_tuple(x, **kw):
    _ref(x, **kw)
    return ()


def returns_none(x, **kw):
    return None


def as_numpy(x, **kw):
    return _ref(x, **kw).float().numpy()


class Sub(torch.Tensor):
    pass


def as_subclass(x, **kw):
    return _ref(x, **kw).as_subclass(Sub)


def as_sparse(x, **kw):
    return _ref(x, **kw).to_sparse()


def two_outputs(x, **kw):
    y = _ref(x, **kw)
    return y, y


def patches_the_judge(x, **kw):
    """Rewrites parity's judge and the op's tolerance model in its own process to say "pass",
    then returns a wrong result."""
    from parity.properties import checks
    from parity.properties.tolerance import Verdict

    checks.judge = lambda *a, **k: ("pass", Verdict(True))
    for obj in gc.get_objects():
        if type(obj).__name__ == "OpSpec":
            object.__setattr__(obj, "compare", lambda case, outs: Verdict(True))
    return _wrong(x, **kw)


def forges_a_reply(x, **kw):
    """Finds the worker's reply pipe and writes a "pass" of the old protocol (a verdict) into
    it before the worker's own reply, then returns a wrong result."""
    from multiprocessing.connection import Connection

    from parity.campaign.wire import encode

    for obj in gc.get_objects():
        if isinstance(obj, Connection) and not obj.closed:
            forged = {"ok": True, "status": "pass", "verdict": {"ok": True, "message": ""}}
            obj.send_bytes(encode({**forged, "blobs": []}, []))
    return _wrong(x, **kw)


_ = np  # numpy is what as_numpy returns


def exits_zero(x, **kw):
    """Ends its process with status 0, as if everything passed."""
    import os

    os._exit(0)


def raises_system_exit(x, **kw):
    raise SystemExit(0)
