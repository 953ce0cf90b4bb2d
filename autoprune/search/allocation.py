"""Budget allocation from per-unit accuracy-drop curves: the fewest predicted points lost under a budget.

The problem: choose each unit's kept count ``k_u`` from its options to minimise the predicted drop
``sum_u drop_u(k_u)`` subject to ``cost(k) <= limit``, where ``cost`` is the exact cost model
(fvcore FLOPs or params with real channel rounding, or the latency table). It is a multiple-choice
knapsack, solved by Lagrangian relaxation as in SPDY: for a multiplier ``lam`` each unit
independently takes ``argmin_k drop_u(k) + lam * c_u(k)``, where ``c_u(k)`` is the cost of the
network with only that unit pruned; the cost of the resulting policy falls as ``lam`` grows, so a
bisection finds the smallest ``lam`` whose policy fits, checked with the exact (possibly
non-separable) cost. The duality gap left under the budget is then filled greedily: one option up at
a time for the unit whose predicted gain per unit of cost is largest, while the exact cost fits. The
result never exceeds the limit and leaves less than one channel step of some unit unused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from autoprune.core.space import SearchSpace
from autoprune.errors import BudgetError

CostFn = Callable[[Mapping[str, int]], float]
DropFn = Callable[[str, int], float]


def allocate(
    space: SearchSpace,
    drop: DropFn,
    cost: CostFn,
    limit: float,
    options: Mapping[str, Sequence[int]],
) -> dict[str, int]:
    """Kept counts that minimise the sum of predicted drops with ``cost(kept) <= limit``.

    Args:
        space: the search space.
        drop: predicted accuracy drop of a unit at a kept count (others dense).
        cost: exact cost of kept counts, non-decreasing in each count.
        limit: the budget's absolute limit.
        options: the kept counts each unit may take.

    Raises:
        BudgetError: if even the fewest options exceed the limit.
    """
    names = list(space.names)
    opts = {n: sorted(set(options[n])) for n in names}
    dense = {u.name: u.channels for u in space.units}
    fewest = {n: opts[n][0] for n in names}
    if cost(fewest) > limit:
        raise BudgetError(f"budget limit {limit:,.4g} cannot be met with the allowed kept counts "
                          f"(the fewest still cost {cost(fewest):,.4g}); raise the budget or widen the ratio grid")
    base = cost(dense)
    surrogate = {n: [cost({**dense, n: k}) - base for k in opts[n]] for n in names}
    drops = {n: [drop(n, k) for k in opts[n]] for n in names}

    def relaxed(lam: float) -> dict[str, int]:
        return {n: opts[n][min(range(len(opts[n])), key=lambda i: (drops[n][i] + lam * surrogate[n][i], -i))]
                for n in names}

    kept = relaxed(0.0)
    if cost(kept) > limit:
        spread = max(max(d) - min(d) for d in drops.values()) or 1.0
        step = min((abs(a - b) for s in surrogate.values() for a, b in zip(s, s[1:]) if a != b), default=1.0)
        lo, hi = 0.0, 10.0 * spread / step  # at hi every unit takes its cheapest option
        if cost(relaxed(hi)) > limit:  # a non-monotone cost (a noisy latency table): start from the fewest counts
            return fill_by_gain(fewest, opts, drops, cost, limit)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if cost(relaxed(mid)) <= limit:
                hi = mid
            else:
                lo = mid
            if relaxed(lo) == relaxed(hi):
                break
        kept = relaxed(hi)
    return fill_by_gain(kept, opts, drops, cost, limit)


def fill_by_gain(kept: dict[str, int], options: Mapping[str, Sequence[int]], drops: Mapping[str, Sequence[float]],
                 cost: CostFn, limit: float) -> dict[str, int]:
    """Move units one option up, best predicted gain per unit of cost first, while the exact cost fits."""
    kept = dict(kept)
    current = cost(kept)
    while True:
        best, best_score = None, None
        for n, opts in options.items():
            i = opts.index(kept[n])
            if i + 1 == len(opts):
                continue
            trial = {**kept, n: opts[i + 1]}
            c = cost(trial)
            if c > limit:
                continue
            score = (drops[n][i] - drops[n][i + 1]) / max(c - current, 1e-12)
            if best_score is None or score > best_score:
                best, best_score = (trial, c), score
        if best is None:
            return kept
        kept, current = best


def predicted_drop(kept: Mapping[str, int], drop: DropFn, space: SearchSpace) -> float:
    """Sum of the units' predicted drops: the additive model's accuracy loss of a policy."""
    return sum(drop(u.name, kept[u.name]) for u in space.units if kept[u.name] != u.channels)
