"""Crash isolation: candidate kernels run in a worker process, never in the harness.

A worker imports the implementation itself, rebuilds each case from its description
(`spec.build(meta, device)`, or the tensors of a repro file), makes the calls of the property's
plan (`checks.make_plan` / `checks.execute`) and sends back what each call did: outputs and
exceptions, never a verdict (the harness judges). Workers are forked from a multiprocessing
"forkserver" (a clean process started once, that has imported torch and parity but never
initialises CUDA), so a restart after a crash costs tens of milliseconds; each worker starts its
own session (a kill reaches whatever it started) and writes its stdout/stderr to a log file
whose tail goes into crash reports (`faulthandler` is on, so a segfault leaves the Python stack
there). Requests go as small dicts; replies come back as `wire.encode` frames (JSON header and
raw tensor bytes), which the harness parses without unpickling.

Requests (`cmd`): `init` (op, device, sys_path: parity's code only), `load` (impl: the
candidate's import, the first of its code to run; prepare: an optional `module:function` of its
prepare step, else the implementation's own `Impl.prepare`), `run` (prop, and meta or file),
`quit`.
Replies: {"ok": True, "status": "ran", "outcomes": [...]} | {"status": "n/a"} |
{"status": "crash", "error"} (a CUDA error: the context is poisoned, the worker exits) |
{"ok": False, "kind": "usage"|"import_crashed"|"bad_meta"|"error", "error"}.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
import traceback

from parity._gpu import trim_cache

CUDA_ERROR_RE = re.compile(
    r"CUDA error|CUDA_ERROR|cudaError|Triton Error \[CUDA\]|illegal memory access|"
    r"illegal address|unspecified launch failure|device-side assert|misaligned address",
    re.IGNORECASE,
)
STARTUP_TIMEOUT = 300.0


def is_cuda_error(text: str) -> bool:
    return bool(CUDA_ERROR_RE.search(text or ""))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def add_sys_path(paths) -> None:
    for p in reversed(list(paths or [])):
        if isinstance(p, str) and p not in sys.path:
            sys.path.insert(0, p)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def case_of(spec, req: dict, device: str):
    """The case a request names: rebuilt from its description, or a repro file's tensors."""
    if req.get("file") is not None:
        from parity.campaign import repro

        return repro.load(req["file"]).case(device)
    return spec.build(req["meta"], device)


# --- the worker process --------------------------------------------------------------------


class _State:
    spec = None
    impl = None
    device = "cpu"


def _load(st: _State, req: dict) -> dict:
    """Import the implementation (the candidate's code runs here first)."""
    from parity.campaign.candidate import ImportUsage, import_callable, is_external
    from parity.catalog import get_impl
    from parity.properties.checks import exc_text
    from parity.registry import Impl

    name = req["impl"]
    try:
        if is_external(name):
            from parity.catalog import load_all, registered_impl

            load_all()
            st.impl = registered_impl(st.spec.name, name) or Impl(
                op=st.spec.name, name=name, backend="external", fn=import_callable(name)
            )
        else:
            st.impl = get_impl(st.spec.name, name)
        if req.get("prepare"):  # `parity.check(..., prepare=)`: the candidate's code, imported here
            import dataclasses

            st.impl = dataclasses.replace(st.impl, prepare=import_callable(req["prepare"]))
    except ImportUsage as e:
        return {"ok": False, "kind": "usage", "error": str(e)}
    except KeyError as e:
        return {"ok": False, "kind": "usage", "error": str(e.args[0] if e.args else e)}
    except (SystemExit, KeyboardInterrupt) as e:  # an exit at import: the candidate's failure
        return {"ok": False, "kind": "import_crashed", "error": f"raised {exc_text(e)}"}
    except Exception as e:
        return {"ok": False, "kind": "usage", "error": f"importing {name!r} raised {exc_text(e)}"}
    return {"ok": True}


