"""Summaries of repeated measurements as the reports print them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def mean_std(values: Iterable[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of ``values`` times ``scale`` (sample std; 0 for one value; NaN values, not measured, left
    out; ``—`` for none)."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    if not kept:
        return "—"
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0
    return f"{scale * float(np.mean(kept)):.{digits}f} ± {scale * std:.{digits}f}"
