"""Uniform pruning: one ratio for every unit, solved for the budget."""

from __future__ import annotations

from autoprune.core.policy import Policy
from autoprune.search.base import Searcher


class UniformSearcher(Searcher):
    """Evaluates the single uniform policy that meets the budget as closely as rounding allows."""

    name = "uniform"
    summary = "one ratio for all units, solved for the budget"
    deterministic = True
    baseline = True
    _proposed = False

    @property
    def planned_evaluations(self) -> int:
        """One: the uniform policy."""
        return 1

    def _ask(self) -> Policy | None:
        if self._proposed:
            return None
        self._proposed = True
        return self.project({n: 0.0 for n in self.space.names}, fill=False)
