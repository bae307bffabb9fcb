"""Crash isolation: candidate kernels run in a worker process, never in the harness.

A worker imports the implementation itself, builds each case from its JSON description
(`spec.build(meta, device)`) and evaluates it with `parity.properties.checks.evaluate`. Workers
are forked from a multiprocessing "forkserver" (a clean process started once, that has imported
torch and parity but never initialises CUDA), so a restart after a crash costs tens of
milliseconds; each worker starts its own session (a kill reaches whatever it started) and writes
its stdout/stderr to a log file whose tail goes into crash reports (`faulthandler` is on, so a
segfault leaves the Python stack there). Requests and replies are small JSON-able dicts over a
multiprocessing pipe. `python -m parity.tools.worker` serves the same requests as JSON lines on
stdin/stdout, for driving a worker by hand.

Requests (`cmd`): `init` (op, impl, device, sys_path), `eval` (prop, meta), `save` (prop, meta,
out, kind, message, verdict, seed: writes a repro with `parity.tools.repro.save`), `replay`
(path, impl, device), `quit`.

What counts as what (`Isolated.evaluate` returns `(status, Verdict)`):
- the process dies (segfault, abort, `os._exit`): "crash", with the signal and the log tail;
  the next call gets a fresh worker;
- a `RuntimeError` (or any exception) mentioning a CUDA error (illegal address, launch failure,
  device-side assert), raised by the kernel or surfacing later (the worker synchronizes after
  each case): "crash"; the worker exits, its CUDA context being poisoned;
- no reply within `timeout` seconds: "hang"; the worker's process group is killed;
- an exception outside the implementation (in parity's own reference or checks): "error".

`--workers N` campaigns (`_campaign_main`) are forked the same way: N processes, each with
CUDA_VISIBLE_DEVICES set to one GPU before CUDA initialises, each running a whole `parity fuzz`
campaign in-process and sending events (`start` before each case, `example` after it, `prop`
with each property's stats, `done`).

`pin_gpu_for_xdist_worker()` pins the current process to one GPU from PYTEST_XDIST_WORKER
(gw0, gw1, ...) before CUDA initialises (for the pytest plugin under pytest-xdist).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback

CUDA_ERROR_RE = re.compile(
    r"CUDA error|CUDA_ERROR|cudaError|Triton Error \[CUDA\]|illegal memory access|"
    r"illegal address|unspecified launch failure|device-side assert|misaligned address",
    re.IGNORECASE,
)
STARTUP_TIMEOUT = 300.0


# --- GPU pinning ---------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """GPU ids visible to this process, found without initialising CUDA (which would freeze
    CUDA_VISIBLE_DEVICES for the process): the variable itself, else the driver's /proc
    entries, else `nvidia-smi -L`."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    proc = "/proc/driver/nvidia/gpus"
    with contextlib.suppress(OSError):
        n = len(os.listdir(proc))
        if n:
            return [str(i) for i in range(n)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
        n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        return [str(i) for i in range(n)]
    return []


def gpu_env(index: int, device: str) -> dict:
    """Environment updates for worker `index`: one GPU, round-robin, when on cuda."""
    if device.startswith("cuda"):
        gpus = visible_gpus()
        if gpus:
            return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]}
    return {}


