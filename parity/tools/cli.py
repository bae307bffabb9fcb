"""`parity` command line: one subcommand per module in parity.tools.

Each subcommand module defines `add_parser(subparsers)` and `run(args) -> int` (the exit code).
Exit code 2 is a usage error everywhere.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = (
    "list",
    "suite",
    "fuzz",
    "case",
    "replay",
    "golden",
    "check",
    "bisect",
    "localize",
    "report",
    "bench",
    "tune",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"parity.tools.{name}_cmd")
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    # `module:function` implementations import from the current directory, as with python -m
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    # before anything imports triton: importing parity.optimized no longer chooses for us
    from parity._interp import use_triton_interpreter_without_gpu

    use_triton_interpreter_without_gpu()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
