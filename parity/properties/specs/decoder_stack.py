"""OpSpec of decoder_stack: an implementation is a function with the reference's signature (its
own ops table inside), judged op by op on its own captured calls.

End-to-end outputs of two correct stacks can differ hugely: one rounding difference flips a
router top-k choice and the token then runs other experts (the reference helper measured 41-69%
differences between quant modes). So the compare does not start from the output. The case
passes `capture=` (the contract requires every op call to be capturable; each call of the
implementation gets a fresh list, see `_CaptureList`), the reference runs with capture too, and:

1. sequence: the candidate's (op, layer) calls equal the reference's, a fused post+pre at
   layer i standing for mhc_post of layer i-1 followed by mhc_pre of layer i;
2. ops: every captured candidate call passes its op's own tolerance model (`OpSpec.compare`,
   the route and fused_moe specs included) on the candidate's OWN inputs, so an op is judged
   only for its own error; its weights and options equal the reference's for that layer;
3. wiring: every activation input is bitwise the output that feeds it in the candidate's run
   (`_Wiring`): the first streams are hc copies of x, mhc_post reads the residual its layer's
   pre read, the next pre (or the head) the post's output; the router logits are the stack's
   own float32 GEMM `normed @ router_w.T` (within its error bound, not an op of the table);
4. output: the returned tensor is bitwise the captured mhc_head output (checked by 2);
5. end to end (quant "none" and "mxfp4"), over the tokens whose top-k sets equal the
   reference's at every layer: ||out - ref32||_F <= GATE x spread + ||ulp(ref32)||_F, where
   `spread` is the larger distance from ref32 of two runs the contract accepts as just as
   correct: the stack with float64 arithmetic inside every op (outputs still rounded, as
   kernels do), and the stack on the other fused chain (post+pre reading float32 streams).
   GATE = 4 is the fused_moe spec's aggregate gate. One rounding difference of a bf16 residual
   element moves everything downstream, so no per-element bound is sound here: the accepted
   variants' spread is the yardstick (measured: candidates built from either variant sit at
   1/4 of the allowance, the Triton fused_moe stack at most 0.46 over 96 short runs; the
   float32-reference-vs-oracle distance alone was 3x too small for the float32-chain
   variant). Not with "fp8_block": a one-step flip of an fp8 activation code (which the
   fused_moe tolerance allows where a value sits near a code midpoint) is discrete like a
   routing flip, and the Triton stack reached 3.7x the allowance on 3 tokens over 2 layers.
   It is a sanity bound on error growth across layers; 1-4 carry the precision.

Without a capture (a tool comparing stored outputs) only 5 can be checked, over all tokens the
reference variants route alike, fp8_block included (there it may reject a correct run).
Relations (rows are independent: no attention): token_permutation and batch_split, inexact: over
the tokens whose top-k sets agree between the two runs at every layer, the outputs agree within
twice the allowance of 5 (routing flips between batch sizes are legitimate); not applicable with
"fp8_block", where 5 has no bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from parity import reference as ref
from parity.properties import strategies as S
from parity.properties.case import Case, Gen, as_tuple, dtype_of, ulp
from parity.properties.tolerance import Verdict, check_meta, close, combine, same_bits
from parity.reference.mhc import mhc_fused_post_pre_f32
from parity.reference.stack import (
    FUSED_REFERENCE_OPS,
    REFERENCE_OPS,
    StackConfig,
    rms_norm,
    stack_weights,
)
from parity.registry import OpSpec, Relation, add_spec, registered_specs

U = 2.0**-24
F64 = torch.float64
GATE = 4.0  # the fused_moe spec's aggregate gate factor (see 5. above)
# The reference stack on the other chain the contract accepts: fused post+pre on float32 streams.
F32_CHAIN_OPS = {**FUSED_REFERENCE_OPS, "mhc_fused_post_pre": mhc_fused_post_pre_f32}
TOLERANCE = (
    "per captured op call: that op's OpSpec tolerance on the candidate's own inputs; wiring "
    "bitwise; same (op, layer) sequence; end to end (not fp8_block) over tokens routed alike "
    "||out - ref32||_F <= 4 x the spread of the accepted variants (float64-inside ops, float32 "
    "fused chain) + ulp"
)

# Positional inputs that are weights (compared bitwise with the reference's) per op.
_WEIGHT_ARGS = {
    "mhc_pre": (1, 2, 3),
    "mhc_fused_post_pre": (4, 5, 6),
    "mhc_head": (1, 2, 3),
    "rms_norm": (1,),
    "fused_moe": (1, 2),
    "mhc_post": (),
    "route": (),
}


# --- capture ------------------------------------------------------------------------------------


class _CaptureList(list):
    """The `capture` list of a case. `Case.clone` rebuilds lists as `type(v)(...)`, so every
    call of an implementation gets a fresh instance of the case's own subclass; the subclass
    keeps them all (`made`), and `made[-1]` is the list filled by the latest call."""

    made: list

    def __init__(self, *args):
        super().__init__(*args)
        type(self).made.append(self)


def new_capture() -> _CaptureList:
    cls = type("CaptureList", (_CaptureList,), {"made": []})
    return cls()


def latest_capture(case: Case) -> list | None:
    """The calls captured by the latest call of `case`, None if it was never called."""
    slot = case.kwargs.get("capture")
    if not isinstance(slot, _CaptureList) or len(type(slot).made) < 2:
        return None
    return type(slot).made[-1]


def _stack_kwargs(case: Case) -> dict:
    return {k: v for k, v in case.kwargs.items() if k != "capture"}


def _config(case: Case) -> StackConfig:
    x = case.args[0]
    kw = _stack_kwargs(case)
    keys = ("num_layers", "hc", "quant", "intermediate")
    return StackConfig(hidden=x.shape[1], dtype=x.dtype, **{k: kw[k] for k in keys if k in kw})


# --- per-op checks ------------------------------------------------------------------------------


def _rms_norm_compare(case: Case, outs: tuple) -> Verdict:
    """rms_norm (not a contract op): mean of H squares gamma(H)/2 relative after the rsqrt,
    rsqrtf 2 ulp, two products: (H/2 + 8) u |y|, then the rounding to x.dtype."""
    x = case.args[0]
    with ref.precision("float64", round_output=False):
        want = rms_norm(*case.args, **case.kwargs)
    if len(outs) != 1:
        return Verdict(False, f"rms_norm: expected one output, got {len(outs)}")
    v = check_meta("y", outs[0], torch.empty(want.shape, dtype=x.dtype, device=x.device))
    if not v:
        return v
    d = (x.shape[-1] / 2 + 8) * U * want.abs()
    return close("y", outs[0], want, 0.5 * ulp(want.abs() + d, x.dtype) + d)


def op_compare(name: str, case: Case, outs: tuple) -> Verdict:
    """The op's own tolerance model; rms_norm's local one."""
    if name == "rms_norm":
        return _rms_norm_compare(case, outs)
    spec = registered_specs().get(name)
    if spec is None:
        return Verdict(False, f"{name}: no OpSpec registered to judge this call")
    return spec.compare(case, outs)


# --- sequence and wiring -----------------------------------------------------------------------


def _expanded(calls) -> list[tuple[str, int | None, int]]:
    """(name, layer, index of the candidate call) with each fused post+pre at layer i expanded
    into (mhc_post, i-1), (mhc_pre, i)."""
    seq = []
    for n, c in enumerate(calls):
        if c.name == "mhc_fused_post_pre":
            seq += [("mhc_post", c.layer - 1, n), ("mhc_pre", c.layer, n)]
        else:
            seq.append((c.name, c.layer, n))
    return seq


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.device.type == b.device.type
            and same_bits(a, b)
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def _check_sequence(cand, refc) -> Verdict:
    got = [(n, layer) for n, layer, _ in _expanded(cand)]
    want = [(c.name, c.layer) for c in refc]
    if got == want:
        return Verdict.passed()
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    g = got[i] if i < len(got) else "end of run"
    w = want[i] if i < len(want) else "end of run"
    return Verdict(
        False,
        f"op sequence: call {i} is {g}, the reference's is {w} ({len(got)} vs {len(want)} "
        "calls, a fused post+pre counted as post then pre)",
        math.inf,
    )


def _check_weights(cand, refc) -> Verdict:
    """Weights and options of every candidate call equal the reference's for that layer."""
    ref_at = {(c.name, c.layer): c for c in refc}
    for n, c in enumerate(cand):
        name = "mhc_pre" if c.name == "mhc_fused_post_pre" else c.name
        r = ref_at.get((name, c.layer))
        if r is None:
            continue  # the sequence check reports it
        shift = 3 if c.name == "mhc_fused_post_pre" else 0  # fused fn, scale, base: 4, 5, 6
        for i in _WEIGHT_ARGS.get(c.name, ()):
            j = i - shift
            if i >= len(c.inputs) or not _same(c.inputs[i], r.inputs[j]):
                return Verdict(
                    False,
                    f"call {n} ({c.name}, layer {c.layer}): input {i} is not the layer's weight",
                    math.inf,
                )
        diff = sorted(
            k
            for k in set(c.options) | set(r.options)
            if k not in c.options or k not in r.options or not _same(c.options[k], r.options[k])
        )
        if diff:
            return Verdict(
                False,
                f"call {n} ({c.name}, layer {c.layer}): options {diff} differ from the reference's",
                math.inf,
            )
    return Verdict.passed()