def pin_gpu_for_xdist_worker() -> str | None:
    """Under pytest-xdist, pin this worker process to one GPU (gw<i> gets visible GPU i mod n)
    by setting CUDA_VISIBLE_DEVICES. Call it before anything initialises CUDA (e.g. from
    `pytest_configure`). Returns the GPU id chosen, or None (not an xdist worker, no GPU, or
    CUDA already initialised: then nothing is changed)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    m = re.fullmatch(r"gw(\d+)", name)
    if not m:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return None
    gpus = visible_gpus()
    if not gpus:
        return None
    gpu = gpus[int(m.group(1)) % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


# --- verdicts over the wire ----------------------------------------------------------------


def verdict_to_json(v) -> dict | None:
    if v is None:
        return None
    return {
        "ok": bool(v.ok),
        "message": str(v.message),
        "ratio": float(v.ratio) if v.ratio is not None else 0.0,
        "worst": [[_plain(x) for x in w] for w in (v.worst or [])],
    }


def verdict_from_json(d):
    from parity.properties.tolerance import Verdict

    if d is None:
        return None
    return Verdict(bool(d["ok"]), d.get("message", ""), d.get("ratio", 0.0), d.get("worst", []))


def _plain(x):
    if isinstance(x, (list, tuple)):
        return [_plain(y) for y in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    return repr(x)


# --- the worker process --------------------------------------------------------------------


class _State:
    spec = None
    impl = None
    device = "cpu"
    op = ""


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _is_cuda_error(text: str) -> bool:
    return bool(CUDA_ERROR_RE.search(text or ""))


def _add_sys_path(paths) -> None:
    for p in reversed(list(paths or [])):
        if isinstance(p, str) and p not in sys.path:
            sys.path.insert(0, p)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _handle(st: _State, req: dict) -> tuple[dict, bool]:
    """(reply, exit_after)."""
    cmd = req.get("cmd")
    if cmd == "init":
        from parity.catalog import get_impl, get_spec

        _add_sys_path(req.get("sys_path"))
        try:
            st.spec = get_spec(req["op"])
            st.impl = get_impl(req["op"], req["impl"])
        except Exception as e:
            return {"ok": False, "kind": "usage", "error": f"{type(e).__name__}: {e}"}, True
        st.op, st.device = req["op"], req.get("device", "cpu")
        if st.device.startswith("cuda"):  # the context now, not inside the first case's time
            import torch

            torch.empty(1, device=st.device)
            _sync(st.device)
        return {"ok": True, "pid": os.getpid()}, False
    if cmd == "eval":
        from parity.properties.checks import evaluate

        try:
            case = st.spec.build(req["meta"], st.device)
        except Exception as e:
            if _is_cuda_error(str(e)):
                return _crash(e), True
            return {"ok": False, "kind": "bad_meta", "error": f"{type(e).__name__}: {e}"}, False
        t0 = time.perf_counter()
        try:
            status, v = evaluate(st.spec, req["prop"], st.impl.fn, case)
            _sync(st.device)
        except Exception as e:  # outside the implementation: parity's bug
            if _is_cuda_error(f"{type(e).__name__}: {e}"):
                return _crash(e), True
            return {"ok": False, "kind": "error", "error": traceback.format_exc(limit=8)}, False
        if status == "fail" and v is not None and _is_cuda_error(v.message):
            return {"ok": True, "status": "crash", "verdict": verdict_to_json(v)}, True
        reply = {
            "ok": True,
            "status": status,
            "verdict": verdict_to_json(v),
            "seconds": time.perf_counter() - t0,
        }
        if status == "fail":
            reply["describe"] = case.describe()
        return reply, False
    if cmd == "save":
        from parity.tools import repro

        try:
            case = st.spec.build(req["meta"], st.device)
            path = repro.save(
                case,
                req["out"],
                impl=st.impl.name,
                prop=req["prop"],
                kind=req.get("kind", "fail"),
                message=req.get("message", ""),
                verdict=verdict_from_json(req.get("verdict")),
                seed=req.get("seed"),
            )
        except Exception as e:
            return {"ok": False, "kind": "error", "error": f"{type(e).__name__}: {e}"}, False
        return {"ok": True, "path": str(path), "describe": case.describe()}, False
    if cmd == "replay":
        _add_sys_path(req.get("sys_path"))
        try:
            results = replay_in_process(req["path"], req.get("impl"), req.get("device"))
        except Exception as e:  # a bad file, an unknown or unimportable implementation
            return {"ok": False, "kind": "usage", "error": f"{type(e).__name__}: {e}"}, True
        out = [[prop, status, verdict_to_json(v)] for prop, status, v in results]
        return {"ok": True, "results": out}, any(s == "crash" for _, s, _ in out)
    if cmd == "quit":
        return {"ok": True}, True
    return {"ok": False, "kind": "error", "error": f"unknown command {cmd!r}"}, False


def _crash(e: BaseException) -> dict:
    return {
        "ok": True,
        "status": "crash",
        "verdict": {"ok": False, "message": f"{type(e).__name__}: {e}", "ratio": float("inf")},
    }


def replay_in_process(path, impl_name: str | None, device: str | None):
    """Load a repro and evaluate its property (and matches_reference where it applies) on the
    saved tensors: [(prop, status, verdict)]. Raises ReproError, KeyError (unknown impl),
    ImportError/AttributeError/TypeError (impl not importable or not callable)."""
    from parity.catalog import get_impl, get_spec
    from parity.properties.checks import evaluate
    from parity.tools import repro

    r = repro.load(path)
    try:
        spec = get_spec(r.op)
    except KeyError as e:
        raise repro.ReproError(f"{r.path}: {e.args[0]}") from e
    props = replay_properties(spec, r)
    impl = get_impl(r.op, impl_name or r.impl)
    case = r.case(device or r.device)
    from parity.properties.tolerance import Verdict

    out = []
    for prop in props:
        try:
            status, v = evaluate(spec, prop, impl.fn, case)
            _sync(case.device)
        except Exception as e:  # outside the implementation (or a poisoned CUDA context)
            text = f"{type(e).__name__}: {e}"
            status = "crash" if _is_cuda_error(text) else "error"
            v = Verdict(False, text if status == "crash" else traceback.format_exc(limit=8))
        if status == "fail" and v is not None and _is_cuda_error(v.message):
            status = "crash"
        out.append((prop, status, v))
        if status == "crash":
            break
    return out


def replay_properties(spec, r) -> list[str]:
    """The saved property, plus matches_reference where it applies (not on bad input)."""
    from parity.tools.repro import ReproError

    if r.prop not in spec.all_properties():
        raise ReproError(f"{r.path}: property {r.prop!r} is not a property of {spec.name}")
    props = [r.prop]
    if r.prop != "matches_reference" and "invalid" not in r.meta:
        props.append("matches_reference")
    return props


def _serve() -> int:
    """`python -m parity.tools.worker`: the same requests as JSON lines on stdin, replies on
    stdout (fd 1 is pointed at stderr first, so that what a kernel prints cannot corrupt them).
    For driving a worker by hand; the harness uses `Child`."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import faulthandler

    faulthandler.enable()
    st = _State()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply, done = _handle(st, json.loads(line))
        except Exception:
            reply, done = {"ok": False, "kind": "error", "error": traceback.format_exc()}, False
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
        if done:
            break
    proto.close()
    return 0


