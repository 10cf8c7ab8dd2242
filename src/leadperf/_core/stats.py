"""Small statistics shared by every part's ``stats()``."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile"]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ascending values (0.0 when empty).

    The smallest value with at least ``q`` of the values at or below it: rank
    ``ceil(q * n)`` (at least 1), so ``percentile([1, 2, 3, 4], 0.5) == 2`` and ``q = 1.0``
    gives the maximum.

    Args:
        ordered: the values, sorted ascending.
        q: the quantile in ``[0, 1]`` (0.95 for p95).

    Returns:
        The chosen value as a float, or 0.0 for no values.
    """
    n = len(ordered)
    if n == 0:
        return 0.0
    # The epsilon keeps float noise (0.95 * 100 == 95.00000000000001) from moving a rank.
    rank = max(1, min(n, math.ceil(q * n - 1e-9)))
    return float(ordered[rank - 1])
