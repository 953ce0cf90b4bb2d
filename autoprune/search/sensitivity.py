"""Sensitivity-guided allocation (SPDY-style): allocate ratios from the layer-sensitivity curves.

The network is first scanned (one unit pruned at a time over a ratio grid; cached, see
:mod:`autoprune.search.sensitivity_scan`). A policy's predicted accuracy drop is the sum of its units' drops,
interpolated on the grid, and :func:`~autoprune.search.allocation.allocate` finds the allocation with the
least predicted drop under the budget (exact costs, real channel rounding). The first evaluation is
that allocation. Because the additive model is only a model, the search then evaluates, like SPDY,
the allocations of perturbed models: each unit's drop curve is multiplied by a sensitivity
coefficient and gets a slope ``s_u * (fraction of the unit removed)`` for the drop the proxy cannot
resolve (it starts at one image of the proxy split, so flat curves still rank their units); the
coefficients follow a multiplicative random walk around those of the best candidate so far, with a
shrinking step. ``evals`` bounds these evaluations; the scan's own evaluations are recorded apart
(``sensitivity.csv``) and are not counted.

:func:`sensitivity_allocation` and :func:`narrowed_space` turn the same curves into priors for the
Optuna and reinforcement-learning searchers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.metrics import get_metric
from autoprune.core.policy import Policy
from autoprune.core.space import SearchSpace
from autoprune.errors import BudgetError, ConfigError
from autoprune.search.allocation import allocate, predicted_drop
from autoprune.search.base import Searcher, SearchOption
from autoprune.search.sensitivity_scan import (
    DEFAULT_RATIOS,
    SensitivityTable,
    parse_ratios,
    scan,
    write_outputs,
)

PRIORS = ("sensitivity",)
RATIOS_OPTION = SearchOption("ratios", f"ratio grid of the sensitivity scan: start:stop:step or a list (default "
                             f"{DEFAULT_RATIOS}; with --prior for the other methods)", metavar="GRID")
PRIOR_OPTION = SearchOption("prior", "sensitivity: enqueue the sensitivity allocation as a trial (optuna), or narrow "
                            "each unit's max ratio to where accuracy holds (rl methods)", choices=PRIORS)
Coefficients = tuple[dict[str, float], dict[str, float]]  # per-unit multipliers of the drop curves, and slopes
STEP, MIN_STEP = 0.5, 0.05  # log-scale step of the coefficient random walk, from STEP down to MIN_STEP
RETRIES = 20  # draws per proposal to find an allocation not proposed yet


def scan_options(space: SearchSpace, ratios: tuple[float, ...]) -> dict[str, list[int]]:
    """Kept counts an allocation may use: the unit's allowed counts down to the scan's largest ratio."""
    return {u.name: [k for k in u.allowed_kept if k >= u.kept(min(max(ratios), u.max_ratio))] for u in space.units}


def check_latency_model(evaluator: Evaluator, budget: Budget, what: str) -> None:
    """Raise :class:`ConfigError` for a budget whose cost is measured candidate by candidate (far too slow to
    allocate): latency without its lookup table."""
    if not get_metric(budget.metric).is_exact(evaluator):
        raise ConfigError(f"{what} with the latency budget {budget} needs the latency lookup table "
                          f"(--latency-model lut): allocating queries the cost thousands of times")


def check_prior(prior: str | None, ratios: str | None, evaluator: Evaluator, budget: Budget) -> tuple[float, ...] | None:
    """The ratio grid of a searcher's prior (None without one; ``ratios`` None: the default grid).

    Raises:
        ConfigError: for an unknown prior, a grid without a prior, a malformed grid, or a latency budget
            without the latency table.
    """
    if prior is None:
        if ratios is not None:
            raise ConfigError("--ratios applies to --method sensitivity and to --prior sensitivity")
        return None
    if prior not in PRIORS:
        raise ConfigError(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS)}")
    check_latency_model(evaluator, budget, f"--prior {prior}")
    return parse_ratios(ratios or DEFAULT_RATIOS)


def sensitivity_allocation(searcher: Searcher, ratios: tuple[float, ...]) -> tuple[Policy, SensitivityTable]:
    """The least-predicted-drop policy under the searcher's budget, and the (cached) scan behind it."""
    check_latency_model(searcher.evaluator, searcher.budget, "the sensitivity prior")
    table = scan(searcher.evaluator, ratios, storage=searcher.storage)  # shared by the workers of a shared study
    kept = allocate(searcher.space, table.drop, searcher.cost, searcher.limit, scan_options(searcher.space, ratios))
    return searcher.space.policy_from_kept(kept), table