def _handle(st: _State, req: dict) -> tuple[dict, list, bool]:
    """(reply header, blobs, exit_after)."""
    from parity.campaign.wire import outcomes_to_wire
    from parity.properties.checks import exc_text, execute, make_plan

    cmd = req.get("cmd")
    if cmd == "init":  # parity's own code: the op, the device (no candidate code yet)
        from parity.catalog import get_spec

        add_sys_path(req.get("sys_path"))
        try:
            st.spec = get_spec(req["op"])
        except Exception as e:
            return {"ok": False, "kind": "usage", "error": f"{type(e).__name__}: {e}"}, [], True
        st.device = req.get("device", "cpu")
        if st.device.startswith("cuda"):  # the context now, not inside the first case's time
            import torch

            torch.empty(1, device=st.device)
            sync(st.device)
        return {"ok": True, "pid": os.getpid()}, [], False
    if cmd == "load":
        reply = _load(st, req)
        return reply, [], not reply["ok"]
    if cmd == "run":
        try:
            case = case_of(st.spec, req, st.device)
            plan = make_plan(st.spec, req["prop"], case)
        except Exception as e:
            if is_cuda_error(str(e)):
                return {"ok": True, "status": "crash", "error": exc_text(e)}, [], True
            return {"ok": False, "kind": "bad_meta", "error": exc_text(e)}, [], False
        if plan is None:
            return {"ok": True, "status": "n/a"}, [], False
        try:  # synchronised after each call: an asynchronous error surfaces at its own call
            outcomes = execute(
                st.impl.fn, plan, after=lambda: sync(st.device), prepare=st.impl.prepare
            )
        except Exception as e:  # a CUDA error surfacing at the synchronisation
            text = exc_text(e)
            if is_cuda_error(text):
                return {"ok": True, "status": "crash", "error": text}, [], True
            # raised while parity took apart what the candidate returned (e.g. a tuple
            # subclass whose __iter__ raises): the candidate's failure, not parity's
            return {"ok": True, "status": "bad_output", "error": text}, [], False
        bad = next((o.error for o in outcomes if o.kind == "raised" and is_cuda_error(o.error)), 0)
        if bad:
            return {"ok": True, "status": "crash", "error": bad}, [], True
        blobs: list = []
        try:
            rows = outcomes_to_wire(outcomes, blobs)
        except Exception as e:  # an output object that cannot be read back
            return {"ok": True, "status": "bad_output", "error": exc_text(e)}, [], False
        return {"ok": True, "status": "ran", "outcomes": rows}, blobs, False
    if cmd == "quit":
        return {"ok": True}, [], True
    return {"ok": False, "kind": "error", "error": f"unknown command {cmd!r}"}, [], False


def _reply(conn, header: dict, blobs: list) -> None:
    from parity.campaign.wire import encode

    header = {**header, "blobs": [len(b) for b in blobs]}
    conn.send_bytes(encode(header, blobs))


# --- the parent side -----------------------------------------------------------------------


class WorkerDied(Exception):
    def __init__(self, message: str, stderr_tail: str = ""):
        super().__init__(message)
        self.stderr_tail = stderr_tail


class WorkerTimeout(Exception):
    pass


class WorkerUsageError(Exception):
    """The worker could not import the implementation or load the file (exit code 2)."""


def signal_name(rc: int | None) -> str:
    if rc is None:
        return "no exit status"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


_CTX = None
# torch._inductor.config: `torch.use_deterministic_algorithms` (writes_all_outputs) imports it
# on first use, seconds per fresh worker otherwise. None of these initialises CUDA.
PRELOAD = [
    "torch",
    "torch._inductor.config",
    "hypothesis",
    "parity.properties.checks",
    "parity.campaign.wire",
    "parity.catalog",
]


def _context():
    """The multiprocessing "forkserver" context: one server process, started fresh (never
    forked from the harness), imports torch and parity once; each worker is a fork of it. The
    server never initialises CUDA (only the workers do), so forking it is safe."""
    global _CTX
    if _CTX is None:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CTX = ctx
    return _CTX


