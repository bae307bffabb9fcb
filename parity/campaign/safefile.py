"""Bounded, safe reading of files a user hands to parity (repro files, ledgers, `--meta @FILE`).

Such a file may be hostile or broken: a FIFO (a read would block forever), a device or a symlink
to one (`/dev/zero` never ends), a symlink out of its folder, a file of gigabytes, JSON nested a
million deep (a recursion error or a crash of the parser). Every rule is checked before any
byte is read or parsed, and a violation raises `UnsafeFile` (a ValueError) naming the file and
the rule; callers turn it into their own "bad ... file" usage error (exit 2).

    read_bounded(path, *, limit, folder=None) -> bytes
        a regular file (after resolving symlinks) inside `folder` (default: the folder the
        path names), at most `limit` bytes; opened without following a last symlink and
        without blocking, checked with fstat on the open descriptor (no race with a swap).
    loads_json(data, *, where, max_depth=MAX_DEPTH) -> Any
        strict JSON: UTF-8, nesting at most `max_depth` (checked before parsing), no NaN or
        Infinity literals, no duplicate keys.
    check_depth(obj, *, where, max_depth=MAX_DEPTH)   # nesting of a parsed value (TOML)
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_JSON = 1 << 20  # 1 MiB: a repro's JSON, a ledger, a --meta file (a real one is a few kB)
MAX_DEPTH = 32  # the deepest real document (a repro's kwargs) nests about 6 levels

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class UnsafeFile(ValueError):
    """A file parity refuses to read or parse (the message names the file and the rule)."""


def read_bounded(path: str | os.PathLike, *, limit: int, folder: str | os.PathLike | None = None):
    p = Path(path)
    base = Path(folder) if folder is not None else p.parent
    try:
        real = Path(os.path.realpath(p))
        real_base = Path(os.path.realpath(base))
    except (OSError, ValueError) as e:
        raise UnsafeFile(f"{p}: cannot resolve the path: {e}") from e
    if real != real_base and real_base not in real.parents:
        raise UnsafeFile(f"{p}: a symlink that leaves its folder {base} (it points to {real})")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except FileNotFoundError as e:
        raise UnsafeFile(f"{p}: no such file") from e
    except OSError as e:
        raise UnsafeFile(f"{p}: cannot open: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{p}: not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise UnsafeFile(f"{p}: {st.st_size} bytes, more than the {limit} allowed")
        chunks, got = [], 0
        while got <= limit:  # never more than limit + 1 bytes, whatever the file does meanwhile
            b = os.read(fd, min(1 << 20, limit + 1 - got))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > limit:
            raise UnsafeFile(f"{p}: grew past the {limit} bytes allowed while being read")
        return b"".join(chunks)
    except OSError as e:
        raise UnsafeFile(f"{p}: cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def json_depth(data: bytes) -> int:
    """The deepest bracket nesting of a JSON text, strings skipped (no parsing, linear)."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    depth = deepest = 0
    for c in brackets:
        if c in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def loads_json(data: bytes, *, where: str, max_depth: int = MAX_DEPTH) -> Any:
    if json_depth(data) > max_depth:
        raise UnsafeFile(f"{where}: JSON nested deeper than {max_depth} levels")
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError: a ValueError
        raise UnsafeFile(f"{where}: not valid JSON: {e}") from e


def check_depth(obj: Any, *, where: str, max_depth: int = MAX_DEPTH) -> None:
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > max_depth:
                raise UnsafeFile(f"{where}: nested deeper than {max_depth} levels")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))


__all__ = [
    "MAX_DEPTH",
    "MAX_JSON",
    "UnsafeFile",
    "check_depth",
    "json_depth",
    "loads_json",
    "read_bounded",
]
