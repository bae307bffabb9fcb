"""`parity localize [--layers S:E] [--quant none|fp8_block|mxfp4] [--ops TABLE] [--json]`.

Names the first op that is wrong in a decoder stack, rather than the layer where error has
piled up. Runs `decoder_stack` twice on the same seeded input, with the reference ops table and
with a candidate table, capturing every op call (name, layer, inputs, outputs). Then, for each
call of the candidate run in order, it re-runs the candidate op on the REFERENCE run's inputs of
that (layer, op) and judges the output under the op's tolerance model (`OpSpec.compare` on a
`Case` built from those inputs). An op is blamed only for its own error on correct inputs, so
the first (layer, op) out of tolerance is the faulty one. It also prints how the residual
streams of the two runs drift apart, layer by layer.

--ops: `module:attr`, a mapping from op names of `parity.reference.stack.OP_KEYS` to callables
or a function returning one (missing keys fall back to the references; "mhc_fused_post_pre" is
used only when given); or a registered implementation name (e.g. `triton`): the
implementations of that name for every op of the stack that has one available on the device;
`reference` is the reference table itself, `fused-reference` the same with the fused post+pre.

rms_norm is not an op of the contract (no OpSpec): it is judged against the float64 reference
with 1 ulp(out dtype) + (log2(H) + 8) float32 unit roundoffs of |y|. (An op whose OpSpec is
missing falls back to 2 ulp + 64 float32 unit roundoffs of the float64 reference.)

Isolation: a `module:attr` table is imported and run in a worker process (like `fuzz`): an
import or a kernel that exits, crashes or hangs past --timeout is reported as the candidate's
failure (exit 1), never a dead or hung parity, and what it prints goes to the worker's log.
NOT isolated: localize is a diagnosis, not a verdict, so the per-op comparison also runs in that
worker, next to the candidate (a kernel that patches parity's checks could hide there: `parity
check`/`fuzz` judge in a process the candidate does not run in). Registered implementation
names and the reference tables are parity's own code and run in-process; `--no-isolate` runs a
`module:attr` table in-process too.

Exit 0 no op out of tolerance, 1 one is (layer, op and the verdict are printed) or the
candidate crashed or hung, 2 usage.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


def add_parser(sub):
    p = sub.add_parser("localize", help="first (layer, op) of a decoder stack out of tolerance")
    p.add_argument("--layers", default="0:4", help="START:END (default 0:4)")
    p.add_argument("--num-layers", type=int, default=None, help="default: max(4, END)")
    p.add_argument("--quant", choices=["none", "fp8_block", "mxfp4"], default="none")
    p.add_argument(
        "--ops",
        default="reference",
        help="candidate table: module:attr, or a registered impl name (triton, ...)",
    )
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument(
        "--intermediate",
        type=int,
        default=None,
        help="expert size (default 64; 128 with fp8_block)",
    )
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for the whole isolated run (hang)"
    )
    p.add_argument("--no-isolate", action="store_true", help="run a module:attr table in-process")
    return p


@dataclass
class CallResult:
    index: int
    op: str
    layer: int | None
    status: str  # "pass", "fail", "unsupported", "reference" (not replaced), "unmatched"
    message: str = ""
    ratio: float = 0.0
    run_max_abs: float = float("nan")  # the free runs' outputs differ by this much here

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("ratio", "run_max_abs"):
            if not math.isfinite(d[k]):
                d[k] = None if d[k] != d[k] else repr(d[k])
        return d


@dataclass
class Localization:
    config: dict
    calls: list[CallResult] = field(default_factory=list)
    growth: list[dict] = field(default_factory=list)
    first_bad: CallResult | None = None
    crashed: str = ""  # the candidate stack run raised

    def as_dict(self) -> dict:
        return {
            "config": self.config,
            "first_bad": self.first_bad.as_dict() if self.first_bad else None,
            "crashed": self.crashed,
            "calls": [c.as_dict() for c in self.calls],
            "growth": self.growth,
        }


# --- the ops tables ------------------------------------------------------------------------


def resolve_table(name: str, device: str) -> dict[str, Callable]:
    """A candidate ops table from `module:attr` or a registered implementation name."""
    from parity.catalog import impls
    from parity.reference.stack import FUSED_REFERENCE_OPS, OP_KEYS
    from parity.registry import OP_NAMES

    if name == "reference":
        return {}
    if name == "fused-reference":
        return dict(FUSED_REFERENCE_OPS)
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if callable(obj) and not isinstance(obj, Mapping):
            obj = obj()  # a factory: a fresh table per call
        if not isinstance(obj, Mapping):
            raise TypeError(f"{name} is not a mapping of op names to callables")
        return dict(obj)
    table = {}
    for key in OP_KEYS:
        if key not in OP_NAMES:
            continue
        for impl in impls(key):
            if impl.name == name and impl.availability(device)[0]:
                table[key] = impl.fn
    if not table:
        raise KeyError(f"no op of the stack has an implementation {name!r} available on {device}")
    return table


# --- comparison ----------------------------------------------------------------------------


def _rms_norm_compare(case, outs):
    import torch

    from parity import reference as ref
    from parity.properties.case import eps_of, ulp
    from parity.properties.tolerance import Verdict, close
    from parity.reference.stack import rms_norm

    x = case.args[0]
    c = case.clone()
    with ref.precision("float64", round_output=False):
        want = rms_norm(*c.args, **c.kwargs)
    if len(outs) != 1:
        return Verdict(False, f"expected one output, got {len(outs)}")
    if outs[0].dtype != x.dtype:
        return Verdict(False, f"y: dtype {outs[0].dtype} != {x.dtype}")
    h = max(x.shape[-1], 1)
    tol = ulp(want, x.dtype) + (math.log2(h) + 8) * eps_of(torch.float32) * want.abs()
    return close("y", outs[0], want, tol)


def _generic_compare(name: str, case, outs):
    """For an op without an OpSpec: float outputs within 2 ulp(out dtype) + 64 float32 unit
    roundoffs of |want| of the float64 reference, other outputs exact."""
    import torch

    from parity import reference as ref
    from parity.properties.case import as_tuple, eps_of, ulp
    from parity.properties.tolerance import Verdict, check_meta, close, combine, exact
    from parity.reference.stack import FUSED_REFERENCE_OPS

    c = case.clone()
    with ref.precision("float64", round_output=False):
        want = as_tuple(FUSED_REFERENCE_OPS[name](*c.args, **c.kwargs))
    if len(outs) != len(want):
        return Verdict(False, f"returned {len(outs)} outputs, the reference {len(want)}")
    verdicts = []
    for i, (o, w) in enumerate(zip(outs, want)):
        if isinstance(o, torch.Tensor) and o.is_floating_point() and w.is_floating_point():
            m = check_meta(f"output {i}", o, torch.empty(w.shape, dtype=o.dtype, device=w.device))
            tol = 2 * ulp(w, o.dtype) + 64 * eps_of(torch.float32) * w.abs()
            verdicts.append(close(f"output {i}", o, w, tol) if m else m)
        else:
            verdicts.append(exact(f"output {i}", o, w))
    return combine(verdicts)


def compare_call(name: str, case, outs):
    """The op's tolerance model (`OpSpec.compare`), or a documented local one."""
    from parity.catalog import specs

    spec = specs().get(name)
    if spec is not None:
        return spec.compare(case, outs)
    if name == "rms_norm":
        return _rms_norm_compare(case, outs)
    return _generic_compare(name, case, outs)


