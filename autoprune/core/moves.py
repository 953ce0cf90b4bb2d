"""Budget-keeping moves: channels taken from a few units and the budget they free given to others.

The mutation of the evolutionary searcher, and the neighbour the reinforcement-learning environment evaluates
instead of a layout its search already scored. A move never projects: it steps through each unit's allowed
kept counts with the exact cost model, so the result meets the budget whenever the layout it starts from does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from autoprune.core.projection import CostFn
from autoprune.core.space import SearchSpace

RETRIES = 20  # draws to find a layout that differs from the start (and is not one to avoid)


def move_channels(start: Mapping[str, int], space: SearchSpace, cost: CostFn, limit: float,
                  rng: np.random.Generator, moves: int,
                  avoid: Callable[[Mapping[str, int]], bool] | None = None) -> dict[str, int]:
    """A neighbour of ``start``: up to ``moves`` units (fewer more often) each give up a sixteenth to three
    sixteenths of their allowed counts (at least one step), each time to another unit, then whatever budget is
    left is spent one allowed step at a time in random order. The neighbour meets ``limit``, differs from
    ``start`` and is not one ``avoid`` names; ``start`` itself after :data:`RETRIES` failed draws."""
    options = {u.name: u.allowed_kept for u in space.units}
    names = list(space.names)
    for _ in range(RETRIES):
        position = {n: options[n].index(start[n]) if start[n] in options[n] else len(options[n]) - 1 for n in names}
        count = int(min(rng.integers(1, moves + 1), rng.integers(1, moves + 1)))
        for _ in range(count):
            shrinkable = [n for n in names if position[n] > 0]
            if not shrinkable:
                break
            unit = shrinkable[int(rng.integers(len(shrinkable)))]
            drop = max(1, round(len(options[unit]) * float(rng.uniform(1 / 16, 3 / 16))))
            position[unit] = max(0, position[unit] - drop)
            growable = [n for n in names if n != unit and position[n] < len(options[n]) - 1]
            if growable:
                _grow(growable[int(rng.integers(len(growable)))], position, options, cost, limit)
        for i in rng.permutation(len(names)):  # spend what is left, one allowed step at a time
            _grow(names[int(i)], position, options, cost, limit)
        kept = {n: options[n][position[n]] for n in names}
        if kept != dict(start) and cost(kept) <= limit and not (avoid is not None and avoid(kept)):
            return kept
    return dict(start)


def _grow(unit: str, position: dict[str, int], options: Mapping[str, tuple[int, ...]], cost: CostFn,
          limit: float) -> None:
    """Give ``unit`` allowed steps while the budget holds."""
    while position[unit] < len(options[unit]) - 1:
        position[unit] += 1
        if cost({n: options[n][position[n]] for n in position}) > limit:
            position[unit] -= 1
            return
