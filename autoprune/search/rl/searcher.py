"""AMC search: stable-baselines3 agents (DDPG as in AMC, TD3, SAC, PPO) on the pruning environment.

One episode decides every unit's ratio and ends with one evaluation, so the evaluation budget is the
number of episodes. stable-baselines3's ``learn()`` drives the loop; the environment calls the
searcher's :meth:`~autoprune.search.base.Searcher.evaluate` at the end of each episode, which records
the candidate and tracks the best, and learning stops when the evaluations are spent.

With a run directory the agent is saved there every ``save_every`` episodes and at the end (with the
replay buffer of an off-policy agent); a search continued on the same run directory loads it and
makes only the episodes its ``trials.csv`` does not hold yet.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from autoprune.console import plural, status
from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.metrics import get_metric
from autoprune.core.space import SearchSpace
from autoprune.errors import ConfigError
from autoprune.search.base import Searcher, SearchOption
from autoprune.search.rl.choices import ACTION_MODES, ON_REPEAT, REWARD_NORMS, STATES, WARMUP_DRAWS
from autoprune.search.sensitivity import PRIOR_OPTION, RATIOS_OPTION, check_prior, narrowed_space

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from autoprune.search.rl.env import ChannelPruningEnv

DEFAULTS: dict[str, Any] = {"warmup": 100, "warmup_draw": "random", "noise_sigma": 0.5, "noise_decay": 0.95,
                            "noise_floor": 0.3, "lr_actor": 1e-4, "lr_critic": 1e-3, "batch_size": 64,
                            "reward_norm": "standard", "updates": 1, "entropy": 1.0, "target_entropy": -1.0}
SAC_UPDATES = 8
SAC_ENTROPY = 0.05
"""SAC's defaults for ``updates`` and ``entropy`` (the other agents take AMC's one step per transition)."""
SAC_ONLY = ("entropy", "target_entropy")
"""Settings only SAC takes."""
AMC_SETTINGS: dict[str, Any] = {"action_mode": "amc", "warmup_draw": "actions", "noise_floor": 0.0,
                                "reward_norm": "baseline", "on_repeat": "again"}
"""What reproduces AMC's setup (its warm-up length, noise, learning rates and batch are the defaults)."""
_FLAGS = {"warmup": "--warmup", "warmup_draw": "--warmup-draw", "noise_sigma": "--noise-sigma",
          "noise_decay": "--noise-decay", "noise_floor": "--noise-floor", "lr_actor": "--lr-actor",
          "lr_critic": "--lr-critic", "batch_size": "--batch-size", "reward_norm": "--reward-norm",
          "updates": "--updates", "entropy": "--entropy", "target_entropy": "--target-entropy"}
