"""stable-baselines3 agents set up as AMC trains its DDPG agent.

AMC's details that stable-baselines3 does not have: exploration noise that decays per episode after
the warm-up, rewards centred by a moving-average baseline, and separate actor and critic learning
rates. Importing this module imports stable-baselines3 (slow), so :mod:`autoprune.search.rl.searcher` imports
it only when a search starts.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """

    def __init__(self, sigma: float, decay: float, warmup: int, episode_steps: int, seed: int) -> None:
        super().__init__()
        self.sigma, self.decay, self.warmup, self.episode_steps = sigma, decay, warmup, episode_steps
        self.steps = 0
        self._rng = np.random.default_rng(seed)

    @property
    def scale(self) -> float:
        """The standard deviation of the next draw."""
        episode = self.steps // self.episode_steps
        return 0.0 if episode < self.warmup else self.sigma * self.decay ** (episode - self.warmup)

    def __call__(self) -> np.ndarray:
        scale = self.scale
        self.steps += 1
        return np.zeros(1, dtype=np.float32) if scale == 0.0 else self._rng.normal(0.0, scale, size=1).astype(np.float32)


class CenteredReplayBuffer(ReplayBuffer):
    """A replay buffer that centres episode rewards by a moving-average baseline, as AMC does.

    Rewards come only at the last step of an episode (every other reward is 0), so subtracting the
    baseline from terminal rewards shifts every Q-value by the same amount and keeps the critic's
    targets near zero whatever the reward's scale. The baseline follows the mean terminal reward of
    each sampled batch: ``b += alpha * (mean - b)``.

    Args:
        *args: as :class:`~stable_baselines3.common.buffers.ReplayBuffer`.
        moving_alpha: weight of the newest batch mean in the baseline.
        **kwargs: as :class:`~stable_baselines3.common.buffers.ReplayBuffer`.
    """

    def __init__(self, *args: Any, moving_alpha: float = BASELINE_ALPHA, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moving_alpha = moving_alpha
        self.baseline: float | None = None

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A batch whose terminal rewards have the current baseline subtracted."""
        batch = super().sample(batch_size, env)
        terminal = batch.dones > 0.5
        if not bool(terminal.any()):
            return batch
        mean = float(batch.rewards[terminal].mean())
        self.baseline = mean if self.baseline is None else self.baseline + self.moving_alpha * (mean - self.baseline)
        return batch._replace(rewards=batch.rewards - self.baseline * batch.dones)


class _CriticLearningRate:
    """Mixin: train the critic at ``critic_lr`` (stable-baselines3 uses one rate for every optimizer)."""

    critic_lr: float | None = None
    critic: torch.nn.Module

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        if self.critic_lr is not None:
            update_learning_rate(self.critic.optimizer, self.critic_lr)  # type: ignore[attr-defined]


class AMCDDPG(_CriticLearningRate, DDPG):
    """DDPG with a separate critic learning rate."""


class AMCTD3(_CriticLearningRate, TD3):
    """TD3 with a separate critic learning rate."""


class AMCSAC(_CriticLearningRate, SAC):
    """SAC with a separate critic learning rate."""


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
) -> BaseAlgorithm:
    """A new ``ddpg``, ``td3``, ``sac`` or ``ppo`` agent on ``env`` with AMC's settings.

    Args:
        kind: the agent.
        env: the pruning environment.
        seed: seed of the agent (networks, warm-up actions, replay sampling) and of its noise.
        episode_steps: steps per episode (the number of units).
        warmup: episodes of uniformly random actions before learning (off-policy agents).
        noise_sigma: exploration noise (DDPG, TD3), in the action's ``[-1, 1]`` units.
        noise_decay: noise decay per episode after the warm-up.
        lr_actor: actor learning rate (PPO: its one learning rate).
        lr_critic: critic learning rate (off-policy agents).
        batch_size: minibatch of each off-policy update.
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
        "gradient_steps": -1, "replay_buffer_class": CenteredReplayBuffer,
        "replay_buffer_kwargs": {"moving_alpha": BASELINE_ALPHA},
    }
    if kind in ("ddpg", "td3"):
        off_policy["action_noise"] = DecayingNormalNoise(noise_sigma, noise_decay, warmup, episode_steps, seed)
    agent = AGENTS[kind]("MlpPolicy", env, **off_policy, **common)
    agent.critic_lr = lr_critic  # type: ignore[attr-defined]
    return agent


def load_agent(kind: str, run_dir: Path, env: gymnasium.Env, seed: int) -> BaseAlgorithm:
    """The agent saved in ``run_dir``, with its replay buffer, on a fresh ``env``, reseeded with ``seed``."""
    agent = AGENTS[kind].load(run_dir / AGENT_FILE, env=env, device="cpu")
    if (run_dir / REPLAY_FILE).is_file() and hasattr(agent, "load_replay_buffer"):
        agent.load_replay_buffer(run_dir / REPLAY_FILE)
    agent.set_random_seed(seed)
    return agent


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
