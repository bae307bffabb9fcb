"""Witnesses: deliberately broken implementations, each asserted to be caught by a property.

A property that passes a broken kernel is a failing test (tests/test_witnesses.py), and every
property of every OpSpec has at least one witness here (tests/test_structure.py).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Witness:
    op: str
    prop: str
    fn: Callable
    why: str
    max_examples: int = 300

    @property
    def id(self) -> str:
        return f"{self.op}-{self.prop}-{self.fn.__name__}"


WITNESSES: list[Witness] = []


def witness(op: str, *props: str, why: str, max_examples: int = 300):
    """Register the decorated broken implementation as a witness for each of `props`."""

    def deco(fn):
        _importable(fn, f"{op}_{props[0]}")
        for p in props:
            WITNESSES.append(Witness(op, p, fn, why, max_examples))
        return fn

    return deco


def _importable(fn, stem: str) -> None:
    """Make `fn` reachable as `module:name`, so `parity fuzz --impl` can name it too; closures
    from a factory get a unique name from their op and property."""
    if "<locals>" not in fn.__qualname__:
        return  # a module-level function: importable under its own name once defined
    mod = sys.modules[fn.__module__]
    name, i = f"{stem}_{fn.__name__}", 0
    while getattr(mod, name if i == 0 else f"{name}_{i}", None) is not None:
        i += 1
    name = name if i == 0 else f"{name}_{i}"
    fn.__name__ = fn.__qualname__ = name
    setattr(mod, name, fn)


def load() -> list[Witness]:
    for m in pkgutil.iter_modules(__path__):
        if not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
    return WITNESSES
