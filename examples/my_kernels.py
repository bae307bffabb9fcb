"""Two external swiglu kernels for the README's examples: one right, one with a classic bug.

Run from the repository root, e.g. `parity fuzz --op swiglu --impl examples.my_kernels:swiglu_ok`.
"""

import torch

from parity.reference import swiglu as _reference


def swiglu_ok(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    """Delegates to the reference: a kernel that is right by construction."""
    return _reference(x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode)


def swiglu_rounds_early(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    """Rounds gate * sigmoid(alpha * gate) to x.dtype before the product (an extra rounding)."""
    _reference(x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode)
    n = x.shape[-1] // 2
    if layout == "concat":
        g, u = x[..., :n].float(), x[..., n:].float()
    else:
        g, u = x[..., 0::2].float(), x[..., 1::2].float()
    if limit is not None:
        u = u.clamp(-limit, limit)
        if clamp_mode == "pre":
            g = g.clamp(max=limit)
    act = g * torch.sigmoid(alpha * g)
    if limit is not None and clamp_mode == "post":
        act = act.clamp(max=limit)
    return (act.to(x.dtype).float() * (u + beta)).to(x.dtype)
