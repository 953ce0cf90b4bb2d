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
budget's metric) and the previous ratio; optionally the unit's sensitivity (its accuracy drop when
pruned alone at a few ratios). Action: a ``Box(-1, 1)``; how it becomes a ratio is the action mode
(:data:`~autoprune.search.rl.choices.ACTION_MODES`), and every episode's final policy meets the budget whatever the actions.
Reward: 0 until the last step, then from the evaluated candidate (a candidate stopped by racing
gives its lower-fidelity estimate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.metrics import get_metric
from autoprune.core.moves import move_channels
from autoprune.core.policy import Policy
from autoprune.core.projection import check_reachable, project
from autoprune.core.space import SearchSpace, Unit
from autoprune.errors import AutopruneError, ConfigError
from autoprune.experiment import build_experiment
from autoprune.search.rl.choices import ACTION_MODES, ON_REPEAT
from autoprune.search.sensitivity_scan import SensitivityTable

ENV_ID = "autoprune/ChannelPruning-v0"
REWARDS = ("acc", "acc-flops", "acc-latency")
SENSITIVITY_RATIOS = (0.25, 0.5, 0.75)
"""Ratios at which a unit's sensitivity feature reads its accuracy drop (pruned alone, from the sensitivity scan)."""
LAYER_KINDS = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}
FEATURES = ("index", "type", "in_channels", "out_channels", "stride", "kernel", "params", "flops",
            "removed", "remaining", "previous_ratio")
"""The observation's features; extra unit features (``unit_features``) follow them."""

EvaluateFn = Callable[[Policy, Mapping[str, Any]], Candidate]
UnitFeatures = Mapping[str, Sequence[float]]


class ChannelPruningEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Decide each unit's pruning ratio in turn; the Evaluator scores the finished policy.

    Clipping (``amc`` and ``relative`` modes): before an action applies, its kept channel count is
    clipped into a window computed with exact costs (the Evaluator's cost model, with the unit's
    channel rounding). The upper end is the most channels that still let the budget be met if every
    later unit is cut to its maximum ratio (AMC's resource-constrained search), so no action sequence
    can exceed the budget. With ``tight`` (the default) the lower end is the fewest channels that
    still let the budget be used up if every later unit keeps all its channels, so the final policy
    spends the budget to within one rounding step of the last unit instead of wasting it; the upper
    end wins if the two cross. In ``project`` mode nothing is clipped: the episode's ratios are a
    shape that :func:`~autoprune.core.projection.project` scales onto the budget (filling leftover
    budget) once the last unit is decided.

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
        tight: in ``amc`` mode, clip from below too, so that final policies use the budget up (see above;
            ``relative`` mode clips from above only, so that zero actions give the uniform policy exactly).
        space: narrower bounds over the Evaluator's units (a prior); default the Evaluator's space.
        action_mode: ``amc``, ``relative`` or ``project`` (:data:`~autoprune.search.rl.choices.ACTION_MODES`).
        unit_features: extra observation features per unit name, each in [0, 1] (the same number for
            every unit), e.g. :func:`sensitivity_features`.
        seed: seed of the warm-up draws (:meth:`draw_warmup`).
        repeat_penalty: subtracted from the reward of an episode whose pruned layout an earlier episode of this
            environment made (``info["repeat"]``), so that an agent that settles keeps looking for new layouts;
            in reward units (``acc``: 0.01 is one point of accuracy). Default 0: no penalty.
        on_repeat: ``again`` (default) or ``neighbour``: what an episode evaluates when its layout is one an earlier
            episode of this environment made (:data:`~autoprune.search.rl.choices.ON_REPEAT`; see :meth:`remember`);
            the neighbour's moves draw from ``seed``. ``info["neighbour"]`` says whether it did.

    Raises:
        ConfigError: for a missing or doubled network source, an unknown reward or action mode, a
            latency budget, or unit features that do not cover every unit alike.
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
        action_mode: str = "amc",
        unit_features: UnitFeatures | None = None,
        seed: int | None = None,
        repeat_penalty: float = 0.0,
        on_repeat: str = "again",
    ) -> None:
        if (evaluator is None) == (env is None):
            raise ConfigError("give the environment either an evaluator or an env preset name (env='digits-demo'), not "
                              f"{'both' if evaluator is not None else 'neither'}")
        if reward not in REWARDS:
            raise ConfigError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}")
        if action_mode not in ACTION_MODES:
            raise ConfigError(f"unknown action mode {action_mode!r}; choose one of {', '.join(ACTION_MODES)}")
        if not (math.isfinite(repeat_penalty) and repeat_penalty >= 0):
            raise ConfigError(f"the repeat penalty must be a finite number >= 0, got {repeat_penalty!r}")
        if on_repeat not in ON_REPEAT:
            raise ConfigError(f"unknown on-repeat {on_repeat!r}; choose one of {', '.join(ON_REPEAT)}")
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
        self.action_mode = action_mode
        self.tight = tight and action_mode == "amc"
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
        self._extra = self._unit_features(unit_features)
        self._dense_latency_us = 1e3 * self.evaluator.dense_cost("latency") if reward == "acc-latency" else None
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(FEATURES) + self._extra.shape[1],), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._draws = np.random.default_rng(seed)
        self._step: int | None = None
        self._kept: dict[str, int] = {}
        self._ratios: dict[str, float] = {}
        self._wanted: dict[str, float] = {}
        self._plan: dict[str, float] | None = None
        self.repeat_penalty = float(repeat_penalty)
        self._made: set[Any] = set()  # the layouts of this environment's episodes (Evaluator keys)
        self.on_repeat = on_repeat
        self._moves = np.random.default_rng(None if seed is None else (seed, 1))  # (apart from the warm-up draws)
        if action_mode == "relative":
            self._relative_reference()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode at the first unit (the environment is deterministic: only :meth:`draw_warmup` draws)."""
        super().reset(seed=seed)
        self._step, self._kept, self._ratios, self._wanted = 0, {}, {}, {}
        return self._observation(previous=0.0), {"unit": self.units[0].name}

    def draw_warmup(self) -> dict[str, float]:
        """Draw a warm-up episode the way random search draws a policy, and plan it: from now on
        :meth:`planned_action` gives the actions that make it (until :meth:`plan` or a new draw).

        Each unit's ratio is uniform in its bounds; the ``amc`` and ``relative`` modes plan the draw's
        projection onto the budget, ``project`` the draw itself (the episode's end projects it).
        """
        sample = self.space.sample_ratios(self._draws)
        target = sample if self.action_mode == "project" else dict(self.project(sample))
        self.plan(target)
        return target

    def warmup_action(self) -> np.ndarray:
        """The next action of a warm-up episode drawn like random search's samples: a new draw at each episode's
        first step (:meth:`draw_warmup`), then the action that follows it."""
        if self._step == 0:
            self.draw_warmup()
        return self.planned_action()

    def plan(self, ratios: Mapping[str, float] | None) -> None:
        """Make :meth:`planned_action` steer episodes towards these ratios (None: no plan)."""
        self._plan = None if ratios is None else {u.name: float(ratios[u.name]) for u in self.units}

    def planned_action(self) -> np.ndarray:
        """The action that gives the current unit its planned ratio, as far as the action mode allows.

        Raises:
            AutopruneError: without a plan (see :meth:`plan`) or a running episode.
        """
        if self._plan is None or self._step is None or self._step >= len(self.units):
            raise AutopruneError("planned_action needs a plan (plan() or draw_warmup()) and a running episode")
        unit = self.units[self._step]
        return np.array([self._action_for(self._step, self._plan[unit.name])], dtype=np.float32)

    def project(self, shape: Mapping[str, float]) -> Policy:
        """``shape`` projected onto the budget as random search projects its samples (leftover budget filled)."""
        return project(shape, self.space, self.cost, self.limit, fill=True)

    def episode(self, ratios: Mapping[str, float]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, Policy | None]]:
        """The transitions ``(observation, action, next observation, final policy or None)`` of an episode
        steered towards ``ratios``, without evaluating it (e.g. to replay an earlier run's candidates).
        Ends any running episode: call :meth:`reset` before stepping again."""
        observation, _ = self.reset()
        steps = []
        for t in range(len(self.units)):
            action = np.array([self._action_for(t, float(ratios[self.units[t].name]))], dtype=np.float32)
            _, _, ratio = self._decide(action)
            following = self._observation(previous=ratio)
            steps.append((observation, action, following, self._final_policy() if t == len(self.units) - 1 else None))
            observation = following
        self._step = None
        return steps

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
        policy = self._final_policy()
        kept = self.space.kept(policy)
        key = self.evaluator.key(kept)
        repeat = key in self._made
        self._made.add(key)
        meta: dict[str, Any] = {"sample": dict(self._wanted)}
        neighbour = self._neighbour(kept) if repeat else None
        if neighbour is not None:
            policy, meta["neighbour_of"] = self.space.policy_from_kept(neighbour), kept
        candidate = self._evaluate(policy, meta)
        self._made.add(self.evaluator.key(candidate.kept))
        info = {"policy": policy, "candidate": candidate, "status": candidate.status, "proxy_acc": candidate.proxy_acc,
                "flops": candidate.flops, "params": candidate.params, "latency_ms": candidate.latency_ms,
                "kept": dict(candidate.kept), "repeat": repeat, "neighbour": neighbour is not None}
        return observation, self.reward(candidate) - self.repeat_penalty * repeat, True, False, info

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
        return self._final_policy()

    def reward(self, candidate: Candidate) -> float:
        """The episode's reward for ``candidate`` (a failed candidate scores as accuracy 0; one stopped by racing
        by the estimate it reached)."""
        scored = candidate.ok or candidate.stopped
        accuracy = candidate.proxy_acc if scored and candidate.proxy_acc is not None else 0.0
        if self.reward_kind == "acc":
            return float(accuracy)
        if self.reward_kind == "acc-flops":
            return float(-(1.0 - accuracy) * math.log(max(candidate.flops, 1)))
        latency_us = 1e3 * candidate.latency_ms if candidate.latency_ms is not None else self._dense_latency_us
        return float(-(1.0 - accuracy) * math.log(max(latency_us, 1.0)))  # type: ignore[type-var]

    def remember(self, layouts: Iterable[Mapping[str, int]]) -> None:
        """Take these layouts as made by earlier episodes (a resumed search's record): an episode ending on one is
        a repeat."""
        self._made.update(self.evaluator.key(kept) for kept in layouts)

    def _neighbour(self, kept: Mapping[str, int]) -> dict[str, int] | None:
        """With ``on_repeat="neighbour"``, for a layout an earlier episode made: one budget-keeping move away, one
        no episode made (None: evaluate ``kept`` itself, or no such move was found)."""
        if self.on_repeat != "neighbour":  # (``kept`` meets the budget: every episode's final policy does)
            return None
        moved = move_channels(kept, self.space, self.cost, self.limit, self._moves, moves=1,
                              avoid=lambda layout: self.evaluator.key(layout) in self._made)
        return None if moved == dict(kept) else moved

    def _evaluate_alone(self, policy: Policy, meta: Mapping[str, Any]) -> Candidate:
        within = self.cost(self.space.kept(policy)) <= self.limit
        return self.evaluator.evaluate(policy, {"method": "env", **meta, "within_budget": within})

    def _final_policy(self) -> Policy:
        """The policy of the decided ratios: as decided, or projected onto the budget in ``project`` mode."""
        return self.project(self._ratios) if self.action_mode == "project" else Policy(self._ratios)

    def _decide(self, action: np.ndarray | float) -> tuple[Unit, float, float]:
        """Turn the action into the current unit's ratio (see :data:`~autoprune.search.rl.choices.ACTION_MODES`) and apply it:
        (unit, wanted ratio, ratio)."""
        assert self._step is not None, "an episode must be running"
        value = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not math.isfinite(value):
            raise AutopruneError(f"action must be a finite number in [-1, 1], got {value}")
        t, unit = self._step, self.units[self._step]
        value = min(1.0, max(-1.0, value))
        low, centre, high = self._action_scale(t)
        wanted = centre + value * (high - centre if value > 0 else centre - low)
        ratio = wanted if self.action_mode == "project" else self._clip(t, wanted)
        self._wanted[unit.name], self._ratios[unit.name] = wanted, ratio
        self._kept[unit.name] = unit.kept(ratio)
        self._step = t + 1
        return unit, wanted, ratio

    def _action_scale(self, t: int) -> tuple[float, float, float]:
        """The ratios of actions -1, 0 and 1 for unit ``t`` in the current episode (linear in between)."""
        unit = self.units[t]
        if self.action_mode != "relative":
            return unit.min_ratio, 0.5 * (unit.min_ratio + unit.max_ratio), unit.max_ratio
        uniform, shift = self._uniform_ratio, self._even_ratio(t, self._kept) - self._even_after_uniform[t]
        return unit.min_ratio, min(unit.max_ratio, max(unit.min_ratio, uniform + shift)), unit.max_ratio

    def _action_for(self, t: int, ratio: float) -> float:
        """The action that asks unit ``t`` for ``ratio`` (within the unit's bounds)."""
        low, centre, high = self._action_scale(t)
        ratio = min(high, max(low, ratio))
        if ratio >= centre:
            return (ratio - centre) / (high - centre) if high > centre else 0.0
        return (ratio - centre) / (centre - low)

    def _relative_reference(self) -> None:
        """What ``relative`` mode centres on: the uniform ratio, and the even ratio of the remaining units at each
        step of the uniform policy's episode (a unit's centre moves from the uniform ratio by how much the decisions
        so far moved the even ratio away from the uniform episode's)."""
        self._uniform_ratio = self._even_ratio(0, {})
        uniform = {u.name: u.kept(min(u.max_ratio, max(u.min_ratio, self._uniform_ratio))) for u in self.units}
        names = self.space.names
        self._even_after_uniform = [self._even_ratio(t, {n: uniform[n] for n in names[:t]}) for t in range(len(names))]

    def _even_ratio(self, t: int, decided: Mapping[str, int]) -> float:
        """The one ratio for units ``t`` onwards that meets the budget with the fewest channels cut, given the
        ``decided`` kept counts of the units before: the remaining budget spread evenly (unclamped)."""
        later = self.units[t:]

        def kept_at(r: float) -> dict[str, int]:
            return {**decided, **{u.name: u.kept(min(u.max_ratio, max(u.min_ratio, r))) for u in later}}

        lo, hi = 0.0, 1.0  # kept_at(hi) meets the budget (clipping guarantees it), kept_at(lo) may not
        if self.cost(kept_at(lo)) <= self.limit:
            return lo
        while hi - lo > 1e-9 and kept_at(lo) != kept_at(hi):
            mid = 0.5 * (lo + hi)
            if self.cost(kept_at(mid)) <= self.limit:
                hi = mid
            else:
                lo = mid
        return hi

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

    def _unit_features(self, features: UnitFeatures | None) -> np.ndarray:
        """The extra per-unit features as a (units, k) table (k = 0 without any)."""
        if not features:
            return np.zeros((len(self.units), 0))
        rows = [features.get(u.name) for u in self.units]
        if any(r is None for r in rows) or len({len(r) for r in rows}) != 1:  # type: ignore[arg-type]
            raise ConfigError("unit features must give every unit of the space the same number of values")
        return np.clip(np.asarray(rows, dtype=np.float64), 0.0, 1.0)

    def _observation(self, previous: float) -> np.ndarray:
        """The embedding of the next unit to decide, with the budget state after the decisions so far."""
        t = min(self._step or 0, len(self.units) - 1)
        current = {**self._dense, **self._kept}
        cost_now = self.cost(current)
        undecided_later = [u.name for u in self.units[(self._step or 0) + 1 :]]
        later_zero = self.cost({**current, **{n: 0 for n in undecided_later}}) if undecided_later else cost_now
        dynamic = [(self.dense_cost - cost_now) / self.dense_cost, (cost_now - later_zero) / self.dense_cost, previous]
        features = np.concatenate([self._static[t], np.clip(dynamic, 0.0, 1.0), self._extra[t]])
        return features.astype(np.float32)


def sensitivity_features(table: SensitivityTable, space: SearchSpace,
                         ratios: Sequence[float] = SENSITIVITY_RATIOS) -> dict[str, list[float]]:
    """Each unit's proxy-accuracy drop when it alone is pruned at ``ratios`` (interpolated on the scan), in [0, 1]."""
    return {u.name: [min(1.0, max(0.0, table.drop(u.name, u.kept(r)))) for r in ratios] for u in space.units}


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