class _Wiring:
    """The candidate's run replayed as a state machine over its own captured outputs."""

    def __init__(self, case: Case):
        x = case.args[0]
        cfg = _config(case)
        t, h = x.shape
        self.weights = stack_weights(cfg, _stack_kwargs(case).get("seed", 0), x.device)
        self.state = {"residual": x.unsqueeze(1).expand(t, cfg.hc, h).contiguous()}

    def _need(self, n, c, i, key) -> Verdict:
        want = self.state.get(key)
        got = c.inputs[i] if i < len(c.inputs) else None
        if want is not None and got is not None and _same(got, want):
            return Verdict.passed()
        src = "nothing feeds it yet" if want is None else f"it is not the current {key}"
        return Verdict(
            False, f"wiring: call {n} ({c.name}, layer {c.layer}): input {i}: {src}", math.inf
        )

    def step(self, n: int, c) -> Verdict:
        s, outs = self.state, as_tuple(c.outputs)
        if c.name == "mhc_pre":
            v = self._need(n, c, 0, "residual")
            s.update(post=outs[0], comb=outs[1], layer_input=outs[2])
        elif c.name == "mhc_fused_post_pre":
            keys = ("moe_out", "residual", "post", "comb")
            v = combine(self._need(n, c, i, k) for i, k in enumerate(keys))
            s.update(residual=outs[0], post=outs[1], comb=outs[2], layer_input=outs[3])
        elif c.name == "rms_norm":
            v = self._need(n, c, 0, "layer_input")
            s.update(normed=outs[0])
        elif c.name == "route":
            v = self._logits(n, c)
            s.update(topk_w=outs[0], topk_ids=outs[1])
        elif c.name == "fused_moe":
            keys = {0: "normed", 3: "topk_w", 4: "topk_ids"}
            v = combine(self._need(n, c, i, k) for i, k in keys.items())
            s.update(moe_out=outs[0])
        elif c.name == "mhc_post":
            keys = ("moe_out", "residual", "post", "comb")
            v = combine(self._need(n, c, i, k) for i, k in enumerate(keys))
            s.update(residual=outs[0])
        elif c.name == "mhc_head":
            v = self._need(n, c, 0, "residual")
        else:
            v = Verdict(False, f"call {n}: unknown op {c.name!r}", math.inf)
        return v

    def _logits(self, n: int, c) -> Verdict:
        """float32(normed @ router_w.T) within the float32 GEMM bound gamma(H) sum|a||w|."""
        normed = self.state.get("normed")
        if normed is None or c.layer is None or not c.inputs:
            return Verdict(False, f"wiring: call {n} (route): no rms_norm output feeds it")
        w = self.weights.layers[c.layer].router_w.to(F64)
        a = normed.to(F64)
        want = a @ w.T
        d = (a.shape[-1] * U) * (a.abs() @ w.abs().T)
        v = close("router logits", c.inputs[0], want, 0.5 * ulp(want.abs() + d, torch.float32) + d)
        if v:
            return v
        return Verdict(False, f"wiring: call {n} (route, layer {c.layer}): {v.message}", v.ratio)


