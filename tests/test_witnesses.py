"""Every witness (a deliberately broken implementation) is caught by its property."""

import pytest

from parity.catalog import get_spec
from parity.properties.runner import run_property
from tests.witnesses import load

WITNESSES = load()


@pytest.mark.parametrize("w", WITNESSES, ids=[w.id for w in WITNESSES])
def test_witness_is_caught(w):
    stats = run_property(
        get_spec(w.op),
        w.prop,
        w.fn,
        impl_name=f"tests.witnesses:{w.fn.__name__}",
        device="cpu",
        profile="pr",
        max_examples=w.max_examples,
        shrink=False,  # detection is what a witness proves; shrinking only costs time
    )
    assert stats.failure is not None, (
        f"{w.prop} did not catch the witness {w.fn.__name__} ({w.why}) in {stats.run} cases "
        f"({stats.unsupported} unsupported, {stats.not_applicable} n/a)"
    )