# --- the parent side -----------------------------------------------------------------------


class WorkerDied(Exception):
    def __init__(self, message: str, stderr_tail: str = ""):
        super().__init__(message)
        self.stderr_tail = stderr_tail


class WorkerTimeout(Exception):
    pass


class WorkerUsageError(Exception):
    """The worker could not import the implementation or load the file (exit code 2)."""


def _signal_name(rc: int | None) -> str:
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
    "parity.properties.runner",
    "parity.properties.checks",
]


def _context():
    """The multiprocessing "forkserver" context: one server process, started fresh (never
    forked from the harness), imports torch and parity once; each worker is a fork of it, so a
    restart after a crash takes a fraction of a second instead of an `import torch`. The server
    never initialises CUDA (only the workers do), so forking it is safe."""
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
    re-run the calling script in the forkserver and in each worker (a script without an
    `if __name__ == "__main__"` guard would start a campaign there)."""
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _child_setup(log_path: str, env: dict | None) -> None:
    """In a fresh worker: its own session (a kill reaches whatever it starts), the environment
    updates (CUDA_VISIBLE_DEVICES: CUDA is not initialised yet), fd 1 and 2 into the log."""
    with contextlib.suppress(OSError):
        os.setsid()
    os.environ.update(env or {})
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import faulthandler

    faulthandler.enable()


def _child_main(conn, log_path: str, env: dict | None) -> None:
    """A worker: requests on `conn`, one reply each."""
    _child_setup(log_path, env)
    st = _State()
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            break
        try:
            reply, done = _handle(st, req)
        except Exception:
            reply, done = {"ok": False, "kind": "error", "error": traceback.format_exc()}, False
        conn.send(reply)
        if done:
            break
    conn.close()


def _campaign_main(conn, log_path: str, env: dict | None, cfg: dict) -> None:
    """A `--workers` process: a whole campaign in-process, events sent on `conn`."""
    _child_setup(log_path, env)
    _add_sys_path(cfg.get("sys_path"))
    from parity.tools import fuzz_cmd

    fuzz_cmd.campaign_process(cfg, conn.send)
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

    def __init__(self, target=_child_main, args: tuple = (), env: dict | None = None):
        import tempfile

        ctx = _context()
        fd, self.log = tempfile.mkstemp(prefix="parity-worker-", suffix=".log")
        os.close(fd)
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child_conn, self.log, env, *args), daemon=True)
        with _no_main_fixup():
            self.proc.start()
        child_conn.close()  # so that its death reads as EOF here

    def send(self, msg: dict) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.conn.send(msg)

    def recv(self, timeout: float | None) -> dict:
        try:
            ready = self.conn.poll(timeout)
        except (OSError, ValueError):
            ready = True
        if not ready:
            raise WorkerTimeout(f"no reply within {timeout:g} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError, ValueError):
            self.proc.join(10)
            raise WorkerDied(
                f"worker died ({_signal_name(self.proc.exitcode)})", self.stderr_tail()
            ) from None

    def request(self, msg: dict, timeout: float | None) -> dict:
        self.send(msg)
        return self.recv(timeout)

    def stderr_tail(self, n: int = 12) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-n:])

    def kill(self) -> None:
        if self.proc.pid is not None and self.proc.exitcode is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.join(10)
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log)

    def close(self, timeout: float = 5.0) -> None:
        if self.proc.exitcode is None:
            self.send({"cmd": "quit"})
            self.proc.join(timeout)
        self.kill()


class Isolated:
    """Evaluate cases of one (op, impl, device) in a worker process; a fresh one after a crash
    or a hang. Same interface as `parity.tools.fuzz_cmd.InProcess`. `env`: variables set in
    each worker before anything else (e.g. a pinned CUDA_VISIBLE_DEVICES)."""

    def __init__(
        self,
        op: str,
        impl: str,
        device: str = "cpu",
        *,
        timeout: float = 60.0,
        env: dict | None = None,
    ):
        self.op, self.impl, self.device, self.timeout = op, impl, device, timeout
        self.env = env
        self.proc: Child | None = None
        self.restarts = 0
        self.last_describe = None

    def start(self) -> None:
        """Start a worker now (before a time budget starts)."""
        self._ready()

    def _ready(self) -> Child:
        if self.proc is None:
            p = Child(env=self.env)
            msg = {"cmd": "init", "op": self.op, "impl": self.impl, "device": self.device}
            try:
                reply = p.request({**msg, "sys_path": [os.getcwd(), *sys.path]}, STARTUP_TIMEOUT)
            except (WorkerDied, WorkerTimeout) as e:
                tail = p.stderr_tail()
                p.kill()
                raise WorkerUsageError(f"the worker did not start: {e}\n{tail}") from e
            if not reply.get("ok"):
                p.kill()
                raise WorkerUsageError(reply.get("error", "the worker did not start"))
            self.proc = p
        return self.proc

    def _lost(self) -> None:
        """The current worker is gone (or must go): kill it; the next call forks a new one."""
        if self.proc is not None:
            self.proc.kill()
        self.proc = None
        self.restarts += 1

    def evaluate(self, prop: str, meta: dict):
        """(status, Verdict | None): pass, fail, unsupported, n/a, crash, hang or error.
        Raises ValueError for a description `build` rejects, WorkerUsageError when the
        worker cannot import the implementation."""
        from parity.properties.tolerance import Verdict

        p = self._ready()
        try:
            reply = p.request({"cmd": "eval", "prop": prop, "meta": meta}, self.timeout)
        except WorkerTimeout:
            self._lost()
            return "hang", Verdict(
                False, f"hang: no result within {self.timeout:g} s (worker killed)", math.inf
            )
        except WorkerDied as e:
            self._lost()
            msg = f"crash: {e}"
            if e.stderr_tail:
                msg += "\n" + _indent(e.stderr_tail)
            return "crash", Verdict(False, msg, math.inf)
        if not reply.get("ok"):
            if reply.get("kind") == "bad_meta":
                raise ValueError(reply.get("error", "bad case description"))
            return "error", Verdict(False, "parity error: " + reply.get("error", ""), math.inf)
        status = reply["status"]
        v = verdict_from_json(reply.get("verdict"))
        if status == "crash":
            self._lost()
            if v is not None:
                v.message = "crash (CUDA error, worker restarted): " + v.message
        self.last_describe = reply.get("describe")
        return status, v

    def save(self, prop: str, meta: dict, *, out, kind: str, verdict=None, seed=None):
        """Write the repro of one case (a worker builds it and never calls the kernel for
        it); returns (path, describe) or (None, error message)."""
        msg = {
            "cmd": "save",
            "prop": prop,
            "meta": meta,
            "out": str(out),
            "kind": kind,
            "verdict": verdict_to_json(verdict),
            "seed": seed,
        }
        for _ in range(2):
            try:
                reply = self._ready().request(msg, max(self.timeout, 120.0))
            except (WorkerDied, WorkerTimeout):
                self._lost()
                continue
            if reply.get("ok"):
                return reply["path"], reply.get("describe", "")
            return None, reply.get("error", "")
        return None, "the worker died twice while saving the repro"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
        self.proc = None


def _indent(text: str, pre: str = "    ") -> str:
    return "\n".join(pre + ln for ln in text.splitlines())


def replay_isolated(path, impl: str | None, device: str | None, *, timeout: float, env=None):
    """`replay_in_process` in a fresh worker: [(prop, status, verdict)]; a crash or hang is
    one ("*", "crash"|"hang", verdict) row. Raises WorkerUsageError for a bad file or impl."""
    from parity.properties.tolerance import Verdict

    p = Child(env=env)
    msg = {
        "cmd": "replay",
        "path": str(path),
        "impl": impl,
        "device": device,
        "sys_path": [os.getcwd(), *sys.path],
    }
    try:
        try:
            reply = p.request(msg, STARTUP_TIMEOUT + timeout)
        except WorkerTimeout:
            return [("*", "hang", Verdict(False, f"hang: no result within {timeout:g} s"))]
        except WorkerDied as e:
            text = f"crash: {e}" + ("\n" + _indent(e.stderr_tail) if e.stderr_tail else "")
            return [("*", "crash", Verdict(False, text, math.inf))]
        if not reply.get("ok"):
            if reply.get("kind") == "usage":
                raise WorkerUsageError(reply.get("error", ""))
            return [("*", "error", Verdict(False, reply.get("error", ""), math.inf))]
        if reply.get("status") == "crash":
            return [("*", "crash", verdict_from_json(reply["verdict"]))]
        return [(pr, s, verdict_from_json(v)) for pr, s, v in reply["results"]]
    finally:
        p.kill()


def main(argv: list[str] | None = None) -> int:
    return _serve()


if __name__ == "__main__":
    sys.exit(main())
