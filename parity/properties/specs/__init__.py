"""One OpSpec per op of the contract, one file per op (named after it); importing this package
registers them all. Family helpers live in the underscore modules (_quant, _mhc). The files are
found from the contract's op list (`parity.registry.OP_NAMES`), so a new op needs no line here."""

import importlib

from parity.registry import OP_NAMES

for _op in OP_NAMES:
    importlib.import_module(f"{__name__}.{_op}")
