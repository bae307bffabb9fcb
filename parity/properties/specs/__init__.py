"""One OpSpec per op of the contract; importing this package registers them all."""

from parity.properties.specs import mhc, moe, quant, routing, stack, swiglu  # noqa: F401