def _check_calls(case: Case, cand: list) -> Verdict:
    """Wiring and each op on its own inputs, in the order of the run (first failure wins)."""
    wiring = _Wiring(case)
    worst = 0.0
    for n, c in enumerate(cand):
        v = wiring.step(n, c)
        if not v:
            return v
        sub = Case(c.name, tuple(c.inputs), dict(c.options), {"from": "decoder_stack"}, case.device)
        v = op_compare(c.name, sub, as_tuple(c.outputs))
        if not v:
            where = "head" if c.layer is None else f"layer {c.layer}"
            return Verdict(False, f"call {n} ({c.name}, {where}): {v.message}", v.ratio, v.worst)
        worst = max(worst, v.ratio)
    return Verdict(True, "", worst)


# --- end to end ---------------------------------------------------------------------------------


def _route_sets(calls) -> list[torch.Tensor]:
    """Per route call (in order), the sorted expert ids `[T, k]`."""
    return [
        torch.sort(as_tuple(c.outputs)[1].long(), -1).values for c in calls if c.name == "route"
    ]


def _same_routes(a: list, b: list, t: int, device) -> torch.Tensor:
    """bool [T]: the two runs chose the same expert sets at every layer."""
    ok = torch.ones(t, dtype=torch.bool, device=device)
    if len(a) != len(b):
        return ~ok
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return ~ok
        ok &= (x == y).all(-1)
    return ok


