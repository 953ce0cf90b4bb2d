"""Optuna search: one float parameter per unit, any Optuna sampler, one or two objectives.

With one objective (proxy accuracy) every sampled shape is projected onto the budget before it is
evaluated, and the trial keeps both the raw sample and the projected policy; with racing on, a
candidate that cannot beat the best one is stopped early and its trial pruned (it reported the
accuracy after each stage). With two objectives
(``acc,flops`` or ``acc,latency``) samples are evaluated as they are and the study's Pareto front is
the result; ``autoprune pick`` then takes the best policy under any budget. The uniform policy at
the budget is enqueued as the first trial (with ``--tilts``, the tilted starting points that evolution starts from
too). Many workers share one study through its storage; the
evaluation count is global to the study.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import Trial

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Evaluator
from autoprune.core.policy import Policy
from autoprune.errors import ConfigError
from autoprune.search.base import TILTS_OPTION, SearchOption
from autoprune.search.sensitivity import (
    PRIOR_OPTION,
    RATIOS_OPTION,
    check_prior,
    sensitivity_allocation,
)
from autoprune.search.sensitivity_scan import parse_grid
from autoprune.search.shared import StudySearcher
from autoprune.trials.study import open_study, unit_distributions

SAMPLERS = ("tpe", "cmaes", "gp", "random", "qmc", "nsga2")


def make_sampler(name: str, seed: int, objectives: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``, seeded.

    Raises:
        ConfigError: for an unknown sampler, or CMA-ES with two objectives.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "cmaes":
        if objectives > 1:
            raise ConfigError("sampler 'cmaes' optimises one objective; use tpe, nsga2, gp, qmc or random with two")
        # a candidate stopped by racing is a pruned trial; CMA-ES needs a value for every member of a generation
        # and takes its last intermediate value (the accuracy on the images it was scored on)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, consider_pruned_trials=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


class OptunaSearcher(StudySearcher):
    """Samples unit ratios with an Optuna sampler over a study that every worker shares.

    Args:
        evaluator: the shared Evaluator.
        budget: the resource budget.
        evals: evaluations in total over the study (all workers together).
        seed: sampler seed.
        sampler: one of :data:`SAMPLERS`.
        objectives: ``("acc",)`` or ``("acc", "flops")`` / ``("acc", "latency")`` / ``("acc", "params")``.
        study: the study to work on (default: a new in-memory one); replaceable until :meth:`search`.
        warm_start: enqueue the uniform policy at the budget as the first trial.
        tilts: with ``warm_start``, also enqueue the uniform policy tilted by each of these (a grid, see
            :meth:`~autoprune.search.base.Searcher.tilted_starts`); ``0``: the uniform policy alone.
        prior: ``sensitivity`` enqueues the sensitivity allocation at the budget as the next trial
            (see :mod:`autoprune.search.sensitivity`; the scan is cached).
        ratios: the ratio grid of that prior's scan.
    """

    name = "optuna"
    summary = "Optuna samplers (TPE, CMA-ES, GP, ...) over one float ratio per unit"
    options = (
        SearchOption("sampler", f"Optuna sampler: {', '.join(SAMPLERS)} (default tpe)", choices=SAMPLERS),
        TILTS_OPTION,
        PRIOR_OPTION,
        RATIOS_OPTION,
    )
    multi_objective = True
    variant_option = "sampler"
    races = True

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any], *, sampler: str, objectives: tuple[str, ...]) -> dict[str, Any]:
        """The run's sampler and objectives become constructor arguments."""
        return {**options, "sampler": sampler, "objectives": objectives}

    def __init__(
        self,
        evaluator: Evaluator,
        budget: Budget,
        evals: int = 100,
        seed: int = 0,
        *,
        sampler: str = "tpe",
        objectives: Sequence[str] = ("acc",),
        study: optuna.Study | None = None,
        warm_start: bool = True,
        tilts: str = "0",
        prior: str | None = None,
        ratios: str | None = None,
    ) -> None:
        self.prior_ratios = check_prior(prior, ratios, evaluator, budget)
        super().__init__(evaluator, budget, evals, seed)
        self.objectives = tuple(objectives)
        self.racing = self.racing and len(self.objectives) == 1  # a Pareto front has no single incumbent
        self.sampler_name = sampler
        self.sampler = make_sampler(sampler, seed, len(self.objectives))
        self.distributions = unit_distributions(self.space)
        self.warm_start = warm_start
        self.tilts = parse_grid(tilts, "--tilts grid")
        self.study = study or open_study(optuna.storages.InMemoryStorage(), "autoprune", self.objectives)
        self.shared = True  # its own study, or the run's: the searcher always works on a study

    def _run(self) -> None:
        if self.worker:  # workers sample from seeds of their own
            self.sampler = make_sampler(self.sampler_name, self.seed + self.worker, len(self.objectives))
        self.study.sampler = self.sampler
        starts = self.tilted_starts(self.tilts) if self.warm_start else []
        if self.prior_ratios is not None:
            starts.append(sensitivity_allocation(self, self.prior_ratios)[0])
        for policy in starts:
            self.study.enqueue_trial(dict(policy), skip_if_exists=True)
        self.run_open()

    def propose_for(self, trial: Trial) -> tuple[Policy, dict[str, Any]]:
        """The sampler's sample (or the trial's enqueued one), projected onto the budget with one objective."""
        sample = {n: trial.suggest_float(n, d.low, d.high) for n, d in self.distributions.items()}
        return (self.project(sample) if len(self.objectives) == 1 else Policy(sample)), {"sample": sample}
