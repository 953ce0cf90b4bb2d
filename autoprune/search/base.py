"""The searcher base: an ask/tell loop over the shared Evaluator that keeps the books.

A subclass implements :meth:`Searcher._ask` (propose the next policy, or None when done) and may
implement :meth:`Searcher._tell` (learn from a candidate). A searcher whose algorithm drives its own
loop (a reinforcement-learning agent stepping an environment) overrides :meth:`Searcher._run` and
calls :meth:`Searcher.evaluate` for each policy instead. :meth:`Searcher.evaluate` validates each
proposal against the search space, evaluates it, marks whether it meets the budget, tracks the best
candidate and reports progress. A searcher never prunes or scores a network itself.

What the rest of autoprune needs to know about a method lives on its class as traits (class
attributes and class methods): whether it is deterministic, whether its evaluations are episodes,
whether workers can share its study, which options it takes, which latency model it prefers. No
module outside :mod:`autoprune.search` names a method or tests a searcher's class.
"""

from __future__ import annotations

import time
from abc import ABC
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.metrics import get_metric
from autoprune.core.policy import Policy
from autoprune.core.projection import check_reachable, project, tilted_shape
from autoprune.errors import ConfigError


@dataclass(frozen=True)
class SearchOption:
    """A setting of a method, as the command line offers it and the searcher's constructor takes it.

    Attributes:
        name: the keyword argument of the searcher's constructor.
        help: one line for ``--help`` (say the default).
        type: converts the command-line text.
        choices: the allowed values, if a fixed set.
        metavar: the value's name in ``--help``.
        flag: the command-line flag (default ``--`` and the name with dashes).
    """

    name: str
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    flag: str | None = None

    @property
    def cli_flag(self) -> str:
        """The command-line flag."""
        return self.flag or "--" + self.name.replace("_", "-")


