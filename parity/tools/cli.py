"""`parity` command line: one subcommand per module in parity.tools.

Each subcommand module defines `add_parser(subparsers)` and `run(args) -> int` (the exit code).
Exit code 2 is a usage error everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import signal
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
    "explain",  # registered when parity/tools/explain_cmd.py exists
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        if importlib.util.find_spec(f"parity.tools.{name}_cmd") is None:
            continue  # a command whose module is not there yet
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
    from parity.campaign.worker import Terminated, raise_if_terminated
    from parity.tools.common import json_stdout

    # --json as a flag (suite's --json names a file): stdout is the JSON alone
    quiet = json_stdout() if getattr(args, "json", None) is True else contextlib.nullcontext()
    try:
        with _signals(), quiet:
            rc = int(args._run(args) or 0)
        raise_if_terminated()  # stopped, even where a command swallowed the signal's exception
        return rc
    except Terminated as e:
        print(f"parity: {e}", file=sys.stderr)
        return e.code


def _on_sigint(signum, frame):
    """The user's Ctrl-C: marked, so that an in-process kernel raising KeyboardInterrupt
    itself is told apart from it (that one is the kernel's failing case)."""
    checks = sys.modules.get("parity.properties.checks")
    if checks is not None:
        checks.USER_INTERRUPT = True
    raise KeyboardInterrupt


def _on_sigterm(signum, frame):
    """The first SIGTERM asks the command to stop at its next safe point (the engine's next
    example: raising inside a library can be swallowed or leave it broken, as TileLang's compiler
    did on the H100, 2026-12-05) and arms GRACE_S seconds after which it is raised where the
    command is; a second one raises at once."""
    from parity.campaign.worker import GRACE_S, Terminated, note_terminated, stop_requested

    again = stop_requested()
    note_terminated(signum)  # kept: whatever becomes of an exception, the cut is known
    if not again:
        with contextlib.suppress(ValueError, OSError):
            signal.setitimer(signal.ITIMER_REAL, GRACE_S)
            return
    raise Terminated(signum)  # `finally` blocks and atexit kill the workers


def _on_alarm(signum, frame):
    """GRACE_S after SIGTERM: the command did not reach a safe point; stop it where it is."""
    from parity.campaign.worker import raise_if_terminated

    raise_if_terminated()


@contextlib.contextmanager
def _signals():
    """SIGINT and SIGTERM (at the next safe point, or GRACE_S later: SIGALRM) unwind through the
    commands' `finally` blocks, which kill every worker's process group: no process outlives
    parity."""
    saved = {}
    handlers = (
        (signal.SIGINT, _on_sigint),
        (signal.SIGTERM, _on_sigterm),
        (signal.SIGALRM, _on_alarm),
    )
    with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
        for sig, fn in handlers:
            saved[sig] = signal.signal(sig, fn)
    try:
        yield
    finally:
        if signal.SIGALRM in saved:
            signal.setitimer(signal.ITIMER_REAL, 0)  # the grace timer, if armed
        for sig, fn in saved.items():
            signal.signal(sig, fn)
        from parity.campaign.worker import kill_all

        kill_all()


if __name__ == "__main__":
    sys.exit(main())
