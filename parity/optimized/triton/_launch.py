"""What every Triton wrapper needs around a launch (plain Python: triton is imported only by
`Launch` on its first CUDA launch): the launch context of a tensor's device, the float32 range
check of kernel scalars, whether kernels run in the Triton interpreter, a cheap environment
read, the per-signature plan cache and `Launch`, a kernel launch fixed per signature that goes
straight to the compiled kernel after its first call.

Launch cost (issue 11, section 3). A wrapper validates a call signature once: it looks its plan
up by a key of everything the validator reads (`plain` options by type and value, tensors by
class, shape, dtype and device); only a signature that validated is stored, so a bad input never
finds a plan and raises from the validator as before. The plan holds the output shapes and a
`Launch`; the per-call work is the key, the output allocation and one launcher call.
"""

from __future__ import annotations

import contextlib
import os

import torch

from parity._errors import Unsupported

_F32_MAX = torch.finfo(torch.float32).max
_NO_SWITCH = contextlib.nullcontext()  # stateless, so one instance serves every call
_np = None  # numpy, imported on the first interpreter launch
_ENV_DATA = getattr(os.environ, "_data", None)  # CPython's os._Environ: encoded name -> value
_ENV_KEYS: dict[str, object] = {}


def env(name: str) -> str | None:
    """`os.environ.get(name)`, read on each call but without its cost: a missing name costs
    ~1.4 us there (a KeyError raised and caught inside Mapping.get), ~30 ns here. Falls back to
    os.environ.get where os.environ keeps no `_data` dict (not CPython)."""
    if _ENV_DATA is None:
        return os.environ.get(name)
    key = _ENV_KEYS.get(name)
    if key is None:
        key = _ENV_KEYS[name] = os.environ.encodekey(name)
    value = _ENV_DATA.get(key)
    return None if value is None else os.environ.decodevalue(value)


_AS_GPU = [False]  # plan_as_gpu(): wrappers choose as on a GPU while the interpreter records


def interpret() -> bool:
    """True when Triton kernels run in the interpreter (TRITON_INTERPRET=1, read on each call:
    the wrappers' choices must follow what triton read when it was imported); False inside
    `plan_as_gpu()`."""
    return env("TRITON_INTERPRET") == "1" and not _AS_GPU[0]


@contextlib.contextmanager
def plan_as_gpu():
    """Wrappers plan tiles and paths as on a GPU (`interpret()` False) while CPU tensors still
    launch into the interpreter: for `scripts/compile_keys.py`, which records the keys a GPU run
    compiles with the kernels not run (their outputs are garbage: nothing may be judged)."""
    _AS_GPU[0] = True
    try:
        yield
    finally:
        _AS_GPU[0] = False


