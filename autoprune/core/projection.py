"""Projection of any policy shape onto a budget: never over it, and wasting as little as possible."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from autoprune.core.policy import Policy
from autoprune.core.space import SearchSpace
from autoprune.errors import BudgetError

CostFn = Callable[[Mapping[str, int]], float]


def check_reachable(space: SearchSpace, cost: CostFn, limit: float, what: str, dense: float | None = None,
                    show: Callable[[float], str] | None = None) -> None:
    """Raise :class:`BudgetError` if even the largest ratios of the space exceed ``limit``, or if ``limit`` is
    above the ``dense`` network's cost (when given: nothing would be pruned).

    ``show`` formats an amount with its unit for the message (default: the bare number).
    """
    show = show or _plain
    if dense is not None:
        check_below_dense(limit, dense, what, show)
    floor = cost({u.name: u.min_kept for u in space.units})
    if floor > limit:
        raise BudgetError(
            f"budget {what} cannot be met: pruning every unit to its max_ratio still leaves "
            f"{show(floor)} against a limit of {show(limit)}; raise the budget or widen the search space's max_ratio"
        )


def check_below_dense(limit: float, dense: float, what: str, show: Callable[[float], str] | None = None) -> None:
    """Raise :class:`BudgetError` if ``limit`` is above the dense network's cost: the budget prunes nothing."""
    if limit > dense:
        raise BudgetError(
            f"budget {what} is above the dense network's cost ({(show or _plain)(dense)}); nothing to prune: "
            f"choose a budget below it"
        )


def _plain(value: float) -> str:
    return f"{value:,.4g}"


def project(shape: Mapping[str, float], space: SearchSpace, cost: CostFn, limit: float, fill: bool = True) -> Policy:
    """Scale a policy's *kept* fractions by one factor so that its cost is as close under ``limit`` as possible.

    Kept fractions ``1 - shape[unit]`` are multiplied by a common factor (then clipped to each unit's
    bounds and rounded to channels) found by bisection; with ``fill``, leftover budget is then handed
    out one rounding step at a time to the units furthest below their scaled target.

    Args:
        shape: pruning ratios whose relative sizes are kept (missing units count as 0).
        space: the search space.
        cost: cost of kept channel counts (FLOPs, params or latency), non-decreasing in each count.
        limit: the budget's absolute limit.
        fill: spend leftover budget after the bisection.

    Raises:
        BudgetError: if the budget is unreachable in this space.
    """
    keep_frac = {u.name: 1.0 - shape.get(u.name, 0.0) for u in space.units}

    def kept_at(alpha: float) -> dict[str, int]:
        out = {}
        for u in space.units:
            frac = min(1.0 - u.min_ratio, max(1.0 - u.max_ratio, alpha * keep_frac[u.name]))
            out[u.name] = u.kept(1.0 - frac)
        return out

    check_reachable(space, cost, limit, f"{limit:,.4g}")
    hi = max((1.0 - u.min_ratio) / max(keep_frac[u.name], 1e-6) for u in space.units)
    if cost(kept_at(hi)) <= limit:
        return space.policy_from_kept(kept_at(hi))
    lo = 0.0
    for _ in range(60):  # until both ends round to the same channels
        mid = 0.5 * (lo + hi)
        if cost(kept_at(mid)) <= limit:
            lo = mid
        else:
            hi = mid
        if kept_at(lo) == kept_at(hi) or hi - lo < 1e-9:
            break
    kept = kept_at(lo)
    if fill:
        kept = fill_budget(kept, {u.name: lo * keep_frac[u.name] for u in space.units}, space, cost, limit)
    return space.policy_from_kept(kept)


def fill_budget(kept: dict[str, int], target: Mapping[str, float], space: SearchSpace, cost: CostFn, limit: float) -> dict[str, int]:
    """Add channels, one rounding step at a time, to units furthest below their target while they fit."""
    kept = dict(kept)
    open_units = [u for u in space.units if kept[u.name] < u.max_kept]
    while open_units:
        open_units.sort(key=lambda u: kept[u.name] / u.channels - target[u.name])
        for u in open_units:
            trial = dict(kept)
            trial[u.name] = min(u.max_kept, kept[u.name] + min(u.round_to, u.channels))
            if cost(trial) <= limit:
                kept = trial
                break
        else:
            break
        open_units = [u for u in space.units if kept[u.name] < u.max_kept]
    return kept


def tilted_shape(space: SearchSpace, cost: CostFn, other: CostFn, tilt: float) -> dict[str, float]:
    """A shape for :func:`project` that tilts the uniform policy by each unit's price: the ``cost`` its channels
    add per unit of ``other`` they add (under a FLOPs budget with ``other`` the parameters, a unit's FLOPs per
    parameter: its output resolution). Kept fractions go as (price / median price) ** -tilt, so a positive tilt
    keeps more channels where the budget buys more of ``other`` (late, low-resolution layers under a FLOPs
    budget) and prunes the expensive ones harder; tilt 0 is the uniform shape.

    A unit's price is measured between its dense count and three quarters of it, the other units dense; a unit
    whose price cannot be measured (neither cost moves) takes the median price.
    """
    if tilt == 0:
        return {u.name: 0.0 for u in space.units}
    dense = {u.name: u.channels for u in space.units}
    dense_cost, dense_other = cost(dense), other(dense)
    prices = {}
    for u in space.units:
        fewer = {**dense, u.name: max(0, u.channels - max(1, u.channels // 4))}
        saved_cost, saved_other = dense_cost - cost(fewer), dense_other - other(fewer)
        if saved_cost > 0 and saved_other > 0:
            prices[u.name] = saved_cost / saved_other
    if not prices:
        return {u.name: 0.0 for u in space.units}
    median = float(np.median(list(prices.values())))
    keep = {u.name: (prices.get(u.name, median) / median) ** -tilt for u in space.units}
    top = max(keep.values())
    return {name: 1.0 - k / top for name, k in keep.items()}