def narrowed_space(searcher: Searcher, ratios: tuple[float, ...], tolerance: float = 0.05) -> SearchSpace:
    """The searcher's space with each unit's max ratio cut to where the unit alone starts to cost more
    than ``tolerance`` of proxy accuracy (the largest scanned ratio before that; at least the grid's first).

    The tolerance is doubled until the narrowed space can still meet the budget; each new bound is a
    ratio that gives an allowed kept count exactly, so both spaces round every ratio within it alike.
    """
    table = scan(searcher.evaluator, ratios)
    while True:
        units = []
        for u in searcher.space.units:
            lowest = u.kept(min(min(ratios), u.max_ratio))
            for k, a in sorted(zip(*table.curve(u.name)), reverse=True):  # from dense down to the first collapse
                if table.dense_accuracy - a > tolerance:
                    break
                lowest = min(lowest, int(k))
            lowest = max(lowest, u.min_kept)
            units.append(replace(u, max_ratio=max(u.min_ratio, 1.0 - lowest / u.channels)))
        narrowed = replace(searcher.space, units=tuple(units))
        if searcher.cost({u.name: u.min_kept for u in narrowed.units}) <= searcher.limit:
            return narrowed
        if tolerance >= 1.0:
            return searcher.space
        tolerance *= 2.0


class SensitivitySearcher(Searcher):
    """Allocates per-unit ratios from the layer-sensitivity curves and evaluates the best allocations.

    Args:
        evaluator: the shared Evaluator.
        budget: the budget (a latency budget needs the Evaluator's latency table).
        evals: allocations to evaluate (the first is the unweighted optimum of the additive model).
        seed: seed of the coefficient random walk.
        ratios: the scan's ratio grid, ``start:stop:step`` or a comma list.
        run_dir: where ``sensitivity.csv`` and its plots are copied (the run directory).

    Raises:
        ConfigError: for a malformed grid, or a latency budget without the latency table.
        BudgetError: if the budget cannot be met, or not within the grid's largest ratio.
    """

    name = "sensitivity"
    summary = "allocation from layer-sensitivity curves"
    latency_model = "lut"
    options = (RATIOS_OPTION,)

    @classmethod
    def uses_sensitivity_scan(cls, options: Mapping[str, Any]) -> bool:
        """Always: the allocation is made from the scan."""
        return True

    def __init__(self, evaluator: Evaluator, budget: Budget, evals: int = 100, seed: int = 0, *,
                 ratios: str = DEFAULT_RATIOS, run_dir: str | Path | None = None) -> None:
        self.ratios = parse_ratios(ratios)
        check_latency_model(evaluator, budget, "--method sensitivity")
        super().__init__(evaluator, budget, evals, seed)
        self.kept_options = scan_options(self.space, self.ratios)
        if self.cost({n: opts[0] for n, opts in self.kept_options.items()}) > self.limit:
            raise BudgetError(f"budget {budget} cannot be met by pruning each unit at most {max(self.ratios):g} "
                              f"(the ratio grid {ratios}); extend the grid")
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.table: SensitivityTable | None = None
        self._model: Coefficients = ({}, {})
        self._best: tuple[float, Coefficients] | None = None
        self._proposed: set[tuple[int, ...]] = set()

    def _run(self) -> None:
        self.table = scan(self.evaluator, self.ratios)
        if self.run_dir is not None:
            write_outputs(self.table, self.run_dir, f"{self.evaluator.model.__class__.__name__}")
        super()._run()

    def _ask(self) -> tuple[Policy, dict[str, Any]]:
        assert self.table is not None
        n = len(self.result.candidates)
        model: Coefficients = ({u: 1.0 for u in self.space.names}, {u: 0.0 for u in self.space.names})
        kept = self._allocate(model)
        if n:  # a random walk of the coefficients around the best model so far, with a shrinking step
            weights, slopes = self._best[1] if self._best is not None else model
            resolution = 1.0 / max(1, len(self.evaluator.proxy))
            slopes = {u: s or resolution for u, s in slopes.items()}
            step = STEP + (MIN_STEP - STEP) * n / max(1, self.evals - 1)
            for _ in range(RETRIES):
                model = ({u: w * float(np.exp(step * self.rng.standard_normal())) for u, w in weights.items()},
                         {u: s * float(np.exp(step * self.rng.standard_normal())) for u, s in slopes.items()})
                kept = self._allocate(model)
                if self._key(kept) not in self._proposed:
                    break
        self._proposed.add(self._key(kept))
        self._model = model
        meta = {"predicted_drop": predicted_drop(kept, self.table.drop, self.space), "allocation": n}
        return self.space.policy_from_kept(kept), meta

    def _tell(self, candidate: Candidate) -> None:
        if candidate.ok and (self._best is None or candidate.proxy_acc > self._best[0]):  # type: ignore[operator]
            self._best = (candidate.proxy_acc, self._model)  # type: ignore[assignment]

    def _allocate(self, model: Coefficients) -> dict[str, int]:
        assert self.table is not None
        table, (weights, slopes) = self.table, model
        channels = {u.name: u.channels for u in self.space.units}

        def drop(unit: str, kept: int) -> float:
            return weights[unit] * table.drop(unit, kept) + slopes[unit] * (1.0 - kept / channels[unit])

        return allocate(self.space, drop, self.cost, self.limit, self.kept_options)

    def _key(self, kept: dict[str, int]) -> tuple[int, ...]:
        return tuple(kept[n] for n in self.space.names)
