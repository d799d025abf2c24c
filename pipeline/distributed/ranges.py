"""How task indices are spread over workers: contiguous ranges (numpy only, so that the report's
import of the evaluation statistics stays light)."""
from __future__ import annotations

import numpy as np


def blocks(total: int, size: int) -> list[range]:
    """Fixed blocks of `size` indices (the last holds the remainder), whoever computes them."""
    return [range(a, min(a + size, total)) for a in range(0, total, size)]


def tree_sum(parts: list, add):
    """parts added in a fixed pairwise tree over their index: ((p0 + p1) + (p2 + p3)) + p4 ... The
    same order (hence the same float rounding) whichever worker computed which part."""
    parts = list(parts)
    while len(parts) > 1:
        parts = [add(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def split(total: int, parts: int) -> list[range]:
    """Contiguous, near-equal, non-empty index ranges in order."""
    parts = max(1, min(parts, total))
    bounds = np.linspace(0, total, parts + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
