"""Known-answer tests of the SwiGLU reference (docs/ops.md, "swiglu")."""

import math

import pytest
import torch

from parity.reference import precision
from parity.reference.swiglu import swiglu, swiglu_f32

NAN = float("nan")


def f32(*values):
    return torch.tensor(values, dtype=torch.float32)


def silu_mul(gate, up, alpha=1.0, beta=0.0):
    """One output element in float64 Python arithmetic."""
    return gate / (1 + math.exp(-alpha * gate)) * (up + beta)


def close(got, expect, rel=1e-6):
    return all(math.isclose(g, e, rel_tol=rel, abs_tol=1e-12) for g, e in zip(got, expect))


def test_concat_vs_interleaved_halves():
    x = f32(1.0, 2.0, 3.0, 4.0).reshape(1, 4)
    concat = swiglu(x)[0].tolist()  # gate [1, 2], up [3, 4]
    interleaved = swiglu(x, layout="interleaved")[0].tolist()  # gate [1, 3], up [2, 4]
    assert close(concat, [silu_mul(1, 3), silu_mul(2, 4)])
    assert close(interleaved, [silu_mul(1, 2), silu_mul(3, 4)])


def test_pre_and_post_clamp_differ_only_above_the_limit():
    limit = 10.0
    # gate 12 > limit: pre gives limit * sigmoid(limit), post gives min(silu(12), limit) = limit.
    x = f32(12.0, 3.0, 1.0, 1.0).reshape(1, 4)
    pre = swiglu(x, limit=limit, clamp_mode="pre")[0]
    post = swiglu(x, limit=limit, clamp_mode="post")[0]
    assert pre[0] != post[0] and post[0] == limit
    assert math.isclose(post[0] - pre[0], limit * math.exp(-limit), rel_tol=1e-2)
    assert pre[1] == post[1]  # gate 3 < limit: identical


def test_clamps_gate_above_only_and_up_both_sides():
    x = f32(-20.0, 2.0, 50.0, -50.0).reshape(1, 4)  # gate [-20, 2], up [50, -50]
    y = swiglu(x, limit=7.0)[0].tolist()
    assert close(y, [silu_mul(-20, 7), silu_mul(2, -7)])


def test_deepseek_v4_preset():
    x = f32(11.0, -3.0, 12.0, 2.0).reshape(1, 4)  # gate [11, -3], up [12, 2]
    y = swiglu(x, limit=10.0, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre")
    assert close(y[0].tolist(), [silu_mul(10, 10), silu_mul(-3, 2)])


def test_gpt_oss_preset():
    x = f32(8.0, -9.0, 0.5, 2.0).reshape(1, 4)  # gate [8, 0.5], up [-9, 2]
    y = swiglu(x, limit=7.0, alpha=1.702, beta=1.0, layout="interleaved", clamp_mode="pre")
    assert close(y[0].tolist(), [silu_mul(7, -7, 1.702, 1), silu_mul(0.5, 2, 1.702, 1)])


def test_no_limit_is_silu_mul_with_alpha_beta_and_ignores_clamp_mode():
    x = f32(20.0, -1.5, 30.0, 0.25).reshape(1, 4)
    y = swiglu(x, alpha=0.5, beta=2.0)
    assert close(y[0].tolist(), [silu_mul(20, 30, 0.5, 2), silu_mul(-1.5, 0.25, 0.5, 2)])
    assert torch.equal(y, swiglu(x, alpha=0.5, beta=2.0, clamp_mode="post"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rounds_once_to_the_input_dtype(dtype):
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = swiglu(x, limit=1.0)
    assert y.dtype == dtype and y.shape == (3, 5, 4)
    y32 = swiglu_f32(x, limit=1.0)
    assert y32.dtype == torch.float32 and torch.equal(y, y32.to(dtype))


def test_float64_oracle_mode():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with precision("float64", round_output=False):
        y64 = swiglu(x, limit=1.0)
    assert y64.dtype == torch.float64
    assert torch.equal(y64, swiglu_f32(x, limit=1.0, dtype=torch.float64))
    with precision("float64"):
        assert swiglu(x).dtype == torch.bfloat16


def test_nan_propagates_elementwise_only():
    x = f32(NAN, 1.0, 2.0, 3.0, 4.0, 5.0).reshape(1, 6)  # gate [nan, 1, 2], up [3, 4, 5]
    for limit in (None, 1.0):
        y = swiglu(x, limit=limit)[0]
        assert y[0].isnan() and not y[1:].isnan().any()


def test_empty_shapes():
    assert swiglu(torch.zeros(0, 8)).shape == (0, 4)
    assert swiglu(torch.zeros(2, 0, 6, dtype=torch.bfloat16)).shape == (2, 0, 3)
    y = swiglu(torch.zeros(0), layout="interleaved")
    assert y.shape == (0,) and y.dtype == torch.float32


def test_input_unchanged_and_output_contiguous():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2)).t()  # [3, 8], strided
    before = x.clone()
    y = swiglu(x, layout="interleaved", limit=0.5)
    assert torch.equal(x, before) and y.is_contiguous() and y.shape == (3, 4)


X = torch.ones(2, 8)

BAD = [
    ({"x": [1.0, 2.0]}, TypeError, "swiglu: x"),
    ({"x": X.long()}, TypeError, "swiglu: x"),
    ({"x": X.double()}, TypeError, "swiglu: x"),
    ({"x": torch.tensor(1.0)}, ValueError, "swiglu: x"),
    ({"x": X[:, :7]}, ValueError, "swiglu: x"),
    ({"limit": 0.0}, ValueError, "swiglu: limit"),
    ({"limit": -1.0}, ValueError, "swiglu: limit"),
    ({"limit": "10"}, TypeError, "swiglu: limit"),
    ({"alpha": NAN}, ValueError, "swiglu: alpha"),
    ({"beta": None}, TypeError, "swiglu: beta"),
    ({"layout": "split"}, ValueError, "swiglu: layout"),
    ({"clamp_mode": "mid"}, ValueError, "swiglu: clamp_mode"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD, ids=[b[2] for b in BAD])
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    kwargs = dict(kwargs)
    x = kwargs.pop("x", X)
    with pytest.raises(error, match=match):
        swiglu(x, **kwargs)