RL_WARMUP_SHARE = 3  # a benchmark cell shorter than 3 x AMC's warm-up spends a third of its episodes on it
_AGENT_OPTIONS = {
    "warmup": SearchOption("warmup", "episodes before learning (default 100; see --warmup-draw)", int, metavar="N"),
    "warmup_draw": SearchOption("warmup_draw", "warm-up episodes: random (policies drawn as random search draws them, "
                                "default) or actions (uniformly random actions, AMC)", choices=WARMUP_DRAWS),
    "noise_sigma": SearchOption("noise_sigma", "exploration noise, in [-1, 1] action units (default 0.5)", float,
                                metavar="S"),
    "noise_decay": SearchOption("noise_decay", "noise decay per episode after the warm-up (default 0.95)", float,
                                metavar="D"),
    "noise_floor": SearchOption("noise_floor", "the noise decays no lower than this (default 0.3; AMC: 0)", float,
                                metavar="S"),
    "lr_actor": SearchOption("lr_actor", "actor learning rate (default 1e-4; ppo: its one rate, 3e-4)", float,
                             metavar="LR"),
    "lr_critic": SearchOption("lr_critic", "critic learning rate (default 1e-3)", float, metavar="LR"),
    "batch_size": SearchOption("batch_size", "minibatch of each update (default 64)", int, metavar="N"),
    "reward_norm": SearchOption("reward_norm", "terminal rewards as the learner sees them: standard (standardised over "
                                "the replay buffer, default), rank, or baseline (AMC: minus a moving average)",
                                choices=REWARD_NORMS),
    "updates": SearchOption("updates", "gradient steps per transition, made after each episode (default 1, AMC's; "
                            "sac: 8)", int, metavar="N"),
    "entropy": SearchOption("entropy", "sac: the entropy coefficient it starts from and tunes (default 0.05; "
                            "stable-baselines3's: 1.0)", float, metavar="A"),
    "target_entropy": SearchOption("target_entropy", "sac: the entropy per step its coefficient is tuned towards "
                                   "(default -1, stable-baselines3's; higher keeps the actor more random)", float,
                                   metavar="H"),
}
_RUN_OPTIONS = (
    SearchOption("action_mode", "how an action becomes a ratio: project (free, the episode's shape projected onto the "
                 "budget at the end; default), amc (mapped on the unit's range, clipped to the budget) or relative "
                 "(0 = the remaining budget spread evenly)", choices=ACTION_MODES),
    SearchOption("state", "observation: amc (AMC's layer embedding and budget state; default) or sensitivity (plus "
                 "each unit's accuracy drop from the sensitivity scan)", choices=STATES),
    SearchOption("reward", "acc (default: proxy accuracy), acc-flops or acc-latency (-error x log cost; needs --latency)",
                 choices=("acc", "acc-flops", "acc-latency")),
    SearchOption("repeat_penalty", "subtracted from the reward of an episode that repeats a policy this search "
                 "already made (default 0; with --reward acc, 0.01 is one point of accuracy)", float, metavar="P"),
    SearchOption("on_repeat", "an episode whose layout the search already scored evaluates a neighbour one "
                 "budget-keeping move away that it has not scored (neighbour, default) or the same layout again, "
                 "answered from the cache (again, AMC's)", choices=ON_REPEAT),
    SearchOption("tensorboard", "write stable-baselines3's TensorBoard logs to DIR", metavar="DIR"),
    SearchOption("save_every", "save the agent in the run directory every N episodes (default 10)", int, metavar="N"),
    PRIOR_OPTION,
    RATIOS_OPTION,
)
_WARM_START = SearchOption("warm_start", "fill the replay buffer with the candidates of an earlier run directory "
                           "(default warm-up then 0)", metavar="RUN_DIR")



def _options(settings: tuple[str, ...]) -> tuple[SearchOption, ...]:
    """The command-line options of an agent that takes ``settings`` (an agent with a warm-up has a replay buffer
    to warm-start)."""
    return (*(_AGENT_OPTIONS[k] for k in settings), *_RUN_OPTIONS, *((_WARM_START,) if "warmup" in settings else ()))