@dataclass
class _E2E:
    """The spread of the contract-accepted variants around the float32 reference run, per
    token (Frobenius over H)."""

    out32: torch.Tensor
    spread_oracle: torch.Tensor  # ||oracle - ref32||: float64 arithmetic inside every op
    spread_chain: torch.Tensor  # ||f32-chain - ref32||: fused post+pre on float32 streams
    floor: torch.Tensor  # ||ulp(ref32)||
    measured: torch.Tensor  # bool [T]: the three runs routed alike at every layer

    def bound(self, tokens: torch.Tensor) -> tuple[float, float]:
        """(allowed distance from ref32 over `tokens`, the larger spread)."""

        def agg(v):
            return float(torch.linalg.vector_norm(v[tokens]))

        spread = max(agg(self.spread_oracle), agg(self.spread_chain))
        return GATE * spread + agg(self.floor), spread


def _reference_run(case: Case) -> tuple[torch.Tensor, list]:
    """The float32 reference stack on the case, with its captured calls."""
    calls: list = []
    out = ref.decoder_stack(case.args[0], **_stack_kwargs(case), capture=calls)
    return out, calls


def _e2e(case: Case, run: tuple | None = None) -> _E2E:
    x = case.args[0]
    kw = _stack_kwargs(case)
    out32, ref_calls = run if run is not None else _reference_run(case)
    orc_calls: list = []
    with ref.precision("float64", round_output=False):
        oracle = ref.decoder_stack(x, **kw, capture=orc_calls)
    chain_calls: list = []
    chain = ref.decoder_stack(x, **kw, ops=F32_CHAIN_OPS, capture=chain_calls)
    t = x.shape[0]
    routes = _route_sets(ref_calls)
    measured = _same_routes(routes, _route_sets(orc_calls), t, x.device)
    measured &= _same_routes(routes, _route_sets(chain_calls), t, x.device)
    r64 = out32.to(F64)

    def per_token(v):
        return torch.linalg.vector_norm(v, dim=-1)

    return _E2E(
        out32,
        per_token(oracle - r64),
        per_token(chain.to(F64) - r64),
        per_token(ulp(r64, x.dtype)),
        measured,
    )


def _check_e2e(out: torch.Tensor, e: _E2E, tokens: torch.Tensor) -> Verdict:
    """Over the tokens routed alike: ||out - ref32||_F <= GATE x spread + ||ulp||_F."""
    if not bool(tokens.any()):
        return Verdict.passed()
    d = out.to(F64) - e.out32.to(F64)
    both_nan = torch.isnan(out) & torch.isnan(e.out32)
    d = torch.where(both_nan, torch.zeros_like(d), torch.nan_to_num(d, nan=math.inf))
    dist = float(torch.linalg.vector_norm(d[tokens]))
    allow, spread = e.bound(tokens)
    ratio = dist / allow if allow > 0 else (0.0 if dist == 0 else math.inf)
    if dist <= allow:
        return Verdict(True, "", ratio)
    return Verdict(
        False,
        f"end to end, over the {int(tokens.sum())} tokens routed like the reference: "
        f"||out - ref32|| = {dist:.4g} > {GATE:g} x {spread:.4g} (the accepted variants' spread) "
        f"+ ulp floor",
        ratio,
    )


