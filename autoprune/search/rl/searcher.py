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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from autoprune.core.budget import Budget
from autoprune.core.evaluator import Candidate, Evaluator
from autoprune.core.metrics import get_metric
from autoprune.core.space import SearchSpace
from autoprune.errors import ConfigError
from autoprune.search.base import Searcher, SearchOption
from autoprune.search.sensitivity import PRIOR_OPTION, RATIOS_OPTION, check_prior, narrowed_space

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from autoprune.search.rl.env import ChannelPruningEnv

DEFAULTS: dict[str, Any] = {"warmup": 100, "noise_sigma": 0.5, "noise_decay": 0.95, "lr_actor": 1e-4, "lr_critic": 1e-3,
                            "batch_size": 64}
_FLAGS = {"warmup": "--warmup", "noise_sigma": "--noise-sigma", "noise_decay": "--noise-decay",
          "lr_actor": "--lr-actor", "lr_critic": "--lr-critic", "batch_size": "--batch-size"}
RL_WARMUP_SHARE = 3  # a benchmark cell shorter than 3 x AMC's warm-up spends a third of its episodes on it
_AGENT_OPTIONS = {
    "warmup": SearchOption("warmup", "episodes of random actions before learning (default 100)", int, metavar="N"),
    "noise_sigma": SearchOption("noise_sigma", "exploration noise, in [-1, 1] action units (default 0.5)", float,
                                metavar="S"),
    "noise_decay": SearchOption("noise_decay", "noise decay per episode after the warm-up (default 0.95)", float,
                                metavar="D"),
    "lr_actor": SearchOption("lr_actor", "actor learning rate (default 1e-4; ppo: its one rate, 3e-4)", float,
                             metavar="LR"),
    "lr_critic": SearchOption("lr_critic", "critic learning rate (default 1e-3)", float, metavar="LR"),
    "batch_size": SearchOption("batch_size", "minibatch of each update (default 64)", int, metavar="N"),
}
_RUN_OPTIONS = (
    SearchOption("reward", "acc (default: proxy accuracy), acc-flops or acc-latency (-error x log cost; needs --latency)",
                 choices=("acc", "acc-flops", "acc-latency")),
    SearchOption("tensorboard", "write stable-baselines3's TensorBoard logs to DIR", metavar="DIR"),
    SearchOption("save_every", "save the agent in the run directory every N episodes (default 10)", int, metavar="N"),
    PRIOR_OPTION,
    RATIOS_OPTION,
)


def _options(settings: tuple[str, ...]) -> tuple[SearchOption, ...]:
    """The command-line options of an agent that takes ``settings``."""
    return (*(_AGENT_OPTIONS[k] for k in settings), *_RUN_OPTIONS)


