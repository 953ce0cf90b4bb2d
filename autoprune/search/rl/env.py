"""The AMC channel-pruning environment: one step per prunable unit, the reward from the shared Evaluator.

The environment is a thin adapter from "one layer decision per step" to the
:class:`~autoprune.core.evaluator.Evaluator`: it never prunes or scores a network itself. Importing this
module registers it with gymnasium as :data:`ENV_ID`::

    import gymnasium
    import autoprune.search.rl.env  # registers autoprune/ChannelPruning-v0

    env = gymnasium.make("autoprune/ChannelPruning-v0", env="digits-demo", budget="0.5flops")

Episode: one step per unit of the search space, in network order. Observation: AMC's layer
embedding of the unit to decide (index, layer type, input and output channels, stride, kernel size,
parameters and FLOPs the unit controls; each min-max normalised over the units), then the cost
already removed and the cost the later units still control (fractions of the dense cost in the
budget's metric) and the previous ratio. Action: a ``Box(-1, 1)`` mapped onto the unit's
``[min_ratio, max_ratio]``, clipped before it applies (AMC's resource-constrained search; see
:class:`ChannelPruningEnv`), so that every episode's final policy meets the budget whatever the
actions. Reward: 0 until the last step, then from the evaluated candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.metrics import get_metric
from autoprune.core.policy import Policy
from autoprune.core.projection import check_reachable
from autoprune.core.space import SearchSpace, Unit
from autoprune.errors import AutopruneError, ConfigError
from autoprune.experiment import build_experiment

ENV_ID = "autoprune/ChannelPruning-v0"
REWARDS = ("acc", "acc-flops", "acc-latency")
LAYER_KINDS = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}
FEATURES = ("index", "type", "in_channels", "out_channels", "stride", "kernel", "params", "flops",
            "removed", "remaining", "previous_ratio")

EvaluateFn = Callable[[Policy, Mapping[str, Any]], Candidate]


class ChannelPruningEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Decide each unit's pruning ratio in turn; the Evaluator scores the finished policy.

    Clipping: before an action applies, its kept channel count is clipped into a window computed
    with exact costs (the Evaluator's cost model, with the unit's channel rounding). The upper end is
    the most channels that still let the budget be met if every later unit is cut to its maximum
    ratio (AMC's resource-constrained search), so no action sequence can exceed the budget. With
    ``tight`` (the default) the lower end is the fewest channels that still let the budget be used
    up if every later unit keeps all its channels, so the final policy spends the budget to within
    one rounding step of the last unit instead of wasting it; the upper end wins if the two cross.

    Args:
        evaluator: the shared Evaluator (give this or ``env``).
        budget: the budget, e.g. ``"0.5flops"`` or ``"0.6params"`` (latency budgets are rejected:
            measured latency cannot clip actions exactly; use ``reward="acc-latency"`` instead).
        reward: ``acc`` (proxy accuracy, AMC's default), ``acc-flops`` (``-error * log(FLOPs)``) or
            ``acc-latency`` (``-error * log(latency in µs)``; needs an Evaluator that measures latency).
        env: an environment preset name or YAML file, used to build an
            :class:`~autoprune.experiment.Experiment` when no ``evaluator`` is given.
        evaluate: called with each final policy and its metadata; it must evaluate the policy on the
            Evaluator and return the candidate (a searcher passes its own ``evaluate`` to keep its
            books). Default: the Evaluator's, with ``method="env"`` and ``within_budget`` recorded.
        tight: clip from below too, so that final policies use the budget up (see above).
        space: narrower bounds over the Evaluator's units (a prior); default the Evaluator's space.

    Raises:
        ConfigError: for a missing or doubled network source, an unknown reward or a latency budget.
        BudgetError: for a malformed budget, or one the search space cannot reach.
        UnsupportedModelError: if the preset's network has no prunable unit.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        evaluator: Evaluator | None = None,
        *,
        budget: Budget | str,
        reward: str = "acc",
        env: str | None = None,
        evaluate: EvaluateFn | None = None,
        tight: bool = True,
        space: SearchSpace | None = None,
    ) -> None:
        if (evaluator is None) == (env is None):
            raise ConfigError("give the environment either an evaluator or an env preset name (env='digits-demo'), not "
                              f"{'both' if evaluator is not None else 'neither'}")
        if reward not in REWARDS:
            raise ConfigError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}")
        self.budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
        metric = get_metric(self.budget.metric)
        if metric.measured:
            raise ConfigError(f"the pruning environment clips actions with exact FLOPs or params, so it cannot take the "
                              f"latency budget {self.budget}; use a flops or params budget with reward 'acc-latency'")
        self.experiment = build_experiment(env) if env is not None else None
        self.evaluator: Evaluator = evaluator if evaluator is not None else self.experiment.evaluator  # type: ignore[union-attr]
        if reward == "acc-latency" and self.evaluator.latency is None:
            raise ConfigError("reward 'acc-latency' needs an Evaluator that measures latency "
                              "(LatencySettings; on the command line, --latency)")
        self.reward_kind = reward
        self.tight = tight
        self.space = space or self.evaluator.space
        if self.space.names != self.evaluator.space.names:
            raise ConfigError("the environment's space must hold the Evaluator's units, in the same order")
        self.units = self.space.units
        self.cost = self.evaluator.cost_of(self.budget.metric)
        self.dense_cost = float(self.evaluator.dense_cost(self.budget.metric))
        self.limit = self.budget.limit(self.dense_cost)
        check_reachable(self.space, self.cost, self.limit, str(self.budget), dense=self.dense_cost, show=metric.format)
        self._evaluate = evaluate or self._evaluate_alone
        self._options = [u.kept_options for u in self.units]
        self._fewest = {u.name: opts[0][0] for u, opts in zip(self.units, self._options)}
        self._most = {u.name: opts[-1][0] for u, opts in zip(self.units, self._options)}
        self._dense = {u.name: u.channels for u in self.units}
        self._static = self._embedding()
        self._dense_latency_us = 1e3 * self.evaluator.dense_cost("latency") if reward == "acc-latency" else None
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._step: int | None = None
        self._kept: dict[str, int] = {}
        self._ratios: dict[str, float] = {}
        self._wanted: dict[str, float] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode at the first unit (the environment itself has nothing random)."""
        super().reset(seed=seed)
        self._step, self._kept, self._ratios, self._wanted = 0, {}, {}, {}
        return self._observation(previous=0.0), {"unit": self.units[0].name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the (clipped) ratio to the current unit; after the last unit, evaluate the policy.

        Raises:
            gymnasium.error.ResetNeeded: if no episode is running.
            AutopruneError: for a non-finite action.
        """
        if self._step is None or self._step >= len(self.units):
            raise gymnasium.error.ResetNeeded("call reset() before step(): no pruning episode is running")
        unit, wanted, ratio = self._decide(action)
        observation = self._observation(previous=ratio)
        if self._step < len(self.units):
            return observation, 0.0, False, False, {"unit": unit.name, "wanted_ratio": wanted, "ratio": ratio,
                                                    "kept": self._kept[unit.name]}
        policy = Policy(self._ratios)
        candidate = self._evaluate(policy, {"sample": dict(self._wanted)})
        info = {"policy": policy, "candidate": candidate, "status": candidate.status, "proxy_acc": candidate.proxy_acc,
                "flops": candidate.flops, "params": candidate.params, "latency_ms": candidate.latency_ms,
                "kept": dict(candidate.kept)}
        return observation, self.reward(candidate), True, False, info

    def policy_for(self, actions: Sequence[float] | np.ndarray) -> Policy:
        """The policy an episode of these actions (one per unit, in network order) ends with, clipped exactly as
        :meth:`step` clips them, without evaluating it. Ends any running episode: call :meth:`reset` before
        stepping again.

        Raises:
            AutopruneError: for a count of actions other than the number of units, or a non-finite action.
        """
        values = np.asarray(actions, dtype=np.float64).reshape(-1)
        if len(values) != len(self.units):
            raise AutopruneError(f"give one action per unit ({len(self.units)}), got {len(values)}")
        self.reset()
        for value in values:
            self._decide(value)
        self._step = None
        return Policy(self._ratios)

    def reward(self, candidate: Candidate) -> float:
        """The episode's reward for ``candidate`` (a failed candidate scores as accuracy 0)."""
        accuracy = candidate.proxy_acc if candidate.ok and candidate.proxy_acc is not None else 0.0
        if self.reward_kind == "acc":
            return float(accuracy)
        if self.reward_kind == "acc-flops":
            return float(-(1.0 - accuracy) * math.log(max(candidate.flops, 1)))
        latency_us = 1e3 * candidate.latency_ms if candidate.latency_ms is not None else self._dense_latency_us
        return float(-(1.0 - accuracy) * math.log(max(latency_us, 1.0)))  # type: ignore[type-var]

    def _evaluate_alone(self, policy: Policy, meta: Mapping[str, Any]) -> Candidate:
        within = self.cost(self.space.kept(policy)) <= self.limit
        return self.evaluator.evaluate(policy, {"method": "env", **meta, "within_budget": within})

    def _decide(self, action: np.ndarray | float) -> tuple[Unit, float, float]:
        """Map the action onto the current unit's bounds, clip it and apply it: (unit, wanted ratio, ratio)."""
        assert self._step is not None, "an episode must be running"
        value = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not math.isfinite(value):
            raise AutopruneError(f"action must be a finite number in [-1, 1], got {value}")
        t, unit = self._step, self.units[self._step]
        wanted = unit.min_ratio + (min(1.0, max(-1.0, value)) + 1.0) / 2.0 * (unit.max_ratio - unit.min_ratio)
        ratio = self._clip(t, wanted)
        self._wanted[unit.name], self._ratios[unit.name] = wanted, ratio
        self._kept[unit.name] = unit.kept(ratio)
        self._step = t + 1
        return unit, wanted, ratio

    def _clip(self, t: int, wanted: float) -> float:
        """The ratio unit ``t`` gets for the wanted ratio: unchanged, or the nearest one inside the window."""
        unit, options = self.units[t], self._options[t]
        later = [u.name for u in self.units[t + 1 :]]
        at_fewest = {**self._kept, **{n: self._fewest[n] for n in later}}
        at_most = {**self._kept, **{n: self._most[n] for n in later}}

        def fits(i: int) -> bool:
            return self.cost({**at_fewest, unit.name: options[i][0]}) <= self.limit

        def uses_budget(i: int) -> bool:
            return self.cost({**at_most, unit.name: options[i][0]}) >= self.limit

        n, target = len(options), unit.kept(wanted)
        i = max(0, _last_true(lambda j: options[j][0] <= target, n))
        if fits(i) and (not self.tight or uses_budget(i)):
            return wanted
        assert fits(0), "the budget must stay reachable after every step"
        upper = _last_true(fits, n)
        lower = min(_last_true(lambda j: not uses_budget(j), n) + 1, n - 1) if self.tight else 0
        return options[min(upper, max(lower, i))][1]

    def _embedding(self) -> np.ndarray:
        """AMC's static layer features of every unit, min-max normalised over the units."""
        dense_flops, dense_params = self.evaluator.cost.dense_flops, self.evaluator.cost.dense_params
        rows = []
        for i, u in enumerate(self.units):
            without = {**self._dense, u.name: 0}
            rows.append([i, LAYER_KINDS[u.layer.kind], u.layer.in_channels, u.layer.out_channels, u.layer.stride,
                         u.layer.kernel, dense_params - self.evaluator.cost.params(without),
                         dense_flops - self.evaluator.cost.flops(without)])
        table = np.array(rows, dtype=np.float64)
        low, span = table.min(axis=0), np.ptp(table, axis=0)
        return np.where(span > 0, (table - low) / np.where(span > 0, span, 1.0), 0.0)

    def _observation(self, previous: float) -> np.ndarray:
        """The embedding of the next unit to decide, with the budget state after the decisions so far."""
        t = min(self._step or 0, len(self.units) - 1)
        current = {**self._dense, **self._kept}
        cost_now = self.cost(current)
        undecided_later = [u.name for u in self.units[(self._step or 0) + 1 :]]
        later_zero = self.cost({**current, **{n: 0 for n in undecided_later}}) if undecided_later else cost_now
        dynamic = [(self.dense_cost - cost_now) / self.dense_cost, (cost_now - later_zero) / self.dense_cost, previous]
        features = np.concatenate([self._static[t], np.clip(dynamic, 0.0, 1.0)])
        return features.astype(np.float32)


def _last_true(predicate: Callable[[int], bool], n: int) -> int:
    """The last index in ``range(n)`` where a predicate that is true then false holds (-1 if none)."""
    lo, hi = -1, n  # predicate(lo) is true (or lo = -1), predicate(hi) is false (or hi = n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if predicate(mid):
            lo = mid
        else:
            hi = mid
    return lo


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="autoprune.search.rl.env:ChannelPruningEnv")
