"""parity in this project's own test suite: one line per kernel (README, "Test your own kernel").

`test_swiglu_fast` fails on purpose: `swiglu_fast` has a rounding bug, and the failure shows the
shrunk counterexample and the line that reruns it.
"""

import parity

from myswiglu import swiglu, swiglu_fast


def test_swiglu():
    parity.check("swiglu", swiglu).raise_for_failure()


def test_swiglu_fast():
    parity.check("swiglu", swiglu_fast).raise_for_failure()


def test_swiglu_registered_in_conftest():
    parity.check("swiglu", "myswiglu").raise_for_failure()
