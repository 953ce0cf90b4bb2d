"""Random search (EagleEye-style): sample policy shapes, project each onto the budget, keep the best.

On a study that workers share, every trial draws its sample from its own seeded stream, ``(seed, trial
number)``: distinct trials propose distinct samples whichever worker claims them, and the study counts the
evaluations of every worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from autoprune.core.policy import Policy
from autoprune.search.shared import StudySearcher
from autoprune.trials.study import waiting_params


class RandomSearcher(StudySearcher):
    """Samples each unit's ratio uniformly in its bounds, then projects the sample onto the budget."""

    name = "random"
    summary = "EagleEye-style sampling, each sample projected onto the budget"
    baseline = True
    races = True

    def propose(self, rng: np.random.Generator | None = None) -> tuple[Policy, dict[str, Any]]:
        """The next policy, not evaluated: a sample of every unit's ratio (drawn from ``rng``, default the searcher's
        stream) projected onto the budget, with the sample."""
        rng = rng or self.rng
        sample = self.space.sample_ratios(rng)
        return self.project(sample), {"sample": sample}

    def _ask(self) -> tuple[Policy, dict[str, Any]]:
        return self.propose()

    def _run(self) -> None:
        if self.study is None:
            super()._run()
        else:
            self.run_open()

    def propose_for(self, trial: optuna.Trial) -> tuple[Policy, dict[str, Any]]:
        """The policy a trial was enqueued with (a dead worker's, again), or a sample from the trial's own stream."""
        enqueued = waiting_params(trial)
        if enqueued is not None:
            return Policy(enqueued), {}
        policy, meta = self.propose(np.random.default_rng((self.seed, trial.number)))
        self.record_params(trial, policy)
        return policy, meta
