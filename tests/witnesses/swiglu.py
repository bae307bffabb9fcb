"""Broken swiglu implementations, one per property."""

import torch

from parity.reference import swiglu as ref_swiglu
from tests.witnesses import witness


def _halves(x, layout):
    n = x.shape[-1] // 2
    if layout == "concat":
        return x[..., :n], x[..., n:]
    return x[..., 0::2], x[..., 1::2]


@witness("swiglu", "matches_reference", why="applies the post clamp when asked for pre")
def swiglu_post_for_pre(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    return ref_swiglu(x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode="post")


@witness("swiglu", "matches_reference", why="rounds gate*sigmoid(gate) to x.dtype first")
def swiglu_rounds_intermediate(
    x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"
):
    g, u = (h.float() for h in _halves(x, layout))
    if limit is not None:
        g, u = g.clamp(max=limit), u.clamp(-limit, limit)
    act = (g * torch.sigmoid(alpha * g)).to(x.dtype).float()
    return (act * (u + beta)).to(x.dtype)


@witness("swiglu", "writes_all_outputs", why="never writes the last row (tail bug)")
def swiglu_skips_tail(x, **kw):
    y = ref_swiglu(x, **kw)
    out = torch.empty_like(y)
    if y.shape[0] > 1:
        out[:-1] = y[:-1]
    elif y.shape[0] == 1:
        out.copy_(y)
    return out


@witness("swiglu", "inputs_unchanged", why="clamps its input in place")
def swiglu_clamps_in_place(x, *, limit=None, **kw):
    if limit is not None and x.numel():
        x.clamp_(-limit, limit)
    return ref_swiglu(x, limit=limit, **kw)


_calls = [0]


@witness("swiglu", "deterministic", why="perturbs one element every other call")
def swiglu_flaky(x, **kw):
    y = ref_swiglu(x, **kw)
    _calls[0] += 1
    if _calls[0] % 2 and y.numel():
        y.view(-1)[0] = y.view(-1)[0] * 2 + 1
    return y


@witness("swiglu", "nan_policy", why="clamps with fmin/fmax, which drop NaN")
def swiglu_drops_nan(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    g, u = (h.float() for h in _halves(x, layout))
    lim = 10.0 if limit is None else limit
    g = torch.fmin(g, torch.tensor(lim))
    u = torch.fmax(torch.fmin(u, torch.tensor(lim)), torch.tensor(-lim))
    return (g * torch.sigmoid(alpha * g) * (u + beta)).to(x.dtype)


@witness("swiglu", "error_parity", why="no input validation: an odd last dim is truncated")
def swiglu_no_validation(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    n = x.shape[-1] // 2
    g, u = x[..., :n].float(), x[..., n : 2 * n].float()
    return (g * torch.sigmoid(alpha * g) * (u + beta)).to(x.dtype)


@witness("swiglu", "token_permutation", why="row 0 is computed from the last row")
@witness("swiglu", "batch_split", why="row 0 is computed from the last row")
def swiglu_row_mixup(x, **kw):
    y = ref_swiglu(x, **kw)
    if y.shape[0] > 1:
        y[0] = y[-1]
    return y
