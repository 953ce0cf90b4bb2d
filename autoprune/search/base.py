"""The searcher base: an ask/tell loop over the shared Evaluator that keeps the books.

A subclass implements :meth:`Searcher._ask` (propose the next policy, or None when done) and may
implement :meth:`Searcher._tell` (learn from a candidate). A searcher whose algorithm drives its own
loop (a reinforcement-learning agent stepping an environment) overrides :meth:`Searcher._run` and
calls :meth:`Searcher.evaluate` for each policy instead. :meth:`Searcher.evaluate` validates each
proposal against the search space, evaluates it, marks whether it meets the budget, tracks the best
candidate and reports progress. A searcher never prunes or scores a network itself.
"""

from __future__ import annotations

import time
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from autoprune.budget import Budget
from autoprune.errors import ConfigError
from autoprune.evaluate import Candidate, Evaluator
from autoprune.policy import Policy
from autoprune.projection import check_reachable, project


@dataclass
class SearchResult:
    """What a search returns: the best candidate within budget and the whole history."""

    method: str
    seed: int
    budget: Budget
    limit: float
    best: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def evaluations(self) -> int:
        """Number of evaluated candidates (cached repeats included)."""
        return len(self.candidates)


class Searcher(ABC):
    """Proposes policies and reads back candidates until its evaluation budget is spent.

    Args:
        evaluator: the shared Evaluator.
        budget: the resource budget every returned policy must meet.
        evals: maximum number of evaluations.
        seed: seed of every random choice the searcher makes.

    Raises:
        ConfigError: if ``evals`` is below 1.
        BudgetError: if the budget cannot be met in the search space.
    """

    name: ClassVar[str]

    def __init__(self, evaluator: Evaluator, budget: Budget, evals: int = 100, seed: int = 0) -> None:
        if evals < 1:
            raise ConfigError(f"`evals >= 1` must hold, but got evals={evals}")
        self.evaluator = evaluator
        self.space = evaluator.space
        self.budget = budget
        self.evals = evals
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.cost = evaluator.cost_of(budget.metric)
        self.limit = budget.limit(evaluator.dense_cost(budget.metric)) if budget.relative else budget.value
        check_reachable(self.space, self.cost, self.limit, str(budget))

    @property
    def planned_evaluations(self) -> int:
        """How many evaluations the search will make at most (for progress bars)."""
        return self.evals

    def project(self, shape: Mapping[str, float], fill: bool = True) -> Policy:
        """Scale a policy shape onto the budget (see :func:`autoprune.projection.project`).

        Leftover budget is not filled one channel at a time for measured latency: it is too noisy at
        that granularity and each step would cost a measurement. A latency lookup table's predictions
        are exact and cheap, so they are filled like FLOPs and params.
        """
        fill = fill and (self.budget.metric != "latency" or self.evaluator.latency_table is not None)
        return project(shape, self.space, self.cost, self.limit, fill=fill)

    def search(self, on_candidate: Callable[[Candidate, Candidate | None], None] | None = None) -> SearchResult:
        """Run the search; ``on_candidate(candidate, best)`` is called after each evaluation."""
        start = time.perf_counter()
        self.result = SearchResult(self.name, self.seed, self.budget, self.limit, best=None)
        self._on_candidate = on_candidate
        self._run()
        self.result.seconds = time.perf_counter() - start
        return self.result

    @property
    def exhausted(self) -> bool:
        """Whether the evaluation budget is spent."""
        return self.result.evaluations >= self.evals

    def evaluate(self, policy: Policy, meta: Mapping[str, Any] | None = None) -> Candidate:
        """Check ``policy`` against the space, evaluate it on the shared Evaluator and keep the books.

        The candidate's ``meta`` records the method, whether it meets the budget and ``meta``.
        """
        self.space.check_policy(policy)
        within = self.cost(self.space.kept(policy)) <= self.limit
        candidate = self.evaluator.evaluate(policy, {"method": self.name, **(meta or {}), "within_budget": within})
        self.result.candidates.append(candidate)
        best = self.result.best
        if candidate.ok and within and (best is None or candidate.proxy_acc > best.proxy_acc):  # type: ignore[operator]
            self.result.best = candidate
        if self._on_candidate is not None:
            self._on_candidate(candidate, self.result.best)
        return candidate

    def _run(self) -> None:
        """The search loop; by default ask/tell until the evaluations are spent or ``_ask`` returns None."""
        while not self.exhausted:
            proposal = self._ask()
            if proposal is None:
                break
            policy, meta = proposal if isinstance(proposal, tuple) else (proposal, {})
            self._tell(self.evaluate(policy, meta))

    def _ask(self) -> Policy | tuple[Policy, dict[str, Any]] | None:
        """The next policy to evaluate (optionally with metadata to record), or None to stop."""
        raise NotImplementedError(f"{type(self).__name__} must implement _ask or _run")

    def _tell(self, candidate: Candidate) -> None:
        """Learn from an evaluated candidate (default: nothing)."""