@contextlib.contextmanager
def _no_main_fixup():
    """Hide the harness's `__main__` while a worker starts: multiprocessing would otherwise
    re-run the calling script in the forkserver and in each worker."""
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def child_setup(log_path: str, env: dict | None) -> None:
    """In a fresh worker: its own session (a kill reaches whatever it starts), the environment
    updates (CUDA_VISIBLE_DEVICES: CUDA is not initialised yet), fd 1 and 2 into the log."""
    with contextlib.suppress(OSError):
        os.setsid()
    _die_with_parent()
    os.environ.update(env or {})
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import faulthandler

    faulthandler.enable()


def _die_with_parent() -> None:
    """Linux: SIGKILL when the parent (the forkserver, which ends with parity) dies, so a worker
    never outlives parity even when parity is killed outright."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# The signal that asked this process to stop, kept whatever becomes of a `Terminated` raised for
# it: an exception raised inside a library can be swallowed on its way up (TileLang's compiler
# calls back into Python through C++, which hands the exception back as an ordinary error;
# Hypothesis lost one mid-run), and a cut must never read as the unit's own failure (H100,
# 2026-12-05: a TileLang suite cut during a compile reported nan_policy FAIL and ran on). So the
# CLI stops where it is safe: the property engine before its next example; anything not at such
# a point within GRACE_S seconds is interrupted where it is (SIGALRM raises Terminated). Inside
# `timeout -k 10` that leaves time for the table.
_STOP: list[int] = []
GRACE_S = 5.0


def note_terminated(signum: int) -> None:
    _STOP.append(signum)


def stop_requested() -> bool:
    return bool(_STOP)


def raise_if_terminated(partial: dict | None = None) -> None:
    """Raise `Terminated` again if this process was told to stop, whatever became of the first.
    `partial`: what the cut unit had done (examples run, seconds), for throughput only."""
    if _STOP:
        raise Terminated(_STOP[0], partial=partial)


class Terminated(BaseException):
    """SIGTERM/SIGHUP: unwinds through every `finally` (which kill the workers). Not a
    SystemExit, which Hypothesis would take for a failing case and run again."""

    def __init__(self, signum: int = signal.SIGTERM, *, partial: dict | None = None):
        super().__init__(f"terminated by signal {signum}")
        self.code = 128 + signum
        self.partial = partial  # the cut unit's counts so far: never a verdict


def terminate_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) raise `Terminated`, so that `finally` blocks kill the workers."""

    def handler(signum, frame):
        note_terminated(signum)
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, handler)


def _child_main(conn, log_path: str, env: dict | None) -> None:
    """A worker: requests on `conn`, one reply frame each."""
    child_setup(log_path, env)
    st = _State()
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            break
        try:
            header, blobs, done = _handle(st, req)
        except Exception:
            header = {"ok": False, "kind": "error", "error": traceback.format_exc()}
            blobs, done = [], False
        header["id"] = req.get("id")  # the harness matches each reply to its request
        _reply(conn, header, blobs)
        if done:
            break
        del header, blobs  # the case's tensors are garbage now: idle cache back to a shared GPU
        trim_cache(st.device)
    conn.close()


def _noop(conn, log_path: str, env: dict | None) -> None:
    conn.close()


def warm_forkserver() -> None:
    """Start the forkserver (it imports torch and parity: seconds) and fork one process that
    exits at once, so that a time budget measured after this call measures testing."""
    c = Child(target=_noop)
    c.proc.join(STARTUP_TIMEOUT)
    c.kill()


