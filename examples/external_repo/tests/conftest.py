"""This project's kernels registered with parity: a test (or `parity fuzz --impl NAME` run from
here with `-p` plugins) can name them. Registering is optional; `parity.check` also takes the
function itself."""

import parity

from myswiglu import kernels

parity.register("swiglu", name="myswiglu", backend="torch", devices=("cpu", "cuda"))(kernels.swiglu)