def _max_abs(a, b) -> float:
    import torch

    from parity.properties.case import as_tuple

    worst = 0.0
    for x, y in zip(as_tuple(a), as_tuple(b)):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            continue
        if x.shape != y.shape:
            return float("inf")
        if x.numel() == 0:
            continue
        d = (x.to(torch.float64) - y.to(torch.float64)).abs()
        d = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
        both_nan = torch.isnan(x.to(torch.float64)) & torch.isnan(y.to(torch.float64))
        d = torch.where(both_nan, torch.zeros_like(d), d)
        worst = max(worst, float(d.max()))
    return worst


# --- the algorithm -------------------------------------------------------------------------


def localize(
    candidate: Mapping[str, Callable],
    *,
    start_layer: int = 0,
    end_layer: int = 4,
    num_layers: int | None = None,
    quant: str = "none",
    tokens: int = 16,
    hidden: int = 256,
    intermediate: int | None = None,
    dtype: str = "bfloat16",
    device: str = "cpu",
    seed: int = 0,
) -> Localization:
    """Run both stacks, re-run each candidate op on the reference run's inputs, and return
    every call's verdict, the first failing call and the residual drift per layer."""
    from parity.properties.case import Case, Gen, as_tuple, dtype_of
    from parity.properties.checks import ImplRaised, UnsupportedCase, call_impl
    from parity.reference.stack import FUSED_REFERENCE_OPS, REFERENCE_OPS, decoder_stack

    candidate = dict(candidate)
    num_layers = num_layers if num_layers is not None else max(4, end_layer)
    if intermediate is None:
        intermediate = 128 if quant == "fp8_block" else 64
    kw = dict(
        start_layer=start_layer,
        end_layer=end_layer,
        num_layers=num_layers,
        quant=quant,
        intermediate=intermediate,
        seed=seed,
    )
    config = {
        **kw,
        "tokens": tokens,
        "hidden": hidden,
        "dtype": dtype,
        "device": device,
        "candidate": sorted(candidate),
    }
    result = Localization(config)
    x = Gen(seed, device).normal([tokens, hidden], dtype=dtype_of(dtype))
    # the reference run takes the fused post+pre path exactly when the candidate does, so both
    # runs make the same sequence of calls
    ref_table = dict(FUSED_REFERENCE_OPS if "mhc_fused_post_pre" in candidate else REFERENCE_OPS)
    ref_calls: list = []
    ref_out = decoder_stack(x, ops=ref_table, capture=ref_calls, **kw)
    cand_calls: list = []
    cand_out = None
    try:
        cand_out = decoder_stack(x, ops=candidate, capture=cand_calls, **kw)
    except Exception as e:  # a crashing kernel is a finding, located below
        result.crashed = f"{type(e).__name__}: {e}"

    # the call that raised was not captured: it is the next call of the reference sequence
    calls = list(cand_calls)
    if result.crashed and len(calls) < len(ref_calls):
        calls.append(ref_calls[len(calls)])
    seen: dict = {}
    ref_index = {}
    for r in ref_calls:
        key = (r.name, r.layer)
        ref_index[(key, seen.get(key, 0))] = r
        seen[key] = seen.get(key, 0) + 1
    seen = {}
    for i, c in enumerate(calls):
        key = (c.name, c.layer)
        r = ref_index.get((key, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
        row = CallResult(i, c.name, c.layer, "pass")
        result.calls.append(row)
        if r is None:
            row.status, row.message = "unmatched", "the reference run made no such call"
            continue
        if i < len(cand_calls):
            row.run_max_abs = _max_abs(c.outputs, r.outputs)
        fn = candidate.get(c.name)
        if fn is None or fn is ref_table.get(c.name):
            row.status = "reference"
            continue
        case = Case(
            c.name,
            tuple(r.inputs),
            dict(r.options),
            {"from": "localize", "layer": c.layer, "seed": seed, "dtype": dtype, "quant": quant},
            device,
        )
        try:
            outs = call_impl(fn, case)
        except UnsupportedCase as e:
            row.status, row.message = "unsupported", str(e)
            continue
        except ImplRaised as e:
            row.status, row.message, row.ratio = "fail", f"raised {e}", float("inf")
        else:
            v = compare_call(c.name, case, as_tuple(outs))
            row.ratio = float(v.ratio)
            if not v:
                row.status, row.message = "fail", v.message
        if row.status == "fail" and result.first_bad is None:
            result.first_bad = row
    if result.crashed and result.first_bad is None and result.calls:
        last = result.calls[-1]
        last.status, last.message = "fail", f"the stack run raised here: {result.crashed}"
        result.first_bad = last
    result.growth = _growth(ref_calls, cand_calls, ref_out, cand_out)
    return result


def _residuals(calls) -> dict:
    """Residual streams after each layer: mhc_post's output (tagged with its layer), or the
    new residual of the fused post+pre (tagged with the next layer)."""
    out = {}
    for c in calls:
        if c.name == "mhc_post":
            out[c.layer] = c.outputs
        elif c.name == "mhc_fused_post_pre":
            out[c.layer - 1] = c.outputs[0]
    return out


def _drift(a, b) -> dict:
    import torch

    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    diff = (a64 - b64).abs()
    ref_norm = float(torch.linalg.vector_norm(b64))
    return {
        "max_abs": float(diff.max()) if diff.numel() else 0.0,
        "rel_l2": float(torch.linalg.vector_norm(a64 - b64)) / ref_norm if ref_norm else 0.0,
        "ref_max_abs": float(b64.abs().max()) if b64.numel() else 0.0,
    }


def _growth(ref_calls, cand_calls, ref_out, cand_out) -> list[dict]:
    rr, cr = _residuals(ref_calls), _residuals(cand_calls)
    rows = []
    for layer in sorted(rr):
        if layer in cr and cr[layer].shape == rr[layer].shape:
            rows.append({"layer": layer, "what": "residual", **_drift(cr[layer], rr[layer])})
    if cand_out is not None and cand_out.shape == ref_out.shape:
        rows.append({"layer": None, "what": "output (mhc_head)", **_drift(cand_out, ref_out)})
    return rows


# --- the command ---------------------------------------------------------------------------


def _params(args, device: str) -> dict:
    start, _, end = args.layers.partition(":")
    return dict(
        start_layer=int(start),
        end_layer=int(end),
        num_layers=args.num_layers,
        quant=args.quant,
        tokens=args.tokens,
        hidden=args.hidden,
        intermediate=args.intermediate,
        dtype=args.dtype,
        device=device,
        seed=args.seed,
    )


class _Usage(Exception):
    pass


def _run_here(ops: str, params: dict) -> Localization:
    try:
        table = resolve_table(ops, params["device"])
    except (ValueError, KeyError, ImportError, AttributeError, TypeError) as e:
        raise _Usage(str(e)) from None
    except (SystemExit, KeyboardInterrupt) as e:  # an exit at import: the candidate's
        from parity.properties.checks import exc_text

        return Localization(params, crashed=f"import crashed: raised {exc_text(e)}")
    try:
        with _quiet():
            return localize(table, **params)
    except (ValueError, TypeError) as e:  # the stack's own validation of the options
        raise _Usage(str(e)) from None


def _quiet():
    from parity.campaign.engine import stdout_to_stderr

    return stdout_to_stderr()


def _worker_main(conn, log_path: str, env, ops: str, params: dict, sys_path) -> None:
    """The isolated run: the table's import, the calls and the comparison."""
    from parity.campaign.wire import encode
    from parity.campaign.worker import add_sys_path, child_setup

    child_setup(log_path, env)
    add_sys_path(sys_path)
    try:
        res = _run_here(ops, params)
        reply = {"ok": True, "result": res.as_dict()}
    except _Usage as e:
        reply = {"ok": False, "usage": str(e)[:2000]}
    conn.send_bytes(encode({**reply, "blobs": []}, []))
    conn.close()


def _from_dict(d: dict) -> Localization:
    def call(c):
        c = dict(c)
        for k in ("ratio", "run_max_abs"):
            c[k] = float("nan") if c.get(k) is None else float(c[k])
        return CallResult(**{k: c[k] for k in CallResult.__dataclass_fields__ if k in c})

    res = Localization(dict(d.get("config", {})), crashed=str(d.get("crashed", ""))[:4000])
    res.calls = [call(c) for c in d.get("calls", [])]
    res.growth = list(d.get("growth", []))
    fb = d.get("first_bad")
    if fb is not None:
        res.first_bad = next((c for c in res.calls if c.index == fb.get("index")), call(fb))
    return res


def _run_isolated(ops: str, params: dict, timeout: float) -> Localization:
    from parity.campaign.wire import BadReply
    from parity.campaign.worker import Child, WorkerDied, WorkerTimeout, indent

    p = Child(target=_worker_main, args=(ops, params, [os.getcwd(), *sys.path]))
    try:
        reply, _ = p.recv(timeout)
    except WorkerTimeout:
        return Localization(params, crashed=f"hang: no result within {timeout:g} s (killed)")
    except WorkerDied as e:
        tail = ("\n" + indent(e.stderr_tail)) if e.stderr_tail else ""
        return Localization(params, crashed=f"crash: {e}{tail}")
    except BadReply as e:
        return Localization(params, crashed=f"the worker's reply is malformed: {e}")
    finally:
        p.kill()
    if not reply.get("ok"):
        raise _Usage(str(reply.get("usage", "bad reply")))
    return _from_dict(reply.get("result") or {})


def run(args) -> int:
    from parity.tools.common import bad_numbers, default_device, json_out

    device = default_device(args.device)
    if bad_numbers("localize", [("--timeout", args.timeout, 0)]) is not None:
        return 2
    try:
        params = _params(args, device)
        if ":" in args.ops and not args.no_isolate:
            res = _run_isolated(args.ops, params, args.timeout)
        else:
            res = _run_here(args.ops, params)
    except (ValueError, _Usage) as e:
        print(f"parity localize: {e}", file=sys.stderr)
        return 2
    if res.crashed and res.first_bad is None:  # the whole run crashed, hung or exited
        if args.json:
            print(json.dumps(res.as_dict(), indent=1), file=json_out())
        else:
            print(f"parity localize: the candidate {args.ops} broke its process: {res.crashed}")
        return 1
    if args.json:
        print(json.dumps(res.as_dict(), indent=1), file=json_out())
    else:
        _print(res, args.ops)
    return 1 if res.first_bad is not None else 0


def _print(res: Localization, ops_name: str) -> None:
    cfg = res.config
    print(
        f"parity localize: ops {ops_name} ({', '.join(cfg['candidate']) or 'reference'}) vs "
        f"reference, layers {cfg['start_layer']}:{cfg['end_layer']}, quant {cfg['quant']}, "
        f"T={cfg['tokens']} H={cfg['hidden']} {cfg['dtype']} on {cfg['device']}"
    )
    print("per op, on the reference run's inputs:")
    for c in res.calls:
        if c.status == "reference":
            continue
        layer = "head" if c.layer is None else str(c.layer)
        msg = f"  {c.message[:140]}" if c.message else ""
        print(
            f"  layer {layer:>4}  {c.op:<20} {c.status:<11} err/tol {c.ratio:9.3g}  "
            f"run diff {c.run_max_abs:9.3g}{msg}"
        )
    print("error growth (candidate run vs reference run):")
    for g in res.growth:
        where = "head" if g["layer"] is None else f"after layer {g['layer']}"
        print(
            f"  {where:<16} max abs {g['max_abs']:10.4g}  rel l2 {g['rel_l2']:10.4g}  "
            f"(ref max {g['ref_max_abs']:.4g})"
        )
    if res.crashed:
        print(f"the candidate stack raised: {res.crashed}")
    if res.first_bad is None:
        print("no op out of tolerance")
        return
    b = res.first_bad
    layer = "head" if b.layer is None else b.layer
    print(f"FIRST BAD: layer {layer}, op {b.op}: {b.message}")