def compare(case: Case, outs: tuple) -> Verdict:
    x = case.args[0]
    if len(outs) != 1:
        return Verdict(False, f"expected one output, got {len(outs)}")
    out = outs[0]
    v = check_meta("out", out, torch.empty(x.shape, dtype=x.dtype, device=x.device))
    if not v:
        return v
    cand = latest_capture(case)
    if cand is None:  # no capture to judge: the end-to-end bound over every token (the best
        e = _e2e(case)  # there is; with fp8_block it may reject a correct run, see 5.)
        return _check_e2e(out, e, e.measured)
    run = _reference_run(case)
    ref_calls = run[1]
    if not cand:
        return Verdict(False, "captured no op call: every op call must be capturable", math.inf)
    v = _check_sequence(cand, ref_calls)
    if not v:
        return v
    v = _check_weights(cand, ref_calls)
    if not v:
        return v
    v = _check_calls(case, cand)
    if not v:
        return v
    head = cand[-1]
    if not same_bits(out, as_tuple(head.outputs)[0]):
        return Verdict(False, "out: not the captured mhc_head output", math.inf)
    if not _bounded(case):
        return v
    e = _e2e(case, run)  # the two other reference runs only once everything else passed
    tokens = e.measured & _same_routes(_route_sets(cand), _route_sets(ref_calls), *_td(x))
    g = _check_e2e(out, e, tokens)
    return g if not g else Verdict(True, "", max(v.ratio, g.ratio))


def _bounded(case: Case) -> bool:
    """Whether the end-to-end check applies: not with fp8 activation codes (see 5.)."""
    return case.kwargs.get("quant", "none") != "fp8_block"


def _td(x):
    return x.shape[0], x.device


# --- relations ------------------------------------------------------------------------------------


def _routes_of(case: Case) -> list | None:
    calls = latest_capture(case)
    return None if not calls else _route_sets(calls)


def _relation(kind: str):
    """Token permutation or a two-way batch split of x; the derived calls get their own capture
    lists, and `combine` returns (out, route sets re-assembled in the base order)."""

    def transform(case: Case, rng):
        x = case.args[0]
        t = x.shape[0]
        if t < 2 or not _bounded(case):
            return None
        if kind == "perm":
            perm = list(range(t))
            rng.shuffle(perm)
            p = torch.tensor(perm, dtype=torch.long, device=x.device)
            parts = [p]
            inv = torch.argsort(p)
        else:
            cut = rng.randint(1, t - 1)
            ar = torch.arange(t, device=x.device)
            parts, inv = [ar[:cut], ar[cut:]], ar
        derived = []
        for idx in parts:
            kw = {**case.kwargs, "capture": new_capture()}
            meta = {**case.meta, kind: idx.tolist()}
            derived.append(Case(case.op, (x.index_select(0, idx),), kw, meta, case.device))

        def combine_(results):
            out = torch.cat([as_tuple(r)[0] for r in results], 0).index_select(0, inv)
            routes = [_routes_of(d) for d in derived]
            if any(r is None for r in routes) or len({len(r) for r in routes}) != 1:
                return (out, None)
            sets = [torch.cat(layer, 0).index_select(0, inv) for layer in zip(*routes)]
            return (out, sets)

        return derived, combine_

    return transform


def compare_pair(case: Case, derived: tuple, base: tuple) -> Verdict:
    """Over the tokens routed alike in both runs (all of them if a run was not captured) and
    in the reference's accepted variants: ||derived - base||_F within twice the end-to-end
    allowance (each run within it of ref32)."""
    x = case.args[0]
    out_d = derived[0]
    v = check_meta("out", out_d, torch.empty(x.shape, dtype=x.dtype, device=x.device))
    if not v:
        return v
    e = _e2e(case)
    sets_d = derived[1] if len(derived) > 1 else None
    sets_b = _routes_of(case)
    tokens = e.measured.clone()
    if sets_d is not None and sets_b is not None:
        tokens &= _same_routes(sets_d, sets_b, *_td(x))
    if not bool(tokens.any()):
        return Verdict.passed()
    d = out_d.to(F64) - base[0].to(F64)
    both_nan = torch.isnan(out_d) & torch.isnan(base[0])
    d = torch.where(both_nan, torch.zeros_like(d), torch.nan_to_num(d, nan=math.inf))
    dist = float(torch.linalg.vector_norm(d[tokens]))
    allow, _ = e.bound(tokens)
    ratio = dist / (2 * allow) if allow > 0 else (0.0 if dist == 0 else math.inf)
    if ratio <= 1:
        return Verdict(True, "", ratio)
    return Verdict(
        False,
        f"over the {int(tokens.sum())} tokens routed alike, the two runs differ by "
        f"{dist:.4g} > 2 x the end-to-end allowance {allow:.4g}",
        ratio,
    )