class RLSearcher(Searcher):
    """Trains a stable-baselines3 agent on :class:`~autoprune.search.rl.env.ChannelPruningEnv`, one evaluation per episode.

    The network and training settings follow AMC: 100 warm-up episodes, Gaussian exploration noise of
    scale 0.5 (in the action's ``[-1, 1]`` units) decaying by 0.95 per episode after the warm-up,
    300-300 actor and critic, learning rates 1e-4 (actor) and 1e-3 (critic), tau 0.01, batch 64, gamma
    1, one gradient step per transition after each episode. autoprune's defaults differ from AMC in
    five settings, measured in the benchmark reports: ``project`` actions, warm-up episodes drawn as
    random search draws its policies, rewards standardised over the replay buffer, a noise floor
    of 0.3, and an episode that ends on a layout already scored evaluating an unscored neighbour instead
    (:data:`AMC_SETTINGS` restores AMC's); SAC also makes 8 gradient steps per transition from
    an entropy coefficient of 0.05 (:class:`SACSearcher`). Options an agent does not use (noise for SAC
    and PPO, warm-up for PPO, ...) are rejected.

    Args:
        evaluator: the shared Evaluator.
        budget: the budget (flops or params; every episode's final policy meets it).
        evals: number of episodes, i.e. evaluations.
        seed: seed of the agent, its warm-up actions, replay sampling and exploration noise.
        warmup: episodes before learning starts (see ``warmup_draw``).
        warmup_draw: ``random`` (warm-up episodes follow policies drawn as random search draws them) or
            ``actions`` (uniformly random actions, AMC).
        noise_sigma: exploration noise scale (DDPG, TD3).
        noise_decay: noise decay per episode after the warm-up (DDPG, TD3).
        noise_floor: the noise decays no lower than this (DDPG, TD3).
        lr_actor: actor learning rate (PPO: its one learning rate, default 3e-4).
        lr_critic: critic learning rate.
        batch_size: minibatch of each update of an off-policy agent.
        updates: gradient steps per transition of an off-policy agent, made after each episode (AMC: 1).
        entropy: SAC's entropy coefficient at the start (tuned from there towards its target entropy).
        reward_norm: ``baseline`` (AMC), ``standard`` or ``rank`` (see
            :data:`~autoprune.search.rl.choices.REWARD_NORMS`).
        action_mode: ``amc``, ``relative`` or ``project`` (see :data:`~autoprune.search.rl.choices.ACTION_MODES`).
        state: ``amc`` or ``sensitivity`` (adds each unit's sensitivity; runs or reads the sensitivity scan).
        warm_start: an earlier run directory whose scored candidates fill the replay buffer before learning
            (the warm-up then defaults to 0 episodes).
        reward: ``acc``, ``acc-flops`` or ``acc-latency`` (see :class:`~autoprune.search.rl.env.ChannelPruningEnv`).
        repeat_penalty: subtracted from the reward of an episode repeating an earlier episode's layout (default 0).
        on_repeat: ``again`` or ``neighbour`` (see :data:`~autoprune.search.rl.choices.ON_REPEAT`).
        tensorboard: folder for stable-baselines3's TensorBoard logs.
        run_dir: where the agent is saved; a search that finds earlier episodes recorded in its
            ``trials.csv`` continues from the agent saved there (see :meth:`continue_run`).
        save_every: save the agent every this many episodes (and at the end).
        prior: ``sensitivity`` lowers each unit's max ratio to where pruning it alone starts to cost
            accuracy (see :func:`~autoprune.search.sensitivity.narrowed_space`; the scan is cached).
        ratios: the ratio grid of that prior's scan.

    Attributes:
        agent: the stable-baselines3 agent, after :meth:`search`.

    Raises:
        ConfigError: for a bad option value, an option the agent does not use, fewer episodes than
            the warm-up, a latency budget, or TensorBoard logging without the tensorboard package.
        BudgetError: if the budget cannot be met in the search space.
    """

    algorithm: ClassVar[str]
    agent_settings: ClassVar[tuple[str, ...]] = tuple(k for k in DEFAULTS if k not in SAC_ONLY)
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    options = _options(agent_settings)
    episodic = True
    progress_unit = "episode"
    exact_cost_only = True
    races = True

    @classmethod
    def benchmark_options(cls, budget: Budget, evals: int, units: int | None) -> dict[str, Any]:
        """AMC's warm-up of 100 episodes, or a third of a shorter run (agents that warm up)."""
        if "warmup" not in cls.agent_settings:
            return {}
        return {"warmup": min(DEFAULTS["warmup"], evals // RL_WARMUP_SHARE)}

    def attach_run(self, run_dir: Path, study: Any, storage: Any, recorded: Sequence[Candidate] = ()) -> None:
        """Save the agent in the run directory, and continue after the recorded episodes with the saved agent (their
        layouts count as made: an episode ending on one is a repeat)."""
        self.continue_run(run_dir, done_before=len(recorded))
        self._made_before = [c.kept for c in recorded]

    def __init__(
        self,
        evaluator: Evaluator,
        budget: Budget,
        evals: int = 100,
        seed: int = 0,
        *,
        warmup: int | None = None,
        warmup_draw: str | None = None,
        noise_sigma: float | None = None,
        noise_decay: float | None = None,
        noise_floor: float | None = None,
        lr_actor: float | None = None,
        lr_critic: float | None = None,
        batch_size: int | None = None,
        reward_norm: str | None = None,
        updates: int | None = None,
        entropy: float | None = None,
        target_entropy: float | None = None,
        action_mode: str = "project",
        state: str = "amc",
        warm_start: str | Path | None = None,
        reward: str = "acc",
        repeat_penalty: float = 0.0,
        on_repeat: str = "neighbour",
        tensorboard: str | Path | None = None,
        run_dir: str | Path | None = None,
        save_every: int = 10,
        prior: str | None = None,
        ratios: str | None = None,
    ) -> None:
        self.prior_ratios = check_prior(prior, ratios, evaluator, budget)
        given = {"warmup": warmup, "warmup_draw": warmup_draw, "noise_sigma": noise_sigma, "noise_decay": noise_decay,
                 "noise_floor": noise_floor, "lr_actor": lr_actor, "lr_critic": lr_critic, "batch_size": batch_size,
                 "reward_norm": reward_norm, "updates": updates, "entropy": entropy, "target_entropy": target_entropy}
        unused = [_FLAGS[k] for k, v in given.items() if v is not None and k not in self.agent_settings]
        if unused:
            raise ConfigError(f"{', '.join(unused)} do{'es' if len(unused) == 1 else ''} not apply to --method {self.name}; "
                              f"it takes {', '.join(_FLAGS[k] for k in self.agent_settings)}")
        if warm_start is not None and "warmup" not in self.agent_settings:
            raise ConfigError(f"--warm-start fills a replay buffer; --method {self.name} has none (use ddpg, td3 or sac)")
        if warm_start is not None and warmup is None:
            given["warmup"] = 0  # the earlier run's candidates stand in for the warm-up
        self.settings = {k: self.defaults[k] if given[k] is None else given[k] for k in self.agent_settings}
        _check_settings(self.settings, save_every)
        for name, value, allowed in (("--action-mode", action_mode, ACTION_MODES), ("--state", state, STATES),
                                     ("--on-repeat", on_repeat, ON_REPEAT)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        self.action_mode, self.state = action_mode, state
        if get_metric(budget.metric).measured:
            raise ConfigError(f"--method {self.name} clips actions with exact FLOPs or params and cannot take the latency "
                              f"budget {budget}; use a flops or params budget with --reward acc-latency")
        super().__init__(evaluator, budget, evals, seed)
        if self.settings.get("warmup", 0) > evals:
            raise ConfigError(f"--episodes {evals} is fewer than the warm-up of {self.settings['warmup']} episodes of "
                              f"random actions; raise --episodes or lower --warmup")
        if tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(f"--tensorboard {tensorboard} needs the tensorboard package: pip install tensorboard "
                              "(or 'autoprune[tensorboard]')")
        if not (math.isfinite(repeat_penalty) and repeat_penalty >= 0):
            raise ConfigError(f"--repeat-penalty must be a finite number >= 0, got {repeat_penalty!r}")
        self.reward = reward
        self.repeat_penalty = repeat_penalty
        self.on_repeat = on_repeat
        self.tensorboard = None if tensorboard is None else str(tensorboard)
        self.save_every = save_every
        self.run_dir: Path | None = None
        self.done_before = 0
        self._made_before: list[Mapping[str, int]] = []
        self.agent: BaseAlgorithm | None = None
        self._saved_at = 0
        self.env = self._make_env()  # validates the reward now, before anything is written
        self.warm_start = None if warm_start is None else earlier_candidates(Path(warm_start), self.space)
        if run_dir is not None:
            self.continue_run(run_dir)

    def continue_run(self, run_dir: str | Path, done_before: int = 0) -> None:
        """Save the agent in ``run_dir``, continuing after ``done_before`` recorded episodes.

        The agent saved there is loaded at :meth:`search` (a fresh one if none was saved yet), only
        the remaining ``evals`` episodes are made, and the Evaluator numbers new candidates after the
        recorded ones.
        """
        self.run_dir = Path(run_dir)
        self.done_before = done_before
        self.evaluator.count = max(self.evaluator.count, self.done_before)

    @property
    def planned_evaluations(self) -> int:
        """Episodes still to run."""
        return max(0, self.evals - self.done_before)

    @property
    def exhausted(self) -> bool:
        """Whether the episodes (recorded ones included) are spent."""
        return self.done_before + self.result.evaluations >= self.evals

    @classmethod
    def uses_sensitivity_scan(cls, options: Mapping[str, Any]) -> bool:
        """With ``--prior sensitivity`` or ``--state sensitivity``."""
        return super().uses_sensitivity_scan(options) or options.get("state") == "sensitivity"

    def _make_env(self, space: SearchSpace | None = None, seed: int | None = None,
                  unit_features: Mapping[str, Sequence[float]] | None = None) -> ChannelPruningEnv:
        from autoprune.search.rl.env import ChannelPruningEnv

        env = ChannelPruningEnv(self.evaluator, budget=self.budget, reward=self.reward, evaluate=self.evaluate,
                                space=space, action_mode=self.action_mode, unit_features=unit_features, seed=seed,
                                repeat_penalty=self.repeat_penalty, on_repeat=self.on_repeat)
        assert env.limit == self.limit
        return env

    def _episode_env(self, seed: int) -> ChannelPruningEnv:
        """The environment the agent learns on: the prior's narrowed space and the state's features, if any."""
        from autoprune.search.rl.env import sensitivity_features
        from autoprune.search.sensitivity_scan import DEFAULT_RATIOS, parse_ratios, scan

        space = narrowed_space(self, self.prior_ratios) if self.prior_ratios is not None else None
        features = None
        if self.state == "sensitivity":
            table = scan(self.evaluator, self.prior_ratios or parse_ratios(DEFAULT_RATIOS))
            features = sensitivity_features(table, self.space)
        return self._make_env(space, seed=seed, unit_features=features)

    def _run(self) -> None:
        from autoprune.search.rl import agents

        if self.exhausted:
            return
        steps = len(self.space)
        resume = self.run_dir is not None and self.done_before > 0 and (self.run_dir / agents.AGENT_FILE).is_file()
        seed = self.seed + self.done_before  # a continued search must not replay the first session's random actions
        self.env = self._episode_env(seed)
        self.env.remember(self._made_before)
        settings = {**DEFAULTS, **self.defaults, **self.settings}
        if resume:
            agent = agents.load_agent(self.algorithm, self.run_dir, self.env, seed=seed,  # type: ignore[arg-type]
                                      warmup_draw=settings["warmup_draw"])
        else:
            agent = agents.make_agent(self.algorithm, self.env, seed=seed, episode_steps=steps,
                                      tensorboard=self.tensorboard, **settings)
            if self.warm_start:
                episodes = [e for e in map(self._replayed, self.warm_start) if e is not None]
                held = agents.fill_replay(agent, episodes)
                status(f"warm start: {held} of {plural(len(self.warm_start), 'earlier candidate')} in the replay "
                       f"buffer ({len(self.warm_start) - len(episodes)} not reachable under this budget and space)")
        self._saved_at = agent.num_timesteps // steps
        callback = agents.SearchCallback(lambda: self.exhausted, self._checkpoint)
        agent.learn(total_timesteps=self.planned_evaluations * steps, callback=callback, reset_num_timesteps=not resume,
                    tb_log_name=self.name, log_interval=1)
        if self.run_dir is not None:
            agents.save_agent(agent, self.run_dir)
        self.agent = agent

    def _replayed(self, candidate: Candidate) -> list[tuple[Any, Any, Any, float]] | None:
        """An earlier run's candidate as an episode of this environment: (observation, action, next observation,
        reward) per step, the reward at the last; None if no episode of this environment makes its policy."""
        steps = self.env.episode(candidate.policy)
        final = steps[-1][3]
        if final is None or self.space.kept(final) != candidate.kept:
            return None  # this environment cannot make that policy (over this budget, or outside the prior's bounds)
        reward = self.env.reward(candidate)
        return [(o, a, n, reward if policy is not None else 0.0) for o, a, n, policy in steps]

    def _checkpoint(self, agent: BaseAlgorithm) -> None:
        """Save the agent every ``save_every`` episodes (called at episode boundaries)."""
        from autoprune.search.rl import agents

        episodes = agent.num_timesteps // len(self.space)
        if self.run_dir is not None and episodes - self._saved_at >= self.save_every:
            agents.save_agent(agent, self.run_dir)
            self._saved_at = episodes


def earlier_candidates(run_dir: Path, space: SearchSpace) -> list[Candidate]:
    """The scored candidates (complete, or stopped by racing) recorded in an earlier search's run directory.

    Raises:
        ConfigError: if ``run_dir`` holds no run's study, or its candidates prune other units than ``space``.
    """
    import optuna

    from autoprune.trials.record import recorded_candidates
    from autoprune.trials.study import STUDY_FILE, open_storage

    if not (run_dir / STUDY_FILE).is_file():
        raise ConfigError(f"--warm-start {str(run_dir)!r} holds no {STUDY_FILE}; give the --out folder of an earlier "
                          f"autoprune search")
    storage = open_storage(None, run_dir)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if len(summaries) != 1:
        raise ConfigError(f"--warm-start {str(run_dir)!r}: its {STUDY_FILE} holds {len(summaries)} studies, not one run's")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    candidates = [c for c in recorded_candidates(study) if (c.ok or c.stopped) and c.proxy_acc is not None]
    if candidates and set(candidates[0].kept) != set(space.names):
        raise ConfigError(f"--warm-start {str(run_dir)!r} pruned other units than this search's network; give a run of "
                          f"the same --env")
    return candidates


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "warmup": (lambda v: isinstance(v, int) and v >= 0, ">= 0 (an integer)"),
    "noise_sigma": (lambda v: v >= 0, ">= 0"),
    "noise_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lr_actor": (lambda v: v > 0, "> 0"),
    "lr_critic": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: isinstance(v, int) and v >= 1, ">= 1 (an integer)"),
    "noise_floor": (lambda v: v >= 0, ">= 0"),
    "warmup_draw": (lambda v: v in WARMUP_DRAWS, f"one of {', '.join(WARMUP_DRAWS)}"),
    "reward_norm": (lambda v: v in REWARD_NORMS, f"one of {', '.join(REWARD_NORMS)}"),
    "updates": (lambda v: isinstance(v, int) and v >= 1, ">= 1 (an integer)"),
    "entropy": (lambda v: v > 0, "> 0"),
    "target_entropy": (lambda v: math.isfinite(v), "a finite number"),
}


def _check_settings(settings: dict[str, Any], save_every: int) -> None:
    """Raise :class:`ConfigError` naming the first option whose value is out of range."""
    for key, value in settings.items():
        valid, rule = _RULES[key]
        if not valid(value):
            raise ConfigError(f"{_FLAGS[key]} must be {rule}, got {value!r}")
    if save_every < 1:
        raise ConfigError(f"--save-every must be >= 1, got {save_every}")


class DDPGSearcher(RLSearcher):
    """AMC's agent: DDPG."""

    name = "ddpg"
    summary = "AMC's reinforcement learning: DDPG on the pruning environment"
    algorithm = "ddpg"


class TD3Searcher(RLSearcher):
    """TD3 (twin critics, delayed actor updates) with AMC's settings."""

    name = "td3"
    summary = "TD3 on the pruning environment"
    algorithm = "td3"


class SACSearcher(RLSearcher):
    """SAC (a stochastic actor explores by itself: no noise options) with AMC's settings, except that it makes 8
    gradient steps per transition (:data:`SAC_UPDATES`) from an entropy coefficient of 0.05 (:data:`SAC_ENTROPY`):
    with AMC's one step per transition and stable-baselines3's 1.0, its 200 learning episodes stayed as random as
    the warm-up (measured in the benchmark reports)."""

    name = "sac"
    summary = "SAC on the pruning environment"
    algorithm = "sac"
    agent_settings = ("warmup", "warmup_draw", "lr_actor", "lr_critic", "batch_size", "reward_norm", "updates",
                      *SAC_ONLY)
    options = _options(agent_settings)
    defaults: ClassVar[dict[str, Any]] = {**DEFAULTS, "updates": SAC_UPDATES, "entropy": SAC_ENTROPY}


class PPOSearcher(RLSearcher):
    """PPO (on-policy: no warm-up or replay; updates after every 8 episodes) with one learning rate."""

    name = "ppo"
    summary = "PPO on the pruning environment"
    algorithm = "ppo"
    agent_settings = ("lr_actor",)
    options = _options(agent_settings)
    defaults: ClassVar[dict[str, Any]] = {**DEFAULTS, "lr_actor": 3e-4}


RL_SEARCHERS: tuple[type[RLSearcher], ...] = (DDPGSearcher, TD3Searcher, SACSearcher, PPOSearcher)
