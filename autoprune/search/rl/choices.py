"""The settings of the reinforcement-learning search that several of its modules read: how an action becomes a ratio,
what the agent observes, how warm-up episodes are drawn and how rewards are normalised."""

ACTION_MODES = ("amc", "relative", "project")
"""How an action becomes a unit's ratio: ``amc`` maps [-1, 1] onto the unit's [min_ratio, max_ratio] and clips it
to the budget step by step (AMC); ``relative`` makes 0 the ratio that spreads the remaining budget evenly over the
remaining units (all zeros: the uniform policy), -1 and 1 the unit's bounds, then clips from above like ``amc`` (so that the budget is met, nothing more); ``project``
maps like ``amc`` without clipping and projects the episode's whole shape onto the budget at the end, as random
search projects its samples."""
STATES = ("amc", "sensitivity")
"""What the agent observes: ``amc`` is AMC's layer embedding and budget state; ``sensitivity`` adds each unit's
accuracy drop when pruned alone (from the sensitivity scan)."""
WARMUP_DRAWS = ("actions", "random")
"""What warm-up episodes do: ``actions`` are uniformly random actions (AMC); ``random`` follows policies drawn as
random search draws them (see :meth:`~autoprune.search.rl.env.ChannelPruningEnv.draw_warmup`)."""
REWARD_NORMS = ("baseline", "standard", "rank")
"""How terminal rewards are normalised when a batch is sampled: ``baseline`` subtracts AMC's moving average of batch
means; ``standard`` subtracts the mean and divides by the standard deviation of every terminal reward in the buffer;
``rank`` replaces a reward by its rank among them, scaled to [-1, 1]."""
ON_REPEAT = ("again", "neighbour")
"""What an episode whose layout an earlier episode of the search made evaluates: ``again`` the same layout (answered
from the Evaluator's cache: the episode teaches the agent nothing new); ``neighbour`` a layout one budget-keeping
move away (:func:`~autoprune.core.moves.move_channels`) that no episode made, so that every episode is a new
evaluation near where the agent aims."""
