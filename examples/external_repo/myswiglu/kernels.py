"""SwiGLU, y = silu(gate) * up, in plain torch: a kernel author's own code (no parity import).

x [..., 2N] -> y [..., N] in x.dtype; gate = x[..., :N], up = x[..., N:] ("concat") or
gate = x[..., 0::2], up = x[..., 1::2] ("interleaved"); the options of clamped SwiGLU layers
(GPT-OSS): silu(z) = gate * sigmoid(alpha * gate), up + beta, and `limit` clamps ("pre": gate
above and up to +-limit before the activation; "post": the activation above, up the same).

`swiglu` computes in float32 and rounds once: correct. `swiglu_fast` rounds silu(gate) to the
input dtype before the multiply: a classic bug (an extra rounding) that a fixed-shape allclose
test lets through.
"""

import torch


def _check(x, limit, layout, clamp_mode):
    # bad input raises, as parity's contract wants (error_parity)
    if not isinstance(x, torch.Tensor) or x.dtype not in (
        torch.bfloat16,
        torch.float16,
        torch.float32,
    ):
        raise TypeError(f"swiglu: x: expected a bfloat16/float16/float32 tensor, got {x!r:.60}")
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"swiglu: x: expected [..., 2N], got shape {tuple(x.shape)}")
    if layout not in ("concat", "interleaved"):
        raise ValueError(f"swiglu: layout: expected concat or interleaved, got {layout!r}")
    if clamp_mode not in ("pre", "post"):
        raise ValueError(f"swiglu: clamp_mode: expected pre or post, got {clamp_mode!r}")
    if limit is not None and not limit > 0:
        raise ValueError(f"swiglu: limit: expected a positive number, got {limit!r}")


def _silu_and_up(x, limit, alpha, beta, layout, clamp_mode):
    _check(x, limit, layout, clamp_mode)
    x = x.float()
    if layout == "concat":
        n = x.shape[-1] // 2
        gate, up = x[..., :n], x[..., n:]
    else:
        gate, up = x[..., 0::2], x[..., 1::2]
    if limit is not None:
        up = up.clamp(-limit, limit)
        if clamp_mode == "pre":
            gate = gate.clamp(max=limit)
    silu = gate * torch.sigmoid(alpha * gate)
    if limit is not None and clamp_mode == "post":
        silu = silu.clamp(max=limit)
    return silu, up + beta


def swiglu(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    silu, up = _silu_and_up(x, limit, alpha, beta, layout, clamp_mode)
    return (silu * up).to(x.dtype)


def swiglu_fast(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    silu, up = _silu_and_up(x, limit, alpha, beta, layout, clamp_mode)
    silu = silu.to(x.dtype).float()  # the bug: rounded before the multiply
    return (silu * up).to(x.dtype)
