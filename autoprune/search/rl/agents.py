"""stable-baselines3 agents set up as AMC trains its DDPG agent, with autoprune's additions.

AMC's details that stable-baselines3 does not have: exploration noise that decays per episode after
the warm-up, rewards centred by a moving-average baseline, and separate actor and critic learning
rates. autoprune's additions: warm-up episodes drawn like random search's samples (the environment
plans them), terminal rewards standardised or ranked over the replay buffer instead of centred, an
exploration-noise floor, and a replay buffer filled from an earlier run's candidates. Importing this module imports stable-baselines3 (slow), so :mod:`autoprune.search.rl.searcher` imports
it only when a search starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import VecNormalize

from autoprune.io import atomic_write

AGENT_FILE = "agent.zip"
REPLAY_FILE = "replay_buffer.pkl"
HIDDEN = [300, 300]  # AMC's actor and critic
TAU = 0.01
REPLAY_EPISODES = 100  # AMC keeps the transitions of the last 100 episodes
BASELINE_ALPHA = 0.5  # AMC's moving_alpha
PPO_EPISODES_PER_UPDATE = 8


class DecayingNormalNoise(ActionNoise):
    """Gaussian exploration noise, none during the warm-up, then decaying per episode (AMC).

    stable-baselines3 draws the noise once per step (also on the warm-up's random actions, where this
    noise is zero), so the noise counts its draws to know the episode.

    Args:
        sigma: standard deviation in the action's ``[-1, 1]`` units.
        decay: factor applied to ``sigma`` per episode after the warm-up.
        warmup: episodes of random actions (no noise).
        episode_steps: steps per episode.
        seed: seed of the noise's own random generator.
        floor: the decay stops at this standard deviation (0: AMC's, decays towards none).
    """

    def __init__(self, sigma: float, decay: float, warmup: int, episode_steps: int, seed: int, floor: float = 0.0) -> None:
        super().__init__()
        self.sigma, self.decay, self.warmup, self.episode_steps = sigma, decay, warmup, episode_steps
        self.floor = floor
        self.steps = 0
        self._rng = np.random.default_rng(seed)

    @property
    def scale(self) -> float:
        """The standard deviation of the next draw."""
        episode = self.steps // self.episode_steps
        if episode < self.warmup:
            return 0.0
        return max(min(self.floor, self.sigma), self.sigma * self.decay ** (episode - self.warmup))

    def __call__(self) -> np.ndarray:
        scale = self.scale
        self.steps += 1
        return np.zeros(1, dtype=np.float32) if scale == 0.0 else self._rng.normal(0.0, scale, size=1).astype(np.float32)


class NormalisedReplayBuffer(ReplayBuffer):
    """A replay buffer that normalises terminal rewards when it samples a batch (see :data:`~autoprune.search.rl.choices.REWARD_NORMS`).

    Rewards come only at the last step of an episode (every other reward is 0), so normalising terminal
    rewards changes every Q-value alike. ``baseline`` is AMC's: the baseline follows the mean terminal
    reward of each sampled batch, ``b += alpha * (mean - b)``, and is subtracted, which keeps the
    critic's targets near zero but leaves their spread as small as the rewards' (proxy accuracies
    that differ by a point differ by 0.01). ``standard`` and ``rank`` scale the spread to about one,
    over every terminal reward the buffer holds.

    Args:
        *args: as :class:`~stable_baselines3.common.buffers.ReplayBuffer`.
        reward_norm: ``baseline``, ``standard`` or ``rank``.
        moving_alpha: weight of the newest batch mean in the ``baseline``.
        **kwargs: as :class:`~stable_baselines3.common.buffers.ReplayBuffer`.
    """

    def __init__(self, *args: Any, reward_norm: str = "baseline", moving_alpha: float = BASELINE_ALPHA,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reward_norm = reward_norm
        self.moving_alpha = moving_alpha
        self.baseline: float | None = None

    def terminal_rewards(self) -> np.ndarray:
        """Every terminal reward the buffer holds."""
        end = self.buffer_size if self.full else self.pos
        return self.rewards[:end][self.dones[:end] > 0.5]

    def normalise(self, rewards: np.ndarray) -> np.ndarray:
        """Terminal rewards as the learner sees them (``baseline``: also moves the baseline)."""
        if self.reward_norm == "baseline":
            mean = float(rewards.mean())
            self.baseline = mean if self.baseline is None else self.baseline + self.moving_alpha * (mean - self.baseline)
            return rewards - self.baseline
        held = np.sort(self.terminal_rewards())
        if self.reward_norm == "standard":
            return (rewards - held.mean()) / max(float(held.std()), 1e-8)
        values = rewards.astype(held.dtype)  # as the buffer stores them
        below = np.searchsorted(held, values, side="left")
        at_or_below = np.searchsorted(held, values, side="right")
        return np.clip((below + at_or_below - 1) / max(len(held) - 1, 1) - 1.0, -1.0, 1.0)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A batch whose terminal rewards are normalised."""
        batch = super().sample(batch_size, env)
        terminal = batch.dones > 0.5
        if not bool(terminal.any()):
            return batch
        values = batch.rewards[terminal].cpu().numpy()
        rewards = batch.rewards.clone()
        rewards[terminal] = torch.as_tensor(self.normalise(values), dtype=rewards.dtype, device=rewards.device)
        return batch._replace(rewards=rewards)


class _PlannedWarmup:
    """Mixin: with ``warmup_env`` set, warm-up actions follow the environment's drawn policies
    (:meth:`~autoprune.search.rl.env.ChannelPruningEnv.warmup_action`) instead of uniformly random actions."""

    warmup_env: Any = None
    num_timesteps: int

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "warmup_env"]  # type: ignore[misc]

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if self.warmup_env is None or self.num_timesteps >= learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)  # type: ignore[misc]
        action = np.stack([self.warmup_env.warmup_action() for _ in range(n_envs)])
        if action_noise is not None:
            action_noise()  # keep the noise's step count (it is zero during the warm-up)
        return action, action


