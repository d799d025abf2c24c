"""How task indices are spread over workers: contiguous ranges (numpy only, so that the report's
import of the evaluation statistics stays light)."""
from __future__ import annotations

import numpy as np


def split(total: int, parts: int) -> list[range]:
    """Contiguous, near-equal, non-empty index ranges in order."""
    parts = max(1, min(parts, total))
    bounds = np.linspace(0, total, parts + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
