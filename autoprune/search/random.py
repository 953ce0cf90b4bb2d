"""Random search (EagleEye-style): sample policy shapes, project each onto the budget, keep the best."""

from __future__ import annotations

from typing import Any

from autoprune.core.policy import Policy
from autoprune.search.base import Searcher


class RandomSearcher(Searcher):
    """Samples each unit's ratio uniformly in its bounds, then projects the sample onto the budget."""

    name = "random"
    summary = "EagleEye-style sampling, each sample projected onto the budget"
    baseline = True
    races = True

    def propose(self) -> tuple[Policy, dict[str, Any]]:
        """The next policy, not evaluated: a sample of every unit's ratio projected onto the budget, with the sample."""
        sample = {u.name: float(self.rng.uniform(u.min_ratio, u.max_ratio)) for u in self.space.units}
        return self.project(sample), {"sample": sample}

    def _ask(self) -> tuple[Policy, dict[str, Any]]:
        return self.propose()