class RLSearcher(Searcher):
    """Trains a stable-baselines3 agent on :class:`~autoprune.search.rl.env.ChannelPruningEnv`, one evaluation per episode.

    Defaults follow AMC: 100 warm-up episodes of random actions, Gaussian exploration noise of scale
    0.5 (in the action's ``[-1, 1]`` units) decaying by 0.95 per episode after the warm-up, 300-300
    actor and critic, learning rates 1e-4 (actor) and 1e-3 (critic), tau 0.01, batch 64, gamma 1,
    rewards centred by a moving-average baseline, one gradient step per transition after each episode.
    Options an agent does not use (noise for SAC and PPO, warm-up for PPO, ...) are rejected.

    Args:
        evaluator: the shared Evaluator.
        budget: the budget (flops or params; every episode's final policy meets it).
        evals: number of episodes, i.e. evaluations.
        seed: seed of the agent, its warm-up actions, replay sampling and exploration noise.
        warmup: episodes of uniformly random actions before learning starts.
        noise_sigma: exploration noise scale (DDPG, TD3).
        noise_decay: noise decay per episode after the warm-up (DDPG, TD3).
        lr_actor: actor learning rate (PPO: its one learning rate, default 3e-4).
        lr_critic: critic learning rate.
        batch_size: minibatch of each update of an off-policy agent.
        reward: ``acc``, ``acc-flops`` or ``acc-latency`` (see :class:`~autoprune.search.rl.env.ChannelPruningEnv`).
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
    agent_settings: ClassVar[tuple[str, ...]] = tuple(DEFAULTS)
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    options = _options(tuple(DEFAULTS))
    episodic = True
    progress_unit = "episode"
    exact_cost_only = True

    @classmethod
    def benchmark_options(cls, budget: Budget, evals: int, units: int | None) -> dict[str, Any]:
        """AMC's warm-up of 100 episodes, or a third of a shorter run (agents that warm up)."""
        if "warmup" not in cls.agent_settings:
            return {}
        return {"warmup": min(DEFAULTS["warmup"], evals // RL_WARMUP_SHARE)}

    def attach_run(self, run_dir: Path, study: Any, storage: Any, recorded: Sequence[Candidate] = ()) -> None:
        """Save the agent in the run directory, and continue after the recorded episodes with the saved agent."""
        self.continue_run(run_dir, done_before=len(recorded))

    def __init__(
        self,
        evaluator: Evaluator,
        budget: Budget,
        evals: int = 100,
        seed: int = 0,
        *,
        warmup: int | None = None,
        noise_sigma: float | None = None,
        noise_decay: float | None = None,
        lr_actor: float | None = None,
        lr_critic: float | None = None,
        batch_size: int | None = None,
        reward: str = "acc",
        tensorboard: str | Path | None = None,
        run_dir: str | Path | None = None,
        save_every: int = 10,
        prior: str | None = None,
        ratios: str | None = None,
    ) -> None:
        self.prior_ratios = check_prior(prior, ratios, evaluator, budget)
        given = {"warmup": warmup, "noise_sigma": noise_sigma, "noise_decay": noise_decay, "lr_actor": lr_actor,
                 "lr_critic": lr_critic, "batch_size": batch_size}
        unused = [_FLAGS[k] for k, v in given.items() if v is not None and k not in self.agent_settings]
        if unused:
            raise ConfigError(f"{', '.join(unused)} do{'es' if len(unused) == 1 else ''} not apply to --method {self.name}; "
                              f"it takes {', '.join(_FLAGS[k] for k in self.agent_settings)}")
        self.settings = {k: self.defaults[k] if given[k] is None else given[k] for k in self.agent_settings}
        _check_settings(self.settings, save_every)
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
        self.reward = reward
        self.tensorboard = None if tensorboard is None else str(tensorboard)
        self.save_every = save_every
        self.run_dir: Path | None = None
        self.done_before = 0
        self.agent: BaseAlgorithm | None = None
        self._saved_at = 0
        self.env = self._make_env()  # validates the reward now, before anything is written
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

    def _make_env(self, space: SearchSpace | None = None) -> ChannelPruningEnv:
        from autoprune.search.rl.env import ChannelPruningEnv

        env = ChannelPruningEnv(self.evaluator, budget=self.budget, reward=self.reward, evaluate=self.evaluate, space=space)
        assert env.limit == self.limit
        return env

    def _run(self) -> None:
        from autoprune.search.rl import agents

        if self.exhausted:
            return
        if self.prior_ratios is not None:
            self.env = self._make_env(narrowed_space(self, self.prior_ratios))
        steps = len(self.space)
        resume = self.run_dir is not None and self.done_before > 0 and (self.run_dir / agents.AGENT_FILE).is_file()
        seed = self.seed + self.done_before  # a continued search must not replay the first session's random actions
        if resume:
            agent = agents.load_agent(self.algorithm, self.run_dir, self.env, seed=seed)  # type: ignore[arg-type]
        else:
            agent = agents.make_agent(
                self.algorithm, self.env, seed=seed, episode_steps=steps, tensorboard=self.tensorboard,
                **{**DEFAULTS, **self.defaults, **self.settings},
            )
        self._saved_at = agent.num_timesteps // steps
        callback = agents.SearchCallback(lambda: self.exhausted, self._checkpoint)
        agent.learn(total_timesteps=self.planned_evaluations * steps, callback=callback, reset_num_timesteps=not resume,
                    tb_log_name=self.name, log_interval=1)
        if self.run_dir is not None:
            agents.save_agent(agent, self.run_dir)
        self.agent = agent

    def _checkpoint(self, agent: BaseAlgorithm) -> None:
        """Save the agent every ``save_every`` episodes (called at episode boundaries)."""
        from autoprune.search.rl import agents

        episodes = agent.num_timesteps // len(self.space)
        if self.run_dir is not None and episodes - self._saved_at >= self.save_every:
            agents.save_agent(agent, self.run_dir)
            self._saved_at = episodes


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "warmup": (lambda v: isinstance(v, int) and v >= 0, ">= 0 (an integer)"),
    "noise_sigma": (lambda v: v >= 0, ">= 0"),
    "noise_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lr_actor": (lambda v: v > 0, "> 0"),
    "lr_critic": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: isinstance(v, int) and v >= 1, ">= 1 (an integer)"),
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
    """SAC (a stochastic actor explores by itself: no noise options) with AMC's settings."""

    name = "sac"
    summary = "SAC on the pruning environment"
    algorithm = "sac"
    agent_settings = ("warmup", "lr_actor", "lr_critic", "batch_size")
    options = _options(agent_settings)


class PPOSearcher(RLSearcher):
    """PPO (on-policy: no warm-up or replay; updates after every 8 episodes) with one learning rate."""

    name = "ppo"
    summary = "PPO on the pruning environment"
    algorithm = "ppo"
    agent_settings = ("lr_actor",)
    options = _options(agent_settings)
    defaults: ClassVar[dict[str, Any]] = {**DEFAULTS, "lr_actor": 3e-4}


RL_SEARCHERS: tuple[type[RLSearcher], ...] = (DDPGSearcher, TD3Searcher, SACSearcher, PPOSearcher)
