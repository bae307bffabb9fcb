"""Crash isolation: candidate kernels run in a worker subprocess, never in the harness.

`python -m parity.tools.worker` is a long-lived process that imports the implementation itself,
builds each case from its JSON description (`spec.build(meta, device)`) and evaluates it with
`parity.properties.checks.evaluate`. The parent (`Isolated`, used by `parity fuzz`, `case`,
`replay`) talks to it over pipes, one JSON object per line: requests on the worker's stdin,
replies on a private copy of its stdout (the worker points fd 1 at stderr so that whatever a
kernel prints cannot corrupt the protocol). Its stderr is kept (last lines) for crash reports;
`faulthandler` is on, so a segfault leaves the Python stack there.

Requests (`cmd`): `init` (op, impl, device, sys_path), `eval` (prop, meta), `save` (prop, meta,
out, kind, message, verdict, seed: writes a repro with `parity.tools.repro.save`), `replay`
(path, props, device), `quit`.

What counts as what (`Isolated.evaluate` returns `(status, Verdict)`):
- the process dies (segfault, abort, `os._exit`): "crash", with the signal and the stderr tail;
  the next call starts a fresh worker (a spare one is kept warm once a crash has happened, so
  that shrinking a crash does not wait for `import torch` each time);
- a `RuntimeError` (or any exception) mentioning a CUDA error (illegal address, launch failure,
  device-side assert), raised by the kernel or surfacing later (the worker synchronizes after
  each case): "crash"; the worker exits, its CUDA context being poisoned;
- no reply within `timeout` seconds: "hang"; the worker's process group is killed;
- an exception outside the implementation (in parity's own reference or checks): "error".

`--campaign` mode runs whole `parity fuzz` campaigns in-process (used by `--workers N`: N such
processes, each pinned to one GPU through CUDA_VISIBLE_DEVICES, seeds base+i), streaming events
(`start` before each case, `example` after it, `prop` with each property's stats, `done`).

`pin_gpu_for_xdist_worker()` pins the current process to one GPU from PYTEST_XDIST_WORKER
(gw0, gw1, ...) before CUDA initialises (for the pytest plugin under pytest-xdist).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
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


def gpu_env(index: int, device: str, env: dict | None = None) -> dict:
    """The environment of worker `index`: pinned to one GPU, round-robin, when on cuda."""
    env = dict(os.environ if env is None else env)
    if device.startswith("cuda"):
        gpus = visible_gpus()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


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
        from parity.registry import get_impl, get_spec

        _add_sys_path(req.get("sys_path"))
        try:
            st.spec = get_spec(req["op"])
            st.impl = get_impl(req["op"], req["impl"])
        except Exception as e:
            return {"ok": False, "kind": "usage", "error": f"{type(e).__name__}: {e}"}, True
        st.op, st.device = req["op"], req.get("device", "cpu")
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
        from parity.tools import repro

        _add_sys_path(req.get("sys_path"))
        try:
            results = replay_in_process(req["path"], req.get("impl"), req.get("device"))
        except repro.ReproError as e:
            return {"ok": False, "kind": "usage", "error": str(e)}, True
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            if _is_cuda_error(text):
                return _crash(e), True
            return {"ok": False, "kind": "usage", "error": text}, True
        out = []
        for prop, status, v in results:
            if status == "fail" and v is not None and _is_cuda_error(v.message):
                status = "crash"
            out.append([prop, status, verdict_to_json(v)])
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
    from parity.properties.checks import evaluate
    from parity.registry import get_impl, get_spec
    from parity.tools import repro

    r = repro.load(path)
    try:
        spec = get_spec(r.op)
    except KeyError as e:
        raise repro.ReproError(f"{r.path}: {e.args[0]}") from e
    props = replay_properties(spec, r)
    impl = get_impl(r.op, impl_name or r.impl)
    case = r.case(device or r.device)
    out = []
    for prop in props:
        status, v = evaluate(spec, prop, impl.fn, case)
        _sync(case.device)
        out.append((prop, status, v))
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
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything a kernel prints goes to stderr
    sys.stdout = sys.stderr
    import faulthandler

    faulthandler.enable()
    st = _State()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            reply, done = _handle(st, req)
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


class Proc:
    """One worker subprocess: a reader thread per pipe, requests with a timeout."""

    def __init__(self, args: list[str], env: dict | None = None, keep_stderr: int = 60):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "parity.tools.worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a kill reaches its children
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.replies: queue.Queue = queue.Queue()
        self.stderr: collections.deque = collections.deque(maxlen=keep_stderr)
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        for line in self.popen.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.replies.put(json.loads(line))
        self.replies.put(None)

    def _read_err(self) -> None:
        for line in self.popen.stderr:
            self.stderr.append(line.rstrip("\n"))

    def send(self, msg: dict) -> None:
        try:
            self.popen.stdin.write(json.dumps(msg) + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it died; the reply wait reports how

    def recv(self, timeout: float | None) -> dict:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise WorkerTimeout(f"no reply within {timeout:g} s") from None
        if reply is None:
            try:
                rc = self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = None
            time.sleep(0.05)  # let the stderr reader catch up
            raise WorkerDied(f"worker died ({_signal_name(rc)})", self.stderr_tail())
        return reply

    def request(self, msg: dict, timeout: float | None) -> dict:
        self.send(msg)
        return self.recv(timeout)

    def stderr_tail(self, n: int = 12) -> str:
        lines = [ln for ln in self.stderr if ln.strip()]
        return "\n".join(lines[-n:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            with contextlib.suppress(Exception):
                f.close()

    def close(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.send({"cmd": "quit"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self.kill()


class Isolated:
    """Evaluate cases of one (op, impl, device) in a worker subprocess; restart it after a
    crash or a hang. Same interface as `parity.tools.fuzz_cmd.InProcess`."""

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
        self.proc: Proc | None = None
        self.spare: Proc | None = None
        self.restarts = 0
        self.keep_spare = False

    def _spawn(self) -> Proc:
        p = Proc([], env=self.env)
        p.send(
            {
                "cmd": "init",
                "op": self.op,
                "impl": self.impl,
                "device": self.device,
                "sys_path": [os.getcwd(), *sys.path],
            }
        )
        return p

    def _ready(self) -> Proc:
        while self.proc is None:
            if self.spare is not None:
                p, self.spare = self.spare, None
            else:
                p = self._spawn()
            try:
                reply = p.recv(STARTUP_TIMEOUT)
            except (WorkerDied, WorkerTimeout) as e:
                tail = p.stderr_tail()
                p.kill()
                raise WorkerUsageError(f"the worker did not start: {e}\n{tail}") from e
            if not reply.get("ok"):
                p.kill()
                raise WorkerUsageError(reply.get("error", "the worker did not start"))
            self.proc = p
        if self.keep_spare and self.spare is None:
            self.spare = self._spawn()
        return self.proc

    def _lost(self) -> None:
        """The current worker is gone (or must go): kill it, keep a spare from now on."""
        if self.proc is not None:
            self.proc.kill()
        self.proc = None
        self.restarts += 1
        self.keep_spare = True

    def evaluate(self, prop: str, meta: dict):
        """(status, Verdict | None): pass, fail, unsupported, n/a, crash, hang or error."""
        from parity.properties.tolerance import Verdict

        p = self._ready()
        try:
            reply = p.request({"cmd": "eval", "prop": prop, "meta": meta}, self.timeout)
        except WorkerTimeout:
            self._lost()
            return "hang", Verdict(
                False, f"hang: no result within {self.timeout:g} s (worker killed)", float("inf")
            )
        except WorkerDied as e:
            self._lost()
            msg = f"crash: {e}"
            if e.stderr_tail:
                msg += "\n" + _indent(e.stderr_tail)
            return "crash", Verdict(False, msg, float("inf"))
        if not reply.get("ok"):
            if reply.get("kind") == "bad_meta":
                raise ValueError(reply.get("error", "bad case description"))
            return "error", Verdict(False, "parity error: " + reply.get("error", ""), float("inf"))
        status = reply["status"]
        v = verdict_from_json(reply.get("verdict"))
        if status == "crash":
            self._lost()
            if v is not None:
                v.message = "crash (CUDA error, worker restarted): " + v.message
        self.last_describe = reply.get("describe")
        return status, v

    def save(self, prop: str, meta: dict, *, out, kind: str, verdict=None, seed=None):
        """Write the repro of one case (built by a worker, which never calls the kernel for
        it); returns (path, describe) or (None, error message)."""
        for _ in range(2):
            try:
                p = self._ready()
                reply = p.request(
                    {
                        "cmd": "save",
                        "prop": prop,
                        "meta": meta,
                        "out": str(out),
                        "kind": kind,
                        "verdict": verdict_to_json(verdict),
                        "seed": seed,
                    },
                    max(self.timeout, 120.0),
                )
            except (WorkerDied, WorkerTimeout):
                self._lost()
                continue
            if reply.get("ok"):
                return reply["path"], reply.get("describe", "")
            return None, reply.get("error", "")
        return None, "the worker died twice while saving the repro"

    def close(self) -> None:
        for p in (self.proc, self.spare):
            if p is not None:
                p.close()
        self.proc = self.spare = None


def _indent(text: str, pre: str = "    ") -> str:
    return "\n".join(pre + ln for ln in text.splitlines())


def replay_isolated(path, impl: str | None, device: str | None, *, timeout: float, env=None):
    """`replay_in_process` in a fresh worker: [(prop, status, verdict)]; a crash or hang is
    one ("<prop>", "crash"|"hang", verdict) row. Raises WorkerUsageError for a bad file or
    impl."""
    from parity.properties.tolerance import Verdict

    p = Proc([], env=env)
    try:
        msg = {
            "cmd": "replay",
            "path": str(path),
            "impl": impl,
            "device": device,
            "sys_path": [os.getcwd(), *sys.path],
        }
        try:
            p.send(msg)
            reply = p.recv(STARTUP_TIMEOUT + timeout)
        except WorkerTimeout:
            return [("*", "hang", Verdict(False, f"hang: no result within {timeout:g} s"))]
        except WorkerDied as e:
            text = f"crash: {e}" + ("\n" + _indent(e.stderr_tail) if e.stderr_tail else "")
            return [("*", "crash", Verdict(False, text, float("inf")))]
        if not reply.get("ok"):
            if reply.get("kind") == "usage":
                raise WorkerUsageError(reply.get("error", ""))
            return [("*", "error", Verdict(False, reply.get("error", ""), float("inf")))]
        if reply.get("status") == "crash":
            return [("*", "crash", verdict_from_json(reply["verdict"]))]
        return [(pr, s, verdict_from_json(v)) for pr, s, v in reply["results"]]
    finally:
        p.kill()


# --- campaign mode (--workers N) -----------------------------------------------------------


def _campaign() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import faulthandler

    faulthandler.enable()
    cfg = json.loads(sys.stdin.readline())
    _add_sys_path(cfg.get("sys_path"))
    from parity.tools import fuzz_cmd

    def emit(event: dict) -> None:
        proto.write(json.dumps(event) + "\n")
        proto.flush()

    fuzz_cmd.campaign_process(cfg, emit)
    proto.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--campaign"]:
        return _campaign()
    return _serve()


if __name__ == "__main__":
    sys.exit(main())
