"""Every property of every op against every implementation (parametrized by the parity plugin)."""


def test_property(parity_target):
    parity_target.run()
