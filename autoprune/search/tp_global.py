"""Torch-Pruning's global pruning as a baseline: the one-shot allocation a user would reach for instead of a search.

Torch-Pruning's pruner with ``global_pruning=True`` ranks channels across layers by an importance score
(normalised per layer, as its defaults do) and removes the lowest-ranked ones up to a global ratio. Here it
prunes the search space's units only (every other layer is ignored), capped at the space's largest ratio,
and the global ratio is bisected to the largest allocation that meets the budget. Its kept channels become
a policy (clamped to each unit's bounds) that the shared Evaluator scores like any other candidate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch_pruning as tp
from torch import nn

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Evaluator
from autoprune.core.policy import Policy
from autoprune.errors import ConfigError
from autoprune.search.base import Searcher, SearchOption

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),
}
BISECTIONS = 14  # steps of the global ratio's bisection (2^-14 of the ratio range)


class TorchPruningGlobalSearcher(Searcher):
    """Torch-Pruning's global pruning, restricted to the space's units and bisected to the budget (one evaluation).

    Args:
        evaluator: the shared Evaluator.
        budget: the budget (an exactly priced metric).
        evals: unused beyond the one evaluation.
        seed: unused (deterministic).
        importance: Torch-Pruning's importance: ``l1``, ``l2`` (magnitude), ``lamp`` or ``bn`` (BatchNorm scale),
            each with Torch-Pruning's default normalisation.
    """

    name = "tp-global"
    summary = "Torch-Pruning's global pruning (channels ranked across units), bisected to the budget: a baseline"
    options = (SearchOption("importance", f"tp-global: Torch-Pruning importance, {', '.join(IMPORTANCES)} (default l2)",
                            choices=tuple(IMPORTANCES)),)
    deterministic = True
    baseline = False
    exact_cost_only = True
    variant_option = "importance"

    def __init__(self, evaluator: Evaluator, budget: Budget, evals: int = 1, seed: int = 0, *,
                 importance: str = "l2") -> None:
        if importance not in IMPORTANCES:
            raise ConfigError(f"unknown tp-global importance {importance!r}; choose one of {', '.join(IMPORTANCES)}")
        super().__init__(evaluator, budget, evals, seed)
        if any(u.kind != "channels" for u in self.space.units):
            raise ConfigError("--method tp-global prunes channels only; this search space has attention-head units")
        modules = dict(evaluator.model.named_modules())
        missing = [u.name for u in self.space.units if u.name not in modules]
        if missing:
            raise ConfigError(f"--method tp-global needs units named by their layer; {missing[0]!r} is not a layer")
        self.importance = importance
        self._done = False

    @property
    def planned_evaluations(self) -> int:
        """One: the allocation at the budget."""
        return 1

    def _ask(self) -> tuple[Policy, dict[str, float]] | None:
        if self._done:
            return None
        self._done = True
        ratio, kept = self._bisect()
        return self.space.policy_from_kept(kept), {"global_ratio": ratio}

    def allocation(self, ratio: float) -> dict[str, int]:
        """Kept channels per unit after Torch-Pruning's global pruning at ``ratio``, within each unit's bounds."""
        model = copy.deepcopy(self.evaluator.model).eval()
        roots = set(self.space.names)
        ignored = [m for name, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)) and name not in roots]
        pruner = tp.pruner.MetaPruner(
            model, self.evaluator.example_inputs, IMPORTANCES[self.importance](), global_pruning=True,
            pruning_ratio=ratio, max_pruning_ratio=max(u.max_ratio for u in self.space.units), ignored_layers=ignored)
        pruner.step()
        modules = dict(model.named_modules())
        kept = {}
        for u in self.space.units:
            allowed = u.allowed_kept
            count = modules[u.name].out_channels  # type: ignore[union-attr]
            kept[u.name] = min((k for k in allowed if k >= count), default=allowed[-1])  # within the unit's bounds
        return kept

    def _bisect(self) -> tuple[float, dict[str, int]]:
        """The smallest global ratio (found by bisection) whose allocation meets the budget."""
        low, high = 0.0, max(u.max_ratio for u in self.space.units)
        best = self.allocation(high)
        if self.cost(best) > self.limit:
            raise ConfigError(f"Torch-Pruning's global pruning cannot reach {self.budget} within the space's bounds "
                              f"(largest ratio {high}); choose a looser budget")
        ratio = high
        for _ in range(BISECTIONS):
            middle = (low + high) / 2
            kept = self.allocation(middle)
            if self.cost(kept) <= self.limit:
                high, best, ratio = middle, kept, middle
            else:
                low = middle
        return ratio, best
