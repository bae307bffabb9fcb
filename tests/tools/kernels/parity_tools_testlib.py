"""Helpers for tests/tools/test_{fuzz,repro,ledger}.py (this folder is put on sys.path)."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path

KERNELS = Path(__file__).resolve().parent
MODULE = "parity_kernels_swiglu"


@dataclass
class Result:
    code: int
    out: str
    err: str


def parser(commands=("fuzz", "case", "replay")) -> argparse.ArgumentParser:
    """The `parity` parser with only these subcommands (independent of the other modules)."""
    p = argparse.ArgumentParser(prog="parity")
    sub = p.add_subparsers(dest="command", required=True)
    for name in commands:
        mod = importlib.import_module(f"parity.tools.{name}_cmd")
        mod.add_parser(sub).set_defaults(_run=mod.run)
    return p


def parity(capsys, *argv: str) -> Result:
    """Run `parity ARGV` in this process; the exit code and what it printed."""
    capsys.readouterr()
    try:
        args = parser().parse_args(list(argv))
        code = int(args._run(args) or 0)
    except SystemExit as e:
        code = int(e.code or 0)
    got = capsys.readouterr()
    return Result(code, got.out, got.err)