def launch_context(op: str, t: torch.Tensor):
    """The context a Triton launch for tensor `t` needs: its CUDA device current, or the
    interpreter for a CPU tensor (Unsupported without it: the kernel cannot run there). The
    interpreter runs kernels in numpy, which warns on the overflow to inf and the NaN
    arithmetic the kernels mean to do (a GPU does them silently): those warnings are muted."""
    device = t.device
    if device.type == "cuda":
        if device.index == torch.cuda.current_device():
            return _NO_SWITCH  # already current: skip the two device exchanges
        return torch.cuda.device(device)
    if device.type == "cpu" and env("TRITON_INTERPRET") == "1":  # also inside plan_as_gpu()
        global _np
        if _np is None:
            import numpy

            _np = numpy
        return _np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore")
    raise Unsupported(f"{op}: Triton runs on CUDA, or on the CPU with TRITON_INTERPRET=1")


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of non-negative ints, for grids: `triton.cdiv` is a ConstexprFunction in
    newer triton (3.9: ~1.9 us a host call; five a fused_moe decode call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The least power of two >= n (1 for n <= 1), for tiles: plain ints, as `cdiv`."""
    return 1 << max(0, (int(n) - 1).bit_length())


def k_pad(k: int) -> int:
    """The row width of the kernels indexed by the top-k slot (fused_moe's k-sums, route's
    picks): 8 (the DeepSeek top-k), so k = 1..8 share one compile, or the next power of two
    above; slots past k are masked."""
    return max(8, next_pow2(k))


def check_f32_scalar(op: str, name: str, value: float) -> float:
    """Kernel float arguments are float32: a finite option beyond its range is not supported."""
    if abs(value) > _F32_MAX:
        raise Unsupported(f"{op}: {name}={value} does not fit a float32 kernel argument")
    return value


# --- per-signature plans -------------------------------------------------------------------------

PLAIN = frozenset((bool, int, float, str, type(None), torch.dtype))  # options a key may hold
_PLANS_MAX = 4096  # plans per op: a fuzzing run draws many shapes; start over past this


def plain(*values) -> bool:
    """True when every option value has a builtin type whose `==` and hash are what the
    validator sees (keys hold (type, value): True and 1, 1 and 1.0 stay apart). Other types
    (subclasses, numpy scalars) are validated on every call, never cached."""
    return all(v.__class__ in PLAIN for v in values)


def store(plans: dict, key, plan):
    """Keep `plan` under `key` (bounded: the dict is emptied when full) and return it."""
    if len(plans) >= _PLANS_MAX:
        plans.clear()
    plans[key] = plan
    return plan


def tensor_key(t: torch.Tensor) -> tuple:
    """What a validator reads of a tensor argument; only exact torch.Tensor is cached."""
    if t.__class__ is not torch.Tensor:
        raise TypeError("not cached")  # the caller validates on every call
    return (t.__class__, t.shape, t.dtype, t.device)


# --- the launch ----------------------------------------------------------------------------------

_knobs = None  # triton.knobs, set on the first CUDA launch
_stream = None  # the current raw CUDA stream of a device index (triton's own getter)


class Launch:
    """One kernel launch fixed per call signature: grid, constexprs and launch options.

    `launch(*args)` takes the kernel's runtime arguments (every parameter before the
    constexprs, in order). The first call on CUDA goes through triton's normal launch
    (`kernel[grid]`: binds, specialises, compiles if needed) and keeps the compiled kernel it
    returns; later calls hand the same arguments straight to that kernel's launcher, as
    `JITFunction.run` does (triton 3.6 and 3.9: the compiled kernel's `run` takes the grid, the
    stream, the function handle, the packed metadata, the launch metadata and hooks, then every
    bound argument, constexprs included). Nothing is re-specialised per call, so the direct path
    is taken only where the first call's specialisation must hold: every integer argument is a
    constant of the signature (the plan's key fixes them), floats are never specialised, and
    pointers are 16-byte aligned (checked per call: an unaligned pointer, e.g. a sliced input,
    takes the normal launch). Launch hooks (a profiler) also take the normal launch. In the
    interpreter (CPU tensors) every call is the normal launch."""

    __slots__ = ("consts", "direct", "grid", "kernel", "opts", "ptrs", "tail", "why")

    def __init__(self, kernel, grid: tuple, consts: dict, **opts):
        self.kernel = kernel
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.consts = consts
        self.opts = opts
        names = list(kernel.arg_names)
        n_run = len(names) - len(consts)
        if set(names[n_run:]) != set(consts):
            raise ValueError(
                f"{names}: the constexprs {sorted(consts)} must be the last parameters"
            )
        self.tail = tuple(consts[n] for n in names[n_run:])
        self.ptrs = ()  # indices of the tensor arguments, from the first compiled call
        self.direct = None  # (launcher, function, packed metadata, device index) once compiled
        self.why = "not launched on CUDA yet"  # why `direct` is None (scripts/launch_cost.py)

    def __call__(self, *args):
        direct = self.direct
        if direct is not None and not _hooked(_knobs.runtime.launch_enter_hook):
            bits = 0
            for i in self.ptrs:
                bits |= args[i].data_ptr()
            if not bits & 15 and not _hooked(_knobs.runtime.launch_exit_hook):
                run, function, meta, dev = direct
                g = self.grid
                run(
                    g[0],
                    g[1],
                    g[2],
                    _stream(dev),
                    function,
                    meta,
                    None,
                    None,
                    None,
                    *args,
                    *self.tail,
                )
                return
        ck = self.kernel[self.grid](*args, **self.consts, **self.opts)
        if self.direct is None and _cuda_compiled(ck):
            self._keep(ck, args)

    def _keep(self, ck, args):
        """Keep the compiled kernel of an all-aligned, hook-free first launch."""
        global _knobs, _stream
        self.ptrs = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        bits = 0
        for i in self.ptrs:
            bits |= args[i].data_ptr()
        if bits & 15:
            self.why = "compiled for an unaligned pointer"  # not the common specialisation
            return
        knobs, stream = _triton_runtime()
        if _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook):
            self.why = "a launch hook is set"
            return
        run = ck.run  # the launcher; reading it loads the module and sets ck.function
        if not self.ptrs or ck.function is None:
            self.why = "no tensor argument" if not self.ptrs else "no function handle"
            return
        self.why = ""
        _knobs, _stream = knobs, stream
        dev = args[self.ptrs[0]].device.index
        self.direct = (run, ck.function, ck.packed_metadata, dev)


def _hooked(hook) -> bool:
    """A launch hook is set: triton <= 3.4 keeps None when none is, newer ones (3.6 and 3.9 at
    least) an always-present `HookChain` whose `calls` list is empty. Taking the chain itself
    for a hook kept every launch off the direct path on the H100 (2026-12-05: 0 of 30 plans
    direct, 28-69 us a call)."""
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return calls is None or len(calls) > 0


def _triton_runtime():
    """(triton.knobs, the current-stream getter triton itself uses): a function, so a CPU test
    can stand in for a GPU driver."""
    from triton import knobs
    from triton.runtime import driver

    return knobs, driver.active.get_current_stream


def _cuda_compiled(ck) -> bool:
    """A compiled kernel from triton's normal launch (not the interpreter's return value)."""
    return hasattr(ck, "packed_metadata") and hasattr(ck, "function")


_SITES: dict = {}  # (site, grid, constexprs, options, int arguments, tensor dtypes) -> Launch


def launch(site: str, kernel, grid: tuple, args: tuple, consts: dict, **opts) -> None:
    """`kernel[grid](*args, **consts, **opts)` through a `Launch` kept per call signature, for
    wrappers with many launches a call (fused_moe's decode path: five or six), where triton's
    normal launch cost ~90 us of host time each on the H100's VM (2026-12-05, cProfile). The key
    holds every integer argument (so each one is a constant of its signature, as `Launch`
    requires) and every tensor argument's dtype and device (the compiled signature's pointer
    types; a `Launch` keeps the function loaded on its first call's device); floats are never
    specialised and pointer alignment is checked by `Launch` on each call."""
    key = [site, grid, tuple(consts.items()), tuple(opts.items())]
    for a in args:
        cls = a.__class__
        if cls is torch.Tensor:
            key.append((a.dtype, a.device))
        elif cls is int or cls is bool:
            key.append((cls, a))
        elif cls is not float:  # anything else: triton's normal launch, nothing kept
            kernel[grid](*args, **consts, **opts)
            return
    key = tuple(key)
    ln = _SITES.get(key)
    if ln is None:
        ln = store(_SITES, key, Launch(kernel, grid, consts, **opts))
    ln(*args)
