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


def raises_keyboard_interrupt(x, **kw):
    raise KeyboardInterrupt


def segfaults(x, **kw):
    """Reads address 0: the worker dies of SIGSEGV inside this frame."""
    import ctypes

    return ctypes.string_at(0)


def hangs(x, **kw):
    import time

    time.sleep(3600)


# --- processes left behind -----------------------------------------------------------------

# one file per pytest-xdist worker (its id is in the environment of every process it starts,
# the forkserver's workers included), so that two tests running side by side never share one
PIDS = __import__("os").path.join(
    __import__("tempfile").gettempdir(),
    f"parity-harness-pids-{__import__('os').environ.get('PYTEST_XDIST_WORKER', 'main')}.txt",
)


def _spawn_sleeper() -> None:
    import subprocess

    p = subprocess.Popen(["sleep", "600"])
    with open(PIDS, "a") as f:
        f.write(f"{p.pid}\n")


def spawns_and_passes(x, **kw):
    """Starts a sleeping child process on every call, then returns the right result."""
    _spawn_sleeper()
    return _ref(x, **kw)


def spawns_and_aborts(x, **kw):
    _spawn_sleeper()
    import os

    os.abort()


def spawns_and_hangs(x, **kw):
    _spawn_sleeper()
    hangs(x)


# --- a crash caused by an earlier case -----------------------------------------------------

_poisoned = []


def poisoned_by_t3(x, **kw):
    """A case with T == 3 rows corrupts the process (returns correctly); any later call in that
    process aborts. Every case alone passes."""
    import os

    if _poisoned:
        os.abort()
    if x.reshape(-1, x.shape[-1]).shape[0] == 3:
        _poisoned.append(True)
    return _ref(x, **kw)


# --- what a candidate's failure may look like ----------------------------------------------

BIG = 50_000_000  # characters of a message or a print: 50 MB


def huge_message(x, **kw):
    """Prints 50 MB to stdout, then raises an exception with a 50 MB message."""
    print("p" * BIG)
    raise ValueError("m" * BIG)


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")


def unprintable_exception(x, **kw):
    raise _Unprintable()


def on_meta_device(x, **kw):
    return torch.empty(_ref(x, **kw).shape, device="meta")


def writes_nan_everywhere(x, **kw):
    """Writes every element, with a computed NaN (wrong, but written)."""
    y = torch.empty_like(_ref(x, **kw))
    y.copy_(torch.zeros_like(y) / torch.zeros_like(y))
    return y


def only_nan_handling_wrong(x, **kw):
    """Right on every finite input; NaN inputs give 0 instead of NaN."""
    y = _ref(x, **kw)
    if torch.isnan(x).any():
        return torch.nan_to_num(y, nan=0.0)
    return y


def mxfp4_writes_ff_and_255(x, **kw):
    """mxfp4_quant that writes every byte: the first packed byte of each row 0xFF (two -6
    codes) and every scale 255 (the NaN code): wrong values, but written."""
    from parity.reference import mxfp4_quant

    p, s = mxfp4_quant(x, **kw)
    q, t = torch.empty_like(p), torch.empty_like(s)
    q.copy_(p)
    q[..., :1] = 0xFF
    t.fill_(255)
    return q, t


def segfaults_from_t2(x, **kw):
    """Segfaults on every case with at least 2 rows (alone: shrinking finds T == 2)."""
    if x.reshape(-1, x.shape[-1]).shape[0] >= 2:
        segfaults(x)
    return _ref(x, **kw)


class _UnreadableTuple(tuple):
    """A tuple whose iteration raises: parity's own reading of the result breaks on it."""

    def __iter__(self):
        raise RuntimeError("unreadable")

    def __len__(self):
        raise RuntimeError("unreadable")


def unreadable_result(x, **kw):
    return _UnreadableTuple((_ref(x, **kw),))
