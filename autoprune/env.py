"""``import autoprune.env`` registers the gymnasium environment ``autoprune/ChannelPruning-v0``.

The environment lives in :mod:`autoprune.search.rl.env`; this module keeps the documented import
(and the ``autoprune.env:autoprune/ChannelPruning-v0`` form of ``gymnasium.make``) working.
"""

from autoprune.search.rl.env import ENV_ID, ChannelPruningEnv

__all__ = ["ENV_ID", "ChannelPruningEnv"]
