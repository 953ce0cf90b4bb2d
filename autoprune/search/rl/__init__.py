"""AMC's reinforcement learning: the gymnasium environment, stable-baselines3 agents and their searcher."""

from autoprune.search.rl.searcher import (
    RL_SEARCHERS,
    DDPGSearcher,
    PPOSearcher,
    RLSearcher,
    SACSearcher,
    TD3Searcher,
)

__all__ = ["RL_SEARCHERS", "DDPGSearcher", "PPOSearcher", "RLSearcher", "SACSearcher", "TD3Searcher"]
