"""The switch between dreamctl's reformulated layers and the plain torch layers they equal.

Every layer in `dreamctl.layers` computes the same maths as a torch layer (its base class, or the function its
docstring names) by a formulation that runs faster on the CPUs dreamctl was tuned on. Inside
`reformulations(False)` each of them runs as that plain layer instead: the tests compare the two, and the
benchmarks count FLOPs and measure what the reformulations gain that way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_reformulated = True


def reformulated() -> bool:
    """Whether the layers run their faster formulations (the default) rather than the plain torch layers."""
    return _reformulated


@contextlib.contextmanager
def reformulations(enabled: bool) -> Iterator[None]:
    """Within the block, run the layers' faster formulations (True) or the plain torch layers (False)."""
    global _reformulated
    before, _reformulated = _reformulated, enabled
    try:
        yield
    finally:
        _reformulated = before
