"""Witnesses: deliberately broken implementations, each asserted to be caught by a property.

A property that passes a broken kernel is a failing test (tests/test_witnesses.py), and every
property of every OpSpec has at least one witness here (tests/test_structure.py).
"""

from __future__ import annotations

import importlib
import pkgutil
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
        for p in props:
            WITNESSES.append(Witness(op, p, fn, why, max_examples))
        return fn

    return deco


def load() -> list[Witness]:
    for m in pkgutil.iter_modules(__path__):
        if not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
    return WITNESSES