class _CriticLearningRate:
    """Mixin: train the critic at ``critic_lr`` (stable-baselines3 uses one rate for every optimizer)."""

    critic_lr: float | None = None
    critic: torch.nn.Module

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        if self.critic_lr is not None:
            update_learning_rate(self.critic.optimizer, self.critic_lr)  # type: ignore[attr-defined]


class AMCDDPG(_PlannedWarmup, _CriticLearningRate, DDPG):
    """DDPG with a separate critic learning rate and planned warm-up episodes."""


class AMCTD3(_PlannedWarmup, _CriticLearningRate, TD3):
    """TD3 with a separate critic learning rate and planned warm-up episodes."""


class AMCSAC(_PlannedWarmup, _CriticLearningRate, SAC):
    """SAC with a separate critic learning rate and planned warm-up episodes."""


AGENTS: dict[str, type[BaseAlgorithm]] = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": AMCSAC, "ppo": PPO}


def make_agent(
    kind: str,
    env: gymnasium.Env,
    *,
    seed: int,
    episode_steps: int,
    warmup: int,
    noise_sigma: float,
    noise_decay: float,
    lr_actor: float,
    lr_critic: float,
    batch_size: int,
    tensorboard: str | None,
    noise_floor: float = 0.0,
    reward_norm: str = "baseline",
    warmup_draw: str = "actions",
    updates: int = 1,
    entropy: float = 1.0,
    target_entropy: float = -1.0,
) -> BaseAlgorithm:
    """A new ``ddpg``, ``td3``, ``sac`` or ``ppo`` agent on ``env`` (AMC's settings with the defaults of the
    last three).

    Args:
        kind: the agent.
        env: the pruning environment.
        seed: seed of the agent (networks, warm-up actions, replay sampling) and of its noise.
        episode_steps: steps per episode (the number of units).
        warmup: episodes before learning (off-policy agents), see ``warmup_draw``.
        noise_sigma: exploration noise (DDPG, TD3), in the action's ``[-1, 1]`` units.
        noise_decay: noise decay per episode after the warm-up.
        noise_floor: the noise decays no lower than this.
        reward_norm: ``baseline``, ``standard`` or ``rank`` (:data:`~autoprune.search.rl.choices.REWARD_NORMS`).
        warmup_draw: ``actions`` or ``random`` (:data:`~autoprune.search.rl.choices.WARMUP_DRAWS`; ``random`` needs the environment's
            ``warmup_action``).
        lr_actor: actor learning rate (PPO: its one learning rate).
        lr_critic: critic learning rate (off-policy agents).
        batch_size: minibatch of each off-policy update.
        updates: gradient steps per transition, made after each episode (off-policy agents; AMC: 1).
        entropy: SAC's entropy coefficient at the start, tuned from there (stable-baselines3's ``auto_<entropy>``).
        target_entropy: the entropy per step SAC's coefficient is tuned towards (stable-baselines3's default: minus
            the action's dimension, -1 here).
        tensorboard: TensorBoard log folder, or None.
    """
    common: dict[str, Any] = {"gamma": 1.0, "seed": seed, "device": "cpu", "verbose": 0, "tensorboard_log": tensorboard,
                              "policy_kwargs": {"net_arch": HIDDEN}}
    if kind == "ppo":
        rollout = PPO_EPISODES_PER_UPDATE * episode_steps
        return PPO("MlpPolicy", env, learning_rate=lr_actor, n_steps=rollout, batch_size=rollout, **common)
    off_policy: dict[str, Any] = {
        "learning_rate": lr_actor, "buffer_size": REPLAY_EPISODES * episode_steps,
        "learning_starts": warmup * episode_steps, "batch_size": batch_size, "tau": TAU, "train_freq": (1, "episode"),
        "gradient_steps": updates * episode_steps, "replay_buffer_class": NormalisedReplayBuffer,
        "replay_buffer_kwargs": {"reward_norm": reward_norm, "moving_alpha": BASELINE_ALPHA},
    }
    if kind in ("ddpg", "td3"):
        off_policy["action_noise"] = DecayingNormalNoise(noise_sigma, noise_decay, warmup, episode_steps, seed,
                                                         floor=noise_floor)
    if kind == "sac":
        off_policy["ent_coef"] = f"auto_{entropy}"
        off_policy["target_entropy"] = target_entropy
    agent = AGENTS[kind]("MlpPolicy", env, **off_policy, **common)
    agent.critic_lr = lr_critic  # type: ignore[attr-defined]
    plan_warmup(agent, env, warmup_draw)
    return agent