class Child:
    """One worker process forked from the forkserver, running `target(conn, log, env, *args)`;
    its death reads as `WorkerDied` (with the signal and the tail of its log)."""

    def __init__(
        self, target=_child_main, args: tuple = (), env: dict | None = None, daemon: bool = True
    ):
        import tempfile

        ctx = _context()
        fd, self.log = tempfile.mkstemp(prefix="parity-worker-", suffix=".log")
        os.close(fd)
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(
            target=target, args=(child_conn, self.log, env, *args), daemon=daemon
        )
        with _no_main_fixup():
            self.proc.start()
        child_conn.close()  # so that its death reads as EOF here
        _LIVE.add(self)

    def send(self, msg: dict) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.conn.send(msg)

    def recv(self, timeout: float | None) -> tuple[dict, list]:
        """One reply frame, parsed (`wire.decode`): never unpickled."""
        from parity.campaign.wire import MAX_REPLY, decode

        try:
            ready = self.conn.poll(timeout)
        except (OSError, ValueError):
            ready = True
        if not ready:
            raise WorkerTimeout(f"no reply within {timeout:g} s")
        try:
            frame = self.conn.recv_bytes(MAX_REPLY)
        except (EOFError, OSError, ValueError):
            self.proc.join(10)
            raise WorkerDied(
                f"worker died ({signal_name(self.proc.exitcode)})", self.stderr_tail()
            ) from None
        return decode(frame)

    def request(self, msg: dict, timeout: float | None) -> tuple[dict, list]:
        self.send(msg)
        return self.recv(timeout)

    def stderr_tail(self, n: int = 12) -> str:
        return log_tail(self.log, n)

    def kill(self) -> None:
        """Kill the worker and everything it started (its session's process group), whether
        it is alive, dead or hung: a kernel's child must not outlive it."""
        _LIVE.discard(self)
        if self.proc.pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if self.proc.exitcode is None:
                with contextlib.suppress(Exception):
                    self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.join(10)
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM first (a campaign process then kills its own workers), then `kill`."""
        if self.proc.exitcode is None and self.proc.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(Exception):
                self.proc.join(grace)
        self.kill()

    def close(self, timeout: float = 5.0) -> None:
        if self.proc.exitcode is None:
            self.send({"cmd": "quit"})
            self.proc.join(timeout)
        self.kill()


_LIVE: set = set()  # every worker not killed yet: killed when parity exits


def kill_all() -> None:
    """Kill every worker of this process and their process groups (at exit, on SIGTERM)."""
    for c in list(_LIVE):
        with contextlib.suppress(Exception):
            c.kill()


atexit.register(kill_all)

MAX_LINE = 300  # characters of one log line in a report
# where parity calls the candidate: its call (checks.run_call) or its import (candidate.py)
_PARITY_FRAMES = (
    os.path.join("parity", "properties", "checks.py"),
    os.path.join("parity", "campaign", "candidate.py"),
    "<frozen importlib._bootstrap>",
)


def log_tail(path: str, n: int = 12) -> str:
    """The end of a worker's log for a report: after a fatal signal, faulthandler's header and
    the innermost frames (the kernel's own, printed first), else the last `n` lines; each line
    cut to MAX_LINE characters (kernel output is never copied whole)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    fatal = [i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")]
    fatal = fatal[-1] if fatal else -1
    if fatal >= 0:
        block = lines[fatal:]
        head = [ln for ln in block[:3] if not ln.startswith("  File")]
        frames = [ln for ln in block if ln.startswith("  File")]
        # the candidate's frames, innermost first, down to where parity called it
        cut = next(
            (i for i, ln in enumerate(frames) if any(f in ln for f in _PARITY_FRAMES)), len(frames)
        )
        lines = head + frames[: min(cut, n)]
        if cut < len(frames):
            lines.append(f"  ... {len(frames) - cut} frames of parity's worker")
    else:
        lines = lines[-n:]
    return "\n".join(ln if len(ln) <= MAX_LINE else ln[:MAX_LINE] + " ..." for ln in lines)


def indent(text: str, pre: str = "    ") -> str:
    return "\n".join(pre + ln for ln in text.splitlines())