DEFAULT_TILTS = "0:0.4:0.1"
"""Evolution's starting points (:meth:`Searcher.tilted_starts`); optuna's default is ``0``, the uniform policy alone."""
TILTS_OPTION = SearchOption(
    "tilts", "tilts of the starting points: the uniform policy with kept fractions going as (budget cost per "
    f"parameter)^-tilt, a grid such as {DEFAULT_TILTS}; evolution starts from the best of them (default "
    f"{DEFAULT_TILTS}), optuna enqueues them as its first trials (default 0: the uniform policy alone)", metavar="GRID")


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
    summary: ClassVar[str] = ""
    """One line for ``autoprune list`` and ``--help``."""
    options: ClassVar[tuple[SearchOption, ...]] = ()
    """The method's own settings (keyword arguments of the constructor), offered on the command line."""
    deterministic: ClassVar[bool] = False
    """Every seed makes the same search (a benchmark runs one seed)."""
    episodic: ClassVar[bool] = False
    """Each evaluation ends an episode of an agent (``--episodes``)."""
    progress_unit: ClassVar[str] = "eval"
    """What one step of the progress bar is."""
    parallel: ClassVar[bool] = False
    """Several worker processes can share its study (``--workers``, ``--storage``)."""
    shared: bool = False
    """Set by a run whose study other workers may share (``--workers``, ``--storage``) before ``attach_run``: a
    parallel searcher then takes its work from the study."""
    worker: int = 0
    """This worker's index among the run's worker processes (0 in one process)."""
    storage: Any = None
    """The run's Optuna storage while its study is shared (set by ``attach_run``), else None."""
    multi_objective: ClassVar[bool] = False
    """It can search a Pareto front (``--objectives acc,flops``)."""
    exact_cost_only: ClassVar[bool] = False
    """It needs a budget metric whose cost is known exactly before measuring (not measured latency)."""
    latency_model: ClassVar[str] = "measure"
    """How it prefers a latency budget priced: ``measure`` each network or the ``lut`` lookup table."""
    baseline: ClassVar[bool] = False
    """Benchmark reports compare every other method against it."""
    variant_option: ClassVar[str | None] = None
    """A benchmark spec ``<name>-<value>`` sets this option (``optuna-tpe``: the sampler)."""
    races: ClassVar[bool] = False
    """Its candidates race the incumbent when the Evaluator has racing on (it only needs to know which candidate
    is best, and learns nothing it needs from a losing candidate's exact score)."""

    @classmethod
    def accepts(cls, option: str) -> bool:
        """Whether the method takes the setting ``option``."""
        return any(o.name == option for o in cls.options)

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any], *, sampler: str, objectives: tuple[str, ...]) -> dict[str, Any]:
        """The constructor's keyword arguments from a run's settings.

        Raises:
            ConfigError: for objectives the method cannot search.
        """
        if objectives != ("acc",) and not cls.multi_objective:
            raise ConfigError(f"--objectives {','.join(objectives)} needs a method that searches a Pareto front, "
                              f"not --method {cls.name}")
        return dict(options)

    @classmethod
    def check_shared(cls, options: Mapping[str, Any]) -> None:
        """Refuse options that cannot work on a study other workers share (``--workers``, ``--storage``); called
        before the searcher is built.

        Raises:
            ConfigError: for such an option (none by default).
        """

    @classmethod
    def uses_sensitivity_scan(cls, options: Mapping[str, Any]) -> bool:
        """Whether a search with these options reads the layer-sensitivity scan: with ``--prior sensitivity``
        (a method that takes no prior never has one)."""
        return options.get("prior") is not None

    @classmethod
    def benchmark_options(cls, budget: Budget, evals: int, units: int | None) -> dict[str, Any]:
        """Options a benchmark cell sets so that the method fits ``evals`` evaluations (on a space of ``units``
        units, once the space is known)."""
        return {}

    def attach_run(self, run_dir: Path, study: Any, storage: Any, recorded: Sequence[Candidate] = ()) -> None:
        """Called before :meth:`search` by a command-line run: where its files go, the run's study, and the
        candidates the run recorded before it stopped.

        By default a resumed search replays: it proposes again from the start with the same seed, and each
        proposal that matches the next recorded candidate is answered from the record (and told to the
        searcher as if evaluated), so the search continues exactly where it stopped and the evaluation
        count is global. A searcher that knows what is done in another way (its study, a saved agent)
        overrides this.
        """
        self.run_dir = run_dir
        self._replay = deque(recorded)
        for candidate in recorded:
            self.evaluator.remember(candidate)

    def __init__(self, evaluator: Evaluator, budget: Budget, evals: int = 100, seed: int = 0) -> None:
        if evals < 1:
            raise ConfigError(f"--evals (--episodes) must be >= 1, got {evals}")
        if not 0 <= seed < 2**32:
            raise ConfigError(f"--seed must be in 0..{2**32 - 1}, got {seed}")
        self.evaluator = evaluator
        self.space = evaluator.space
        self.budget = budget
        self.evals = evals
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.run_dir: Path | None = None
        self._replay: deque[Candidate] = deque()
        self.metric = get_metric(budget.metric)
        self.cost = self.metric.cost(evaluator)
        dense = self.metric.dense_cost(evaluator)
        self.limit = budget.limit(dense)
        check_reachable(self.space, self.cost, self.limit, str(budget), dense=dense, show=self.metric.format)
        self.racing = self.races and evaluator.racing is not None  # the trait, and the Evaluator's racing on

    @property
    def planned_evaluations(self) -> int:
        """How many evaluations the search will make at most (for progress bars)."""
        return self.evals

    def project(self, shape: Mapping[str, float], fill: bool = True) -> Policy:
        """Scale a policy shape onto the budget (see :func:`autoprune.core.projection.project`).

        Leftover budget is filled one channel at a time only for a metric that is exact on this Evaluator
        (:meth:`~autoprune.core.metrics.BudgetMetric.is_exact`): not for measured latency, which is too noisy
        at that granularity and would cost a measurement per step. A latency lookup table's predictions are
        exact and cheap, so they are filled like FLOPs and params.
        """
        fill = fill and self.metric.is_exact(self.evaluator)
        return project(shape, self.space, self.cost, self.limit, fill=fill)

    def tilted_starts(self, tilts: Sequence[float], more: Sequence[Policy] = ()) -> list[Policy]:
        """Starting points: the uniform policy tilted by each of ``tilts``
        (:func:`~autoprune.core.projection.tilted_shape`) and projected onto the budget, tilt 0 (the uniform policy)
        first, then ``more``; each layout once. Under a params budget the tilt leans towards the units where the
        budget buys the most FLOPs, else the most parameters."""
        other = self.evaluator.cost_of("flops" if self.budget.metric == "params" else "params")
        # the uniform policy as the uniform baseline makes it (unfilled); a tilted one spends the budget's leftover
        starts = [self.project(tilted_shape(self.space, self.cost, other, t), fill=t != 0) for t in sorted(tilts, key=abs)]
        unique: dict[tuple[int, ...], Policy] = {}
        for policy in [*starts, *more]:
            unique.setdefault(self.evaluator.key(self.space.kept(policy)), policy)
        return list(unique.values())

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

        The candidate's ``meta`` records the method, whether it meets the budget and ``meta``. When the search
        races, a candidate within the budget races the best one so far and may come back ``stopped``.
        """
        kept, meta = self.candidate_meta(policy, meta)
        if self._replay:
            candidate = self._replay.popleft()
            if candidate.kept != kept:
                raise ConfigError(f"the run's record does not match what {self.name} proposes again (recorded "
                                  f"candidate {candidate.index} differs); it cannot be resumed: choose another --out")
        else:
            candidate = self.evaluator.evaluate(policy, meta, incumbent=self.rival(meta))
        return self.record(candidate)

    def candidate_meta(self, policy: Policy, meta: Mapping[str, Any] | None = None) -> tuple[dict[str, int], dict[str, Any]]:
        """Check ``policy`` against the space; its kept channels and what its candidate records: the method, whether
        it meets the budget, and ``meta``."""
        self.space.check_policy(policy)
        kept = self.space.kept(policy)
        return kept, {"method": self.name, **(meta or {}), "within_budget": self.cost(kept) <= self.limit}

    def incumbent(self) -> Candidate | None:
        """The candidate a new one races: the best within the budget so far."""
        return self.result.best

    def rival(self, meta: Mapping[str, Any]) -> Candidate | None:
        """What a candidate with ``meta`` races: the incumbent when this search races and it meets the budget."""
        return self.incumbent() if self.racing and meta["within_budget"] else None

    def record(self, candidate: Candidate) -> Candidate:
        """Keep the books on a candidate: the history, the best one within the budget, the progress display.
        (:meth:`evaluate` calls it; a searcher that scores in stages through :meth:`Evaluator.start
        <autoprune.core.evaluator.Evaluator.start>` calls it for each candidate it finishes.)"""
        self.result.candidates.append(candidate)
        best = self.result.best
        within = candidate.meta.get("within_budget", False)
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