def plan_warmup(agent: BaseAlgorithm, env: gymnasium.Env, warmup_draw: str) -> None:
    """Make an off-policy agent's warm-up episodes follow ``env``'s drawn policies (``random``) or not (``actions``)."""
    if isinstance(agent, _PlannedWarmup):
        agent.warmup_env = env if warmup_draw == "random" else None


def load_agent(kind: str, run_dir: Path, env: gymnasium.Env, seed: int, warmup_draw: str = "actions") -> BaseAlgorithm:
    """The agent saved in ``run_dir``, with its replay buffer, on a fresh ``env``, reseeded with ``seed``."""
    agent = AGENTS[kind].load(run_dir / AGENT_FILE, env=env, device="cpu")
    if (run_dir / REPLAY_FILE).is_file() and hasattr(agent, "load_replay_buffer"):
        agent.load_replay_buffer(run_dir / REPLAY_FILE)
    agent.set_random_seed(seed)
    plan_warmup(agent, env, warmup_draw)
    return agent


def fill_replay(agent: BaseAlgorithm, episodes: Sequence[Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, float]]]) -> int:
    """Add whole episodes, each a list of ``(observation, action, next observation, reward)`` steps (the last one
    terminal), to an off-policy agent's replay buffer; returns the number of episodes the buffer holds of them."""
    buffer = agent.replay_buffer  # type: ignore[attr-defined]
    for steps in episodes:
        for i, (observation, action, following, reward) in enumerate(steps):
            done = i == len(steps) - 1
            buffer.add(observation[None], following[None], np.asarray(action)[None], np.array([reward]),
                       np.array([done]), [{}])
    return min(len(episodes), buffer.buffer_size // len(episodes[0])) if episodes else 0


def save_agent(agent: BaseAlgorithm, run_dir: Path) -> None:
    """Save the agent (and an off-policy agent's replay buffer) in ``run_dir``, each file replaced atomically."""
    atomic_write(run_dir / AGENT_FILE, agent.save)
    if hasattr(agent, "save_replay_buffer"):
        atomic_write(run_dir / REPLAY_FILE, agent.save_replay_buffer)


class SearchCallback(BaseCallback):
    """Stops learning when the searcher's evaluations are spent and checkpoints between rollouts.

    Args:
        exhausted: whether the search must stop (checked after every step).
        checkpoint: called with the agent at the start of every rollout (an episode boundary).
    """

    def __init__(self, exhausted: Callable[[], bool], checkpoint: Callable[[BaseAlgorithm], None]) -> None:
        super().__init__()
        self._exhausted = exhausted
        self._checkpoint = checkpoint

    def _on_rollout_start(self) -> None:
        self._checkpoint(self.model)

    def _on_step(self) -> bool:
        info = self.locals["infos"][0]
        candidate = info.get("candidate")
        if candidate is not None and candidate.ok:
            self.logger.record("autoprune/proxy_acc", candidate.proxy_acc)
            self.logger.record("autoprune/flops", candidate.flops)
        return not self._exhausted()