# --- strategy, builder, bad inputs ----------------------------------------------------------------


@st.composite
def _meta(draw, size: str, dtypes) -> dict:
    nl = draw(st.sampled_from([4, 2, 3, 1]))
    start = draw(st.integers(0, nl))
    return {
        "T": draw(S.sizes(small=[0, 1, 2, 3, 5, 8, 16], full=[64, 129], size=size)),
        "H": draw(st.sampled_from([128, 256])),
        "dtype": draw(S.float_dtypes(dtypes)),
        "num_layers": nl,
        "start": start,
        "end": draw(st.integers(start, nl)),
        "quant": draw(st.sampled_from(["none", "none", "fp8_block", "mxfp4"])),  # none: cheapest
        "hc": draw(st.sampled_from([4, 4, 2])),
        "regime": draw(st.sampled_from(["normal", "large", "small"])),
        "seed": draw(st.integers(0, 2**20)),
    }


def strategy(*, size: str = "small", dtypes=None) -> st.SearchStrategy[dict]:
    return _meta(size, dtypes)


def build(meta: dict, device) -> Case:
    g = Gen(meta["seed"], device)
    dtype = dtype_of(meta["dtype"])
    scale = {"normal": 1.0, "large": 30.0, "small": 1e-3}[meta["regime"]]
    x = g.normal([meta["T"], meta["H"]], std=scale).to(dtype)
    if meta.get("nan"):
        x = g.inject_nan(x, p=0.005)
    kw = dict(
        start_layer=meta["start"],
        end_layer=meta["end"],
        num_layers=meta["num_layers"],
        hc=meta["hc"],
        quant=meta["quant"],
        intermediate=128 if meta["quant"] == "fp8_block" else 64,  # fp8 blocks of 128
        seed=meta["seed"],
        capture=new_capture(),
    )
    bad = meta.get("invalid")
    if bad is not None:
        x = _mutate(bad, x, kw)
    return Case("decoder_stack", (x,), kw, meta, str(device))


def _mutate(bad: str, x, kw: dict):
    if bad == "x_int":
        return x.to(torch.int32)
    if bad == "x_1d":
        return x.reshape(-1)
    if bad == "x_float64":
        return x.to(torch.float64)
    if bad == "H_not_block":  # fp8 blocks of 128 (mxfp4: 32) must tile H
        kw["quant"] = "fp8_block"
        kw["intermediate"] = 128
        return x[:, :100].contiguous()
    if bad == "start_after_end":
        kw["start_layer"], kw["end_layer"] = kw["end_layer"] + 1, kw["end_layer"]
    elif bad == "end_past_layers":
        kw["end_layer"] = kw["num_layers"] + 1
    elif bad == "start_negative":
        kw["start_layer"] = -1
    elif bad == "quant_unknown":
        kw["quant"] = "int4"
    elif bad == "fp8_intermediate":
        kw["quant"], kw["intermediate"] = "fp8_block", 64
    elif bad == "hc_zero":
        kw["hc"] = 0
    elif bad == "seed_negative":
        kw["seed"] = -1
    elif bad == "layers_float":
        kw["end_layer"] = float(kw["end_layer"])
    elif bad == "capture_tuple":
        kw["capture"] = ()
    return x


MUTATIONS = [
    "x_int",
    "x_1d",
    "x_float64",
    "H_not_block",
    "start_after_end",
    "end_past_layers",
    "start_negative",
    "quant_unknown",
    "fp8_intermediate",
    "hc_zero",
    "seed_negative",
    "layers_float",
    "capture_tuple",
]


SPEC = add_spec(
    OpSpec(
        name="decoder_stack",
        reference=ref.decoder_stack,
        strategy=strategy,
        build=build,
        compare=compare,
        tolerance=TOLERANCE,
        mutations=MUTATIONS,
        relations=(
            Relation("token_permutation", _relation("perm"), exact=False),
            Relation("batch_split", _relation("split"), exact=False),
        ),
        compare_pair=compare_pair,
    )
)

__all__ = ["REFERENCE_OPS", "SPEC", "latest_capture", "new_capture", "op_compare"]
