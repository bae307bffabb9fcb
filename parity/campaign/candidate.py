"""Naming a candidate without running it: the harness never imports a `module:function`.

A registered implementation or "reference" is parity's own code and is looked up in the catalog.
A `module:function` is only checked for its syntax here; the worker imports it (`Isolated`), so a
module that exits, segfaults or hangs at import is a failing candidate ("import crashed" /
"import hung"), never a dead or hung harness. `--no-isolate` imports it in-process
(`import_in_process`): an exit at import is still the candidate's failure there, a hang is not
bounded (that is what isolation is for).

Import outcomes: `ImportUsage` (the module or attribute does not exist, is not callable, or the
module raised an ordinary exception at import: the command's usage error, 125 for `check`),
`CandidateFailed` (it exited, crashed or hung while importing: exit 1, "bad").
"""

from __future__ import annotations

import re

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
NAME_RE = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")


class ImportUsage(Exception):
    """The candidate's name does not resolve to a callable: a usage error."""


class CandidateFailed(Exception):
    """The candidate broke its process before any case ran (an exit, a crash or a hang at
    import): a failing candidate. `kind`: "crash" or "hang"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def is_external(name: str) -> bool:
    return ":" in name


def check_name(name: str) -> None:
    """`module.sub:attr.attr` with Python identifiers only (nothing is imported)."""
    if not NAME_RE.fullmatch(name):
        raise ImportUsage(
            f"cannot import {name!r}: expected module:function (Python identifiers, dots allowed)"
        )


def _not_here(*args, **kwargs):
    raise RuntimeError("parity: the candidate is imported in its worker, never in the harness")


def lookup(op: str, name: str):
    """The `Impl` of `name` for the harness: registered and reference implementations from the
    catalog; a `module:function` by name only (its `fn` refuses to run here)."""
    from parity.catalog import get_impl
    from parity.registry import Impl

    if not is_external(name):
        return get_impl(op, name)  # KeyError: unknown name
    from parity.catalog import load_all, registered_impl

    load_all()
    got = registered_impl(op, name)
    if got is not None:
        return got
    check_name(name)
    return Impl(op=op, name=name, backend="external", fn=_not_here, devices=("cpu", "cuda"))


def import_callable(name: str):
    """Import `module:function` in THIS process (the worker, or `--no-isolate`). Raises
    `ImportUsage` for a name that does not resolve or a module raising an ordinary exception;
    BaseExceptions (SystemExit, KeyboardInterrupt) pass through for the caller to judge."""
    import importlib

    check_name(name)
    mod_name, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ImportUsage(f"cannot import {name!r}: {type(e).__name__}: {e}") from None
    except Exception as e:  # the module raised while importing
        from parity.properties.checks import exc_text

        raise ImportUsage(f"importing {name!r} raised {exc_text(e)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ImportUsage(f"cannot import {name!r}: AttributeError: {e}") from None
    if not callable(obj):
        raise ImportUsage(f"{name!r} is not callable")
    return obj


def import_in_process(impl):
    """`--no-isolate`: the Impl with its function imported here; an exit raised at import is
    the candidate's failure (`CandidateFailed`), not parity's exit."""
    import dataclasses

    if impl.backend != "external" or impl.fn is not _not_here:
        return impl
    try:
        fn = import_callable(impl.name)
    except (SystemExit, KeyboardInterrupt) as e:
        from parity.properties.checks import exc_text

        raise CandidateFailed("crash", f"import crashed: raised {exc_text(e)}") from None
    return dataclasses.replace(impl, fn=fn)


def resolve(cmd: str, op: str, name: str, device: str | None, *, isolate: bool):
    """(spec, impl, device) or an exit code (2 usage, 3 unavailable) for a command; with
    `isolate` a `module:function` is not imported here (the worker will)."""
    import os
    import sys

    from parity._gpu import default_device

    def usage_error(cmd: str, msg: str) -> int:  # as parity.tools.common's (no import of it)
        print(f"parity {cmd}: error: {msg}", file=sys.stderr)
        return 2

    if os.getcwd() not in sys.path:  # module:function imports from the current folder
        sys.path.insert(0, os.getcwd())
    from parity.catalog import get_spec
    from parity.registry import OP_NAMES

    if op not in OP_NAMES:
        return usage_error(cmd, f"unknown op {op!r}; ops: {', '.join(OP_NAMES)}")
    try:
        spec = get_spec(op)
        impl = lookup(op, name)
        if not isolate:
            impl = import_in_process(impl)
    except KeyError as e:
        return usage_error(cmd, str(e.args[0]))
    except ImportUsage as e:
        return usage_error(cmd, str(e))
    if not callable(impl.fn):
        return usage_error(cmd, f"{name!r} is not callable")
    device = default_device(device)
    ok, why = impl.availability(device)
    if not ok:
        print(f"NOT RUN: {op} / {name} on {device}: {why}", file=sys.stderr)
        return 3
    return spec, impl, device
